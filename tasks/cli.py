"""The task boundary: resolve -H against hosts.yaml, run per host in parallel, turn errors into exits."""

import functools
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from invoke.exceptions import Exit

from . import hostsfile
from .errors import CutoverError


def target(c):
    """The hosts named by -H (a group, a host, or a comma list), or default_group without -H."""
    name = c.config.get("cutover", {}).get("target")
    return hostsfile.load().resolve(name)


def boundary(fn):
    """Wrap a task: a CutoverError becomes one clear message and the error's exit status."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CutoverError as exc:
            print(f"cutover: error: {exc}", file=sys.stderr, flush=True)
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            print("cutover: interrupted", file=sys.stderr, flush=True)
            raise Exit(code=130) from None

    return wrapper


def each_host(hosts, fn):
    """Call fn(host) for every host in parallel; returns [(host, result or CutoverError)] in order."""

    def call(host):
        try:
            return fn(host)
        except CutoverError as exc:
            if exc.host is None:
                exc.host = host.name
            return exc

    with ThreadPoolExecutor(max_workers=min(16, len(hosts)) or 1) as pool:
        return list(zip(hosts, pool.map(call, hosts)))


def shown(value, limit=80):
    """A command-line value for an error message: repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...' ({len(value)} characters)"


def say(host, step, seconds, detail=""):
    """One progress line: host, step, duration, detail."""
    name = host if isinstance(host, str) else host.name
    print(f"[{name}] {step:<10} {seconds * 1000:7.0f} ms  {detail}".rstrip(), flush=True)


class Timer:
    """Seconds since creation, for the per-step lines."""

    def __init__(self):
        self.start = time.monotonic()

    @property
    def seconds(self):
        return time.monotonic() - self.start


KILL_AT = "CUTOVER_TEST_KILL_AT"


def fault_point(step):
    """Fault tests only: SIGKILL this process at `step`, or `step:SECONDS` into it.

    The variable is set by the Murphy's-law tests (tests/test_murphy.py) to prove that a
    deploy or rollback killed anywhere leaves the site whole; nothing else sets it.
    """
    wanted = os.environ.get(KILL_AT, "")
    name, _, delay = wanted.partition(":")
    if name != step:
        return
    if not delay:
        os.kill(os.getpid(), signal.SIGKILL)
    timer = threading.Timer(float(delay), os.kill, (os.getpid(), signal.SIGKILL))
    timer.daemon = True
    timer.start()
