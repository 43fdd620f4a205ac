"""`fab init`: a starter hosts.yaml in the current directory, for a site of your own."""

import os
import shlex
import shutil
import sys
from pathlib import Path

from invoke import task

from . import cli
from .cli import boundary
from .errors import ConfigError

CUTOVER_DIR = Path(__file__).resolve().parent.parent
STARTER = CUTOVER_DIR / "templates" / "hosts.yaml"


def fab_command():
    """How this fab was started (`fab`, or `python3 -m fabric`) and told where Cutover is: the start
    of a command that runs Cutover's tasks from a site's directory. The installed command: `cutover`
    (its path where another or none is first on PATH), or `python3 -m cutover`."""
    if cli.PROGRAM:
        if os.path.basename(sys.argv[0]) == "__main__.py":
            return shlex.join([sys.executable, "-m", "cutover"])
        found = shutil.which(cli.PROGRAM)
        same = found is not None and os.path.realpath(found) == os.path.realpath(sys.argv[0])
        return cli.PROGRAM if same else shlex.quote(os.path.abspath(sys.argv[0]))
    program = ["fab"]
    if os.path.basename(sys.argv[0]) == "__main__.py":  # python -m fabric
        program = [sys.executable, "-m", "fabric"]
    return shlex.join([*program, "-r", str(CUTOVER_DIR)])


@task
@boundary
def init(c):
    """Write a starter hosts.yaml into the current directory (never over an existing one)."""
    target = Path.cwd() / "hosts.yaml"
    # O_EXCL: never over a file, nor through a symlink (one that points nowhere included)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        what = " (a symlink)" if target.is_symlink() else ""
        raise ConfigError(
            f"{target} exists already{what}; nothing was written", hint="edit it, or remove it first"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror}; nothing was written") from None
    with os.fdopen(fd, "wb") as out:
        out.write(STARTER.read_bytes())
    print(f"wrote {target}: set deploy_to, build.path, user and the hosts of group prod, then, from this directory:")
    print(f"  {fab_command()} -H prod check")
