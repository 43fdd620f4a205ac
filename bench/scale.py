"""Cost against the number of files: first deploy, one-file change, no-change deploy and rollback
of Cutover and of the rsync floor at each size, with fab's and the server side's peak memory.

    python3 bench/scale.py [--sizes 1000,10000,100000] [--repeat 3] [--load 1.0] [--under DIR]

Each repeat starts a fresh lab server (an empty deploy_to and digest cache: a first deploy is a
user's first), on which Cutover and the floor (bench/peers.py's: `rsync -a --delete --link-dest`
into a new release dir, one ssh that renames a symlink) each deploy into a deploy_to of their own,
in alternating order. --under DIR puts the sites and the lab servers (deploy_to) there, e.g. on
a tmpfs (`mount -t tmpfs -o size=4g tmpfs DIR`): a whole site written on every first deploy then
does not wait for a disk whose writeback other work on the machine shares. Every timed step waits first for a quiet machine (1-minute load average
below --load, at most --wait seconds) and records the load it started at.

Memory: fab runs in a Python that prints its own peak RSS and its children's (the local rsync)
at exit; the hosts.yaml `python:` is a wrapper that runs the server's Python under
/usr/bin/time, so the agent's peak RSS, and that of rsync's server side (which Cutover starts
through the same Python, then execs rsync), are logged on the server.
Writes the section "Scale" of bench/RESULTS.md and bench/data/scale.json.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import (
    PROJECT,
    generate_site,
    median,
    quiet,
    quiet_options,
    save_data,
    start_lab,
    stop_lab,
    under_option,
    write_section,
)
from peers import Floor

import lab

SIZES = {1000: 10 * 2**20, 10000: 50 * 2**20, 50000: 150 * 2**20, 100000: 200 * 2**20}  # small files
CHANGED_FILE = "assets/d07/f00007.bin"
STEPS = ("first", "one file", "no change", "rollback")

# fab as `python -m fabric` runs it, its own peak RSS (kB) on stderr at exit
RUN_FAB = """
import atexit, resource, sys
import fabric.main
atexit.register(lambda: print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))
fabric.main.program.run(["fab", *sys.argv[1:]])
"""
# the local rsync, first on fab's PATH: its peak RSS (and its remote shell's, the bridge's client),
# apart from fab's (a child forked from fab counts fab's pages until it execs)
LOCAL_RSYNC = """#!/bin/bash
exec /usr/bin/time -a -o %(log)s -f "local %%M" %(rsync)s "$@"
"""

# the server's python under /usr/bin/time: "agent" for the agent (`... serve`), "rsync" for the
# upload's server side (when_ready.py's argv: -I -S -c SCRIPT DEST LIMIT rsync ...)
WRAPPER = """#!/bin/bash
kind=other
[ "${@: -1}" = serve ] && kind=agent
[ "${7:-}" = rsync ] && kind=rsync
exec /usr/bin/time -a -o %(log)s -f "$kind %%M" /usr/bin/python3 "$@"
"""


def server_rss(log):
    """{kind: peak kB} from the wrapper's log since it was last read; the log is emptied."""
    out = {}
    if log.exists():
        for line in log.read_text().splitlines():
            kind, _, kb = line.rpartition(" ")
            if kb.isdigit() and kind in ("agent", "rsync", "other", "local"):
                out[kind] = max(out.get(kind, 0), int(kb))
        log.write_text("")
    return out


class Cutover:
    def __init__(self, the_lab, log, json_path):
        self.lab, self.log, self.json = the_lab, log, json_path
        self.server = the_lab.servers[0]

    def _fab(self, *args):
        env = dict(os.environ, CUTOVER_HOSTS_FILE=str(self.lab.hosts_file), XDG_CACHE_HOME=str(self.lab.root / "cache"),
                   PATH=f"{self.log.parent / 'bin'}{os.pathsep}{os.environ['PATH']}")  # fmt: skip
        result = subprocess.run([sys.executable, "-c", RUN_FAB, *args, "--json", str(self.json)], cwd=PROJECT,
                                env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"fab {shlex.join(args)}: exit {result.returncode}\n{result.stdout}{result.stderr}")
        rss = int(result.stderr.rsplit("RSS ", 1)[1].split()[0])
        outcome = json.loads(self.json.read_text())
        return {"fab_kb": rss, "server": server_rss(self.log),
                "steps": outcome["hosts"][0].get("steps", {}), "last": result.stdout.strip().splitlines()[-1]}  # fmt: skip

    def deploy(self):
        return self._fab("deploy")

    def rollback(self):
        return self._fab("rollback")


class TimedFloor(Floor):
    def deploy(self):
        super().deploy()
        return {}

    def rollback(self):
        super().rollback()
        return {}


def timed(tool, action, load, wait):
    at = quiet(load, wait)
    os.sync()
    start = time.monotonic()
    figures = getattr(tool, action)()
    return {"seconds": time.monotonic() - start, "load": at, **figures}


