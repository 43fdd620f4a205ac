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

sys.path.insert(0, str(PROJECT))
from tests import test_murphy  # noqa: E402


def asserted(case_name):
    """What a case asserts: the first paragraph of its test's docstring (tests/test_murphy.py)."""
    function = getattr(test_murphy, case_name.split("[")[0])
    return " ".join((function.__doc__ or "").split("\n\n")[0].split())


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
            states[key] = asserted(case.get("name"))
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
