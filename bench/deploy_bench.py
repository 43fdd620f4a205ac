"""Deploy figures: wall time of the example site, the pause under load, bytes of a one-file change.

    python3 bench/deploy_bench.py [--deploys 20]

Writes the section "Deploy" of bench/RESULTS.md.
"""

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from common import (
    PROJECT,
    Wrk,
    fab,
    generate_site,
    history,
    lab,
    median,
    percentile,
    start_lab,
    stop_lab,
    write_section,
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--deploys", type=int, default=20)
    args = parser.parse_args()
    the_lab, parent = start_lab(1)
    server = the_lab.servers[0]
    work = Path(tempfile.mkdtemp(prefix="cutover-bench-builds-"))
    try:
        # 1. Wall time of the example site, one changed file per deploy.
        example = work / "example"
        shutil.copytree(PROJECT / "example" / "site", example)
        lab.write_hosts_file(the_lab, build=str(example))
        walls = []
        for i in range(5):
            (example / "index.html").write_text((example / "index.html").read_text() + f"<!-- {i} -->\n")
            seconds, result = fab(the_lab.hosts_file, "deploy")
            assert result.returncode == 0, result.stderr
            walls.append(seconds)
        steps = history(server)[-1]["steps"]

        # 2. pause_ms over N deploys under continuous wrk load.
        wrk = Wrk(server.url, seconds=max(30, args.deploys * 3), threads=2, connections=8)
        pauses, failures = [], 0
        for i in range(args.deploys):
            (example / "index.html").write_text((example / "index.html").read_text() + f"<!-- load {i} -->\n")
            _, result = fab(the_lab.hosts_file, "deploy")
            failures += result.returncode != 0
            pauses.append(history(server)[-1]["pause_ms"])
        load = wrk.result()

        # 3. Bytes sent for a one-file change to a 1,000-file site.
        site = generate_site(work / "site1000", 1000, 50 * 2**20)
        lab.write_hosts_file(the_lab, build=str(site))
        _, full = fab(the_lab.hosts_file, "deploy")
        assert full.returncode == 0, full.stderr
        full_bytes = history(server)[-1]["bytes_sent"]
        changed = site / "assets" / "d07" / "f00007.bin"
        changed.write_bytes(os.urandom(changed.stat().st_size))
        one_seconds, one = fab(the_lab.hosts_file, "deploy")
        assert one.returncode == 0, one.stderr
        one_bytes = history(server)[-1]["bytes_sent"]
        size = changed.stat().st_size
    finally:
        stop_lab(the_lab, parent)
        shutil.rmtree(work, ignore_errors=True)

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
            f"| failed deploys / failed requests during them | {failures} / {load['errors']} of {load['requests']} |",
            f"| worst request latency seen by wrk | {load['max_latency_ms']:.1f} ms |",
            f"| 1,000-file 50 MB site: first deploy bytes sent | {full_bytes:,} |",
            f"| one file ({size:,} bytes) changed: bytes sent, wall time | {one_bytes:,} ({one_bytes / size:.2f}x the file), {one_seconds:.2f} s |",
        ],
    )


if __name__ == "__main__":
    main()
