"""The swap protocol: switch `current` to a release with httpd paused, then verify.

op_swap, top to bottom:
  1. check the release exists and the pidfile names a live httpd (before anything is paused);
  2. fork a child detached from the SSH session (a dropped connection cannot stop it);
  3. in it, write the release's Apache map and the two temp symlinks (outside the pause);
  4. arm a watchdog (pause.py): a detached process that thaws httpd's cgroup and sends SIGCONT to every
     httpd process after pause_timeout, or at once if the swap process dies;
  5. enter SCHED_FIFO (bounded by RLIMIT_RTTIME) and pause httpd: where httpd runs in a cgroup v2
     of its own (as under systemd; httpd.pause auto or freeze), one write of 1 to its
     cgroup.freeze; else SIGSTOP httpd's parent, read its children from /proc (one read),
     SIGSTOP them;
  6. rename the release map and `current` (two symlinks renamed over two symlinks);
  7. resume (cgroup.freeze 0, or SIGCONT children and parent), back to normal priority, disarm
     the watchdog;
  8. GET the health URLs; on failure switch straight back (the same steps) and check again;
  9. report old and new release, pause and rename times through a result file.
Between steps 5 and 7 the process only writes cgroup.freeze or calls kill() and reads one /proc
file, and renames.
"""

import json
import os
import select
import signal
import stat
import time

from . import health, httpd, limits, listen, paths, pause
from .pinmap import Dirs, pin_files, read_map
from .protocol import Refused


