"""The deploy lock: .cutover/lock/ with owner.json, appearing whole, held for a whole run.

A lock is made under a temporary name (.cutover/lock.<token>/ with owner.json written and
synced), then renamed to .cutover/lock: rename(2) of a directory fails when the target is a
directory with something in it, so of two runs exactly one gets the lock, and nobody ever sees
a lock without its owner.

Its owner is alive while the sshd session that took it lives, and after that for as long as
anything the run started still runs here: the server-side agent that serves the run (it waits
for what it started), the command it runs (.cutover/lock/working.json: a migration outlives a
lost connection), the detached swap. Only then can --force-unlock clear it.
"""

import json
import os
import re
import shutil
import time

from . import history, paths, procs
from .protocol import Refused

STALE_TEMP_S = 3600  # a lock.<token> temp dir this old was left by a run killed while locking
TOKEN = re.compile(r"[0-9A-Za-z_-]{1,64}")  # a run's token names paths beside the lock
WORKING = "working.json"  # in the lock: the command the holder runs right now


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
                return pid, procs.start_time(pid)
            with open("/proc/%d/stat" % pid) as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break  # an ancestor exited while we looked: fall back to ourselves
    return procs.this()


def connected(owner):
    """Whether the lock's owner is still connected: its session PID lives with the same start time."""
    return procs.alive(owner.get("session_pid"), owner.get("session_start"))


def working_on(layout, what, command=None, pid=None):
    """Record in the lock the command its holder runs now (pid: its process group's leader), or
    with what=None that it ended. Without a lock (a command run outside any run) nothing."""
    path = os.path.join(layout.lock, WORKING)
    if what is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # it was never written: no lock
        return
    if os.path.isdir(layout.lock) and not os.path.islink(layout.lock):
        paths.write_file(path, json.dumps({"what": what, "command": command, "pid": pid,
                                           "start": procs.start_time(pid), "since": time.time()}))


def running_command(layout):
    """The command the lock's holder started that still runs ({"what", "command", "pid", "since"}),
    or None."""
    try:
        with open(os.path.join(layout.lock, WORKING)) as f:
            command = json.load(f)
    except (OSError, ValueError):
        return None
    return command if isinstance(command, dict) and procs.alive(command.get("pid"), command.get("start")) else None


def working(layout, held):
    """What of the holder's run still runs on this server, or None: the command it ran (the
    newest record), the detached swap, or else the agent that served the run."""
    command = running_command(layout)
    if command:
        return command
    try:
        with open(layout.swap_pid) as f:
            pid, start = (int(v) for v in f.read().split()[:2])
        if procs.alive(pid, start):
            return {"what": "swap", "pid": pid}
    except (OSError, ValueError):
        pass  # no swap ever ran here
    if procs.alive(held.get("agent_pid"), held.get("agent_start")):
        return {"what": "server side", "pid": held["agent_pid"]}
    return None


def describe_working(work):
    """The still-running part of a run, as messages say it."""
    if work.get("command") is not None:
        text = "its %s %r still runs on the server (pid %s" % (work["what"], work["command"], work["pid"])
        if work.get("since"):
            text += ", for %d s" % (time.time() - work["since"])
        return text + ")"
    if work["what"] == "swap":
        return "its swap still runs on the server (pid %s)" % work["pid"]
    return "its server side is still at work (pid %s)" % work["pid"]


def owner(layout):
    """The lock's owner.json plus its age and liveness; None if the lock is free. `connected`:
    its SSH session lives; `working`: what of its run still runs here (lock.working); `alive`:
    either."""
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
    found["connected"] = connected(found)
    work = None if found["connected"] or found.get("unknown") else working(layout, found)
    found["working"] = describe_working(work) if work else None
    found["alive"] = found["connected"] or work is not None
    return found


def take(layout, who):
    """Take the lock for `who` (user, local_host, pid, command, token); Refused(kind=locked) if held."""
    if not TOKEN.fullmatch(str(who.get("token"))):
        raise Refused("the lock token %r is not one Cutover makes (letters, digits, _ and -)" % (who.get("token"),))
    os.makedirs(layout.meta, exist_ok=True)
    pid, start = session()
    agent_pid, agent_start = procs.this()
    record = dict(who, session_pid=pid, session_start=start, agent_pid=agent_pid, agent_start=agent_start,
                  started=paths.now())
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
    # renamed aside first (one rename(2)): removing it in place empties it before its rmdir, and a
    # run renaming its new lock onto the emptied directory in between would lose it
    aside = "%s.released-%s" % (layout.lock, token)
    os.rename(layout.lock, aside)
    shutil.rmtree(aside)
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
    token = a.get("token") if not a.get("force") else (a.get("who") or {}).get("token")
    if not TOKEN.fullmatch(str(token)):  # it names a path beside the lock
        raise Refused("the lock token %r is not one Cutover makes (letters, digits, _ and -)" % (token,))
    if not a.get("force"):
        return {"released": release(layout, token)}
    if os.path.islink(layout.lock):  # never made by Cutover, and no record of it tells anything
        raise Refused("the lock %s is a symlink (to %s), which Cutover never makes; nothing was removed"
                      % (layout.lock, os.readlink(layout.lock)),
                      hint="if no deploy is running on this server, remove the symlink by hand: rm %s" % layout.lock)
    held = owner(layout)
    if held is None:
        return {"released": False, "owner": None}
    if held.get("unknown"):
        raise Refused(
            "the lock %s has no owner record, so nobody can tell whether its owner still runs" % layout.lock,
            hint="if no deploy is running on this server, remove it by hand: rm -r %s" % layout.lock,
        )
    if held["connected"]:
        raise Refused(
            "the lock owner is still connected (sshd session %s): %s@%s, %s"
            % (held.get("session_pid"), held.get("user"), held.get("local_host"), held.get("command")),
            hint="wait for that run to end; --force-unlock clears only a lock whose owner is gone",
            kind="locked", lock=held,
        )
    if held["alive"]:
        raise Refused(
            "the run that holds the lock (%s@%s, %r since %s) lost its connection, but %s"
            % (held.get("user"), held.get("local_host"), held.get("command"), held.get("started"), held["working"]),
            hint="wait for it to end, then run again with --force-unlock",
            kind="locked", lock=held,
        )
    # Renamed aside first and checked: between our look and the removal another --force-unlock
    # may have cleared it and a new run taken the lock; that lock must not be removed.
    aside = "%s.removed-%s" % (layout.lock, token)
    try:
        os.rename(layout.lock, aside)
    except FileNotFoundError:
        return {"released": False, "owner": None}  # another --force-unlock cleared it since our look
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
