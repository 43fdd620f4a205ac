"""Cutover's server side: run as `python3 -c SOURCE OP JSON_ARGS`, answers one JSON line.

Every step that needs more than one command on the server is one operation here, so each step
costs one SSH round trip. Standard library only; Python 3.7 or newer.
"""

import errno
import gc
import json
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

HTTPD_NAMES = ("apache2", "httpd")
RELEASE_NAME = re.compile(r"^[0-9]{8}T[0-9]{6}(\.[0-9]{1,6})?Z(-[0-9a-z]{1,40})?$")


class Refused(Exception):
    """A reason to stop, with advice, sent back as {"error", "hint"}."""

    def __init__(self, message, hint=None, **extra):
        super().__init__(message)
        self.hint = hint
        self.extra = extra


# --- httpd ------------------------------------------------------------------------------------


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return None


def httpd_parent(pidfile):
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
    comm = _comm(pid)
    if comm is None:
        raise Refused(
            "httpd pidfile %s names PID %d, which is not running (stale pidfile)" % (pidfile, pid),
            hint="start Apache, or fix httpd.pidfile",
        )
    if comm not in HTTPD_NAMES:
        raise Refused(
            "httpd pidfile %s names PID %d, which is %r, not httpd" % (pidfile, pid, comm),
            hint="fix httpd.pidfile; Cutover pauses only httpd",
        )
    return pid


def children(pid):
    """Child PIDs of pid: one read of /proc/PID/task/PID/children (no process started)."""
    try:
        fd = os.open("/proc/%d/task/%d/children" % (pid, pid), os.O_RDONLY)
    except FileNotFoundError:
        return _children_by_scan(pid)
    try:
        data = os.read(fd, 65536)
    finally:
        os.close(fd)
    return [int(p) for p in data.split()]


def _children_by_scan(pid):
    # Kernels without CONFIG_PROC_CHILDREN: slower, still no process started.
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


def _signal_all(parent, sig):
    pids = children(parent) + [parent]
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def stopped_httpd(pidfile):
    """PIDs of httpd processes in the stopped state (T), for checks after a fault."""
    try:
        parent = httpd_parent(pidfile)
    except Refused:
        return []
    out = []
    for pid in [parent] + children(parent):
        try:
            with open("/proc/%d/stat" % pid) as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] == "T":
            out.append(pid)
    return out


# --- the swap ---------------------------------------------------------------------------------


def _realtime(priority):
    """Enter SCHED_FIFO with a bounded CPU budget; returns None, or why normal priority is used."""
    try:
        # If the critical section ever spins, the kernel stops it after 0.2 s of RT CPU
        # (SIGXCPU) and kills it after 1 s; the watchdog then resumes httpd.
        resource.setrlimit(resource.RLIMIT_RTTIME, (200000, 1000000))
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        return None
    except (OSError, AttributeError, ValueError) as exc:
        return "real-time priority refused (%s); paused at normal priority" % exc


def _normal_priority():
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        pass  # never entered real time: nothing to leave