def one_repeat(files, site, repeat, load, wait, under):
    """One fresh lab server; every step of both tools on it. Returns {tool: {step: figures}}."""
    the_lab, parent = start_lab(1, under=under)
    try:
        log = parent / "server-rss.log"
        wrapper = parent / "python-rss"
        wrapper.write_text(WRAPPER % {"log": shlex.quote(str(log))})
        wrapper.chmod(0o755)
        (parent / "bin").mkdir()
        local = parent / "bin" / "rsync"
        local.write_text(LOCAL_RSYNC % {"log": shlex.quote(str(log)), "rsync": shlex.quote(shutil.which("rsync"))})
        local.chmod(0o755)
        lab.write_hosts_file(the_lab, build=str(site), python=str(wrapper))
        tools = {"Cutover": Cutover(the_lab, log, parent / "outcome.json"), "rsync floor": TimedFloor(the_lab, site)}
        order = list(tools) if repeat % 2 == 0 else list(reversed(tools))
        rows = {name: {} for name in tools}
        target = site / CHANGED_FILE
        for name in order:
            rows[name]["first"] = timed(tools[name], "deploy", load, wait)
        for name in order:
            target.write_bytes(os.urandom(target.stat().st_size))
            rows[name]["one file"] = timed(tools[name], "deploy", load, wait)
        for name in order:
            rows[name]["no change"] = timed(tools[name], "deploy", load, wait)
        for name in order:
            rows[name]["rollback"] = timed(tools[name], "rollback", load, wait)
        for name in order:
            print(f"{files} files, repeat {repeat + 1}, {name}: "
                  + ", ".join(f"{s} {rows[name][s]['seconds']:.2f} s" for s in STEPS), flush=True)  # fmt: skip
        return rows
    finally:
        stop_lab(the_lab, parent)


def spread(values, fmt="{:.2f}"):
    """'median (min-max)'."""
    if not values:
        return "-"
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def mb(kb_values):
    return spread([v / 1024 for v in kb_values], "{:.0f}") + " MB" if kb_values else "-"


def peak(runs, key, sub=None):
    """Cutover's highest RSS of `key` (of server[sub]) over the four steps, per repeat."""
    values = []
    for run in runs:
        steps = run["Cutover"].values()
        values.append(max((s[key].get(sub, 0) if sub else s[key]) for s in steps))
    return mb([v for v in values if v])


def report(results, repeat, command):
    loads = [f["load"] for runs in results.values() for run in runs for tool in run.values() for f in tool.values()]
    lines = [
        f"Command: `{command}` (one fresh lab server per repeat; Cutover and the rsync floor (bench/peers.py's) "
        "each into a deploy_to of its own, alternating which goes first; generated sites of small files; wall "
        f"time of the whole command, start-up included; medians of {repeat} repeats with their range).",
        "",
        f"Load average (1 min) when each step started: median {median(loads):.2f}, max {max(loads):.2f} "
        "(each step waited, bounded, for it to fall below the gate).",
        "",
        "| site | tool | first deploy | one-file change | no-change deploy | rollback |",
        "|---|---|---|---|---|---|",
    ]
    for files, runs in results.items():
        for tool in ("Cutover", "rsync floor"):
            cells = [spread([run[tool][s]["seconds"] for run in runs]) + " s" for s in STEPS]
            lines.append(f"| {files:,} files, {SIZES[files] // 2**20} MB | {tool} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cutover's first deploy against the floor's, and peak memory (RSS, medians and range over the repeats, "
        "highest of the four steps): fab itself; the local rsync it runs; on the server the agent and rsync's "
        "server side (the receiver's processes, largest).",
        "",
        "| site | first deploy / floor | one-file change / floor | fab | local rsync | server: agent | server: rsync |",
        "|---|---|---|---|---|---|---|",
    ]
    for files, runs in results.items():
        first = median([run["Cutover"]["first"]["seconds"] for run in runs]) / median(
            [run["rsync floor"]["first"]["seconds"] for run in runs]
        )
        one = median([run["Cutover"]["one file"]["seconds"] for run in runs]) / median(
            [run["rsync floor"]["one file"]["seconds"] for run in runs]
        )

        cells = [peak(runs, "fab_kb"), peak(runs, "server", "local"), peak(runs, "server", "agent"),
                 peak(runs, "server", "rsync")]  # fmt: skip
        lines.append(f"| {files:,} | {first:.2f}x | {one:.2f}x | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cutover's first deploy by step (server side, seconds, medians; from `--json`):",
        "",
    ]
    names = []
    for runs in results.values():
        for run in runs:
            for name in run["Cutover"]["first"]["steps"]:
                if name not in names:
                    names.append(name)
    lines += ["| site | whole | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for files, runs in results.items():
        cells = [median([run["Cutover"]["first"]["steps"].get(n, 0) for run in runs]) for n in names]
        whole = median([run["Cutover"]["first"]["seconds"] for run in runs])
        lines.append(f"| {files:,} | {whole:.2f} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return lines


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    quiet_options(parser, wait=15)
    under_option(parser)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"--sizes: {unknown} not among {sorted(SIZES)}")
    results = {}
    work = Path(args.under, f"cutover-scale-{os.getpid()}")
    work.mkdir()
    try:
        for files in sizes:
            site = generate_site(work / f"site-{files}", files, SIZES[files])
            results[files] = [one_repeat(files, site, r, args.load, args.wait, args.under) for r in range(args.repeat)]
            subprocess.run(["rm", "-rf", str(site)], check=True)
            save_data("scale", {"results": {str(k): v for k, v in results.items()}})
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    command = (
        f"python3 bench/scale.py --sizes {args.sizes} --repeat {args.repeat} --load {args.load} --wait {args.wait:g}"
        + (f" --under {args.under}" if args.under != "/tmp" else "")
    )
    write_section("Scale", report(results, args.repeat, command))


if __name__ == "__main__":
    main()
