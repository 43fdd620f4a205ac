"""Where a first deploy's time goes beside the rsync floor's: fab's main thread profiled, the CPU of
fab and of its local rsync, and the parts the floor does not do measured alone.

    python3 bench/first_profile.py [--files 10000] [--mb 50] [--repeat 3] [--under DIR]

On a fresh lab server per repeat: a first `fab deploy` under cProfile (the main thread: what it
waits in), with fab's CPU and its children's; then, on the same server, each alone into an empty
dir over OpenSSH: the floor's rsync (`rsync -a`), rsync as Cutover's first upload runs it
(`--checksum --no-times --no-inc-recursive`), and the build's digests that fab reads beside the
upload (tasks/manifest.build_files, sha256 of every file). Writes the section "A first deploy
against the floor: where the time goes" of bench/RESULTS.md.
"""

import argparse
import io
import json
import os
import pstats
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    PROJECT,
    generate_site,
    median,
    quiet,
    quiet_options,
    start_lab,
    stop_lab,
    under_option,
    write_section,
)
from peers import ssh_argv

import lab
from tasks import manifest, release
from tasks.config import Build

RUN_FAB = """
import atexit, cProfile, resource, sys
import fabric.main
profile = cProfile.Profile()
def done():
    profile.disable()
    profile.dump_stats(sys.argv[1])
    self, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print("CPU", self.ru_utime + self.ru_stime, kids.ru_utime + kids.ru_stime, file=sys.stderr)
atexit.register(done)
profile.enable()
fabric.main.program.run(["fab", *sys.argv[2:]])
"""
WAITS = ("upload_all", "start_uploads", "preflight", "lock", "stage", "swap", "finish", "connect", "check_build")


def rsync_alone(the_lab, server, site, name, extra):
    """Seconds of one rsync of the site into a new empty dir on the server over OpenSSH."""
    dest = f"{server.root}/alone-{name}"
    argv = ["rsync", "-a", *extra, "-e", shlex.join(ssh_argv(the_lab, server)), f"{site}/",
            f"root@{server.address}:{dest}/"]  # fmt: skip
    start = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    return time.monotonic() - start


def one(files, site, load, wait, under):
    the_lab, parent = start_lab(1, under=under)
    try:
        lab.write_hosts_file(the_lab, build=str(site))
        server = the_lab.servers[0]
        env = dict(os.environ, CUTOVER_HOSTS_FILE=str(the_lab.hosts_file), XDG_CACHE_HOME=str(parent / "cache"))
        prof, outcome = parent / "fab.prof", parent / "outcome.json"
        out = {"load": quiet(load, wait)}
        os.sync()
        start = time.monotonic()
        result = subprocess.run([sys.executable, "-c", RUN_FAB, str(prof), "deploy", "--json", str(outcome)],
                                cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
        out["wall"] = time.monotonic() - start
        assert result.returncode == 0, result.stderr
        cpu = [x for x in result.stderr.splitlines() if x.startswith("CPU ")][-1].split()
        out["fab_cpu"], out["children_cpu"] = float(cpu[1]), float(cpu[2])
        out["steps"] = json.loads(outcome.read_text())["hosts"][0]["steps"]
        stats = pstats.Stats(str(prof))
        out["main"] = {}
        for (_, _, fn), (_, _, _, cumulative, _) in stats.stats.items():
            if fn in WAITS:
                out["main"][fn] = max(out["main"].get(fn, 0), cumulative)
        text = io.StringIO()
        pstats.Stats(str(prof), stream=text).sort_stats("cumulative").print_stats(25)
        out["profile"] = text.getvalue()
        quiet(load, wait)
        os.sync()
        out["floor rsync"] = rsync_alone(the_lab, server, site, "floor", [])
        quiet(load, wait)
        os.sync()
        out["cutover rsync"] = rsync_alone(
            the_lab, server, site, "cutover", ["--checksum", "--no-times", "--no-inc-recursive"]
        )
        os.environ["XDG_CACHE_HOME"] = str(parent / "cache-alone")  # an empty digest cache, gone with the lab
        info = release.check_build(Build(path=site, required=()))
        before = resource.getrusage(resource.RUSAGE_SELF)
        manifest.build_files(site, info.stats)
        after = resource.getrusage(resource.RUSAGE_SELF)
        out["digests_cpu"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return out
    finally:
        stop_lab(the_lab, parent)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    quiet_options(parser, wait=15)
    under_option(parser)
    args = parser.parse_args()
    site = generate_site(
        Path(tempfile.mkdtemp(prefix="cutover-first-", dir=args.under)) / "site", args.files, args.mb * 2**20
    )
    try:
        runs = [one(args.files, site, args.load, args.wait, args.under) for _ in range(args.repeat)]
    finally:
        subprocess.run(["rm", "-rf", str(site.parent)], check=False)
    m = lambda key: median([r[key] for r in runs])  # noqa: E731
    lines = [
        f"Command: `python3 bench/first_profile.py --files {args.files} --mb {args.mb} --repeat {args.repeat}"
        + (f" --under {args.under}" if args.under != "/tmp" else "")
        + "` "
        f"(a generated site of {args.files:,} small files, {args.mb} MB; a fresh lab server per repeat; medians "
        f"of {args.repeat} with their range; load average at the deploy's start: "
        + ", ".join(f"{r['load']:.2f}" for r in runs)
        + ").",
        "",
        "| figure | seconds |",
        "|---|---|",
        f"| first `fab deploy`, wall | {m('wall'):.2f} ({min(r['wall'] for r in runs):.2f}-"
        f"{max(r['wall'] for r in runs):.2f}) |",
        f"| fab's own CPU / its children's (the local rsync and its remote shell) | {m('fab_cpu'):.2f} / "
        f"{m('children_cpu'):.2f} |",
        *[
            f"| server step `{k}` (--json) | {median([r['steps'].get(k, 0) for r in runs]):.3f} |"
            for k in runs[0]["steps"]
        ],
        *[
            f"| fab's main thread in `{k}` (cProfile, cumulative) | {median([r['main'].get(k, 0) for r in runs]):.3f} |"
            for k in WAITS
            if any(k in r["main"] for r in runs)
        ],
        f"| the floor's rsync alone (`rsync -a`, OpenSSH) into an empty dir | {m('floor rsync'):.2f} |",
        "| rsync as Cutover's first upload runs it (`--checksum --no-times --no-inc-recursive`), alone | "
        f"{m('cutover rsync'):.2f} |",
        f"| the build's digests (sha256 of every file, fab's thread beside the upload), CPU | {m('digests_cpu'):.2f} |",
    ]
    write_section(f"A first deploy against the floor: where the time goes ({args.files:,} files)", lines)
    print(runs[len(runs) // 2]["profile"])


if __name__ == "__main__":
    main()
