"""The task boundary: -H resolved against hosts.yaml, a CutoverError turned into one line and an exit."""

import functools
import sys

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
