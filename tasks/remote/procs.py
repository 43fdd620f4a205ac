"""Processes on this server as /proc shows them. A PID with its start time names one process:
never another one that got the same number later."""

import os


def start_time(pid):
    """The start time of pid (clock ticks since boot), or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError, TypeError):
        return None


def alive(pid, start):
    """Whether process pid, started at `start`, still runs (a zombie counts as ended)."""
    if not pid or start is None:
        return False
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return False
    return fields[0] != "Z" and int(fields[19]) == start


def this():
    """(pid, start time) of this process."""
    return os.getpid(), start_time(os.getpid())
