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
import stat
import sys
import time

HTTPD_NAMES = ("apache2", "httpd")
PLACEHOLDER = "19700101T000000Z-placeholder"
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


def _swap_now(renames, parent, pause_timeout, watchdog_log, hold_ms):
    """The critical section: STOP parent, STOP children, the renames, CONT all. Returns pause figures."""
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
        r0 = time.perf_counter_ns()
        for source, target in renames:
            os.replace(source, target)
        r1 = time.perf_counter_ns()
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
        try:
            os.write(disarm, b"done")
            fired = False
        except BrokenPipeError:
            fired = True  # the watchdog already gave up waiting and resumed httpd
        os.close(disarm)
    figures = {"pause_ms": round((t1 - t0) / 1e6, 3), "rename_ms": round((r1 - r0) / 1e6, 3), "paused": len(paused) + 1,
               "realtime": refused is None, "note": refused}
    if fired:
        figures["note"] = "the watchdog resumed httpd after pause_timeout (%ss)" % pause_timeout
    return figures


def _map_file(paths, release_id):
    """Write .cutover/maps/<release_id>.map, Apache's RewriteMap for that release; returns its
    path relative to .cutover. Written fresh (no symlink followed), outside any pause."""
    maps = os.path.join(paths["deploy_to"], ".cutover", "maps")
    for d in (os.path.dirname(maps), maps):
        if os.path.islink(d):
            raise Refused("%s is a symlink; refusing to write Apache's release map through it" % d)
    os.makedirs(maps, exist_ok=True)
    _write_file(os.path.join(maps, release_id + ".map"), "current %s\n" % release_id)
    return os.path.join("maps", release_id + ".map")


def _point_map(paths, release_id):
    """Point .cutover/release.map at the map of release_id (outside any pause: setup, cleanup)."""
    link = os.path.join(paths["deploy_to"], ".cutover", "release.map")
    temp = "%s.%d" % (link, os.getpid())
    os.symlink(_map_file(paths, release_id), temp)
    os.replace(temp, link)


def _swap_to(paths, release_id, parent, a):
    """One switch to releases/<release_id>: the release.map symlink (Apache's pin) and current,
    renamed together, inside the pause when parent is an httpd PID.

    Both are symlinks: renaming one over another frees no inode, which keeps each rename near
    10 us; a regular file renamed over another costs over 100 us on ext4, inside the pause.
    """
    pid = os.getpid()
    temp_link = os.path.join(paths["deploy_to"], ".current.%d" % pid)
    release_map = os.path.join(paths["deploy_to"], ".cutover", "release.map")
    temp_map = "%s.%d" % (release_map, pid)
    for leftover in (temp_link, temp_map):
        if os.path.lexists(leftover):
            os.unlink(leftover)
    os.symlink(_map_file(paths, release_id), temp_map)
    os.symlink(os.path.join("releases", release_id), temp_link)
    renames = [(temp_map, release_map), (temp_link, paths["current"])]
    try:
        if parent is None:
            t0 = time.perf_counter_ns()
            for source, target in renames:
                os.replace(source, target)
            ms = round((time.perf_counter_ns() - t0) / 1e6, 3)
            return {"pause_ms": 0.0, "rename_ms": ms, "paused": 0, "realtime": False, "note": "httpd.pause is none"}
        log = os.path.join(paths["meta"], "watchdog.log")
        return _swap_now(renames, parent, a["pause_timeout"], log, a.get("hold_ms", 0))
    finally:
        for leftover in (temp_link, temp_map):
            if os.path.lexists(leftover):
                os.unlink(leftover)


def _swap_and_verify(paths, release_id, parent, old, a):
    result = dict(_swap_to(paths, release_id, parent, a), old=old, new=release_id)
    verify = a.get("verify")
    if verify:
        problem = health(verify, release_id)
        result["health"] = problem or "ok"
        if problem and a.get("swap_back") and old:
            # The new release answers wrong: back to the old one at once, on the server.
            back = _swap_to(paths, old, parent, a)
            result["swapped_back"] = True
            result["swap_back_pause_ms"] = back["pause_ms"]
            result["health_after_swap_back"] = health(dict(verify, expect_text=None), old) or "ok"
    return result


