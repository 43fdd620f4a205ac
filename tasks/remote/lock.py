"""The deploy lock: .cutover/lock/ with owner.json, appearing whole, held for a whole run.

A lock is made under a temporary name (.cutover/lock.<token>/ with owner.json written and
synced), then renamed to .cutover/lock: rename(2) of a directory fails when the target is a
directory with something in it, so of two runs exactly one gets the lock, and nobody ever sees
a lock without its owner. Its owner is alive while the sshd session that took it lives.
"""

import json
import os
import shutil
import time

from . import history, paths
from .protocol import Refused

STALE_TEMP_S = 3600  # a lock.<token> temp dir this old was left by a run killed while locking


def _proc_start(pid):
    """The start time of pid (clock ticks since boot), or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def session():
    """PID and start time of the sshd process serving this connection: the lock's liveness.

    A deploy holds its SSH connection for its whole run; when that process is gone, so is the
    run that took the lock. Without an sshd above us (an agent run locally), this process.
    """
    pid = os.getppid()
    while pid > 1:
        try:
            with open("/proc/%d/comm" % pid) as f:
                name = f.read().strip()
            if name.startswith("sshd"):
                return pid, _proc_start(pid)
            with open("/proc/%d/stat" % pid) as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break  # an ancestor exited while we looked: fall back to ourselves
    return os.getpid(), _proc_start(os.getpid())


def owner_alive(owner, start_of):
    """Whether the lock's owner still runs: its session PID lives with the same start time."""
    pid = owner.get("session_pid")
    return bool(pid) and start_of(pid) == owner.get("session_start")


def owner(layout):
    """The lock's owner.json plus its age and liveness; None if the lock is free."""
    try:
        age = round(time.time() - os.stat(layout.lock).st_mtime, 1)
    except FileNotFoundError:
        return None
    try:
        with open(layout.owner) as f:
            found = json.load(f)
    except (OSError, ValueError):
        # Cutover's locks appear whole; this one was made by hand or by an older Cutover
        found = {"user": "?", "local_host": "?", "command": "? (no owner.json)", "unknown": True}
    found["age_s"] = age
    found["alive"] = owner_alive(found, _proc_start)
    return found


def take(layout, who):
    """Take the lock for `who` (user, local_host, pid, command, token); Refused(kind=locked) if held."""
    os.makedirs(layout.meta, exist_ok=True)
    pid, start = session()
    record = dict(who, session_pid=pid, session_start=start, started=paths.now())
    temp = "%s.%s" % (layout.lock, who["token"])
    os.mkdir(temp)
    try:
        paths.write_file(os.path.join(temp, "owner.json"), json.dumps(record))
        os.rename(temp, layout.lock)  # exactly one of two racing runs gets here
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        if os.path.isdir(layout.lock):
            raise Refused("locked", kind="locked", lock=owner(layout) or {})
        raise exc


def held_by(layout, token):
    """The lock's owner record if run `token` holds it, else None."""
    try:
        with open(layout.owner) as f:
            held = json.load(f)
    except (OSError, ValueError):
        return None
    return held if held.get("token") == token else None


def set_old(layout, held, release_id):
    """What the holder's history line will call the release live before it: release_id (a repair
    switched this host after the lock was taken)."""
    paths.write_file(layout.owner, json.dumps(dict(held, old=release_id)))


def release(layout, token):
    """Remove the lock only if it is ours (same token); True if removed."""
    if held_by(layout, token) is None:
        return False
    shutil.rmtree(layout.lock)
    return True


def stale_temps(layout):
    """Temp lock dirs of runs killed while locking, old enough to remove."""
    out = []
    for name in os.listdir(layout.meta) if os.path.isdir(layout.meta) else []:
        path = os.path.join(layout.meta, name)
        if name.startswith("lock.") and os.path.isdir(path) and not os.path.islink(path):
            if time.time() - os.stat(path).st_mtime > STALE_TEMP_S:
                out.append(path)
    return out


def op_unlock(a):
    """Release our lock (token), or with force a lock whose owner's SSH session is gone."""
    layout = paths.Layout(a["deploy_to"])
    if not a.get("force"):
        return {"released": release(layout, a["token"])}
    held = owner(layout)
    if held is None:
        return {"released": False, "owner": None}
    if held.get("unknown"):
        raise Refused(
            "the lock %s has no owner record, so nobody can tell whether its owner still runs" % layout.lock,
            hint="if no deploy is running on this server, remove it by hand: rm -r %s" % layout.lock,
        )
    if held["alive"]:
        raise Refused(
            "the lock owner is still connected (sshd session %s): %s@%s, %s"
            % (held.get("session_pid"), held.get("user"), held.get("local_host"), held.get("command")),
            hint="wait for that run to end; --force-unlock clears only a lock whose owner is gone",
        )
    # Renamed aside first and checked: between our look and the removal another --force-unlock
    # may have cleared it and a new run taken the lock; that lock must not be removed.
    aside = "%s.removed-%s" % (layout.lock, a["who"]["token"])
    os.rename(layout.lock, aside)
    try:
        with open(os.path.join(aside, "owner.json")) as f:
            taken = json.load(f).get("token")
    except (OSError, ValueError):
        taken = None
    if taken != held.get("token"):
        os.rename(aside, layout.lock)
        raise Refused("the lock changed hands while it was being cleared; nothing was removed")
    shutil.rmtree(aside)
    history.record(layout, "force-unlock", a["who"], "ok", owner=held)
    return {"released": True, "owner": held}
