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
KILL_WAIT_S = 5  # seconds a killed command's output may take to end


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
    """Run one configured shell command in cwd (as `user` if given); Refused (with the last `kept`
    characters of its output, and its exit_code when it exited) unless it exits 0. With `layout`,
    the command is recorded in the lock while it runs."""
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
    try:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            _kill_marked(mark)
            try:
                out, _ = proc.communicate(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                # what still holds the output is out of reach (another user's, its environment
                # cleared): the step ends all the same, without the rest of the output
                proc.kill()
                proc.stdout.close()
                proc.wait()
                out = b"(the output was not read to its end: a process the command started still holds it)"
            raise Refused("%s %r timed out after %ss; it was stopped, with what it started" % (what, command, timeout),
                          kind=kind, output=tail(out.decode("utf-8", "replace"), kept))
    finally:
        if layout is not None:
            lock.working_on(layout, None)
    out = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        hint = None
        if prefix and "password is required" in out:
            hint = "let the deploy user run commands as %s without a password (sudoers), or deploy as root" % user
        raise Refused("%s %r exited %d" % (what, command, proc.returncode), kind=kind, output=tail(out, kept), hint=hint,
                      exit_code=proc.returncode)
    return out


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # ended already, or another user's process that sudo started: sudo ends it with its child


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
