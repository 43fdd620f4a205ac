"""Soak: deploy and rollback cycles in a row under continuous load, every response checked.

    python3 bench/soak.py [--cycles 100]

Each cycle deploys a new build (its own label in page and stylesheet), then rolls back.
Writes the section "Soak" of bench/RESULTS.md.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from common import PROJECT, fab, history, lab, median, percentile, start_lab, stop_lab, write_section

sys.path.insert(0, str(PROJECT))
from lab.loadgen import LoadGen  # noqa: E402
from tests.conftest import known_bodies, make_build  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=100)
    args = parser.parse_args()
    the_lab, parent = start_lab(1)
    server = the_lab.servers[0]
    work = Path(tempfile.mkdtemp(prefix="cutover-soak-"))
    failed_runs = 0
    try:
        builds = [make_build(work, f"c{i}") for i in range(args.cycles + 1)]
        known = known_bodies(*builds)
        lab.write_hosts_file(the_lab, build=str(builds[0]))
        assert fab(the_lab.hosts_file, "deploy")[1].returncode == 0
        with LoadGen(server.url, paths=("/", "/assets/style.css"), threads=3, max_seconds=3600) as load:
            for i in range(1, args.cycles + 1):
                lab.write_hosts_file(the_lab, build=str(builds[i]))
                failed_runs += fab(the_lab.hosts_file, "deploy")[1].returncode != 0
                failed_runs += fab(the_lab.hosts_file, "rollback")[1].returncode != 0
                if i % 10 == 0:
                    print(
                        f"cycle {i}/{args.cycles}: {len(load.samples)} requests, {len(load.failures())} failed",
                        flush=True,
                    )
        entries = [e for e in history(server)[1:] if e.get("pause_ms") is not None]
        pauses = [e["pause_ms"] for e in entries]
        failures, mixed = load.failures(), load.unknown(known)
        worst = load.worst_latency()
        requests = len(load.samples)
    finally:
        stop_lab(the_lab, parent)
        shutil.rmtree(work, ignore_errors=True)
    write_section(
        "Soak",
        [
            f"Command: `python3 bench/soak.py --cycles {args.cycles}` (one lab server; 3 load threads "
            "fetching the page and its stylesheet; each response compared byte for byte with every release).",
            "",
            "| figure | value |",
            "|---|---|",
            f"| cycles (deploy + rollback) / failed runs | {args.cycles} / {failed_runs} |",
            f"| requests / failed / not exactly one release | {requests} / {len(failures)} / {len(mixed)} |",
            f"| pause_ms over {len(pauses)} switches: p50 / p99 / max | {median(pauses):.3f} / {percentile(pauses, 99):.3f} / {max(pauses):.3f} |",
            f"| worst request latency | {worst * 1000:.1f} ms |",
        ],
    )


if __name__ == "__main__":
    main()
