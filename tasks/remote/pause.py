"""Pausing httpd around the swap's renames: real-time priority bounded by RLIMIT_RTTIME, the
watchdog that resumes httpd whatever happens, and the pause itself (httpd's cgroup v2 frozen with
one write, or SIGSTOP to its processes), chosen per server by httpd.pause.
"""

import gc
import os
import resource
import select
import signal
import time

from . import httpd, paths
from .protocol import Refused

# If the critical section ever spins, the kernel stops it after 0.2 s of real-time CPU
# (SIGXCPU) and kills it after 1 s; the watchdog then resumes httpd.
RTTIME_LIMIT_US = (200000, 1000000)
SWAP_PRIORITY = 10  # SCHED_FIFO priority of the swap inside the pause
WATCHDOG_PRIORITY = 20  # above the swap's: the watchdog runs even if the swap spins
DISARM = b"done"
START = b"s"  # the swap process is about to pause httpd: the watchdog's pause_timeout starts


def _realtime(priority):
    """Enter SCHED_FIFO with a bounded CPU budget; returns None, or why normal priority is used."""
    try:
        resource.setrlimit(resource.RLIMIT_RTTIME, RTTIME_LIMIT_US)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        return None
    except (OSError, AttributeError, ValueError) as exc:
        return "real-time priority refused (%s); paused at normal priority" % exc


def _normal_priority():
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        pass  # real time was refused (or is unknown here): already at normal priority


def arm_watchdog(parent, timeout, log_path, cgroup=None):
    """Fork a detached watchdog; returns the pipe end that starts (START) and disarms it.

    From START on, the watchdog resumes every httpd process (thaws its cgroup, sends SIGCONT)
    when the timeout passes, or at once when the pipe closes without DISARM (the swap process
    died in the pause). A pipe closed before START: nothing was paused, it just exits. (An armed
    swap forks its watchdog before it waits for go, so that go is followed by the pause at once.)
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(r)
        return w
    try:
        os.close(w)
        os.setsid()
        _realtime(WATCHDOG_PRIORITY)
        if os.read(r, len(START)) != START:
            return  # the swap ended before it paused httpd (an armed swap without its go)
        ready = select.select([r], [], [], timeout)[0]
        word = os.read(r, 16) if ready else b""
        if word != DISARM:
            thawed = httpd.thaw(cgroup) if cgroup else False
            pids = httpd.signal_all(parent, signal.SIGCONT)
            why = "the swap process died" if ready else "pause_timeout of %ss passed" % timeout
            with open(log_path, "a") as f:
                f.write("%s watchdog: %s; %sSIGCONT sent to %s\n"
                        % (paths.now(), why, "thawed %s; " % cgroup if thawed else "", pids))
    finally:
        os._exit(0)


def pause_and_rename(renames, parent, pause_timeout, watchdog_log, hold_ms, cgroup=None, watchdog=None):
    """The critical section: pause httpd (freeze its cgroup, or STOP parent and children), the
    renames, resume. Returns pause figures."""
    disarm = arm_watchdog(parent, pause_timeout, watchdog_log, cgroup) if watchdog is None else watchdog
    refused = _realtime(SWAP_PRIORITY)
    freeze = os.open(os.path.join(cgroup, "cgroup.freeze"), os.O_WRONLY) if cgroup else None
    if freeze is None:
        httpd.children(parent)  # warm the code path and the /proc entry before the pause
    one_read = freeze is not None or httpd.has_children_file(parent)  # asked now: the parent may exit
    gc.disable()
    paused = []
    parent_gone = False
    os.write(disarm, START)
    try:
        t0 = time.perf_counter_ns()
        if freeze is not None:
            os.pwrite(freeze, b"1", 0)  # every process of the cgroup, in one write
        else:
            os.kill(parent, signal.SIGSTOP)
            paused = httpd.children(parent)
            for pid in paused:
                os.kill(pid, signal.SIGSTOP)
        r0 = time.perf_counter_ns()
        for fd, source, target in renames:
            os.rename(source, target, src_dir_fd=fd, dst_dir_fd=fd)
        r1 = time.perf_counter_ns()
        renamed_at = time.time()  # the server's clock: a group's switch spread, across hosts
        if hold_ms:
            time.sleep(hold_ms / 1000.0)  # fault tests only: widen the pause to act inside it
    finally:
        if freeze is not None:
            os.pwrite(freeze, b"0", 0)
        else:
            for pid in paused:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass  # exited while paused
            try:
                os.kill(parent, signal.SIGCONT)
            except ProcessLookupError:
                parent_gone = True  # exited while paused: the rest below must still run
        t1 = time.perf_counter_ns()
        _normal_priority()
        gc.enable()
        if freeze is not None:
            os.close(freeze)
        try:
            os.write(disarm, DISARM)
            fired = False
        except BrokenPipeError:
            fired = True  # the watchdog already gave up waiting and resumed httpd
        os.close(disarm)
    notes = [refused] if refused else []
    if parent_gone:
        notes.append("httpd's parent (pid %d) exited during the pause" % parent)
    if not one_read:
        notes.append("this kernel has no /proc/PID/task/PID/children: httpd's children were found by reading all of /proc inside the pause")
    if fired:
        notes = ["the watchdog resumed httpd after pause_timeout (%ss)" % pause_timeout]
    return {"pause_ms": round((t1 - t0) / 1e6, 3), "rename_ms": round((r1 - r0) / 1e6, 3), "renamed_at": renamed_at,
            "paused": len(paused) + 1 if freeze is None else "cgroup", "method": "freeze" if freeze is not None else "sigstop",
            "realtime": refused is None, "note": "; ".join(notes) or None}


PAUSES = ("auto", "freeze", "sigstop", "none")


def method(setting, parent, write=True):
    """The cgroup to freeze, or None for signals, for httpd.pause `setting`: freeze, or auto where
    httpd has a cgroup v2 of its own and the freezer is the quicker (one thread per process, as
    with prefork); Refused when freeze is asked for and cannot be had. write=False: whether this
    process may write cgroup.freeze is not checked (stage and check run as the deploy user; the
    swap may run as root, through the sudo helper)."""
    if parent is None or setting in ("sigstop", "none"):
        return None
    cgroup, why = httpd.freezer(parent, write)
    if cgroup is None and setting == "freeze":
        raise Refused("httpd.pause is freeze, but %s" % why, hint=httpd.FREEZE_HINT)
    if cgroup is not None and setting == "auto" and not httpd.freeze_is_quicker(cgroup):
        return None
    return cgroup
