"""Rollback figures: wall time of `fab rollback` over repeated runs, under wrk load.

    python3 bench/rollback_bench.py [--runs 20]

Writes the section "Rollback" of bench/RESULTS.md.
"""

import argparse

from common import Wrk, example_lab, fab, history, median, percentile, redeploy, write_section


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with example_lab() as (the_lab, server, site):
        for i in range(2):
            redeploy(the_lab, site, i)
        walls, inner, pauses = [], [], []
        wrk = Wrk(server.url, seconds=max(20, args.runs * 2), threads=2, connections=8)
        for i in range(args.runs):
            # alternate: back to the previous release, then forward again with --to
            target = [] if i % 2 == 0 else ["--to", history(server)[-1]["old"]]
            seconds, result = fab(the_lab.hosts_file, "rollback", *target)
            assert result.returncode == 0, result.stderr
            walls.append(seconds)
            inner.append(history(server)[-1]["duration_s"])
            pauses.append(history(server)[-1]["pause_ms"])
        load = wrk.result()
    write_section(
        "Rollback",
        [
            "Command: `python3 bench/rollback_bench.py` (one lab server, wrk load on it throughout).",
            "",
            "| figure | value |",
            "|---|---|",
            f"| `fab rollback` wall time, median of {len(walls)} (min / max) | {median(walls):.2f} s ({min(walls):.2f} / {max(walls):.2f}) |",
            f"| of which lock to unlock on the server side (median) | {median(inner):.2f} s |",
            f"| pause_ms p50 / p99 / max | {median(pauses):.3f} / {percentile(pauses, 99):.3f} / {max(pauses):.3f} |",
            f"| failed requests during the runs | {load['errors']} of {load['requests']} |",
        ],
    )


if __name__ == "__main__":
    main()