def switch(layout, release_id, parent, settings):
    """One switch to releases/<release_id>: release.map (Apache's pin) and current, renamed
    together, inside the pause when parent is an httpd PID.

    Both are symlinks: renaming one over another frees no inode, which keeps each rename near
    10 us; a regular file renamed over another costs over 100 us on ext4, inside the pause.
    """
    dirs = Dirs(layout)
    renames = []
    try:
        try:
            st = os.stat("releases/" + release_id, dir_fd=dirs.top, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise Refused("release %s does not exist on this server" % release_id)
        old = paths.current_release(layout)
        renames = pin_files(dirs, release_id, old if old != release_id else read_map(dirs, old).get("previous"),
                             settings["previous_depth"], settings.get("restore"))
        go = settings.pop("go", None)
        watchdog = None
        if go is not None and parent is not None:  # forked now: go is followed by the pause at once
            watchdog = pause.arm_watchdog(parent, settings["pause_timeout"], settings["watchdog_log"], settings.get("cgroup"))
        try:
            _wait_for_go(go)
        except BaseException:
            if watchdog is not None:
                os.close(watchdog)  # before START: the watchdog exits, nothing was paused
            raise
        if parent is None:
            t0 = time.perf_counter_ns()
            for fd, source, target in renames:
                os.rename(source, target, src_dir_fd=fd, dst_dir_fd=fd)
            ms = round((time.perf_counter_ns() - t0) / 1e6, 3)
            return {"pause_ms": 0.0, "rename_ms": ms, "renamed_at": time.time(), "paused": 0, "realtime": False,
                    "note": "httpd.pause is none"}
        before = listen.counters()  # the listen queue: connections refused while httpd is paused
        out = pause.pause_and_rename(renames, parent, settings["pause_timeout"], settings["watchdog_log"], settings["hold_ms"],
                                settings.get("cgroup"), watchdog)
        out["listen"] = listen.dropped(before, listen.counters())
        return out
    finally:
        for fd, temp, _ in renames:
            try:
                os.unlink(temp, dir_fd=fd)
            except FileNotFoundError:
                pass  # renamed into place, as intended
        dirs.close()


ARM_WAIT_S = 120  # an armed swap waits this long for its "go", then gives up having changed nothing
READY, GO = b"r", b"g"


def _wait_for_go(pipes):
    """An armed swap: say it is prepared, then wait for "go"; anything else (the agent gone with
    its connection, a disarm, ARM_WAIT_S) ends it before anything changed."""
    if pipes is None:
        return
    go, ready = pipes
    os.write(ready, READY)
    os.close(ready)
    word = os.read(go, 1) if select.select([go], [], [], ARM_WAIT_S)[0] else b""
    os.close(go)
    if word != GO:
        raise Refused("armed, but no go came (the run ended or its connection dropped): nothing was switched")


def switch_and_verify(layout, release_id, parent, old, settings):
    """Switch, check health, and switch straight back to `old` when the new release fails it."""
    result = dict(switch(layout, release_id, parent, settings), old=old, new=release_id)
    verify = settings["verify"]
    if verify:
        problem = health.problem(verify, release_id)
        result["health"] = problem or "ok"
        if problem and settings["swap_back"] and old:
            back = switch(layout, paths.release_id(old), parent, dict(settings, restore=True))
            result["swapped_back"] = True
            result["swap_back_pause_ms"] = back["pause_ms"]
            again = health.problem(dict(verify, expect_text=None), old)
            result["health_after_swap_back"] = again or "ok"
    return result


def settings_of(a):
    """The swap's settings from a request, each checked: the server trusts no bound of the client."""
    timeout = a.get("pause_timeout", limits.PAUSE_TIMEOUT_DEFAULT)
    if not limits.within(timeout, limits.PAUSE_TIMEOUT):
        raise Refused("pause_timeout must be from %s to %s seconds, got %r" % (limits.PAUSE_TIMEOUT + (timeout,)))
    hold = a.get("hold_ms", 0)
    if not limits.within(hold, (0, 1000 * limits.PAUSE_TIMEOUT[1])):
        raise Refused("hold_ms must be from 0 to %d" % (1000 * limits.PAUSE_TIMEOUT[1]))
    if a.get("pause") not in pause.PAUSES:
        raise Refused("pause must be one of %s" % ", ".join(pause.PAUSES))
    verify = a.get("verify")
    depth = a.get("previous_depth", 1)
    if not limits.within(depth, limits.PREVIOUS_DEPTH) or isinstance(depth, float):
        raise Refused("previous_depth must be a whole number from %d to %d" % limits.PREVIOUS_DEPTH)
    return {"pause_timeout": timeout, "hold_ms": hold, "pause": a["pause"], "pidfile": a.get("pidfile"),
            "verify": health.checked(verify) if verify else None, "swap_back": bool(a.get("swap_back")),
            "previous_depth": depth, "restore": bool(a.get("restore"))}


RUNNING_SWAP_WAIT_S = 2 * limits.PAUSE_TIMEOUT[1] + 60  # its pause, verify, switch back and verify again


def _start_time(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _wait_for_running_swap(pid_file):
    """Wait while an earlier swap of this site still runs (a client that was interrupted or lost
    its connection and now switches back): two switches at once could end on either release."""
    try:
        with open(pid_file) as f:
            pid, start = f.read().split()[:2]
        pid = int(pid)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + RUNNING_SWAP_WAIT_S
    while _start_time(pid) == start:
        if time.monotonic() > deadline:
            raise Refused("an earlier swap of this site (pid %d) is still running" % pid)
        time.sleep(0.01)


def _held(path, limit=60):
    """Fault tests only: wait while `path` exists (path.waiting, while it waits, holds this PID), at
    most `limit` s."""
    if not isinstance(path, str) or not path:
        return
    with open(path + ".waiting", "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + limit
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.unlink(path + ".waiting")


def op_swap(a):
    """Point current at releases/<release_id> with httpd paused, then verify; detached from SSH."""
    layout = paths.Layout(a["deploy_to"])
    release_id = paths.release_id(a["release_id"])
    settings = settings_of(a)
    _held(a.get("hold_file"))
    target = layout.release(release_id)
    if not os.path.isdir(target) or os.path.islink(target):
        raise Refused("release %s does not exist on this server" % release_id)
    # The swap's own files: in .cutover, or for the sudo helper in its root-owned directory.
    meta = a.get("meta") or layout.meta
    pid_file = os.path.join(meta, os.path.basename(layout.swap_pid))
    _wait_for_running_swap(pid_file)  # first: what is live is known once an earlier swap has ended
    old = paths.current_release(layout)
    if old is not None and settings["verify"] and settings["swap_back"] and not paths.RELEASE_ID.fullmatch(old):
        raise Refused("current points at %r, which is not a release: a failed health check could not switch back to "
                      "it; point current at a release in releases/ by hand first" % os.readlink(layout.current))
    parent = httpd.parent(settings["pidfile"]) if settings["pause"] != "none" else None
    settings["cgroup"] = pause.method(settings["pause"], parent)
    settings["watchdog_log"] = os.path.join(meta, os.path.basename(layout.watchdog_log))
    result_path = os.path.join(meta, os.path.basename(layout.swap_result(os.getpid())))
    armed = a.get("arm") is True
    if armed:
        go_r, go_w = os.pipe()
        ready_r, ready_w = os.pipe()
        settings["go"] = (go_r, ready_w)
    child = os.fork()
    if child == 0:
        if armed:
            os.close(go_w)
            os.close(ready_r)
        # Detached from the SSH session: a dropped connection cannot stop it between STOP and
        # CONT, nor between a failed health check and the switch back.
        os.setsid()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        try:
            paths.write_file(pid_file, "%d %s\n" % (os.getpid(), _start_time(os.getpid())))
            result = switch_and_verify(layout, release_id, parent, old, settings)
        except BaseException as exc:  # reported through the result file, never lost
            result = {"error": "swap failed: %s" % exc, "old": old}
        paths.write_file(result_path, json.dumps(result))
        os._exit(0)
    if armed:
        os.close(go_r)
        os.close(ready_w)
        prepared = os.read(ready_r, 1) == READY  # b"": the swap process ended before it was ready
        os.close(ready_r)
        if prepared:
            ARMED[layout.deploy_to] = (child, go_w, result_path, layout)
            return {"armed": True, "old": old}
        os.close(go_w)
    return _collect(child, result_path, layout)


ARMED = {}  # deploy_to -> (swap process, write end of its go pipe, result file, layout): this agent's armed swaps


def op_go(a):
    """Let the armed swap of deploy_to run: pause, rename, resume, verify; its answer, as op_swap's."""
    child, go, result_path, layout = _armed(a)
    try:
        os.write(go, GO)
    finally:
        os.close(go)
    return _collect(child, result_path, layout)


def op_disarm(a):
    """End the armed swap of deploy_to without switching (another host of the group failed)."""
    child, go, result_path, layout = _armed(a)
    os.close(go)  # the swap process reads EOF: it removes what it prepared and exits
    os.waitpid(child, 0)
    try:
        os.unlink(result_path)
    except OSError:
        pass  # it wrote none
    return {"disarmed": True, "current": paths.current_release(layout)}


def _armed(a):
    armed = ARMED.pop(paths.Layout(a["deploy_to"]).deploy_to, None)
    if armed is None:
        raise Refused("no armed swap for %s in this connection" % a["deploy_to"])
    return armed


def _collect(child, result_path, layout):
    """Wait for the swap process; its result, or Refused naming what failed."""
    status = os.waitpid(child, 0)[1]
    try:
        with open(result_path) as f:
            result = json.load(f)
        os.unlink(result_path)
    except (OSError, ValueError):
        how = "was killed by signal %d" % os.WTERMSIG(status) if os.WIFSIGNALED(status) else "died"
        result = {"error": "the swap process %s before it reported; the watchdog resumed httpd" % how}
    if "error" in result:
        # `current` tells the client whether this host switched before the failure
        raise Refused(result["error"], current=paths.current_release(layout))
    return result
