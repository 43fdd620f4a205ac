"""The first step on the servers, before anything is uploaded or locked: what would fail at the
switch. For a deploy user who is not root, whether sudo lets it run the swap helper and whether
the helper's registration still matches hosts.yaml; for a deploy, whether the live release passes
its health check (a host already failing it would fail the new release's check too, or pass it
late, while the others serve the new release for its retries, and then switch the group back).
The live release is held to the status, the protected URLs and no PHP source, not to
health.expect_text, which may name what only the new release shows."""

from .. import swaphelper
from ..errors import CutoverError, GroupError
from ..fleet import STEP_TIMEOUT, in_parallel
from ..output import Timer, say
from . import health_seconds
from .swap import verify_of

LIVE_HINT = "fix the live site first; or, when this release is what fixes it, deploy anyway with --ignore-live-health"


def preflight(run, live_health=True):
    """Ask every host at once (one round trip each); refuse the run, having changed nothing, with
    every problem found on every host. live_health=False: not the live release's health check
    (a rollback, or deploy --ignore-live-health)."""

    def one(r):
        args = {}
        if r.uses_helper:
            args["helper"] = swaphelper.probe_args(r.host)
        verify = verify_of(r) if live_health else None
        if verify is not None:
            # not expect_text: it may name what only the new release shows (its version, its title)
            args["verify"] = verify = dict(verify, expect_text=None)
        if not args:
            return
        t = Timer()
        timeout = STEP_TIMEOUT + (health_seconds(r.host.health) if verify is not None else 0)
        found = r.call("preflight", "preflight", timeout=timeout, **args)
        problems = swaphelper.problems(r.host, found) if r.uses_helper else []
        live = found.get("live") or {}
        if live.get("problem"):
            problems.append(f"the live release {live['release']} fails its health check: {live['problem']}")
        if problems:
            raise CutoverError("; ".join(problems), hint=LIVE_HINT if live.get("problem") else None)
        notes = ["sudo allows the swap helper"] if r.uses_helper else []
        if verify is not None:
            notes.append(live.get("skipped") or f"live release {live['release']} healthy")
        say(r.host, "preflight", t.seconds, "; ".join(notes))

    try:
        in_parallel(run.hosts, one, run.parallel)
    except GroupError as failed:
        changed = "nothing was uploaded or switched" if run.command == "deploy" else "nothing was switched"
        error = CutoverError(f"{changed}: {failed.message}", hint=failed.hint)
        error.exit_code = failed.exit_code
        raise error from None
