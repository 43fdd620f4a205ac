"""Maintenance mode: a 503 page with Retry-After, switched on and off atomically on every host."""

import html
import time
from pathlib import Path

from invoke import task

from .cli import boundary, say, shown, target
from .errors import ConfigError
from .fleet import HostRun, Run, close, connect, in_parallel, owner_record

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def render_page(message, retry_after, now=None):
    """The maintenance page: the message and the expected end time, HTML-escaped."""
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime((now or time.time()) + retry_after))
    text = (TEMPLATES / "maintenance.html").read_text()
    return text.replace("@@message@@", html.escape(message)).replace("@@until@@", html.escape(until))


def check_message(message):
    if message is not None and (len(message) > 2000 or "\x00" in message):
        raise ConfigError("--message must be at most 2000 characters without NUL bytes")
    return message


def check_retry_after(value):
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        seconds = -1
    if not 1 <= seconds <= 7 * 86400:
        raise ConfigError(f"--retry-after must be a whole number of seconds from 1 to 604800, got {shown(value)}")
    return seconds


def switch(run, on, message=None, retry_after=None):
    """Turn maintenance on or off on every host of the run (connected), in parallel."""

    def one(r):
        m = r.host.maintenance
        seconds = retry_after or m.retry_after
        answer = r.agent(
            "maintenance",
            "maintenance",
            on=on,
            page=render_page(message or m.message, seconds) if on else None,
            retry_after=seconds,
            user=run.owner["user"],
            local_host=run.owner["local_host"],
        )
        state = "on" if on else "off"
        already = " (already)" if answer["was_on"] == on else ""
        say(r.host, "maintenance", 0, f"{state}{already}")

    in_parallel(run.hosts, one)


def _run_on_group(c, on, message=None, retry_after=None):
    hosts = target(c).hosts
    run = Run("maintenance", "", [HostRun(h) for h in hosts], owner_record("maintenance"))
    try:
        connect(run)
        switch(run, on, message, retry_after)
    finally:
        close(run)


@task(
    help={
        "message": "text shown on the maintenance page (default: maintenance.message)",
        "retry-after": "seconds clients are told to wait (default: maintenance.retry_after)",
    }
)
@boundary
def maintenance_on(c, message=None, retry_after=None):
    """Answer every request with a 503 maintenance page (Retry-After), on every host."""
    check_message(message)
    seconds = check_retry_after(retry_after) if retry_after is not None else None
    _run_on_group(c, True, message, seconds)


@task
@boundary
def maintenance_off(c):
    """Remove the maintenance page: the site answers normally again."""
    _run_on_group(c, False)
