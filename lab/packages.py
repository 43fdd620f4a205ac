"""What the lab and the tests run, and the Debian package that brings each (lab/packages.txt): read
by the test run's first check, so that a missing program is named with its package at once,
not met as an error deep inside a fixture."""

import glob
import os
import shutil
from pathlib import Path

LIST = Path(__file__).resolve().parent / "packages.txt"


def needed(path=LIST):
    """[(package, program)] of the list, in its order."""
    out = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if len(words) == 1:
            raise ValueError(f"{path}:{number}: package {words[0]} names no program it brings")
        out += [(words[0], program) for program in words[1:]]
    return out


def found(program):
    """Whether program is here: an absolute path or glob that matches a file, or a name on PATH."""
    if program.startswith("/"):
        return any(os.path.isfile(p) for p in glob.glob(program))
    return shutil.which(program) is not None


def missing(path=LIST):
    """{package: [its missing programs]}, empty when everything is here."""
    out = {}
    for package, program in needed(path):
        if not found(program):
            out.setdefault(package, []).append(program)
    return out


def problem(path=LIST):
    """None, or the message that names every missing program and the package that brings it."""
    gone = missing(path)
    if not gone:
        return None
    lines = [f"  {', '.join(programs)}: from the Debian package {package}" for package, programs in gone.items()]
    return (
        "the lab and the tests run programs this machine does not have:\n" + "\n".join(lines)
        + f"\ninstall them: `make install`, or apt-get install {' '.join(gone)} (the list: {path})"
    )  # fmt: skip
