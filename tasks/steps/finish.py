"""Steps 9-10: clean up, record and unlock; or, after a failure, remove this run's upload,
record the failure and unlock."""

import threading
import time
from contextlib import contextmanager

from ..errors import CutoverError
from ..fleet import STOPPED_WAITING, each_host, in_parallel
from ..output import line, say

CLEANUP_TIMEOUT = 600  # seconds: removing old releases of a large site
STILL_EVERY = 5  # seconds between the lines that say what a long clean up still waits for


def _timings(run, r):
    """What the client measured of this run on one host, for its history line."""
    return {
        "release_id": run.release_id,
        "duration_s": round(time.time() - run.started, 3),
        "steps": {k: round(v, 4) for k, v in r.steps.items()},
        "bytes_sent": r.bytes_sent,
        "pause_ms": r.switch.get("pause_ms"),
        "rename_ms": r.switch.get("rename_ms"),
        "pause_method": r.switch.get("method"),
        "listen": r.switch.get("listen"),
        "switch_spread_ms": run.spread_ms,
        "go_sent_ms": run.go_ms,
        "renamed_at": r.switch.get("renamed_at"),
        "hooks": r.hooks or None,
        "ref": run.ref,
        "backup": run.backup,
    }


def finish(run, clean=True):
    """Keep keep_releases releases (never the live or the previous one), record, unlock."""

    def one(r):
        answer = r.call(
            "finish", "finish", timeout=CLEANUP_TIMEOUT, token=run.who["token"], clean=clean, keep=r.host.keep_releases,
            **_timings(run, r),
        )  # fmt: skip
        r.locked = False
        r.steps["cleanup"] = answer["cleanup_s"]
        removed = f"removed {len(answer['removed'])} old release(s)" if answer["removed"] else "nothing to remove"
        say(
            r.host,
            "cleanup" if clean else "record",
            answer["cleanup_s"],
            (removed + ", " if clean else "") + "unlocked",
        )

    doing = "removing old releases and unlocking" if clean else "unlocking"
    with _still(run, doing):
        in_parallel(run.hosts, one)


@contextmanager
def _still(run, doing):
    """Every STILL_EVERY seconds until the block ends, which hosts the run still waits for: the
    clean up of a large site on a busy disk takes seconds, after the switch's last line."""
    ended, start = threading.Event(), time.monotonic()

    def say_still():
        while not ended.wait(STILL_EVERY):
            waiting = [r.name for r in run.hosts if r.locked]
            if waiting:
                line(f"cleanup: still {doing} on {', '.join(waiting)} ({time.monotonic() - start:.0f} s)")

    threading.Thread(target=say_still, name="cleanup-still", daemon=True).start()
    try:
        yield
    finally:
        ended.set()


def abort(run, error, remove=True, interrupted=False):
    """On any failure: stop the uploads, remove this run's incoming release (never a live one),
    record the failure and unlock, on every host still reachable, in parallel. Returns one note
    per host on what it serves now; a host that cannot be reached keeps its lock, which
    --force-unlock clears once its owner (this run) is gone.

    interrupted (Ctrl-C): the wait is said at once (removing a large release from a busy disk
    takes seconds), and a second Ctrl-C ends it; each server then finishes on its own."""
    for r in run.hosts:
        if r.upload is not None:
            r.upload.stop()  # before the incoming dir it writes into is removed
    locked = [r for r in run.hosts if r.locked and r.conn is not None]
    if interrupted and locked:
        # a release a host switched to stays (the server never removes a live one)
        removing = remove and all(r.switched == "no" for r in locked)
        doing = "removing this run's upload and unlocking" if removing else "unlocking"
        line(f"Ctrl-C: {doing} on {', '.join(r.name for r in locked)}; Ctrl-C again stops waiting "
             "(a server that has not begun by then keeps the lock, which --force-unlock clears)")  # fmt: skip

    said = {}  # host name: its note, once its clean up answered

    def one(r):
        said[r.name] = _one(r)
        return said[r.name]

    def _one(r):
        answer = r.call(
            "abort", "abort", timeout=CLEANUP_TIMEOUT, token=run.who["token"], remove=remove, error=str(error),
            **_timings(run, r),
        )  # fmt: skip
        r.locked = False
        if answer.get("still"):  # an interrupted migration runs on: its lock stays, so that none runs beside it
            return (
                f"{r.name} serves {answer['current']}; {answer['still']}, so the lock stays until it has "
                "ended (then --force-unlock)"
            )
        if r.back_left and answer["current"] != r.current:
            return f"{r.name} serves {answer['current']} (switching it back to {r.current} {r.back_left})"
        return f"{r.name} serves {answer['current']}"

    try:
        outcomes = each_host(locked, one)
    except KeyboardInterrupt:
        if not interrupted:
            raise
        line(STOPPED_WAITING)
        return [said.get(r.name) or _left(run, r, remove) for r in locked]
    notes = []
    for r, outcome in outcomes:
        if isinstance(outcome, BaseException):
            why = outcome.message if isinstance(outcome, CutoverError) else repr(outcome)
            # a Ctrl-C's message has no other word of it: the host may be left on the run's release
            may = f"; it may serve {run.release_id}: switching it back {r.back_left}" if r.back_left else ""
            notes.append(f"{r.name}: could not clean up ({why}){may}; its lock stays until --force-unlock")
        else:
            notes.append(outcome)
    return notes


def _left(run, r, remove):
    """What a host serves whose clean up a second Ctrl-C stopped waiting for. Begun on the server,
    it runs to its end there; a request its agent had not read yet (a new agent starting on a
    loaded server) is lost with the connection, and the lock stays."""
    doing = "removing its upload and unlocking" if remove and r.switched == "no" else "unlocking"
    left = f"{doing} left under way (Ctrl-C): if the server had not begun it, its lock stays until --force-unlock"
    if r.switched == "yes":
        return f"{r.name} serves {run.release_id} ({left})"
    if r.switched != "no":
        return f"{r.name} may serve {run.release_id} ({left})"
    return f"{r.name} serves {r.current} ({left})"
