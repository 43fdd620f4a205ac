"""The commands hosts.yaml configures (smoke commands, hooks, the migration), run in a release.

Each runs in a process group of its own, recorded in the lock while it runs (lock.working), so
that a run whose connection is gone still holds its lock until its command has ended: a second
run can never start a migration beside one still running. A command that outlives its timeout
is killed with everything it started: its process group, and what left the group (setsid, a
daemon's double fork) found by the mark in its environment (CUTOVER_COMMAND_ID).
"""

import binascii
import os
import signal
import time

from . import lock
from .protocol import Refused

OUTPUT_KEPT = 3000  # characters of a failed command's output sent back
MARK = "CUTOVER_COMMAND_ID"  # in every command's environment: what it started carries it


def tail(text, limit=OUTPUT_KEPT):
    return text if len(text) <= limit else "..." + text[-limit:]


def release_env(layout, release_id, release_dir):
    """What a smoke command, hook or migration finds in its environment."""
    return {"RELEASE_DIR": release_dir, "RELEASE_ID": release_id, "DEPLOY_TO": layout.deploy_to}


def _as_user(name):
    """argv prefix, preexec function and environment that run a command as user `name` (root:
    setuid, with that user's HOME, USER and LOGNAME as sudo sets them; else sudo -n)."""
    import pwd

    try:
        user = pwd.getpwnam(name)
    except KeyError:
        raise Refused("user %r does not exist on this server" % name)
    if os.geteuid() == user.pw_uid:
        return [], None, {}
    if os.geteuid() != 0:
        return ["sudo", "-n", "-u", name, "--"], None, {}

    def drop():
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return [], drop, {"HOME": user.pw_dir, "USER": name, "LOGNAME": name}


def run_command(what, command, cwd, env, timeout, kind=None, user=None, layout=None, kept=OUTPUT_KEPT):
    """Run one configured shell command in cwd (as `user` if given); returns the last `kept`
    characters of its output, or Refused (with them, and its exit_code when it exited) unless it
    exits 0. Its output is read as it comes, its end kept: a command that prints gigabytes costs
    no memory for them. It has ended when its output closes and its shell has exited; a process it
    leaves running with its output open (`cmd &`, `setsid cmd &`) keeps it running, up to the
    timeout. With `layout`, the command is recorded in the lock while it runs."""
    import subprocess  # only the steps that run commands start processes

    prefix, preexec, user_env = _as_user(user) if user else ([], None, {})
    mark = "%d-%s" % (os.getpid(), binascii.hexlify(os.urandom(6)).decode())
    proc = subprocess.Popen(
        prefix + ["/bin/sh", "-c", command], cwd=cwd, env=dict(os.environ, **user_env, **env, **{MARK: mark}),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=preexec,
        start_new_session=True,
    )
    if layout is not None:
        lock.working_on(layout, what, command, proc.pid)
    deadline = time.monotonic() + timeout
    try:
        out, ended = _read_output(proc.stdout, deadline, kept)
        if ended:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # it closed its output and runs on
                ended = False
        if not ended:
            exited = proc.poll()
            if prefix:  # through sudo, as another user: only that user may signal its processes
                _kill_group_as(user, proc.pid)
            _kill_group(proc.pid)
            _kill_marked(mark)  # what left its process group (setsid, a daemon's double fork)
            _kill_holders(proc.stdout)  # and anything else holding the output (the mark cleared)
            more, _ = _read_output(proc.stdout, time.monotonic() + STOP_WAIT, kept)
            proc.stdout.close()
            proc.wait()
            how = "timed out after %ss" % timeout
            if exited is not None:
                how = "exited %d, but what it left running still held its output after %ss" % (exited, timeout)
            left = _group_members(proc.pid)
            stopped = "it was stopped, with what it started"
            if left:
                stopped = ("it could not be stopped: pid %s still run%s as %s, which this user may not signal "
                           "(let it run kill as that user through sudo, or stop them as root)"
                           % (", ".join(map(str, left)), "s" if len(left) == 1 else "", user))  # fmt: skip
            raise Refused("%s %r %s; %s" % (what, command, how, stopped), kind=kind,
                          output=tail((out + more).decode("utf-8", "replace"), kept))  # fmt: skip
    finally:
        if layout is not None:
            lock.working_on(layout, None)
    proc.stdout.close()
    out = tail(out.decode("utf-8", "replace"), kept)
    if proc.returncode != 0:
        hint = None
        if prefix and "password is required" in out:
            hint = "let the deploy user run commands as %s without a password (sudoers), or deploy as root" % user
        raise Refused("%s %r exited %d" % (what, command, proc.returncode), kind=kind, output=out, hint=hint,
                      exit_code=proc.returncode)
    return out


