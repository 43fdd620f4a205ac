"""`fab run`: a one-off command in the live release, under the caller's lock, recorded in history.

The client takes the lock on every host first (a deploy cannot start under the command, nor the
command under a deploy), then asks each host to run it. The command is recorded in the lock while
it runs (commands.run_command), so a run whose client went away keeps its lock alive until the
command has ended: it is never cut halfway, it is recorded here, and the lock (taken with
unlock_if_gone) goes once this agent sees the connection gone.
"""

import os
import stat
import time

from . import history, lock, paths
from .commands import release_env, run_command, tail
from .protocol import Refused

OUTPUT_SENT = 100000  # characters of the command's output sent back (its end)
OUTPUT_RECORDED = 500  # characters of it kept in history


def live_release(layout):
    """(release id, its directory) of what `current` names: releases/<id>, a real directory.
    Refused for anything else (a path elsewhere, `..`, a release that is a symlink or missing)."""
    try:
        target = os.readlink(layout.current)
    except OSError:
        raise Refused("%s is not a symlink to a release: nothing is live here" % layout.current,
                      hint="deploy first (`fab setup` makes the placeholder release)")
    parts = target.split("/")
    if len(parts) != 2 or parts[0] != "releases" or not paths.RELEASE_ID.fullmatch(parts[1]):
        raise Refused("current points at %r, which names no release (releases/<id>); nothing was run" % target,
                      hint="`fab releases` lists the kept releases; `fab rollback --to RELEASE` points current at one")
    release_dir = layout.release(parts[1])
    try:
        mode = os.lstat(release_dir).st_mode
    except FileNotFoundError:
        mode = 0
    if not stat.S_ISDIR(mode):
        raise Refused("current points at %r, but releases/%s is not a directory here; nothing was run"
                      % (target, parts[1]))
    return parts[1], release_dir


def op_run(a):
    """Run a["command"] in the live release as a["user"] (None: this user), under the caller's lock
    (a["token"]). Answers {release, as, exit, output, seconds}: a command that exits non-zero is an
    answer, not a refusal; one that times out is refused, with its output. Recorded either way."""
    layout = paths.Layout(a["deploy_to"])
    held = lock.held_by(layout, a["token"])
    if held is None:
        raise Refused("this run does not hold the lock of %s; nothing was run" % layout.deploy_to)
    release_id, release_dir = live_release(layout)
    user = a.get("user")
    as_user = user or _me()
    started, t = paths.now(), time.monotonic()
    record = {"command": a["command"], "as": as_user, "release": release_id}
    env = release_env(layout, release_id, release_dir)
    try:
        output = run_command("command", a["command"], release_dir, env, a["command_timeout"], user=user, layout=layout,
                             kind="command", kept=OUTPUT_SENT)
        code = 0
    except Refused as exc:
        output = exc.extra.get("output") or ""
        code = exc.extra.get("exit_code")
        if code is None:  # it timed out, or could not start as that user
            history.record(layout, "run", held, "failed", started=started, error=str(exc),
                           duration_s=round(time.monotonic() - t, 3), output=tail(output, OUTPUT_RECORDED), **record)
            raise
    seconds = time.monotonic() - t
    history.record(layout, "run", held, "ok" if code == 0 else "failed", started=started, exit=code,
                   duration_s=round(seconds, 3), output=tail(output, OUTPUT_RECORDED), **record)
    return dict(record, exit=code, output=tail(output, OUTPUT_SENT), seconds=seconds)


def _me():
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
