"""Hooks after the switch: commands run on each server inside the live release, e.g. to clear an
app's cache or reload php-fpm. A failing one does not switch anything back: the release is live
and verified; the run ends with HookError (exit 9) after recording and unlocking."""

from ..errors import HookError
from ..fleet import each_host
from ..output import Timer, indented, say
from . import margin


def run_hooks(run, point, release_id):
    """Run the hooks of `point` (after_switch, after_rollback) on every host; returns the HookError
    to raise once the run is recorded, or None."""

    def one(r):
        commands = list(getattr(r.host.hooks, point))
        if not commands:
            return None
        t = Timer()
        timeout = len(commands) * r.host.hooks.timeout + margin()
        try:
            answer = r.call(
                point, "hook", timeout=timeout, point=point, release_id=release_id, previous=r.current,
                hooks={"commands": commands, "timeout": r.host.hooks.timeout},
            )  # fmt: skip
        except HookError as exc:
            r.hooks += exc.details.get("hooks", [])
            raise
        r.hooks += answer["hooks"]
        say(r.host, "hooks", t.seconds, f"{point}: {len(answer['hooks'])} ran")

    failed = [(r, e) for r, e in each_host(run.hosts, one) if isinstance(e, BaseException)]
    if not failed:
        return None
    lines = [
        f"{r.name}: {getattr(e, 'message', repr(e))}{indented(getattr(e, 'details', {}).get('output'))}"
        for r, e in failed
    ]
    return HookError(
        f"{point} hook failed: " + "; ".join(lines) + f"\n  {release_id} is live and healthy on every host",
        hint="fix the hook and run it by hand on the server (or deploy again)",
    )
