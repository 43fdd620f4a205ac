"""Maintenance mode: a 503 page with Retry-After, switched on and off atomically on every host."""

import time
from pathlib import Path

from invoke import task

from .cli import boundary, target
from .errors import ConfigError
from .output import say, shown

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
MESSAGE_MAX = 2000  # characters of --message


def render_page(message, retry_after, now=None):
    """The maintenance page: the message and the expected end time, HTML-escaped."""
    import html

    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime((now or time.time()) + retry_after))
    text = (TEMPLATES / "maintenance.html").read_text()
    return text.replace("@@message@@", html.escape(message)).replace("@@until@@", html.escape(until))


def check_message(message):
    if message is not None and (len(message) > MESSAGE_MAX or "\x00" in message):
        raise ConfigError(f"--message must be at most {MESSAGE_MAX} characters without NUL bytes")
    return message


def check_retry_after(value):
    from .remote import limits

    try:
        seconds = int(value)
    except (TypeError, ValueError):
        seconds = -1
    low, high = limits.RETRY_AFTER
    if not low <= seconds <= high:
        raise ConfigError(f"--retry-after must be a whole number of seconds from {low} to {high}, got {shown(value)}")
    return seconds


def switch(run, on, message=None, retry_after=None, keep=False, only=None, ends_with_run=False):
    """Turn maintenance on or off on every host of the run (connected), in parallel, or on the hosts
    named in `only`. keep: a maintenance page already up stays as it is (the operator's window).
    ends_with_run: a server turns it off by itself if this run's connection goes away before it
    turns it off or starts a migration or restore. Returns the names of the hosts whose state changed."""
    from .fleet import in_parallel

    changed = set()

    def one(r):
        m = r.host.maintenance
        seconds = retry_after or m.retry_after
        page = render_page(message or m.message, seconds) if on else None
        answer = r.call("maintenance", "maintenance", on=on, page=page, retry_after=seconds, who=run.who, keep=keep,
                        ends_with_run=ends_with_run)  # fmt: skip
        if answer["was_on"] != on:
            changed.add(r.name)
        if not answer["changed"]:
            state = f"{'on' if on else 'off'} (already)"
        elif on and answer["was_on"]:
            state = "on (page updated)"
        else:
            state = "on" if on else "off"
        if on:
            through = [*m.allow, *([m.health_path] if m.health_path else [])]
            state += f": visitors get 503 with Retry-After {seconds}; still served to {', '.join(through)}"
        say(r.host, "maintenance", 0, state)

    in_parallel([r for r in run.hosts if only is None or r.name in only], one)
    if not on:
        for r in run.hosts:
            if only is not None and r.name not in only:
                say(r.host, "maintenance", 0, "stays on: it was on before this run (`fab maintenance-off` ends it)")
    return changed


@task(
    help={
        "message": "text shown on the maintenance page (default: maintenance.message)",
        "retry-after": "seconds clients are told to wait (default: maintenance.retry_after)",
    }
)
@boundary
def maintenance_on(c, message=None, retry_after=None):
    """Answer every request with a 503 maintenance page (Retry-After), on every host."""
    from .fleet import on_group

    check_message(message)
    seconds = check_retry_after(retry_after) if retry_after is not None else None
    on_group("maintenance", target(c), lambda run: switch(run, True, message, seconds))


@task
@boundary
def maintenance_off(c):
    """Remove the maintenance page: the site answers normally again."""
    from .fleet import on_group

    on_group("maintenance", target(c), lambda run: switch(run, False))
