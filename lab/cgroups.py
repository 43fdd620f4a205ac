"""A cgroup v2 of its own for each lab Apache, as systemd gives a service one (the swap can then
freeze it); made and removed by the lab, with those of dead test runs."""

import os
import secrets
import time
from pathlib import Path

from tasks.remote.httpd import cgroup2_mount

REMOVE_TIMEOUT = 10  # seconds the processes of a removed cgroup get to leave it


def make_cgroup(name):
    """A new cgroup v2 directory for one lab Apache, as systemd gives a service its own; "" where
    cgroup v2 is not mounted or not writable (the swap then pauses with signals)."""
    found = cgroup2_mount()  # (mount point, root): /sys/fs/cgroup, or .../unified on a hybrid system
    if not found:
        return ""
    mount = found[0]
    _remove_stale_cgroups(mount)
    path = os.path.join(mount, f"cutover-lab-{os.getpid()}-{secrets.token_hex(4)}-{name}")
    try:
        os.mkdir(path)
    except OSError:
        return ""
    if not os.path.exists(os.path.join(path, "cgroup.freeze")):
        os.rmdir(path)
        return ""
    return path


def _remove_stale_cgroups(mount):
    """Remove the empty lab cgroups of lab processes that are gone (a killed test run's)."""
    for entry in os.scandir(mount):
        owner = entry.name.split("-")[2] if entry.name.startswith("cutover-lab-") else ""
        if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            try:
                Path(entry.path, "cgroup.freeze").write_text("0")
                os.rmdir(entry.path)
            except OSError:
                pass  # still holds a process: left for stop_server of the lab that made it


def remove_cgroup(path):
    """Thaw (a frozen process cannot act on SIGTERM) or, once empty, remove a lab cgroup."""
    if not path or not os.path.isdir(path):
        return
    try:
        Path(path, "cgroup.freeze").write_text("0")
    except OSError:
        pass  # already being removed
    deadline = time.monotonic() + REMOVE_TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.rmdir(path)
            return
        except OSError:
            time.sleep(0.05)  # processes still leaving it
