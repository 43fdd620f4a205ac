"""Deploy figures: wall time of the example site, the pause under load, bytes of a one-file change.

    python3 bench/deploy_bench.py [--deploys 20]

Writes the section "Deploy" of bench/RESULTS.md.
"""

import argparse
import os

from common import (
    deploy,
    example_lab,
    generate_site,
    lab,
    median,
    pauses_under_load,
    percentile,
    redeploy,
    write_section,
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--deploys", type=int, default=20)
    args = parser.parse_args()
    with example_lab() as (the_lab, _server, example):
        # 1. Wall time of the example site, one changed line per deploy.
        runs = [redeploy(the_lab, example, i) for i in range(5)]
        walls, steps = [seconds for seconds, _ in runs], runs[-1][1]["steps"]

        # 2. pause_ms over N deploys under continuous wrk load (every deploy must succeed).
        pauses, load = pauses_under_load(the_lab, example, args.deploys)

        # 3. Bytes sent for a one-file change to a 1,000-file site.
        site = generate_site(example.parent / "site1000", 1000, 50 * 2**20)
        lab.write_hosts_file(the_lab, build=str(site))
        full_bytes = deploy(the_lab)[1]["bytes_sent"]
        changed = site / "assets" / "d07" / "f00007.bin"
        changed.write_bytes(os.urandom(changed.stat().st_size))
        one_seconds, one = deploy(the_lab)
        one_bytes, size = one["bytes_sent"], changed.stat().st_size

    write_section(
        "Deploy",
        [
            "Command: `python3 bench/deploy_bench.py` (one lab server: real sshd and Apache event MPM on 127.0.0.1).",
            "",
            "| figure | value |",
            "|---|---|",
            f"| example site deploy, wall time of `fab deploy` (median of {len(walls)}) | {median(walls):.2f} s |",
            f"| its steps, last run (s) | {', '.join(f'{k} {v:.3f}' for k, v in steps.items())} |",
            f"| pause_ms over {len(pauses)} deploys under wrk load (2 threads, 8 connections): p50 / p99 / max "
            f"| {median(pauses):.3f} / {percentile(pauses, 99):.3f} / {max(pauses):.3f} ms |",
            f"| failed requests during them (every deploy succeeded) | {load['errors']} of {load['requests']} |",
            f"| worst request latency seen by wrk | {load['max_latency_ms']:.1f} ms |",
            f"| 1,000-file 50 MB site: first deploy bytes sent | {full_bytes:,} |",
            f"| one file ({size:,} bytes) changed: bytes sent, wall time | {one_bytes:,} ({one_bytes / size:.2f}x the file), {one_seconds:.2f} s |",
        ],
    )


if __name__ == "__main__":
    main()
