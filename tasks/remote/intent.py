"""A group's switch, recorded on each of its hosts before any of them switches.

A run that dies between two hosts' renames (fab killed, the laptop's network gone) leaves the
group on two releases. The intent it wrote first tells the next run on the group what was under
way: which release, from which, on which hosts, by whom. That run finishes or undoes the switch
(tasks/steps/repair.py) and clears the intent; a run that ends, well or not, clears its own.

    <deploy_to>/.cutover/intent.json
    {"token", "command", "user", "local_host", "release", "old", "hosts", "started"}

Standard library only.
"""

import json
import os

from . import lock, paths
from .protocol import Refused

FIELDS = ("token", "command", "user", "local_host", "release", "old", "hosts", "started")


def path(layout):
    return os.path.join(layout.meta, "intent.json")


def read(layout):
    """The intent left here, or None."""
    try:
        with open(path(layout)) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def write(layout, intent):
    """Record the group switch this run (holding the lock) is about to make."""
    if lock.held_by(layout, intent.get("token")) is None:
        raise Refused("this run does not hold the lock of %s; no switch was recorded" % layout.deploy_to)
    release = paths.release_id(intent["release"])
    hosts = intent.get("hosts")
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise Refused("intent: hosts must be a list of names")
    record = {k: intent.get(k) for k in FIELDS}
    record["release"] = release
    paths.write_file(path(layout), json.dumps(record) + "\n")


def clear(layout, token):
    """Remove the intent of run `token`, if it is the one recorded here."""
    found = read(layout)
    if found is not None and found.get("token") == token:
        try:
            os.unlink(path(layout))
        except FileNotFoundError:
            pass  # removed since the read: what was asked


def op_intent(a):
    """Write this run's intent ({"intent": {...}}), or clear a dead run's ({"clear": token})."""
    layout = paths.Layout(a["deploy_to"])
    if a.get("intent"):
        write(layout, a["intent"])
    elif a.get("clear"):
        held = lock.held_by(layout, a.get("token"))
        if held is None:
            raise Refused("this run does not hold the lock of %s; the intent was left" % layout.deploy_to)
        clear(layout, a["clear"])
        # the repair may have switched this host: its history line's `old` is what is live now
        lock.set_old(layout, held, paths.current_release(layout))
    return {}
