"""Torn responses: how often a switch makes Apache answer with one release's length and the
other's bytes, with and without Cutover's release pinning (templates/apache.conf, section 2).

    python3 bench/torn.py [--swaps 1000]

Writes the section "Torn responses" of bench/RESULTS.md.
"""

import argparse
import re
import sys
from pathlib import Path

from common import PROJECT, lab, start_lab, stop_lab, write_section

sys.path.insert(0, str(PROJECT))
from tests.conftest import LabHandle  # noqa: E402
from tests.test_murphy import swap_many  # noqa: E402


def run(swaps, pinned):
    the_lab, parent = start_lab(1)
    try:
        server = the_lab.servers[0]
        if not pinned:
            conf = Path(server.deploy_to, ".cutover", "apache.conf")
            conf.write_text(re.sub(r"(?ms)^# 4\. Pin.*", "", conf.read_text()))
            lab.graceful_restart(server)  # the parent keeps its PID
        load, bodies = swap_many(LabHandle(the_lab), swaps)
        torn = [s for s in load.samples if s.status != 200 or s.body not in bodies.values()]
        return len(load.samples), len(torn)
    finally:
        stop_lab(the_lab, parent)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--swaps", type=int, default=1000)
    args = parser.parse_args()
    without = run(args.swaps, pinned=False)
    with_pin = run(args.swaps, pinned=True)
    write_section(
        "Torn responses",
        [
            f"Command: `python3 bench/torn.py --swaps {args.swaps}` (one lab server; two releases whose index.html "
            "are 500 and 3,000 bytes; 4 threads fetch it while the swap switches back and forth).",
            "",
            "| Apache rules | swaps | requests | torn (length of one release, bytes of the other) |",
            "|---|---|---|---|",
            f"| DocumentRoot through `current` only | {args.swaps} | {without[0]:,} | {without[1]} |",
            f"| Cutover's rules: release pinning (RewriteMap release.map) behind the access check (-U) and the mapped file name (LA-U) | {args.swaps} | {with_pin[0]:,} | {with_pin[1]} |",
        ],
    )


if __name__ == "__main__":
    main()
