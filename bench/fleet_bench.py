"""Fleets on this machine: a one-file change deployed to 1, 4, 16 and 32 lab servers (each its own
sshd and Apache, the example site), wall time and the switch spread, in one run.

    python3 bench/fleet_bench.py [--sizes 1,4,16,32] [--rounds 5] [--fab-core N]

Every lab server runs on this one machine, so a larger fleet also means more sshd, Apache and
rsync processes sharing its cores: the figures are an upper bound of what the fleet costs the
machine that runs fab, not of a real fleet's network. Writes the section "Fleets" of
bench/RESULTS.md. --fab-core N: fab runs on core N alone (taskset) and the lab servers (sshd,
Apache, the agents and their real-time swap processes) on the other cores, so that the swap
processes of the first hosts to switch cannot preempt fab while it sends the last go's; the
section is then "Fleets, fab on a core of its own".
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

from common import PROJECT, history, lab, median, save_data, start_lab, stop_lab, write_section
from common import fab as fab_anywhere

FAB_CORE = None  # --fab-core


def fab(hosts_file, *args):
    """fab as common.fab runs it; on core FAB_CORE alone when set."""
    if FAB_CORE is None:
        return fab_anywhere(hosts_file, *args)
    env = dict(os.environ, CUTOVER_HOSTS_FILE=str(hosts_file), XDG_CACHE_HOME=str(hosts_file.parent / "cache"))
    t = time.monotonic()
    result = subprocess.run(["taskset", "-c", str(FAB_CORE), sys.executable, "-m", "fabric", *args], cwd=PROJECT,
                            env=env, capture_output=True, text=True)  # fmt: skip
    return time.monotonic() - t, result


def measure(size, rounds, parent_site):
    the_lab, parent = start_lab(size)
    site = parent / "site"
    shutil.copytree(parent_site, site)
    try:
        lab.write_hosts_file(the_lab, build=str(site))
        _, first = fab(the_lab.hosts_file, "deploy")
        assert first.returncode == 0, first.stderr
        walls, spreads, pauses, sent = [], [], [], []
        for i in range(rounds):
            page = site / "index.html"
            page.write_text(page.read_text() + f"<!-- {i} -->\n")
            seconds, result = fab(the_lab.hosts_file, "deploy")
            assert result.returncode == 0, result.stderr
            entries = [history(s)[-1] for s in the_lab.servers]
            assert len({e["release"] for e in entries}) == 1
            walls.append(seconds)
            spreads.append(entries[0].get("switch_spread_ms") or 0.0)  # none recorded for one server
            sent.append(entries[0].get("go_sent_ms") or 0.0)
            pauses += [e["pause_ms"] for e in entries]
        return walls, spreads, pauses, sent
    finally:
        stop_lab(the_lab, parent)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,4,16,32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fab-core", type=int, help="run fab on this core alone, the lab servers on the others")
    args = parser.parse_args()
    global FAB_CORE
    if args.fab_core is not None:
        others = os.sched_getaffinity(0) - {args.fab_core}
        if args.fab_core not in os.sched_getaffinity(0) or not others:
            parser.error(f"--fab-core {args.fab_core}: not one of this process's cores {sorted(os.sched_getaffinity(0))}, "
                         "or no other core left for the lab servers")  # fmt: skip
        os.sched_setaffinity(0, others)  # the lab servers started from here inherit it
        FAB_CORE = args.fab_core
    sizes = [int(n) for n in args.sizes.split(",")]
    figures = {n: measure(n, args.rounds, PROJECT / "example" / "site") for n in sizes}
    one = median(figures[sizes[0]][0])
    rows = []
    for n, (walls, spreads, pauses, sent) in figures.items():
        rows.append(
            f"| {n} | {median(walls):.2f} s | {median(walls) / one:.1f}x | {median(spreads):.1f} / {max(spreads):.1f} ms "
            f"| {median(sent):.1f} ms | {median(pauses):.3f} ms |"
        )
        print(rows[-1], flush=True)
    pinned = args.fab_core is not None
    save_data(
        "fleet_fab_core" if pinned else "fleet",
        {str(n): {"wall_s": w, "spread_ms": s, "pause_ms": p, "go_sent_ms": g} for n, (w, s, p, g) in figures.items()},
    )
    write_section(
        "Fleets, fab on a core of its own" if pinned else "Fleets",
        [
            f"Command: `python3 bench/fleet_bench.py --sizes {args.sizes} --rounds {args.rounds}"
            + (f" --fab-core {args.fab_core}" if args.fab_core is not None else "")
            + "` (lab servers on this "
            "one machine, each its own sshd and Apache (event MPM), the example site; a one-line change per deploy; "
            "medians over the rounds). The switch spread is from the first host's rename to the last's, the swap "
            "armed on every host first; go sent is fab's part of it, from the first host's go to the last's, sent "
            "from one thread; the rest is each server waking its agent and swap process.",
            "",
            f"| servers | one-file deploy | against {sizes[0]} | switch spread, median / max | go sent, median "
            "| pause, median |",
            "|---|---|---|---|---|---|",
            *rows,
        ],
    )


if __name__ == "__main__":
    main()
