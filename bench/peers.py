"""Cutover against its peers on the same lab server, link and site: Capistrano 3 and the floor of
the design (one `rsync --link-dest` and one ssh rename, no checks).

    python3 bench/peers.py [--links loopback,wan] [--sizes 1000,10000] [--repeat 3] [--before REV]

For each link profile (lab/link.py) and site: the first deploy (a full upload), a one-file change
and a rollback by each tool: wall time, bytes on the wire (counted on the link's device, so only
for a link profile, both ways, SSH included), extra disk of the new release; and Cutover's time per
step. --before REV adds Cutover at that commit (a git worktree), on a second lab server behind the
same link, to show what a change of Cutover's own saves, in the same run. Installs Capistrano
(Debian package `capistrano`) when `cap` is missing. The lab's servers run with a lean login shell.
Writes the section "Peers" of bench/RESULTS.md and bench/data/peers.json.
"""

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from common import PROJECT, before_tree, generate_site, median, save_data, start_lab, stop_lab, write_section

import lab
from lab.link import PROFILES, round_trips

SIZES = {1000: 50 * 2**20, 10000: 200 * 2**20, 100000: 400 * 2**20}  # 1,000 and 10,000: as bench/speed.py's
CHANGED_FILE = "assets/d07/f00007.bin"


def sh(argv, **kw):
    result = subprocess.run(argv, capture_output=True, text=True, **kw)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(map(str, argv))}: exit {result.returncode}\n{result.stdout}{result.stderr}")
    return result


def ssh_argv(the_lab, server):
    """OpenSSH as a user of the floor or of rsync would run it: the lab's key and known_hosts."""
    return ["ssh", "-F", "none", "-p", str(server.ssh_port), "-i", str(the_lab.key), "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={the_lab.known_hosts}", "-o", "StrictHostKeyChecking=yes"]  # fmt: skip


class Cutover:
    """`fab deploy` and `fab rollback` of the tree `tree` against one lab server of its own."""

    def __init__(self, name, tree, the_lab, server):
        self.name, self.tree, self.lab, self.server = name, tree, the_lab, server
        self.root = server.deploy_to
        self.steps = {}

    def _fab(self, *args):
        # what fab keeps about builds and releases (tasks/manifest.py), one cache per tree
        env = dict(os.environ, CUTOVER_HOSTS_FILE=str(self.lab.hosts_file),
                   XDG_CACHE_HOME=str(self.lab.root / f"cache-{self.server.name}"))  # fmt: skip
        result = sh([sys.executable, "-m", "fabric", "-H", self.server.name, *args], cwd=self.tree, env=env)
        pattern = rf"^\[{self.server.name}\] (\w+)\s+(\d+) ms"
        self.steps = {m[0]: int(m[1]) / 1000 for m in re.findall(pattern, result.stdout, re.M)}

    # --split: the lab's group holds both Cutovers' servers; each deploys to its own
    def deploy(self):
        self._fab("deploy", "--split")

    def rollback(self):
        self._fab("rollback", "--split")


class Floor:
    """One rsync --link-dest into a new release dir, then one ssh command: a symlink renamed over current."""

    name = "rsync floor"

    def __init__(self, the_lab, site):
        self.server = the_lab.servers[0]  # beside Cutover's deploy_to, as Capistrano's
        self.root = os.path.join(self.server.root, "floor")
        os.makedirs(os.path.join(self.root, "releases"))
        self.ssh, self.site, self.done = ssh_argv(the_lab, self.server), site, []
        self.target = f"root@{self.server.address}"

    def _switch(self, release):
        cmd = f"cd {self.root} && ln -sfn releases/{release} current.tmp && mv -T current.tmp current"
        sh([*self.ssh, self.target, cmd])

    def deploy(self):
        release = f"{len(self.done) + 1:04d}"
        link = [f"--link-dest=../{self.done[-1]}"] if self.done else []
        sh(["rsync", "-a", "--delete", *link, "-e", shlex.join(self.ssh), f"{self.site}/",
            f"{self.target}:{self.root}/releases/{release}/"])  # fmt: skip
        self._switch(release)
        self.done.append(release)

    def rollback(self):
        self.done.pop()
        self._switch(self.done[-1])


