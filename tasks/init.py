"""`fab init`: a starter hosts.yaml in the current directory, for a site of your own."""

import shutil
from pathlib import Path

from invoke import task

from .cli import boundary
from .errors import ConfigError

STARTER = Path(__file__).resolve().parent.parent / "templates" / "hosts.yaml"


@task
@boundary
def init(c):
    """Write a starter hosts.yaml into the current directory (never over an existing one)."""
    target = Path.cwd() / "hosts.yaml"
    if target.exists():
        raise ConfigError(f"{target} exists already; nothing was written", hint="edit it, or remove it first")
    shutil.copyfile(STARTER, target)
    print(f"wrote {target}: set deploy_to, build.path, user and the hosts of group prod, then run")
    print("  fab -r CUTOVER_DIR -H prod check    (CUTOVER_DIR: where Cutover is checked out)")
