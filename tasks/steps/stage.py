"""Steps 4-6 in one round trip per host: link shared entries (seeding them on the first deploy),
make writable entries writable, run the smoke tests, promote, run the before_switch hooks."""

import os

from ..errors import HookError, SmokeError
from ..fleet import in_parallel
from ..output import indented, say
from . import health_args, health_seconds, margin
from .repair import intent_of

SHARED_SAID = {"seeded": "seeded from the build", "created": "created empty"}


def stage(run, build):
    """Link, smoke-test and promote the incoming release; the live site is untouched."""

    intent = intent_of(run)  # the group's switch, recorded with this request: no round trip of its own

    def one(r):
        h = r.host
        smoke = {"commands": list(h.smoke.commands), "timeout": h.smoke.timeout, "url": h.smoke.url,
                 "health": health_args(h.health, [h.smoke.url] if h.smoke.url else [])}  # fmt: skip
        hooks = {"commands": list(h.hooks.before_switch), "timeout": h.hooks.timeout}
        timeout = (len(h.smoke.commands) * h.smoke.timeout + len(hooks["commands"]) * h.hooks.timeout) + margin()
        if h.smoke.url:
            timeout += health_seconds(h.health, [h.smoke.url])
        pidfile = h.httpd.pidfile if h.httpd.pause != "none" else None
        try:
            answer = r.call(
                "stage", "stage", timeout=timeout, release_id=run.release_id, shared=list(h.shared),
                writable=list(h.writable), readable=list(h.readable), web_user=h.web_user, smoke=smoke, hooks=hooks, pidfile=pidfile,
                pause=h.httpd.pause, intent=intent,
            )  # fmt: skip
        except (SmokeError, HookError) as exc:
            r.hooks = exc.details.get("hooks", [])
            exc.message += indented(exc.details.get("output"))
            if isinstance(exc, HookError):
                exc.message += "\n  nothing was switched"
            raise
        timings = answer["timings"]
        for step in ("link", "smoke", "promote"):
            r.steps[step] = timings[step]
        say(r.host, "link", timings["link"], _shared_note(h, build, answer))
        say(r.host, "smoke", timings["smoke"])
        say(r.host, "promote", timings["promote"])
        r.hooks = answer["hooks"]
        if r.hooks:
            r.steps["before_switch"] = timings["before_switch"]
            say(r.host, "hooks", timings["before_switch"], f"before_switch: {len(r.hooks)} ran")

    in_parallel(run.hosts, one, run.parallel)


def _shared_note(host, build, answer):
    """What happened to each shared and writable entry, when something did."""
    notes = []
    for entry, how in answer["shared"].items():
        if how in SHARED_SAID:
            notes.append(f"shared/{entry} {SHARED_SAID[how]}")
        elif build is not None and os.path.lexists(os.path.join(build.path, entry)):
            notes.append(f"the build's {entry} ignored: shared/{entry} exists")
    for kind in ("writable", "readable"):
        for entry, how in answer.get(kind, {}).items():
            notes.append(f"{entry} {kind} by {host.web_user} ({'ACL' if how == 'acl' else 'group and mode'})")
    return "; ".join(notes)
