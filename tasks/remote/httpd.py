"""Apache httpd's processes: the parent named by the pidfile, its children, their state.

Nothing here starts a process: the swap calls children() inside the pause.
"""

import os

from .protocol import Refused

HTTPD_NAMES = ("apache2", "httpd")
CHILDREN_READ = 65536  # bytes of /proc/PID/task/PID/children read at once: thousands of PIDs


def comm(pid):
    """The command name of pid, or None when it is gone."""
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return None


def parent(pidfile):
    """The PID of httpd's parent, checked to be a live httpd; Refused otherwise."""
    try:
        with open(pidfile) as f:
            text = f.read().strip()
    except FileNotFoundError:
        raise Refused(
            "httpd pidfile %s does not exist: Apache is not running, or httpd.pidfile is wrong" % pidfile,
            hint="start Apache, or set httpd.pidfile to the PidFile of its config",
        )
    except OSError as exc:
        raise Refused("cannot read httpd pidfile %s: %s" % (pidfile, exc.strerror))
    if not text.isdigit():
        raise Refused("httpd pidfile %s does not hold a PID (%r)" % (pidfile, text[:40]))
    pid = int(text)
    name = comm(pid)
    if name is None:
        raise Refused(
            "httpd pidfile %s names PID %d, which is not running (stale pidfile)" % (pidfile, pid),
            hint="start Apache, or fix httpd.pidfile",
        )
    if name not in HTTPD_NAMES:
        raise Refused(
            "httpd pidfile %s names PID %d, which is %r, not httpd" % (pidfile, pid, name),
            hint="fix httpd.pidfile; Cutover pauses only httpd",
        )
    return pid


def has_children_file(pid):
    """Whether this kernel lists a process's children in one file (CONFIG_PROC_CHILDREN)."""
    return os.path.exists("/proc/%d/task/%d/children" % (pid, pid))


def children(pid):
    """Child PIDs of pid: one read of /proc/PID/task/PID/children (no process started)."""
    try:
        fd = os.open("/proc/%d/task/%d/children" % (pid, pid), os.O_RDONLY)
    except FileNotFoundError:
        return _children_by_scan(pid)
    try:
        data = os.read(fd, CHILDREN_READ)
    finally:
        os.close(fd)
    return [int(p) for p in data.split()]


def _children_by_scan(pid):
    # Kernels without CONFIG_PROC_CHILDREN: a read of every /proc/*/stat, still no process
    # started. The swap says so in its note, since this runs inside the pause.
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name, "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
                found.append(int(name))
    return found


def signal_all(parent_pid, sig):
    """Send sig to httpd's children and parent; returns the PIDs signalled."""
    pids = children(parent_pid) + [parent_pid]
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # a child that exited since the read: nothing to pause or resume
    return pids


def stopped(pidfile):
    """PIDs of httpd processes in the stopped state (T); Refused when the pidfile names no httpd."""
    top = parent(pidfile)
    out = []
    for pid in [top] + children(top):
        try:
            with open("/proc/%d/stat" % pid) as f:
                stat = f.read()
        except OSError:
            continue  # exited since the read
        if stat[stat.rindex(")") + 2] == "T":
            out.append(pid)
    return out
