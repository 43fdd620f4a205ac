"""Steps 4-6 in one round trip per host: link shared entries, run the smoke tests, promote."""

from ..errors import SmokeError
from ..fleet import in_parallel
from ..output import indented, say
from . import MARGIN, health_args, health_seconds


def stage(run):
    """Link shared entries, smoke-test the incoming release, promote it; the live site is untouched."""

    def one(r):
        h = r.host
        smoke = {"commands": list(h.smoke.commands), "timeout": h.smoke.timeout, "url": h.smoke.url,
                 "health": health_args(h.health, [h.smoke.url] if h.smoke.url else [])}  # fmt: skip
        timeout = len(h.smoke.commands) * h.smoke.timeout + MARGIN
        if h.smoke.url:
            timeout += health_seconds(h.health, [h.smoke.url])
        pidfile = h.httpd.pidfile if h.httpd.pause == "sigstop" else None
        try:
            answer = r.call(
                "smoke", "stage", timeout=timeout, release_id=run.release_id, shared=list(h.shared), smoke=smoke,
                pidfile=pidfile,
            )  # fmt: skip
        except SmokeError as exc:
            exc.message += indented(exc.details.get("output"))
            raise
        for step in ("link", "smoke", "promote"):
            r.steps[step] = answer["timings"][step]
            say(r.host, step, answer["timings"][step])

    in_parallel(run.hosts, one)
