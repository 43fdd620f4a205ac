"""What Cutover's Apache rules cost per request: no rules, the rules before pinning checked the
mapped file name (commit 2c315d1: one -U subrequest per pinned request), today's rules (the -U
subrequest for access and the LA-U subrequest for the file name, and the site's blocks for
current/... written for releases/*/...), and today's without the -U (access from the written
blocks alone), on one lab server with mod_php (prefork).

    python3 bench/rules_bench.py [--seconds 5] [--rounds 3] [--also COMMIT]

--also COMMIT adds the rules as they were at COMMIT (to measure what a change of the rules costs).

The test app of tests/phpapp is deployed; wrk -t2 -c8 requests a static file, a PHP script and a
front-controller route, each variant in turn, alternating rounds (the machine is shared: compare
the ratios, measured in one run). Writes the section "Apache rules: cost per request" of
bench/RESULTS.md.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path

from common import PROJECT, Wrk, fab, lab, median, start_lab, stop_lab, write_section

sys.path.insert(0, str(PROJECT))
from tasks import hostsfile  # noqa: E402
from tests.conftest import LabHandle  # noqa: E402
from tests.test_php import SITE_CONF, build, configure_app  # noqa: E402

BEFORE = "2c315d1"  # the rules whose cost today's are compared with
PATHS = {"static file": "/assets/app.css", "PHP script": "/legacy.php", "front controller": "/products/7"}


def rules_before(host, commit=BEFORE):
    """Cutover's rules for host as tasks/apache.py rendered them at commit (read from git)."""

    def show(path):
        return subprocess.run(["git", "-C", str(PROJECT), "show", f"{commit}:{path}"], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip

    module = types.ModuleType("tasks.apache_before")
    module.__package__, module.__file__ = "tasks", str(PROJECT / "tasks" / "apache.py")
    exec(compile(show("tasks/apache.py"), f"{commit}:tasks/apache.py", "exec"), module.__dict__)
    with tempfile.TemporaryDirectory(prefix="cutover-rules-") as work:
        module.TEMPLATE = Path(work, "apache.conf")
        module.TEMPLATE.write_text(show("templates/apache.conf"))
        return module.snippet(_HostBefore(host))


class _HostBefore:
    """A host with the settings that version had and today's has not, at their defaults."""

    apache = types.SimpleNamespace(options="FollowSymLinks", allow_override="All")

    def __init__(self, host):
        self.host = host

    def __getattr__(self, name):
        return getattr(self.host, name)


def variants(host, today, also=None):
    """{name: rules text}."""
    no_access_check = "\n".join(line for line in today.splitlines() if not re.search(r"\} -U$", line))
    out = {
        "none (plain Apache)": "",
        f"before ({BEFORE}): -U": rules_before(host),
        "today: -U and LA-U, site blocks written": today,
        "today without -U": no_access_check,
    }
    if also:
        out[f"at {also}"] = rules_before(host, also)
    return out


def httpd_cpu(server):
    """CPU seconds Apache has used so far: its parent, the children it reaped and those alive."""
    tick = os.sysconf("SC_CLK_TCK")

    def fields(pid):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()

    parent = fields(server.httpd_pid)
    used = sum(int(x) for x in parent[11:15])  # utime, stime, cutime, cstime
    for child in lab.children(server.httpd_pid):
        try:
            used += sum(int(x) for x in fields(child)[11:13])
        except OSError:
            pass  # exited since the listing: its time is in the parent's cutime once reaped
    return used / tick


def load(server, path, seconds):
    """(requests per second, Apache's CPU microseconds per request) of wrk -t2 -c8 on path."""
    before = httpd_cpu(server)
    result = Wrk(server.url.rstrip("/") + path, seconds=seconds, threads=2, connections=8).result()
    assert result["errors"] == 0, result["raw"]
    return result["requests"] / seconds, (httpd_cpu(server) - before) / result["requests"] * 1e6


def measure(work, seconds, rounds, also=None):
    the_lab, parent = start_lab(1, php="mod_php", site_conf=SITE_CONF, serve="public")
    handle = LabHandle(the_lab)
    server = the_lab.servers[0]
    try:
        configure_app(handle, build(work, "bench"), "bench")
        _, result = fab(the_lab.hosts_file, "deploy")
        assert result.returncode == 0, result.stderr
        conf = Path(server.deploy_to, ".cutover", "apache.conf")
        today = conf.read_text()
        host = hostsfile.load(the_lab.hosts_file).resolve(server.name)[0]
        texts = variants(host, today, also)
        figures = {(v, p): [] for v in texts for p in PATHS}
        for i in range(rounds):
            order = list(texts.items())
            for name, text in order if i % 2 == 0 else order[::-1]:
                conf.write_text(text)
                lab.graceful_restart(server)
                for kind, path in PATHS.items():
                    figures[(name, kind)].append(load(server, path, seconds))
        conf.write_text(today)
        lab.graceful_restart(server)
        return list(texts), {k: (median([r for r, _ in v]), median([c for _, c in v])) for k, v in figures.items()}
    finally:
        stop_lab(the_lab, parent)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--also", help="a commit whose rules are measured too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cutover-rules-") as work:
        names, rates = measure(Path(work), args.seconds, args.rounds, args.also)
    kinds = list(PATHS)
    lines = [
        f"Command: `python3 bench/rules_bench.py --seconds {args.seconds} --rounds {args.rounds}"
        f"{f' --also {args.also}' if args.also else ''}` (one lab server, "
        "mod_php in the prefork MPM, the test app of tests/phpapp with `serve: public`; wrk -t2 -c8 on "
        f"{', '.join(f'{k} `{p}`' for k, p in PATHS.items())}; medians of {args.rounds} alternating rounds of "
        f"{args.seconds} s. CPU per request is what Apache's processes used (/proc: the parent, its reaped and its "
        "live children) over the requests answered: on a shared machine it varies less than the rate).",
        "",
        "| rules | " + " | ".join(f"{k}: req/s, CPU per request" for k in kinds) + " | "
        + " | ".join(f"{k}: CPU vs none" for k in kinds) + " |",
        "|---|" + "---|" * (2 * len(kinds)),
    ]  # fmt: skip
    for name in names:
        row = [rates[(name, k)] for k in kinds]
        base = [rates[(names[0], k)] for k in kinds]
        lines.append(
            f"| {name} | " + " | ".join(f"{r:,.0f}, {c:.0f} us" for r, c in row) + " | "
            + " | ".join(f"{c / b[1]:.2f}" for (_, c), b in zip(row, base)) + " |"
        )  # fmt: skip
    write_section("Apache rules: cost per request", lines)


if __name__ == "__main__":
    main()
