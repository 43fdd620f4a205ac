"""What the login shell costs a deploy: the lab's lean shell (sshd's `SetEnv SHLVL=1`, as a
server's shell without a heavy ~/.bashrc) against this machine's root ~/.bashrc, in one run.

    python3 bench/shell_bench.py [--files 10000] [--rounds 7]

Two lab servers, one of each, the same generated site; one-file changes deployed to each in
turn, and as many rollbacks (back, and forth again with --to). Writes the section "Login shell" of bench/RESULTS.md.
"""

import argparse
import shutil
from pathlib import Path

from common import fab, generate_site, history, lab, median, start_lab, stop_lab, write_section
from speed import SIZES, change_files

SHELLS = {"lean (SetEnv SHLVL=1)": True, "this machine's ~/.bashrc": False}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    labs = {name: start_lab(1, fresh_fs=True, lean_shell=lean) for name, lean in SHELLS.items()}
    site = generate_site(Path(next(iter(labs.values()))[1]) / "site", args.files, SIZES[args.files])
    assets = sorted(site.rglob("*.bin"))
    deploys = {name: [] for name in SHELLS}
    rollbacks = {name: [] for name in SHELLS}
    try:
        for the_lab, _ in labs.values():
            lab.write_hosts_file(the_lab, build=str(site))
            _, first = fab(the_lab.hosts_file, "deploy")
            assert first.returncode == 0, first.stderr
        for i in range(args.rounds):
            change_files([assets[(i * 7919) % len(assets)]])
            for name, (the_lab, _) in labs.items():
                seconds, result = fab(the_lab.hosts_file, "deploy")
                assert result.returncode == 0, result.stderr
                deploys[name].append((seconds, history(the_lab.servers[0])[-1]["steps"]))
        for i in range(args.rounds):
            for name, (the_lab, _) in labs.items():
                back = ["--to", history(the_lab.servers[0])[-1]["old"]] if i % 2 else []  # and forth again
                seconds, result = fab(the_lab.hosts_file, "rollback", *back)
                assert result.returncode == 0, result.stderr
                rollbacks[name].append(seconds)
    finally:
        for the_lab, parent in labs.values():
            stop_lab(the_lab, parent)
        shutil.rmtree(site, ignore_errors=True)
    steps = list(deploys[next(iter(SHELLS))][0][1])
    lines = [
        f"Command: `python3 bench/shell_bench.py --files {args.files} --rounds {args.rounds}` (two lab servers, one "
        f"per login shell, the same {args.files:,}-file site; one-file changes and rollbacks alternating between them; "
        "medians). The lab uses the lean shell since this bench was added (2026-11-25 23:07 UTC); sections "
        "measured before that ran with this machine's ~/.bashrc.",
        "",
        "| login shell | one-file change | rollback | " + " | ".join(steps) + " |",
        "|---|---|---|" + "---|" * len(steps),
    ]
    for name in SHELLS:
        runs = deploys[name]
        cells = [f"{median([r[1].get(s, 0) for r in runs]):.3f}" for s in steps]
        lines.append(
            f"| {name} | {median([r[0] for r in runs]):.2f} s | {median(rollbacks[name]):.2f} s | "
            + " | ".join(cells)
            + " |"
        )
    write_section("Login shell", lines)


if __name__ == "__main__":
    main()