class Capistrano:
    """Capistrano 3's standard deploy flow, git SCM over a bare repository on the server's disk."""

    name = "Capistrano"

    def __init__(self, the_lab, site, work):
        server = self.server = the_lab.servers[0]
        self.root, self.dir, self.repo = os.path.join(server.root, "cap"), work / "capistrano", work / "site.git"
        # the site's history kept outside it: the other tools upload the site dir as it is
        self.env = dict(os.environ, GIT_DIR=str(work / "site-history"), GIT_WORK_TREE=str(site), GIT_AUTHOR_NAME="b",
                        GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")  # fmt: skip
        sh(["git", "init", "-q", "-b", "main"], env=self.env)
        self.commit("site")
        sh(["git", "init", "-q", "--bare", "-b", "main", str(self.repo)])
        sh(["git", "push", "-q", str(self.repo), "main"], env=self.env)
        (self.dir / "config" / "deploy").mkdir(parents=True)
        (self.dir / "Capfile").write_text(
            'require "capistrano/setup"\nrequire "capistrano/deploy"\nrequire "capistrano/scm/git"\n'
            "install_plugin Capistrano::SCM::Git\n"
        )
        (self.dir / "config" / "deploy.rb").write_text(
            f'set :application, "bench"\nset :repo_url, "{self.repo}"\nset :branch, "main"\n'
            f'set :deploy_to, "{self.root}"\nset :keep_releases, 5\nset :log_level, :warn\n'
            f'set :ssh_options, {{ keys: ["{the_lab.key}"], user_known_hosts_file: "{the_lab.known_hosts}", '
            f'verify_host_key: :always, auth_methods: ["publickey"], port: {server.ssh_port} }}\n'
        )
        (self.dir / "config" / "deploy" / "production.rb").write_text(
            f'server "{server.address}", user: "root", roles: %w{{web}}, port: {server.ssh_port}\n'
        )

    def commit(self, message):
        sh(["git", "add", "-A"], env=self.env)
        sh(["git", "commit", "-qm", message], env=self.env)

    def changed(self):  # the user's own commit and push, not timed
        self.commit("one file")
        sh(["git", "push", "-q", str(self.repo), "main"], env=self.env)

    def deploy(self):
        sh(["cap", "production", "deploy"], cwd=self.dir)

    def rollback(self):
        sh(["cap", "production", "deploy:rollback"], cwd=self.dir)


def wire_bytes(server):
    """Bytes through the server's link so far, both ways (0 on loopback: not counted)."""
    if not server.netns:
        return 0
    dev = f"/sys/class/net/cvl{server.address.split('.')[2]}o/statistics"
    return sum(int(Path(dev, f).read_text()) for f in ("rx_bytes", "tx_bytes"))


def extra_disk(before, after):
    """Bytes of the files of release `after` that are not hard links into release `before`."""
    old = {p.stat().st_ino for p in Path(before).rglob("*") if p.is_file() and not p.is_symlink()} if before else set()
    files = [p for p in Path(after).rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(p.stat().st_size for p in files if p.stat().st_ino not in old)


def timed(tool, action):
    """(seconds, wire bytes, extra disk) of tool.<action>()."""
    server = tool.server
    current = os.path.join(tool.root, "current")
    before = os.path.realpath(current) if os.path.lexists(current) else None
    os.sync()
    sent = wire_bytes(server)
    start = time.monotonic()
    getattr(tool, action)()
    seconds = time.monotonic() - start
    sent = wire_bytes(server) - sent
    disk = extra_disk(before, os.path.realpath(current)) if action == "deploy" else 0
    return seconds, sent, disk


def link_figures(the_lab, server):
    """The link as tools see it: a small HTTP request's round trip, and a 20 MB transfer over ssh."""
    rtts = round_trips(server.address, server.http_port, 6)
    ssh = [*ssh_argv(the_lab, server), f"root@{server.address}"]
    start = time.monotonic()
    sh([*ssh, "true"])
    login = time.monotonic() - start
    start = time.monotonic()
    sh([*ssh, "head -c 20000000 /dev/zero"])
    transfer = time.monotonic() - start - login
    return {"rtt_ms": 1000 * median(rtts[1:]), "mbit": 20e6 * 8 / transfer / 1e6, "ssh_login_s": login}


def run_link(link, sizes, repeat, before, work):
    out = {}
    for files in sizes:
        # Cutover at --before gets a server of its own, behind the same link: a deploy_to of its own
        the_lab, parent = start_lab(2 if before else 1, link=link)
        server = the_lab.servers[0]
        try:
            out.setdefault("link", link_figures(the_lab, server))
            site = generate_site(work / f"site-{link}-{files}", files, SIZES[files])
            lab.write_hosts_file(the_lab, build=str(site))
            tools = [
                Cutover("Cutover", PROJECT, the_lab, server),
                Floor(the_lab, site),
                Capistrano(the_lab, site, parent),
            ]
            if before:
                tools.insert(1, Cutover(f"Cutover {before[0]}", before[1], the_lab, the_lab.servers[1]))
            rows = {t.name: {"first": None, "one file": [], "rollback": [], "steps": []} for t in tools}
            for tool in tools:
                rows[tool.name]["first"] = timed(tool, "deploy")
            target = site / CHANGED_FILE
            for _ in range(repeat):
                for tool in tools:
                    target.write_bytes(os.urandom(target.stat().st_size))
                    if isinstance(tool, Capistrano):
                        tool.changed()
                    rows[tool.name]["one file"].append(timed(tool, "deploy"))
                    if isinstance(tool, Cutover):
                        rows[tool.name]["steps"].append(tool.steps)
                    rows[tool.name]["rollback"].append(timed(tool, "rollback"))
            out[files] = rows
            print(f"{link}, {files} files: " + "; ".join(
                f"{n}: one file {median([r[0] for r in v['one file']]):.2f} s" for n, v in rows.items()), flush=True)  # fmt: skip
        finally:
            stop_lab(the_lab, parent)
    return out


def install_capistrano():
    if shutil.which("cap"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "capistrano", "ruby-ed25519", "ruby-bcrypt-pbkdf"],
                   check=True, env=env, stdout=subprocess.DEVNULL)  # fmt: skip


def mb(n):
    return f"{n / 1e6:,.2f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} KB"


def report(results, sizes, repeat, before, command):
    lines = [
        f"Command: `{command}` (lab servers of real sshd and Apache, with a lean login shell (sshd's "
        "`SetEnv SHLVL=1`), as a server's; Cutover, the floor and Capistrano on one, each into a "
        "deploy_to of its own; Cutover at the older commit on a second behind the same link; "
        f"medians of {repeat} runs, one-file change and rollback alternating; wall time is the whole "
        "command, start-up included).",
        "",
        "Links (lab/link.py; measured now): "
        + "; ".join(
            f"{link}: {r['link']['rtt_ms']:.2f} ms round trip (small HTTP request), "
            f"{r['link']['mbit']:.0f} Mbit/s (20 MB over ssh), ssh login {r['link']['ssh_login_s']:.2f} s"
            for link, r in results.items()
        )
        + ".",
        "",
        "Tools: Cutover (`fab deploy`, `fab rollback`); the rsync floor (`rsync -a --delete --link-dest` "
        "into a new release dir, then one `ssh` that renames a symlink over current: no checks, no pause, "
        "no lock); Capistrano 3.17 (Debian's; `cap production deploy` with git SCM from a bare repository "
        "on the server's own disk, so its fetch costs no link; the commit and push are the user's, not "
        "timed). Bytes on the wire are counted on the link's device, both ways, SSH included (none for "
        "loopback).",
        "",
        "| link | site | tool | first deploy | one-file change | rollback | bytes on the wire (one file) "
        "| extra disk per release (one file) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for link, r in results.items():
        for files in sizes:
            for name, v in r[files].items():
                first = f"{v['first'][0]:.2f} s"
                one = v["one file"]
                lines.append(
                    f"| {link} | {files:,} files, {SIZES[files] // 2**20} MB | {name} | {first} "
                    f"| {median([x[0] for x in one]):.2f} s | {median([x[0] for x in v['rollback']]):.2f} s "
                    f"| {mb(median([x[1] for x in one])) if r[files][name]['one file'][0][1] else '-'} "
                    f"| {mb(median([x[2] for x in one]))} |"
                )
    lines += ["", "Cutover's time per step of the one-file change (seconds, medians):", ""]
    steps = ["lock", "prelink", "upload", "link", "smoke", "swap", "cleanup"]
    lines += ["| link | site | Cutover | " + " | ".join(steps) + " |", "|---|---|---|" + "---|" * len(steps)]
    for link, r in results.items():
        for files in sizes:
            for name, v in r[files].items():
                if name.startswith("Cutover"):
                    cells = [f"{median([s.get(k, 0) for s in v['steps']]):.3f}" for k in steps]
                    lines.append(f"| {link} | {files:,} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios in this run (one-file change, medians):", ""]
    for link, r in results.items():
        for files in sizes:
            v = r[files]
            one = {n: median([x[0] for x in t["one file"]]) for n, t in v.items()}
            back = {n: median([x[0] for x in t["rollback"]]) for n, t in v.items()}
            parts = [
                f"Cutover takes {one['Cutover'] / one['rsync floor']:.2f}x the floor's time",
                f"Capistrano takes {one['Capistrano'] / one['Cutover']:.1f}x Cutover's",
                f"Cutover's full upload takes {v['Cutover']['first'][0] / one['Cutover']:.1f}x its one-file change",
                f"rollback {back['Cutover']:.2f} s",
            ]
            if before:
                parts.append(f"Cutover {before} took {one[f'Cutover {before}'] / one['Cutover']:.2f}x this one's time")
            lines.append(f"- {link}, {files:,} files: " + "; ".join(parts) + ".")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", default="loopback,wan")
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", help="also run Cutover at this commit (one-file change and rollback)")
    args = parser.parse_args()
    links = args.links.split(",")
    for link in links:
        assert link in PROFILES, f"--links: one of {', '.join(PROFILES)}"
    sizes = [int(s) for s in args.sizes.split(",")]
    install_capistrano()
    results = {}
    with ExitStack() as stack:
        before = None
        work = Path(stack.enter_context(__import__("tempfile").TemporaryDirectory(prefix="cutover-peers-")))
        if args.before:
            commit, _, tree = stack.enter_context(before_tree(args.before, "cutover-peers-before-"))
            before = (commit, tree)
        for link in links:
            results[link] = run_link(link, sizes, args.repeat, before, work)
    save_data("peers", {"sizes": sizes, "results": {k: {str(f): v for f, v in r.items()} for k, r in results.items()}})
    command = "python3 bench/peers.py " + " ".join(sys.argv[1:])
    write_section("Peers", report(results, sizes, args.repeat, before and before[0], command.strip()))


if __name__ == "__main__":
    main()
