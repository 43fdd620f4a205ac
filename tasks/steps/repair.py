"""A group left on two releases by a run that died between its hosts' switches, made whole again.

Before a group switches, every host records the switch (tasks/remote/intent.py); the run that
ends, well or not, clears it. An intent found by the next run's lock step (deploy, rollback,
`fab check --repair`) is one a dead run left. Its hosts then serve its new release or the old
one, each; the repair brings every host to one of them, verified, and says which:

- hosts where the dead run concluded (its intent is gone there) show which way it ended: they all
  serve the new release (finished), or the old (it failed and switched back): the rest follow;
- else the switch is completed, where every host keeps the new release (they were all staged,
  smoke-tested and armed before the first went); where one does not, it is undone.

A switch that fails its health check is switched back on that host (the swap's own rule); then
the whole group returns to the old release.
"""

import time

from .. import manifest
from ..errors import CutoverError, HealthError
from ..fleet import Run, close, connect, in_parallel
from ..output import line, say
from .finish import finish
from .lock import force_unlock, lock, unlock
from .swap import paused, switch, verify_of


def intent_of(run):
    """What each host of a group records before any of them switches (tasks/remote/intent.py);
    None for one host, which cannot be left split. A deploy sends it with its stage request."""
    if len(run.hosts) < 2:
        return None
    return {
        "token": run.who["token"], "command": run.command, "user": run.who["user"],
        "local_host": run.who["local_host"], "release": run.release_id, "started": time.time(),
        "hosts": [r.name for r in run.hosts], "old": {r.name: r.current for r in run.hosts},
    }  # fmt: skip


def record_intent(run):
    """The intent in a request of its own, for a rollback (which has no stage step)."""
    intent = intent_of(run)
    if intent is not None:
        in_parallel(
            run.hosts, lambda r: r.call("intent", "intent", intent=intent, token=run.who["token"]), len(run.hosts)
        )


def describe(intent):
    """The dead run an intent is from, as messages name it."""
    return (
        f"an interrupted {intent.get('command')} of {intent.get('release')} "
        f"(by {intent.get('user')}@{intent.get('local_host')})"
    )


def repair_group(hosts):
    """`fab check --repair`: clear the locks of dead runs, lock, repair, record and unlock."""
    run = Run.of("repair", hosts)
    try:
        connect(run)
        force_unlock(run)
        lock(run, want_previous=True)
        done = repair(run)
        if not done:
            line("nothing to repair: no group switch was left half done")
            unlock(run)
            return done
        serving = {r.current for r in run.hosts}
        if len(serving) == 1:  # recorded in each host's history as a `repair` to that release
            run.release_id = serving.pop()
            finish(run, clean=False)
        else:
            unlock(run)
        return done
    except BaseException:
        try:
            unlock(run)
        except CutoverError:
            pass  # the error that stopped the repair is the one to report
        raise
    finally:
        close(run)


def interrupted(run):
    """The intents a dead run left on this run's hosts, one per run: [intent]."""
    found = {}
    for r in run.hosts:
        if r.intent and r.intent.get("token") != run.who["token"]:
            found.setdefault(r.intent["token"], r.intent)
    return list(found.values())


def repair(run):
    """Make every interrupted group switch whole; returns one sentence per repair (empty: none)."""
    return [_repair(run, intent) for intent in interrupted(run)]


def _repair(run, intent):
    by_name = {r.name: r for r in run.hosts}
    what = describe(intent)
    missing = [name for name in intent["hosts"] if name not in by_name]
    if missing:
        raise CutoverError(
            f"{what} spans {', '.join(missing)} too, which this run does not include; nothing was changed",
            hint="repair the whole group at once: fab -H GROUP check --repair",
        )
    hosts = [by_name[name] for name in intent["hosts"]]
    new, olds = intent["release"], intent.get("old") or {}
    strays = [r for r in hosts if r.current not in (new, olds.get(r.name))]
    if strays:
        listed = ", ".join(f"{r.name} serves {r.current}" for r in strays)
        raise CutoverError(
            f"{what}: {listed}, neither its release nor the one before; nothing was changed",
            hint="bring the group to one release with `fab rollback --to RELEASE` or a new deploy",
        )
    on_new = [r for r in hosts if r.current == new]
    if len(on_new) in (0, len(hosts)):  # it died before the first rename or after the last
        target, why = ("new" if on_new else "old"), "no host had to switch"
    else:
        target, why = _target(hosts, intent, new, olds)
    lagging = [r for r in hosts if r.current != (new if target == "new" else olds.get(r.name))]
    if lagging:
        failed = _switch(lagging, target, new, olds)
        if failed and target == "new":  # the new release failed its health check: all go back
            back = [r for r in hosts if r.current == new]
            if _switch(back, "old", new, olds):
                raise CutoverError(f"{what}: the repair could not bring the group to one release; see above")
            target, why = "old", f"completing it failed the health check on {', '.join(failed)}"
        elif failed:
            raise CutoverError(f"{what}: switching {', '.join(failed)} back failed; see above")
    for r in hosts:
        r.call("repair", "intent", clear=intent["token"], token=run.who["token"])
        r.intent = None
        manifest.now_serves(r.host, r.current)
    # what was live before, for a rollback that goes on from here
    before = {r.name: olds.get(r.name) for r in hosts} if target == "new" else {}
    if target == "old":
        settled = next((h.previous for h in hosts if h not in lagging), None)
        before = {r.name: settled for r in lagging}
    for r in hosts:
        if r.name in before:
            r.previous = before[r.name]
    done = "completed" if target == "new" else "undone"
    moved = ", ".join(r.name for r in lagging) or "no host"
    sentence = f"repaired {what}: {done} ({why}); switched {moved}; every host serves {hosts[0].current}"
    line(sentence)
    return sentence


def _target(hosts, intent, new, olds):
    """Which way the group goes ("new" or "old") and why."""
    concluded = [r for r in hosts if not r.intent or r.intent.get("token") != intent["token"]]
    if concluded:
        way = "new" if all(r.current == new for r in concluded) else "old"
        return way, f"it had ended on {', '.join(r.name for r in concluded)}"
    if all(new in r.releases for r in hosts):
        return "new", "every host keeps its release, staged and smoke-tested"
    lacking = [r.name for r in hosts if new not in r.releases]
    return "old", f"{', '.join(lacking)} no longer keeps its release"


def _switch(hosts, way, new, olds):
    """Switch these hosts to the new release (verified) or back to their old ones; returns the
    names whose switch failed (each then serves what the swap left: its previous release)."""
    failed = []

    def one(r):
        release = new if way == "new" else olds[r.name]
        verify = verify_of(r)
        try:
            answer = switch(r, "repair", release, verify, restore=way == "old")
        except CutoverError as exc:
            failed.append(r.name)
            say(r.host, "repair", 0, f"switch to {release} failed: {exc.message}")
            return
        r.current = answer["new"] if not answer.get("swapped_back") else answer["old"]
        say(r.host, "repair", 0, f"{answer['old']} -> {answer['new']}, {paused(answer)}")
        if verify is not None and answer["health"] != "ok":
            failed.append(r.name)
            raise HealthError(f"health check failed after the repair's switch: {answer['health']}")

    try:
        in_parallel(hosts, one, len(hosts))
    except CutoverError:
        pass  # the failed hosts are named in `failed`
    return failed
