"""A first deploy of a site of many small files: the one a new user tries first.

    python3 bench/big_first.py [--files 20000] [--mb 82] [--before REV]

Deploys a generated site (--files files adding up to about --mb MB) to a fresh lab server, then a
one-line change; with --before REV also the first deploy of Cutover at REV on a second server,
bounded at 120 s (before the upload bridge waited for a slow rsync to read, such a deploy hung).
Writes the section "A first deploy of many files" of bench/RESULTS.md.
"""

import argparse
import os
import subprocess
import sys
import time

from common import PROJECT, before_tree, fab, generate_site, start_lab, stop_lab, write_section

import lab

LIMIT_S = 120


def first_deploy(tree, hosts_file, server):
    """(seconds or None when it did not end within LIMIT_S, its last output line) of a first deploy by `tree`."""
    env = dict(
        os.environ, CUTOVER_HOSTS_FILE=str(hosts_file), XDG_CACHE_HOME=str(hosts_file.parent / f"cache-{server}")
    )
    t = time.monotonic()
    try:
        result = subprocess.run([sys.executable, "-m", "fabric", "-H", server, "deploy", "--split"], cwd=tree,
                                env=env, capture_output=True, text=True, timeout=LIMIT_S)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        last = (exc.stdout or b"").decode("utf-8", "replace").strip().splitlines()[-1:]
        return None, last[0] if last else ""
    assert result.returncode == 0, result.stderr
    return time.monotonic() - t, result.stdout.strip().splitlines()[-1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--mb", type=int, default=82)
    parser.add_argument("--before")
    args = parser.parse_args()
    the_lab, parent = start_lab(2 if args.before else 1)
    rows = []
    try:
        site = generate_site(parent / "site", args.files, args.mb * 2**20)
        lab.write_hosts_file(the_lab, build=str(site))
        seconds, last = first_deploy(PROJECT, the_lab.hosts_file, "lab1")
        rows.append(f"| Cutover (this tree) | {seconds:.2f} s | {last} |")
        (site / "index.html").write_text('<!doctype html><meta name="release" content="b2"><p>changed</p>\n')
        seconds, result = fab(the_lab.hosts_file, "-H", "lab1", "deploy", "--split")
        assert result.returncode == 0, result.stderr
        rows.append(
            f"| Cutover (this tree), then a one-line change | {seconds:.2f} s | {result.stdout.strip().splitlines()[-1]} |"
        )
        if args.before:
            with before_tree(args.before, "cutover-big-") as (commit, _, tree):
                seconds, last = first_deploy(tree, the_lab.hosts_file, "lab2")
                shown = f"{seconds:.2f} s" if seconds is not None else f"did not end within {LIMIT_S} s"
                rows.append(f"| Cutover at {commit} | {shown} | {last} |")
    finally:
        stop_lab(the_lab, parent)
    write_section(
        "A first deploy of many files",
        [
            f"Command: `python3 bench/big_first.py --files {args.files} --mb {args.mb}"
            + (f" --before {args.before}`" if args.before else "`")
            + f" (a generated site of {args.files:,} files, about {args.mb} MB, to a fresh lab server).",
            "",
            "| run | time | its last line |",
            "|---|---|---|",
            *rows,
        ],
    )


if __name__ == "__main__":
    main()
