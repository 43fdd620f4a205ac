"""fab's fixed cost on the operator's machine, and Cutover's own part of it, at this tree and at an
older commit, alternating in one run.

    python3 bench/fixed_cost.py [--before REV] [--rounds 15] [--load 1.0]

Per round and tree: `python -m fabric --list`; a no-change `fab deploy` of the example site (each
tree to a lab server of its own, its own digest cache); and the baseline, a Python that imports
Fabric, Invoke, Paramiko and PyYAML, freezes them (gc.freeze, as fab does), and exits. Cutover's
own part is a run's figure less the baseline's: wall time, and CPU time of fab's own process (its
children, the local rsync, apart). `python -X importtime` gives the import time of what is loaded
from the first of Cutover's modules on (Cutover's modules and what they pull in beyond Fabric's).
Each round waits (bounded) for the load average to fall below --load. Writes the section "Fixed
cost" of bench/RESULTS.md and bench/data/fixed_cost.json.
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time

from common import PROJECT, before_tree, median, quiet, quiet_options, save_data, start_lab, stop_lab, write_section

import lab

# fab as `python -m fabric` runs it; at exit the CPU time of its children (the local rsync) so far
RUN_FAB = """
import atexit, resource, sys
import fabric.main
atexit.register(lambda: print("CHILDREN", sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]), file=sys.stderr))
fabric.main.program.run(["fab", *sys.argv[1:]])
"""
# what fab needs before Cutover's first line, frozen as fab freezes what it loaded (otherwise the
# baseline alone would pay the garbage collector's walk at exit: ~30 ms that fab does not)
BASELINE = "import gc, fabric.main, invoke, paramiko, yaml; gc.freeze()"


def measured(argv, cwd, env=None):
    """(wall s, CPU s of the process itself, stderr) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[:4]}: exit {result.returncode}\n{result.stdout}{result.stderr}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    children = [float(x.split()[1]) for x in result.stderr.splitlines() if x.startswith("CHILDREN ")]
    return wall, cpu - (children[-1] if children else 0), result.stderr


def import_ms(tree):
    """Import time (ms) under `python -X importtime -m fabric --list` of the modules loaded from
    the first of Cutover's on (Fabric loads fabfile.py itself, which importtime does not list)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "fabric", "--list"], cwd=tree,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    total, started = 0, False
    for line in result.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        started = started or parts[2] == "tasks" or parts[2].startswith("tasks.")
        total += int(parts[0]) if started else 0
    return total / 1000


def spread(values, scale=1000, fmt="{:.0f}"):
    return f"{fmt.format(median(values) * scale)} ({fmt.format(min(values) * scale)}-{fmt.format(max(values) * scale)})"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="5cf1623")
    parser.add_argument("--rounds", type=int, default=15)
    quiet_options(parser, wait=60)
    args = parser.parse_args()
    the_lab, parent = start_lab(2)
    site = parent / "site"
    shutil.copytree(PROJECT / "example" / "site", site)
    lab.write_hosts_file(the_lab, build=str(site))
    figures, loads = {}, []
    try:
        with before_tree(args.before, "cutover-fixed-") as (commit, _, tree):
            trees = {"this tree": (PROJECT, "lab1"), f"at {commit}": (tree, "lab2")}

            def env(server):
                return dict(os.environ, CUTOVER_HOSTS_FILE=str(the_lab.hosts_file),
                            XDG_CACHE_HOME=str(parent / f"cache-{server}"))  # fmt: skip

            for where, server in trees.values():  # the first deploy and one to warm the cache: not timed
                for _ in range(2):
                    measured([sys.executable, "-c", RUN_FAB, "-H", server, "deploy", "--split"], where, env(server))
            for r in range(args.rounds):
                loads.append(quiet(args.load, args.wait))
                runs = list(trees.items()) if r % 2 == 0 else list(reversed(trees.items()))
                for name, (where, server) in runs:
                    row = figures.setdefault(name, {"list": [], "deploy": [], "base": [], "import": []})
                    row["base"].append(measured([sys.executable, "-c", BASELINE], where)[:2])
                    row["list"].append(measured([sys.executable, "-c", RUN_FAB, "--list"], where)[:2])
                    cmd = [sys.executable, "-c", RUN_FAB, "-H", server, "deploy", "--split"]
                    row["deploy"].append(measured(cmd, where, env(server))[:2])
                    row["import"].append(import_ms(where))
    finally:
        stop_lab(the_lab, parent)
    save_data("fixed_cost", {"figures": figures, "loads": loads})
    lines = [
        f"Command: `python3 bench/fixed_cost.py --before {args.before} --rounds {args.rounds} --load {args.load} "
        f"--wait {args.wait:g}` "
        "(this tree and the older commit alternating in each round; medians of the rounds with their range, "
        "milliseconds; wall time of the whole process, start-up and exit included; CPU of fab's own process, "
        "its local rsync apart; the no-change deploy of the example site to a lab server of each tree's own; "
        "Cutover's own part is the figure less the baseline's, a Python that imports Fabric, Invoke, Paramiko "
        "and PyYAML, freezes them for the garbage collector as fab does, and exits).",
        "",
        f"Load average (1 min) at each round's start: median {median(loads):.2f}, max {max(loads):.2f}.",
        "",
        "| tree | baseline wall / CPU | `fab --list` wall / CPU | Cutover's part of `fab --list` wall / CPU "
        "| Cutover's imports (-X importtime) | no-change deploy wall / CPU | Cutover's part of its CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in figures.items():
        base_w, base_c = [b[0] for b in row["base"]], [b[1] for b in row["base"]]
        list_w, list_c = [x[0] for x in row["list"]], [x[1] for x in row["list"]]
        dep_w, dep_c = [x[0] for x in row["deploy"]], [x[1] for x in row["deploy"]]
        own_w = [a - b for a, b in zip(list_w, base_w)]
        own_c = [a - b for a, b in zip(list_c, base_c)]
        own_d = [a - b for a, b in zip(dep_c, base_c)]
        lines.append(
            f"| {name} | {spread(base_w)} / {spread(base_c)} | {spread(list_w)} / {spread(list_c)} | "
            f"{spread(own_w)} / {spread(own_c)} | {spread(row['import'], 1)} | {spread(dep_w)} / {spread(dep_c)} | "
            f"{spread(own_d)} |"
        )
    write_section("Fixed cost", lines)


if __name__ == "__main__":
    main()
