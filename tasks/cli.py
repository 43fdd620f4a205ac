"""The task boundary: -H resolved against hosts.yaml, a CutoverError turned into one line and an exit."""

import functools
import os
import signal
import sys

from invoke.exceptions import Exit

from . import output
from .errors import ConfigError, CutoverError

PROGRAM = None  # "cutover" when run as the installed command (cutover/__main__.py); None: fab

FORCE_UNLOCK_HELP = (
    "first clear a lock whose owner is gone (its SSH session ended)"  # deploy, rollback, backup, restore
)


def target(c, split=True):
    """The hosts named by -H (a group, a host, or a comma list), or default_group without -H.

    split=False: refuse a selection that takes some hosts of a group but not all (a deploy or
    rollback would leave that group serving two releases).
    """
    from . import hostsfile  # what a task works on: not loaded to list the tasks

    name = c.config.get("cutover", {}).get("target")
    inventory = hostsfile.load()
    hosts = inventory.resolve(name)
    if name is not None:
        output.TARGET = name  # the advice in messages names these hosts too
    _keys_exist(hosts)
    if not split:
        for group, members in inventory.split_groups(hosts):
            chosen = [h.name for h in hosts if h.name in members]
            raise ConfigError(
                f"-H {name} takes {', '.join(chosen)} but not all of group {group} ({', '.join(members)}): "
                f"the group would serve two releases; nothing was changed",
                hint=f"name the whole group (-H {group}), or add --split to do it anyway",
            )
    return hosts


def _keys_exist(hosts):
    """Every SSH key the chosen hosts (and their jump hosts) log in with is a file here: a typo in
    its path is hosts.yaml's error, said before any server is asked, not a server out of reach."""
    missing = {}
    for h in hosts:
        for key in [hop.key for hop in h.jump] + [h.key]:
            if key is not None and not os.path.isfile(key):
                missing.setdefault(str(key), []).append(h.name)
    if missing:
        raise ConfigError(
            "; ".join(f"{', '.join(names)}: key: {key} does not exist" for key, names in missing.items())
            + "; nothing was changed",
            hint="fix key: in hosts.yaml (or IdentityFile in ssh_config), or put the key there",
        )


BATCH_HELP = (
    "rolling: switch N hosts at a time, each batch drained from the load balancer (balancer: in "
    "hosts.yaml) and verified before the next"
)


def check_batch(hosts, batch):
    """--batch N: a whole number from 1 to one less than the hosts (None: every host at once)."""
    if batch is None:
        return None
    try:
        n = int(batch)
    except ValueError:
        n = 0
    if not 1 <= n < len(hosts):
        raise ConfigError(
            f"--batch {str(batch)[:20]!r}: give a number of hosts from 1 to {len(hosts) - 1} (this run has "
            f"{len(hosts)}); nothing was changed",
            hint="without --batch every host switches at once",
        )
    return n


def boundary(fn):
    """Wrap a task: a CutoverError becomes one clear message and the error's exit status."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        signal.signal(signal.SIGINT, signal.default_int_handler)  # fabfile.py's early handler ends here
        try:
            return fn(*args, **kwargs)
        except CutoverError as exc:
            print(f"cutover: error: {output.named(str(exc))}", file=sys.stderr, flush=True)
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            print("cutover: interrupted", file=sys.stderr, flush=True)
            raise Exit(code=130) from None
        except BrokenPipeError:
            # `fab releases | head`: the reader is gone; say nothing more, and nothing at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise Exit(code=1) from None

    return wrapper
