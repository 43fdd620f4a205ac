"""Cutover as an installed command: `cutover -H prod deploy` runs the tasks of fabfile.py.

Standard library only: setup.py reads this file too, to record the build's commit.

Cutover's own modules import `tasks` and `lab` as top-level packages, as in a checkout (fabfile.py,
tasks/, lab/, templates/ side by side). Installed, those directories live inside this package
(site-packages/cutover/tasks ...), so that no top-level package named `tasks` or `lab` lands in
site-packages beside other projects' modules; the `cutover` command puts this directory first on
its own sys.path before importing them (cutover/__main__.py).
"""

import subprocess
from pathlib import Path

__version__ = "0.1.0"

HERE = Path(__file__).resolve().parent
COMMIT_FILE = "commit.txt"  # written into the package when it is built (setup.py)
GIT_TIMEOUT = 10  # seconds for git


def home():
    """The directory holding fabfile.py, tasks/, lab/ and templates/: this package's own when
    installed, the checkout (the parent of cutover/) when run from one."""
    return HERE if (HERE / "fabfile.py").is_file() else HERE.parent


def git_commit(root):
    """The commit of the git work tree at root, 12 hex digits, '-dirty' with uncommitted changes;
    None where root is in no git work tree or git is missing."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=GIT_TIMEOUT,
        )  # fmt: skip
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=GIT_TIMEOUT,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    dirty = "-dirty" if status.returncode == 0 and status.stdout.strip() else ""
    return head.stdout.strip() + dirty


def commit():
    """The commit this Cutover was built from (recorded at build time), else the checkout's own."""
    recorded = HERE / COMMIT_FILE
    if recorded.is_file():
        return recorded.read_text().strip() or "unknown"
    return git_commit(home()) or "unknown"


def version():
    """'0.1.0 (commit 1a2b3c4d5e6f)': what `cutover --version` prints after the program's name."""
    return f"{__version__} (commit {commit()})"
