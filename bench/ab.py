"""Before / after in one run: the same deploys with an older commit of Cutover and with this one.

    python3 bench/ab.py --before COMMIT [--files 10000] [--rounds 5] [--firsts 3]

Checks COMMIT out into a temporary git worktree, starts one lab server for each version, and
deploys the same generated site to both, alternating between them so that both see the same
machine noise: `--firsts` first deploys (full uploads, fresh servers each), `--rounds` one-file changes, and `--rounds`
rebuilds that rewrite every file with the same bytes (new mtimes). Reports medians of wall
time, bytes sent and extra disk, and the one-file step timings. Writes the section "Before /
after" of bench/RESULTS.md.
"""

import argparse
import os
import subprocess
import sys
import time

from common import PROJECT, before_tree, generate_site, history, lab, median, start_lab, stop_lab, write_section
from speed import SIZES, change_files, extra_disk, rewrite_all


def fab(project, the_lab):
    t = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "fabric", "deploy"],
        cwd=project,
        env=dict(os.environ, CUTOVER_HOSTS_FILE=str(the_lab.hosts_file)),
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - t
    assert result.returncode == 0, f"{project}: {result.stderr}"
    return seconds, history(the_lab.servers[0])[-1]


def compare(args, work, old_tree):
    """The deploys of both versions, alternating; {version: {kind: [(seconds, bytes, disk)], "steps": ...}}."""
    versions = {"before": old_tree, "after": PROJECT}
    labs = {}
    try:
        site = generate_site(work / "site", args.files, SIZES[args.files])
        assets = sorted((site / "assets").rglob("*.bin"))
        rows = {name: {"first": [], "one file": [], "rebuild": [], "steps": None} for name in versions}

        def fresh_labs():
            for the_lab, parent in labs.values():
                stop_lab(the_lab, parent)
            for name in versions:
                labs[name] = start_lab(1, fresh_fs=True)
                lab.write_hosts_file(labs[name][0], build=str(site))

        calls = [0]

        def both(kind):
            calls[0] += 1
            order = list(versions.items())
            for name, project in order if calls[0] % 2 else order[::-1]:  # who goes first alternates
                os.sync()
                the_lab = labs[name][0]
                seconds, entry = fab(project, the_lab)
                disk = extra_disk(the_lab.servers[0], entry["release"], entry["old"]) if entry.get("old") else 0
                rows[name][kind].append((seconds, entry["bytes_sent"], disk))
                if kind == "one file":
                    rows[name]["steps"] = entry["steps"]

        for _ in range(args.firsts):  # a full upload: fresh servers each time
            fresh_labs()
            both("first")
        for i in range(args.rounds):
            change_files([assets[(i * 7919) % len(assets)]])
            both("one file")
        for _ in range(args.rounds):
            rewrite_all(site)
            both("rebuild")
    finally:
        for the_lab, parent in labs.values():
            stop_lab(the_lab, parent)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="the older commit to compare with")
    parser.add_argument("--files", type=int, default=10000, choices=sorted(SIZES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--firsts", type=int, default=3, help="full uploads per version, each on fresh servers")
    args = parser.parse_args()
    with before_tree(args.before, "cutover-ab-") as (commit, work, old_tree):
        rows = compare(args, work, old_tree)

    def med(name, kind, k):
        return median([r[k] for r in rows[name][kind]])

    label = f"{args.files:,}-file {SIZES[args.files] // 2**20} MB site"
    lines = [
        f"Command: `python3 bench/ab.py --before {commit} --files {args.files} --rounds {args.rounds} --firsts {args.firsts}` "
        "(two lab servers, deploy_to on a new ext4 each, "
        f"one per version, the same generated {label}; deploys alternate between the versions; medians; wall time "
        "is the whole `fab deploy`).",
        "",
        f"| figure | before ({commit}) | after |",
        "|---|---|---|",
        f"| first deploy (full upload), wall time | {med('before', 'first', 0):.2f} s | {med('after', 'first', 0):.2f} s |",
        f"| one-file change, wall time | {med('before', 'one file', 0):.2f} s | {med('after', 'one file', 0):.2f} s |",
        "| full upload / one-file change | "
        + " | ".join(f"{med(n, 'first', 0) / med(n, 'one file', 0):.1f}x" for n in ("before", "after"))
        + " |",
        f"| one-file change, bytes sent | {med('before', 'one file', 1):,.0f} | {med('after', 'one file', 1):,.0f} |",
        f"| rebuild, every file rewritten with the same bytes: wall time | {med('before', 'rebuild', 0):.2f} s | "
        f"{med('after', 'rebuild', 0):.2f} s |",
        f"| rebuild: extra disk of the new release | {med('before', 'rebuild', 2) / 2**20:,.1f} MB | "
        f"{med('after', 'rebuild', 2) / 2**20:,.1f} MB |",
        "",
        "Steps of the last one-file change (seconds):",
        "",
        "| version | " + " | ".join(sorted(rows["after"]["steps"])) + " |",
        "|---|" + "---|" * len(rows["after"]["steps"]),
    ]
    for name in ("before", "after"):
        steps = rows[name]["steps"]
        lines.append(
            f"| {name} | " + " | ".join(f"{steps.get(k, 0):.3f}" for k in sorted(rows["after"]["steps"])) + " |"
        )
    write_section("Before / after", lines)


if __name__ == "__main__":
    main()
