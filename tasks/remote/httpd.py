"""Apache httpd's processes: the parent named by the pidfile, its children, their state, and
the cgroup v2 they run in (frozen with one write when it holds httpd alone, as under systemd).

Nothing here starts a process: the swap calls children() inside the pause.
"""

import os

from .protocol import Refused

HTTPD_NAMES = ("apache2", "httpd")
FREEZE_HINT = "run Apache in a cgroup of its own (systemd does), or set httpd.pause: auto"
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


def cgroup2_mount():
    """(mount point, root inside the hierarchy) of the cgroup v2 file system, or None."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[fields.index("-") + 1] == "cgroup2":
                    return fields[4], fields[3]
    except (OSError, ValueError, IndexError):
        return None
    return None


def cgroup_dir(pid):
    """The cgroup v2 directory of pid, or None (no cgroup v2, or the root cgroup)."""
    try:
        with open("/proc/%d/cgroup" % pid) as f:
            rel = next((line[3:].strip() for line in f if line.startswith("0::")), None)
    except OSError:
        return None
    mount = cgroup2_mount()
    if not rel or rel == "/" or mount is None:
        return None
    point, root = mount
    if root != "/" and rel.startswith(root + "/"):
        rel = rel[len(root):]
    path = os.path.join(point, rel.lstrip("/"))
    return path if os.path.isdir(path) else None


def _parent_of(pid):
    with open("/proc/%d/stat" % pid) as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _descends(pid, ancestor):
    for _ in range(64):
        try:
            pid = _parent_of(pid)
        except (OSError, ValueError):
            return False
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


def freezer(parent_pid, write=True):
    """(the cgroup directory to freeze, None), or (None, why not): httpd's cgroup v2 must be one
    of its own, holding nothing but httpd and its descendants (CGI, piped loggers), and (write)
    writable by this process."""
    path = cgroup_dir(parent_pid)
    if path is None:
        return None, "httpd runs in no cgroup v2 of its own"
    control = os.path.join(path, "cgroup.freeze")
    if not os.path.exists(control) or (write and not os.access(control, os.W_OK)):
        return None, "%s is missing or not writable" % control
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            members = [int(p) for p in f.read().split()]
    except (OSError, ValueError) as exc:
        return None, "cannot read the members of %s: %s" % (path, exc)
    for pid in members:
        if pid != parent_pid and not _descends(pid, parent_pid):
            return None, "httpd's cgroup %s also holds PID %d (%s), which httpd did not start" % (path, pid, comm(pid))
    return path, None


# The freezer does the work of every task (thread) in the write itself, about 3 us each here; a
# SIGSTOP costs about 8 us per process, and the stopped process stops its other threads itself,
# after kill() has returned. With more threads than this per process (the event and worker MPMs:
# 25 and more), signals pause httpd sooner (bench/RESULTS.md, "Pause against httpd's size").
FREEZE_THREADS_PER_PROCESS = 2.5


def freeze_is_quicker(path):
    """Whether freezing the cgroup at path pauses httpd sooner than signalling its processes:
    prefork (one thread per process) yes, threaded MPMs no."""
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            procs = len(f.read().split())
        with open(os.path.join(path, "cgroup.threads")) as f:
            threads = len(f.read().split())
    except OSError:
        return False
    return threads <= FREEZE_THREADS_PER_PROCESS * procs


def thaw(path):
    """Write 0 to path/cgroup.freeze; True if written."""
    try:
        fd = os.open(os.path.join(path, "cgroup.freeze"), os.O_WRONLY)
    except OSError:
        return False
    try:
        os.write(fd, b"0")
        return True
    finally:
        os.close(fd)
