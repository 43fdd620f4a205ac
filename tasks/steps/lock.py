"""Step 2: the lock on every host; for a deploy also the incoming release, prelinked."""

from ..errors import CutoverError, LockError
from ..fleet import in_parallel
from ..output import Timer, say

LOCK_TIMEOUT = 300  # seconds: the prelink of a large site links every file of the live release


def lock(run, build_info=None, want_previous=False, unlock_if_gone=False):
    """Take the lock on every host; a held lock stops all.

    For a deploy (build_info given) also create the incoming release dir and hard-link the live
    release's files into it (`prelink`), so that the upload sends and writes only what changed.
    unlock_if_gone: each server frees the lock itself once this run's connection is gone and
    nothing it started runs (a run that changes nothing Cutover would have to repair).
    """

    def one(r):
        t = Timer()
        args = {"who": run.who, "want_previous": want_previous, "unlock_if_gone": unlock_if_gone}
        if build_info:
            # writable entries are never hard-linked: the web server writes into them in place
            skip = list(r.host.shared) + list(r.host.writable)
            args.update(
                release_id=run.release_id,
                prelink=dict(build_info.modes, shared=skip, sized=r.sized),
                shared=list(r.host.shared),
            )
        # held until the server says otherwise: a lock whose answer never came (Ctrl-C, a silent
        # network) may have been taken, and the way out (abort, unlock) releases it by this run's token
        r.locked = True
        try:
            answer = r.call("lock", "lock", timeout=LOCK_TIMEOUT, **args)
        except LockError as exc:
            r.locked = False
            raise lock_error(exc.details.get("lock", {})) from None
        except CutoverError as exc:
            if exc.details:  # the server answered with a refusal: it holds no lock of ours
                r.locked = False
            raise
        r.current, r.releases, r.previous = answer["current"], answer["releases"], answer.get("previous")
        r.missing_shared = answer.get("missing_shared", [])
        r.migrated = answer.get("migrated")
        r.intent = answer.get("intent")
        r.sized_ok = bool(answer.get("sized"))
        prelink = answer.get("prelink_s", 0.0)
        r.steps["lock"] = t.seconds - prelink
        say(r.host, "lock", t.seconds - prelink, f"live release {r.current or '(none)'}")
        if "prelinked" in answer:
            r.steps["prelink"] = prelink
            note = f"{answer['prelinked']} files linked from {r.current}"
            if answer["prelink_error"]:
                note += f" (stopped early: {answer['prelink_error']}; rsync sends the rest)"
            say(r.host, "prelink", prelink, note)

    in_parallel(run.hosts, one, run.parallel)


def lock_error(owner):
    """Who holds the lock, since when, and what to do about it."""
    since = owner.get("started", "?")
    who = f"{owner.get('user', '?')}@{owner.get('local_host', '?')} (pid {owner.get('pid', '?')})"
    held = f"locked by {who} running {owner.get('command', '?')!r} since {since} ({owner.get('age_s', '?')} s ago)"
    if owner.get("working"):
        held += f"; it lost its connection, but {owner['working']}"
        hint = "wait for it to end, then run again with --force-unlock"
    elif owner.get("alive"):
        hint = "wait for that run to finish"
    elif owner.get("unknown"):
        hint = "the lock has no owner record; if nothing runs there, remove it by hand (see `fab check`)"
    else:
        hint = "its SSH session is gone, so its owner is dead: run again with --force-unlock"
    return LockError(held, hint=hint)


def force_unlock(run):
    """--force-unlock: clear each host's lock when its owner's SSH session is gone."""

    def one(r):
        answer = r.call("force-unlock", "unlock", force=True, who=run.who)
        if answer["released"]:
            owner = answer["owner"]
            say(
                r.host,
                "unlock",
                0,
                f"cleared the lock of {owner.get('user')}@{owner.get('local_host')} since {owner.get('started')}",
            )

    in_parallel(run.hosts, one)


def unlock(run):
    """Release this run's locks without a history line (a refusal before anything changed)."""

    def one(r):
        r.call("unlock", "unlock", token=run.who["token"])
        r.locked = False

    locked = [r for r in run.hosts if r.locked]
    if locked:
        in_parallel(locked, one)