def op_swap(a):
    """Point current at releases/<release_id> with httpd paused, then verify; detached from SSH."""
    paths = a["layout"]
    release_id = _release_name(a["release_id"])
    target = os.path.join(paths["releases"], release_id)
    if not os.path.isdir(target) or os.path.islink(target):
        raise Refused("release %s does not exist on this server" % release_id)
    old = current_release(paths)
    parent = httpd_parent(a["pidfile"]) if a["pause"] == "sigstop" else None
    result_path = os.path.join(paths["meta"], "swap-%s.json" % os.getpid())
    child = os.fork()
    if child == 0:
        # Detached from the SSH session: a dropped connection cannot stop it between STOP and
        # CONT, nor between a failed health check and the swap back.
        os.setsid()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        try:
            _write_pid(paths, "swap.pid")
            result = _swap_and_verify(paths, release_id, parent, old, a)
        except BaseException as exc:  # reported through the result file, never lost
            result = {"error": "swap failed: %s" % exc, "old": old}
        _write_json(result_path, result)
        os._exit(0)
    os.waitpid(child, 0)
    with open(result_path) as f:
        result = json.load(f)
    os.unlink(result_path)
    if "error" in result:
        raise Refused(result["error"])
    return result


# --- health -----------------------------------------------------------------------------------