STOP_WAIT = 2  # seconds a stopped command's output gets to close
CHUNK = 65536


def _read_output(pipe, deadline, kept):
    """(the end of what pipe gives until it closes or the deadline, whether it closed): at most
    about 4 bytes per character kept are held (a character of UTF-8 is 1-4 bytes)."""
    import select

    fd, keep, out = pipe.fileno(), 4 * kept + 4, bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(out), False
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return bytes(out), True
        out += chunk
        if len(out) > 2 * keep:
            del out[:-keep]


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # ended already, or another user's process that sudo started: sudo ends it with its child


def _kill_group_as(user, pgid):
    """Kill process group pgid as `user` through sudo (the sudo that started it stays: root's)."""
    import subprocess

    try:
        subprocess.run(["sudo", "-n", "-u", user, "--", "kill", "-KILL", "--", "-%d" % pgid], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=STOP_WAIT * 5)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        pass  # said below: what is left of the group is named


def _group_members(pgid):
    """The pids of process group pgid still alive (zombies aside), once it has had a moment to die."""
    deadline = time.monotonic() + STOP_WAIT
    while True:
        alive = []
        for pid in os.listdir("/proc"):
            try:
                with open("/proc/%s/stat" % pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                alive.append(int(pid))
        if not alive or time.monotonic() > deadline:
            return sorted(alive)
        time.sleep(0.05)


def _kill_holders(pipe):
    """Kill every process (but this one) that holds the other end of pipe: what a command started
    and that left its process group, setsid for one. Only these could have it: the pipe is the
    command's own."""
    try:
        held = "pipe:[%d]" % os.fstat(pipe.fileno()).st_ino
        pids = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    except (OSError, ValueError):
        return
    for pid in pids:
        try:
            fds = os.listdir("/proc/%s/fd" % pid)
            if any(os.readlink("/proc/%s/fd/%s" % (pid, fd)) == held for fd in fds):
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass  # gone meanwhile, or another user's (sudo -u): nothing this user can stop


def _kill_marked(mark, rounds=3):
    """SIGKILL every process whose environment carries this command's mark (what left its process
    group); a few rounds, for a daemon that forks while it is looked for."""
    wanted = ("%s=%s" % (MARK, mark)).encode()
    for _ in range(rounds):
        found = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/environ" % name, "rb") as f:
                    marked = wanted in f.read().split(b"\0")
                if marked:
                    os.kill(int(name), signal.SIGKILL)
                    found += 1
            except (OSError, ValueError):
                pass  # gone since the listing, or another user's: not ours to see or kill
        if not found:
            return


def run_hooks(point, commands, cwd, env, timeout, layout=None):
    """Run the hooks of one point in order; returns what each did. A failing one stops the rest:
    Refused(kind=hook) with its output and the hooks that ran."""
    done = []
    for command in commands:
        t = time.monotonic()
        try:
            out = run_command("%s hook" % point, command, cwd, env, timeout, layout=layout)
        except Refused as exc:
            done.append({"point": point, "command": command, "seconds": round(time.monotonic() - t, 3),
                         "failed": True, "output": exc.extra.get("output", "")})
            raise Refused(str(exc), kind="hook", output=exc.extra.get("output"), hooks=done)
        done.append({"point": point, "command": command, "seconds": round(time.monotonic() - t, 3), "output": tail(out, 500)})
    return done
