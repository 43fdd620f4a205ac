"""Asset continuity: asset 404s of page views in flight across switches, with and without the
fallback to the release live before (assets.fallback), and httpd's pause meanwhile.

    python3 bench/assets_bench.py [--switches 20] [--browsers 6]

One lab server; the example site, whose theme and script are fingerprinted and change with every
release; `--browsers` threads load the page, wait 50 ms as a browser parsing it would, and load
the assets it names. Writes the section "Asset continuity" of bench/RESULTS.md.
"""

import argparse
import sys
import tempfile
from pathlib import Path

from common import PROJECT, fab, history, percentile, start_lab, stop_lab, write_section

sys.path.insert(0, str(PROJECT))
from tests.conftest import (
    LabHandle,  # noqa: E402
    configure,  # noqa: E402
)
from tests.test_assets import Browsers, fingerprinted_build  # noqa: E402


def run(switches, browsers, fallback):
    the_lab, parent = start_lab(1)
    handle = LabHandle(the_lab)
    work = Path(tempfile.mkdtemp(prefix="cutover-assets-"))
    settings = {} if fallback else {"assets": {"fallback": []}}
    try:
        configure(handle, fingerprinted_build(work, 0), **settings)
        assert fab(the_lab.hosts_file, "deploy")[1].returncode == 0
        with Browsers(the_lab.servers[0], threads=browsers) as seen:
            for i in range(1, switches + 1):
                configure(handle, fingerprinted_build(work, i), **settings)
                _, result = fab(the_lab.hosts_file, "deploy")
                assert result.returncode == 0, result.stderr
        pauses = [e["pause_ms"] for e in history(the_lab.servers[0])[-switches:]]
        return seen.assets, pauses
    finally:
        stop_lab(the_lab, parent)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--browsers", type=int, default=6)
    args = parser.parse_args()
    rows = []
    for fallback in (False, True):
        assets, pauses = run(args.switches, args.browsers, fallback)
        missing = sum(1 for _, status, _ in assets if status == 404)
        previous = sum(1 for _, _, served in assets if served)
        rows.append(
            f"| {'on' if fallback else 'off'} | {args.switches} | {len(assets):,} | {missing} | {previous} | "
            f"{percentile(pauses, 50):.3f} / {percentile(pauses, 99):.3f} |"
        )
    write_section(
        "Asset continuity",
        [
            f"Command: `python3 bench/assets_bench.py --switches {args.switches} --browsers {args.browsers}` (one lab "
            "server, the example site with a fingerprinted theme and script that change with every release; each "
            "browser thread loads the page, waits 50 ms, loads the assets the page names).",
            "",
            "| fallback | switches | asset requests | 404 | served from the release before | pause p50 / p99 (ms) |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "The map of the live release names the one before it (`previous`), so the fallback adds no rename "
            "to the pause: release.map and current are still the two symlinks renamed.",
        ],
    )


if __name__ == "__main__":
    main()
