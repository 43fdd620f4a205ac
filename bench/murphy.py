"""Run the Murphy's-law fault suite several times and tabulate the outcome.

    python3 bench/murphy.py [--rounds 3]

Every case asserts afterwards: the site answers 200 with one complete release, no httpd process
is stopped, shared/ is unchanged, the lock is free or its owner dead, and the next deploy
succeeds. Writes the section "Murphy's law" of bench/RESULTS.md.
"""

import argparse
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

from common import PROJECT, write_section

STATE = "200, one whole release, no httpd stopped, shared/ unchanged, lock free or dead owner, next deploy ok"
STATES = {
    "hosts_file_values": "each value refused with file:line, or accepted only when free of shell metacharacters and ..",
    "every_remote_word": "each value arrives on the server byte for byte (printf round trip)",
    "command_line_values": "refused or harmless; no canary file anywhere; no traceback",
    "soak": "0 failed requests, every response one whole release, no httpd stopped",
    "rollback_never_picks": "rollback lands on the release live before, not the never-live one",
    "very_long": "refused (exit 1 or 2), no traceback, the value not echoed whole",
    "torn": "0 responses with one release's length and another's bytes over 200 switches under load",
}


def name(testcase):
    text = testcase.get("name").removeprefix("test_")
    return re.sub(r"\[(.*)\]", r" (\1)", text).replace("_", " ")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs, failures = defaultdict(int), defaultdict(int)
    states = {}
    for i in range(args.rounds):
        xml = Path(tempfile.mkdtemp()) / "murphy.xml"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={xml}",
                "tests/test_murphy.py",
            ],
            cwd=PROJECT,
        )
        for case in ET.parse(xml).getroot().iter("testcase"):
            key = name(case)
            runs[key] += 1
            failures[key] += any(child.tag in ("failure", "error") for child in case)
            states[key] = next((v for k, v in STATES.items() if k in case.get("name")), STATE)
        print(f"round {i + 1}/{args.rounds}: {sum(failures.values())} failures so far", flush=True)
    rows = [f"| {k} | {runs[k]} | {failures[k]} | {states[k]} |" for k in runs]
    write_section(
        "Murphy's law",
        [
            f"Command: `python3 bench/murphy.py --rounds {args.rounds}` (runs tests/test_murphy.py against lab "
            "servers; hypothesis cases count once per round, each with its many generated examples).",
            "",
            "| case | runs | failures seen | state afterwards (asserted) |",
            "|---|---|---|---|",
            *rows,
        ],
    )


if __name__ == "__main__":
    main()