def _arm_watchdog(parent, timeout, log_path):
    """Fork a detached watchdog; returns the pipe end that disarms it.

    The watchdog resumes every httpd process when the timeout passes, or at once when the
    pipe closes without "done" (the swap process died between STOP and CONT).
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(r)
        return w
    try:
        os.close(w)
        os.setsid()
        _realtime(20)  # above the swap's priority, so it runs even if the swap spins
        ready = select.select([r], [], [], timeout)[0]
        word = os.read(r, 16) if ready else b""
        if word != b"done":
            pids = _signal_all(parent, signal.SIGCONT)
            why = "the swap process died" if ready else "pause_timeout of %ss passed" % timeout
            with open(log_path, "a") as f:
                f.write("%s watchdog: %s; SIGCONT sent to %s\n" % (_now(), why, pids))
    finally:
        os._exit(0)


def _swap_now(current, temp_link, parent, pause_timeout, watchdog_log, hold_ms):
    """The critical section: STOP parent, STOP children, rename, CONT all. Returns pause figures."""
    disarm = _arm_watchdog(parent, pause_timeout, watchdog_log)
    refused = _realtime(10)
    children(parent)  # warm the code path and the /proc entry before the pause
    gc.disable()
    paused = []
    try:
        t0 = time.perf_counter_ns()
        os.kill(parent, signal.SIGSTOP)
        paused = children(parent)
        for pid in paused:
            os.kill(pid, signal.SIGSTOP)
        os.replace(temp_link, current)
        if hold_ms:
            time.sleep(hold_ms / 1000.0)  # fault tests only: widen the pause to act inside it
    finally:
        for pid in paused:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        os.kill(parent, signal.SIGCONT)
        t1 = time.perf_counter_ns()
        _normal_priority()
        gc.enable()
        os.write(disarm, b"done")
        os.close(disarm)
    return {"pause_ms": round((t1 - t0) / 1e6, 3), "paused": len(paused) + 1, "realtime": refused is None, "note": refused}


def op_swap(a):
    """Point current at releases/<release_id>, pausing httpd around the rename; detached."""
    paths = a["layout"]
    release_id = _release_name(a["release_id"])
    target = os.path.join(paths["releases"], release_id)
    if not os.path.isdir(target) or os.path.islink(target):
        raise Refused("release %s does not exist on this server" % release_id)
    old = current_release(paths)
    parent = httpd_parent(a["pidfile"]) if a["pause"] == "sigstop" else None
    temp_link = os.path.join(paths["deploy_to"], ".current.%d" % os.getpid())
    os.symlink(os.path.join("releases", release_id), temp_link)
    result_path = os.path.join(paths["meta"], "swap-%s.json" % os.getpid())
    child = os.fork()
    if child == 0:
        # Detached from the SSH session: a dropped connection cannot stop it between STOP and CONT.
        os.setsid()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        try:
            _write_pid(paths, "swap.pid")
            if parent is None:
                t0 = time.perf_counter_ns()
                os.replace(temp_link, paths["current"])
                figures = {"pause_ms": 0.0, "paused": 0, "realtime": False, "note": "httpd.pause is none"}
                figures["rename_ms"] = round((time.perf_counter_ns() - t0) / 1e6, 3)
            else:
                log = os.path.join(paths["meta"], "watchdog.log")
                figures = _swap_now(paths["current"], temp_link, parent, a["pause_timeout"], log, a.get("hold_ms", 0))
            result = dict(figures, old=old, new=release_id)
        except BaseException as exc:  # reported through the result file, never lost
            result = {"error": "swap failed: %s" % exc}
            try:
                os.unlink(temp_link)
            except OSError:
                pass
        _write_json(result_path, result)
        os._exit(0)
    os.waitpid(child, 0)
    with open(result_path) as f:
        result = json.load(f)
    os.unlink(result_path)
    if "error" in result:
        raise Refused(result["error"])
    return result


# --- layout, releases, lock --------------------------------------------------------------------


def _release_name(name):
    if not isinstance(name, str) or not RELEASE_NAME.match(name):
        raise Refused("%r is not a release name" % (name,))
    return name


def current_release(paths):
    try:
        target = os.readlink(paths["current"])
    except OSError:
        return None
    return os.path.basename(target.rstrip("/"))


def releases(paths):
    try:
        names = os.listdir(paths["releases"])
    except FileNotFoundError:
        return []
    return sorted(n for n in names if RELEASE_NAME.match(n) and os.path.isdir(os.path.join(paths["releases"], n)))


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_json(path, data):
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_pid(paths, name):
    with open(os.path.join(paths["meta"], name), "w") as f:
        f.write("%d\n" % os.getpid())


def _disk_free(path):
    while not os.path.exists(path):
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def op_check(a):
    """Preflight: rsync present, deploy_to usable, httpd alive, disk space."""
    paths = a["layout"]
    deploy_to = paths["deploy_to"]
    out = {"rsync": shutil.which("rsync"), "python": "%d.%d.%d" % sys.version_info[:3]}
    if os.path.isdir(deploy_to):
        out["deploy_to"] = "ok" if os.access(deploy_to, os.W_OK | os.X_OK) else "not writable"
    else:
        parent = deploy_to
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        out["deploy_to"] = "missing, can be created" if os.access(parent, os.W_OK) else "missing, cannot be created"
    try:
        pid = httpd_parent(a["pidfile"])
        out["httpd"] = {"ok": True, "pid": pid, "children": len(children(pid))}
    except Refused as exc:
        out["httpd"] = {"ok": False, "problem": str(exc)}
    out["disk_free"] = _disk_free(deploy_to)
    out["current"] = current_release(paths)
    out["maintenance"] = os.path.exists(os.path.join(paths["maintenance"], "index.html"))
    return out


OPS = {
    "check": op_check,
    "swap": op_swap,
}


def main(argv):
    op, args = argv[1], json.loads(argv[2])
    try:
        answer = OPS[op](args)
    except Refused as exc:
        answer = dict(exc.extra, error=str(exc))
        if exc.hint:
            answer["hint"] = exc.hint
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            answer = {"error": "the server's disk is full: %s" % exc, "hint": "free space under deploy_to"}
        else:
            answer = {"error": "%s: %s" % (type(exc).__name__, exc)}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 1 if "error" in answer else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