def _get(url, timeout):
    import urllib.request  # only the steps that fetch a URL pay for this import

    request = urllib.request.Request(url, headers={"Cache-Control": "no-cache", "Connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read(65536).decode("utf-8", "replace")
    except urllib.request.HTTPError as exc:
        return exc.code, exc.read(65536).decode("utf-8", "replace")


def health(h, release_id):
    """None when every URL answers expect_status (and expect_text); else the last problem seen."""
    problem = None
    text = h.get("expect_text")
    if text:
        text = text.replace("{release}", release_id)
    for attempt in range(h["retries"] + 1):
        if attempt:
            time.sleep(0.5)
        problem = None
        for url in h["urls"]:
            try:
                status, body = _get(url, h["timeout"])
            except (OSError, ValueError) as exc:
                problem = "%s: %s" % (url, getattr(exc, "reason", exc))
                break
            if status != h["expect_status"]:
                problem = "%s answered %d, expected %d" % (url, status, h["expect_status"])
                break
            if text and text not in body:
                problem = "%s answered %d without the text %r" % (url, status, text)
                break
        if problem is None:
            return None
    return problem


# --- layout, releases, lock --------------------------------------------------------------------


def _release_name(name):
    if not isinstance(name, str) or not RELEASE_NAME.fullmatch(name):
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
    return sorted(n for n in names if RELEASE_NAME.fullmatch(n) and os.path.isdir(os.path.join(paths["releases"], n)))


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_json(path, data):
    _write_file(path, json.dumps(data))


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


# --- the lock ---------------------------------------------------------------------------------


def _proc_start(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _ssh_session():
    """PID and start time of the sshd process serving this connection: the lock's liveness.

    A deploy holds its SSH connection for its whole run; when that process is gone, so is
    the deploy that took the lock.
    """
    pid = os.getppid()
    while pid > 1:
        if (_comm(pid) or "").startswith("sshd"):
            return pid, _proc_start(pid)
        with open("/proc/%d/stat" % pid) as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    return None, None


def lock_owner(paths):
    """The lock's owner.json plus its age and whether its SSH session still lives; None if free."""
    if not os.path.isdir(paths["lock"]):
        return None
    try:
        with open(os.path.join(paths["lock"], "owner.json")) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        owner = {"user": "?", "local_host": "?", "command": "? (owner.json missing: died while locking)"}
    try:
        owner["age_s"] = round(time.time() - os.stat(paths["lock"]).st_mtime, 1)
    except OSError:
        return None
    session = owner.get("session_pid")
    owner["alive"] = bool(session) and _proc_start(session) == owner.get("session_start")
    return owner


def _take_lock(paths, owner):
    os.makedirs(paths["meta"], exist_ok=True)
    try:
        os.mkdir(paths["lock"])  # atomic: exactly one of two racing deploys gets here
    except FileExistsError:
        held = lock_owner(paths) or {}
        raise Refused("locked", lock=held)
    pid, start = _ssh_session()
    owner = dict(owner, session_pid=pid, session_start=start, started=_now())
    _write_json(os.path.join(paths["lock"], "owner.json"), owner)


def _release_lock(paths, token):
    """Remove the lock only if it is ours (same token)."""
    try:
        with open(os.path.join(paths["lock"], "owner.json")) as f:
            if json.load(f).get("token") != token:
                return False
    except (OSError, ValueError):
        return False
    shutil.rmtree(paths["lock"])
    return True


def op_unlock(a):
    """Release our lock (token), or with force a lock whose owner's SSH session is gone."""
    paths = a["layout"]
    if not a.get("force"):
        return {"released": _release_lock(paths, a["token"])}
    owner = lock_owner(paths)
    if owner is None:
        return {"released": False, "owner": None}
    if owner["alive"]:
        raise Refused(
            "the lock owner is still connected (sshd session %s): %s@%s, %s"
            % (owner.get("session_pid"), owner.get("user"), owner.get("local_host"), owner.get("command")),
            hint="wait for that deploy to end; --force-unlock clears only a lock whose owner is gone",
        )
    shutil.rmtree(paths["lock"])
    _append_history(paths, {"event": "force-unlock", "owner": owner, "user": a.get("user"), "at": _now()})
    return {"released": True, "owner": owner}


# --- deploy steps -----------------------------------------------------------------------------


def _remove_release_dir(paths, name):
    """Remove releases/<name>, after checking on this server that it is a real directory there."""
    path = os.path.join(paths["releases"], name)
    if "/" in name or name in (".", "..") or os.path.realpath(os.path.dirname(path)) != os.path.realpath(paths["releases"]):
        raise Refused("refusing to remove %s: not directly inside %s" % (path, paths["releases"]))
    if os.path.islink(path):
        raise Refused("refusing to remove %s: it is a symlink" % path)
    if os.path.isdir(path):
        shutil.rmtree(path)


def op_begin(a):
    """Lock and check deploy_to; for a deploy also create the incoming release dir."""
    paths = a["layout"]
    release_id = _release_name(a["release_id"]) if a.get("release_id") else None
    if not os.path.isdir(paths["deploy_to"]):
        raise Refused(
            "deploy_to %s does not exist on this server" % paths["deploy_to"],
            hint="run `fab setup` or create it (owned by the deploy user)",
        )
    _take_lock(paths, a["owner"])
    try:
        answer = {"current": current_release(paths), "releases": releases(paths)}
        if answer["current"] not in answer["releases"]:
            answer["current"] = None
        answer["previous"] = _previous(paths, answer["current"])
        if release_id:
            for d in (paths["releases"], paths["shared"]):
                os.makedirs(d, exist_ok=True)
            if os.path.lexists(os.path.join(paths["releases"], release_id)):
                raise Refused("release %s already exists on this server" % release_id)
            # made under another name and renamed when complete: the upload's rsync, started
            # at the same time as this step, waits for .incoming-<id> to appear (when_ready.py)
            making = os.path.join(paths["releases"], ".prelink-" + release_id)
            os.mkdir(making)
            if a.get("prelink") and answer["current"]:
                t = time.monotonic()
                answer["prelinked"], answer["prelink_error"] = _prelink(
                    os.path.join(paths["releases"], answer["current"]), making, a["prelink"]
                )
                answer["prelink_s"] = time.monotonic() - t
            os.rename(making, os.path.join(paths["releases"], ".incoming-" + release_id))
        answer["free"] = _disk_free(paths["deploy_to"])
        return answer
    except BaseException:
        _release_lock(paths, a["owner"]["token"])
        raise


def _prelink(live, incoming, plan):
    """Hard-link the live release's files into the incoming dir; rsync then sends only the changes.

    A file is linked only when its mode is the mode the build gives it: rsync (no times, no
    owner, no group) then never changes an inode the live release shares, it replaces what
    differs with a new file. Directories are made anew, symlinks and shared entries left to
    rsync and stage. Best effort: on an error, what is linked stays and rsync sends the rest.
    Returns (files linked, error or None).
    """
    default, modes, skip = plan["default"], plan["modes"], set(plan["shared"])
    linked = [0]
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW

    def walk(src_fd, dst_fd, prefix):
        with os.scandir(src_fd) as it:
            entries = list(it)
        for e in entries:
            rel = prefix + e.name
            if rel in skip:
                continue
            if e.is_dir(follow_symlinks=False):
                os.mkdir(e.name, 0o755, dir_fd=dst_fd)
                src = os.open(e.name, flags, dir_fd=src_fd)
                try:
                    dst = os.open(e.name, flags, dir_fd=dst_fd)
                    try:
                        walk(src, dst, rel + "/")
                    finally:
                        os.close(dst)
                finally:
                    os.close(src)
            elif e.is_file(follow_symlinks=False):
                if stat.S_IMODE(e.stat(follow_symlinks=False).st_mode) != modes.get(rel, default):
                    continue
                try:
                    os.link(e.name, e.name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
                    linked[0] += 1
                except OSError as exc:
                    if exc.errno != errno.EMLINK:  # too many links to that inode: rsync copies it
                        raise

    try:
        src = os.open(live, flags)
        try:
            dst = os.open(incoming, flags)
            try:
                walk(src, dst, "")
            finally:
                os.close(dst)
        finally:
            os.close(src)
    except OSError as exc:
        return linked[0], "%s: %s" % (type(exc).__name__, exc)
    return linked[0], None


def _link_shared(paths, release_dir, shared):
    for entry in shared:
        target = os.path.join(paths["shared"], entry)
        if not os.path.lexists(target):
            os.makedirs(target)
        link = os.path.join(release_dir, entry)
        if os.path.lexists(link):
            if os.path.isdir(link) and not os.path.islink(link):
                shutil.rmtree(link)
            else:
                os.unlink(link)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.relpath(target, os.path.dirname(link)), link)


def _point(paths, name, release_dir):
    """Atomically point deploy_to/<name> (e.g. next) at release_dir."""
    link = os.path.join(paths["deploy_to"], name)
    temp = "%s.%d" % (link, os.getpid())
    os.symlink(os.path.relpath(release_dir, paths["deploy_to"]), temp)
    os.replace(temp, link)


def _tail(text, limit=3000):
    return text if len(text) <= limit else "..." + text[-limit:]


def _run_command(what, command, cwd, env, timeout, **flags):
    """Run one configured shell command in cwd; Refused (with its output) unless it exits 0."""
    import subprocess  # only the steps that run commands start processes

    try:
        run = subprocess.run(
            ["/bin/sh", "-c", command], cwd=cwd, env=dict(os.environ, **env), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.output or b"").decode("utf-8", "replace")
        raise Refused("%s %r timed out after %ss" % (what, command, timeout), output=_tail(out), **flags)
    out = run.stdout.decode("utf-8", "replace")
    if run.returncode != 0:
        raise Refused("%s %r exited %d" % (what, command, run.returncode), output=_tail(out), **flags)
    return out


def op_migrate(a):
    """Run the migration command inside the promoted release."""
    paths = a["layout"]
    release_id = _release_name(a["release_id"])
    release_dir = os.path.join(paths["releases"], release_id)
    env = {"RELEASE_DIR": release_dir, "RELEASE_ID": release_id, "DEPLOY_TO": paths["deploy_to"]}
    t = time.monotonic()
    out = _run_command("migration", a["command"], release_dir, env, a["limit"], migrate=True)
    return {"output": _tail(out), "seconds": time.monotonic() - t}


def op_stage(a):
    """Link shared entries, run the smoke tests, promote: one round trip after the upload."""
    paths = a["layout"]
    release_id = _release_name(a["release_id"])
    incoming = os.path.join(paths["releases"], ".incoming-" + release_id)
    timings = {}
    t = time.monotonic()
    if not os.path.isdir(incoming):
        raise Refused("incoming release %s is missing" % incoming)
    if a.get("pidfile"):
        httpd_parent(a["pidfile"])  # refuse now, before any host of the group switches
    _link_shared(paths, incoming, a["shared"])
    timings["link"] = time.monotonic() - t
    t = time.monotonic()
    env = {"RELEASE_DIR": incoming, "RELEASE_ID": release_id, "DEPLOY_TO": paths["deploy_to"]}
    for command in a["smoke"]["commands"]:
        _run_command("smoke command", command, incoming, env, a["smoke"]["timeout"], smoke=True)
    if a["smoke"].get("url"):
        _point(paths, "next", incoming)
        problem = health(dict(a["smoke"]["health"], urls=[a["smoke"]["url"]]), release_id)
        if problem:
            raise Refused("smoke URL failed: %s" % problem, smoke=True)
    timings["smoke"] = time.monotonic() - t
    t = time.monotonic()
    os.rename(incoming, os.path.join(paths["releases"], release_id))
    timings["promote"] = time.monotonic() - t
    return {"timings": timings}


def _append_history(paths, entry):
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(paths["history"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write with O_APPEND: lines never interleave
    finally:
        os.close(fd)


def _cleanup(paths, keep, protect):
    """Remove old releases beyond `keep` (never current or the protected ones) and stale incoming dirs."""
    current = current_release(paths)
    protect = set(p for p in protect if p) | {current}
    names = releases(paths)
    removed = []
    for name in names[: max(0, len(names) - keep)]:
        if name not in protect:
            _remove_release_dir(paths, name)
            removed.append(name)
    for name in os.listdir(paths["releases"]):
        if name.startswith((".incoming-", ".prelink-")):
            _remove_release_dir(paths, name)  # we hold the lock: any incoming dir is a dead deploy's
            removed.append(name)
    maps = os.path.join(paths["deploy_to"], ".cutover", "maps")
    kept = set(releases(paths))
    if os.path.isdir(maps) and not os.path.islink(maps):
        for name in os.listdir(maps):
            if name.endswith(".map") and name[: -len(".map")] not in kept:
                os.unlink(os.path.join(maps, name))
    return removed


def op_finish(a):
    """Clean up old releases, append the history line, release the lock."""
    paths = a["layout"]
    t = time.monotonic()
    removed = _cleanup(paths, a["keep"], a.get("protect", [])) if a.get("clean", True) else []
    entry = dict(a["record"], cleaned=removed)
    entry["steps"] = dict(entry.get("steps", {}), cleanup=round(time.monotonic() - t, 3))
    _append_history(paths, entry)
    _release_lock(paths, a["token"])
    return {"removed": removed, "cleanup_s": time.monotonic() - t}


def op_abort(a):
    """A deploy failed: remove what it uploaded (never the live release), record, unlock."""
    paths = a["layout"]
    release_id = a["release_id"]
    removed = []
    if a.get("remove", True) and RELEASE_NAME.fullmatch(release_id or "") and current_release(paths) != release_id:
        for name in (".prelink-" + release_id, ".incoming-" + release_id, release_id):
            if os.path.lexists(os.path.join(paths["releases"], name)):
                _remove_release_dir(paths, name)
                removed.append(name)
    if a.get("record"):
        try:
            _append_history(paths, dict(a["record"], cleaned=removed))
        except OSError:
            pass  # a full disk must not keep the lock: unlocking matters more than the record
    released = _release_lock(paths, a["token"]) if a.get("token") else False
    return {"removed": removed, "released": released, "current": current_release(paths)}


def op_state(a):
    """Read-only view of one server: releases, current, lock, maintenance, stopped httpd PIDs."""
    paths = a["layout"]
    return {
        "releases": releases(paths),
        "current": current_release(paths),
        "lock": lock_owner(paths),
        "maintenance": os.path.exists(os.path.join(paths["maintenance"], "index.html")),
        "stopped": stopped_httpd(a["pidfile"]) if a.get("pidfile") else [],
    }


def _history(paths):
    try:
        with open(paths["history"]) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a torn line from a full disk: skip it, keep the rest
    return out


def _previous(paths, current):
    """The release that was live before `current`: the `old` of the switch that made it live."""
    for e in reversed(_history(paths)):
        if e.get("result") == "ok" and e.get("event") in ("deploy", "rollback") and e.get("release") == current:
            return e.get("old")
    return None


def op_history(a):
    """The last n history entries, oldest first."""
    return {"entries": _history(a["layout"])[-a["n"]:]}


def op_releases(a):
    """Kept releases, newest first, with deploy time, user and whether one was rolled away from."""
    paths = a["layout"]
    info = {}
    for e in _history(paths):
        if e.get("result") != "ok":
            continue
        if e.get("event") == "deploy":
            info.setdefault(e["release"], {}).update(deployed=e.get("started"), user=e.get("user"), rolled_back=False)
        elif e.get("event") == "rollback":
            info.setdefault(e.get("old"), {})["rolled_back"] = True
            info.setdefault(e["release"], {})["rolled_back"] = False
    current = current_release(paths)
    out = []
    for name in reversed(releases(paths)):
        d = info.get(name, {})
        out.append({"release": name, "current": name == current, "deployed": d.get("deployed"),
                    "user": d.get("user"), "rolled_back": d.get("rolled_back", False)})
    return {"releases": out, "current": current}


def op_maintenance(a):
    """Place (on) or remove (off) maintenance/index.html atomically; idempotent."""
    paths = a["layout"]
    page = os.path.join(paths["maintenance"], "index.html")
    was_on = os.path.exists(page)
    if a["on"]:
        os.makedirs(paths["maintenance"], exist_ok=True)
        # retry-after first: the page turns maintenance on, and Apache reads both
        _write_file(os.path.join(paths["maintenance"], "retry-after"), str(a["retry_after"]))
        _write_file(page, a["page"])  # readers see no page or the whole page, never half
    elif was_on:
        os.unlink(page)
    if was_on != a["on"]:
        os.makedirs(paths["meta"], exist_ok=True)
        _append_history(paths, {"event": "maintenance-" + ("on" if a["on"] else "off"), "user": a["user"],
                                "local_host": a["local_host"], "started": _now(), "result": "ok"})
    return {"was_on": was_on, "on": a["on"]}




HELPER_CONFIG = "/etc/cutover/helper.json"
HELPER_RUN_DIR = "/run/cutover"


def layout_of(deploy_to):
    """The same paths as tasks/layout.py, rebuilt on the server from deploy_to alone."""
    join = os.path.join
    return {
        "deploy_to": deploy_to, "releases": join(deploy_to, "releases"), "shared": join(deploy_to, "shared"),
        "current": join(deploy_to, "current"), "next": join(deploy_to, "next"),
        "maintenance": join(deploy_to, "maintenance"), "meta": join(deploy_to, ".cutover"),
        "lock": join(deploy_to, ".cutover", "lock"), "history": join(deploy_to, ".cutover", "history.jsonl"),
    }


def helper_args(op, args):
    """As the root-owned sudo helper: only the swap, only for a site and user that setup registered.

    Paths come from /etc/cutover/helper.json, never from the caller, and the helper's own
    files live in a root-owned directory, so the deploy user steers nothing but the release id.
    """
    if op != "swap":
        raise Refused("the Cutover helper runs only the swap, not %r" % op)
    with open(HELPER_CONFIG) as f:
        sites = json.load(f)
    deploy_to = args["layout"]["deploy_to"]
    site = sites.get(deploy_to)
    if site is None or site["user"] != os.environ.get("SUDO_USER"):
        raise Refused("%s is not registered for user %s in %s" % (deploy_to, os.environ.get("SUDO_USER"), HELPER_CONFIG),
                      hint="run `fab setup` for this host")
    if os.path.realpath(deploy_to) != deploy_to:
        raise Refused("deploy_to %s goes through a symlink; the helper refuses it" % deploy_to)
    os.makedirs(HELPER_RUN_DIR, mode=0o700, exist_ok=True)
    paths = dict(layout_of(deploy_to), meta=os.path.join(HELPER_RUN_DIR, deploy_to.strip("/").replace("/", "_")))
    os.makedirs(paths["meta"], mode=0o700, exist_ok=True)
    return dict(args, layout=paths, pidfile=site["pidfile"], pause="sigstop",
                pause_timeout=min(float(args.get("pause_timeout", 5)), 60), hold_ms=0)


def op_setup(a):
    """Create the layout (and a first placeholder release so Apache has a DocumentRoot)."""
    paths = a["layout"]
    created = []
    if not os.path.isdir(paths["deploy_to"]):
        parent = os.path.dirname(paths["deploy_to"])
        if not os.access(parent if os.path.isdir(parent) else "/", os.W_OK):
            raise Refused("cannot create %s: %s is not writable by this user" % (paths["deploy_to"], parent),
                          hint="create it as root: install -d -o USER %s" % paths["deploy_to"])
        os.makedirs(paths["deploy_to"])
        created.append(paths["deploy_to"])
    dirs = [paths["releases"], paths["shared"], paths["meta"], paths["maintenance"]]
    dirs += [os.path.join(paths["shared"], e) for e in a["shared"]]
    for d in dirs:
        if not os.path.isdir(d):
            os.makedirs(d)
            created.append(d)
    if not os.access(paths["deploy_to"], os.W_OK) or not os.access(paths["releases"], os.W_OK):
        raise Refused("%s is not writable by this user" % paths["deploy_to"], hint="chown it to the deploy user")
    if current_release(paths) is None:
        placeholder = os.path.join(paths["releases"], PLACEHOLDER)
        os.makedirs(placeholder, exist_ok=True)
        with open(os.path.join(placeholder, "index.html"), "w") as f:
            f.write("<!doctype html><title>Nothing deployed yet</title><p>Nothing deployed yet.</p>\n")
        _point(paths, "current", placeholder)
        created.append(paths["current"])
    release_map = os.path.join(paths["meta"], "release.map")
    if not os.path.exists(release_map):  # Apache refuses to start while a RewriteMap file is missing
        _point_map(paths, current_release(paths))
        created.append(release_map)
    snippet = os.path.join(paths["meta"], "apache.conf")
    _write_file(snippet, a["snippet"])
    import pwd

    return {"created": created, "user": pwd.getpwuid(os.geteuid()).pw_name, "snippet": snippet,
            "current": current_release(paths)}


def op_install_helper(a):
    """As root: install the swap helper root-owned and register this site for the deploy user."""
    if os.geteuid() != 0:
        raise Refused("installing the helper needs root (connected as uid %d)" % os.geteuid())
    os.makedirs(os.path.dirname(a["path"]), mode=0o755, exist_ok=True)
    _write_file(a["path"], "CUTOVER_HELPER = True\n" + a["source"], mode=0o755)
    os.makedirs(os.path.dirname(HELPER_CONFIG), mode=0o755, exist_ok=True)
    try:
        with open(HELPER_CONFIG) as f:
            sites = json.load(f)
    except FileNotFoundError:
        sites = {}
    sites[a["deploy_to"]] = {"pidfile": a["pidfile"], "user": a["user"]}
    _write_file(HELPER_CONFIG, json.dumps(sites, indent=2, sort_keys=True) + "\n")
    return {"path": a["path"], "sites": sorted(sites)}


def _write_file(path, text, mode=0o644):
    """Replace path atomically: a fresh temp file (never through a symlink, even as root), fsync, rename."""
    tmp = "%s.tmp%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


OPS = {
    "check": op_check,
    "begin": op_begin,
    "stage": op_stage,
    "swap": op_swap,
    "finish": op_finish,
    "abort": op_abort,
    "unlock": op_unlock,
    "state": op_state,
    "history": op_history,
    "releases": op_releases,
    "maintenance": op_maintenance,
    "migrate": op_migrate,
    "setup": op_setup,
    "install_helper": op_install_helper,
}


def answer(op, args):
    """One operation's JSON answer; a refusal or an OS error becomes {"error", "hint"}."""
    try:
        if globals().get("CUTOVER_HELPER"):
            args = helper_args(op, args)
        return OPS[op](args)
    except Refused as exc:
        out = dict(exc.extra, error=str(exc))
        if exc.hint:
            out["hint"] = exc.hint
        return out
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            return {"error": "the server's disk is full: %s" % exc, "hint": "free space under deploy_to"}
        return {"error": "%s: %s" % (type(exc).__name__, exc)}


def serve():
    """Answer one request per line of stdin until EOF: one process for a whole deploy.

    Each step then costs one message on the open SSH channel instead of a new channel, a
    login shell and a Python start on the server.
    """
    if globals().get("CUTOVER_HELPER"):
        return 1  # the root helper answers exactly one swap per sudo call
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.write(json.dumps(answer(request["op"], request["args"])) + "\n")
        sys.stdout.flush()
    return 0


def main(argv):
    if argv[1] == "serve":
        return serve()
    out = answer(argv[1], json.loads(argv[2]))
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 1 if "error" in out else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
