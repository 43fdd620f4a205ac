"""`fab -H GROUP rollback [--to RELEASE]`: switch back to the release before, no upload.

The same paused swap as a deploy, on one SSH connection per host. The release rolled away
from is kept (and marked in history), so `rollback --to` or a new deploy can return to it.
"""

from invoke import task

from . import release
from .cli import Timer, boundary, fault_point, shown, target
from .deploy import abort, finish, force_unlock, lock, swap
from .errors import ConfigError, CutoverError
from .fleet import HostRun, Run, close, connect, in_parallel, owner_record


def choose(run, to):
    """The release to switch to: --to, or the one before the live release; the same on every host."""
    if to is not None:
        missing = [r.name for r in run.hosts if to not in r.releases]
        if missing:
            raise ConfigError(
                f"--to {to}: no such release on {', '.join(missing)}",
                hint=f"kept releases: {', '.join(reversed(run.hosts[0].releases))}",
            )
        return to
    picks = {}
    for r in run.hosts:
        if r.current is None or r.current not in r.releases:
            raise CutoverError("the live release is not a kept release; use --to RELEASE", host=r.name)
        # What was live before, from history; by release order only when history has nothing.
        # A release that a killed deploy promoted but never switched to is never chosen.
        if r.previous in r.releases:
            picks[r.name] = r.previous
            continue
        i = r.releases.index(r.current)
        if i == 0:
            raise CutoverError(
                f"nothing to roll back to: {r.current} is the oldest kept release; nothing was changed",
                host=r.name,
            )
        picks[r.name] = r.releases[i - 1]
    if len(set(picks.values())) > 1:
        listed = ", ".join(f"{name}: {pick}" for name, pick in picks.items())
        raise CutoverError(f"the hosts would roll back to different releases ({listed}); pick one with --to")
    return next(iter(picks.values()))


def rollback_hosts(target_, to=None, force=False):
    """The whole rollback: lock, choose, swap (with verify), record and unlock; returns the Run."""
    total = Timer()
    run = Run("rollback", "", [HostRun(h) for h in target_.hosts], owner_record("rollback"))
    try:
        connect(run)
        if to is not None and not release.RELEASE_ID.fullmatch(to):
            kept = run.hosts[0].agent("releases", "state")["releases"]
            raise ConfigError(
                f"--to {shown(to)} is not a release name; nothing was changed",
                hint=f"kept releases: {', '.join(reversed(kept))}",
            )
        if force:
            force_unlock(run)
        fault_point("lock")
        lock(run)
        run.release_id = choose(run, to)
        if all(r.current == run.release_id for r in run.hosts):
            raise CutoverError(f"{run.release_id} is already live; nothing was changed")
        fault_point("swap")
        swap(run)
        fault_point("finish")
        finish(run, clean=False)
    except BaseException as exc:
        # a refusal before the swap is not a failed rollback: unlock without a history line
        if any(r.swap for r in run.hosts):
            abort(run, exc, remove=False)
        else:
            _unlock(run)
        raise
    finally:
        close(run)
    print(f"rolled back to {run.release_id} on {len(run.hosts)} host(s) in {total.seconds:.2f} s", flush=True)
    return run


def _unlock(run):
    def one(r):
        r.agent("unlock", "unlock", token=run.owner["token"])
        r.locked = False

    locked = [r for r in run.hosts if r.locked]
    if locked:
        in_parallel(locked, one)


@task(
    help={
        "to": "the release to switch to (default: the one before the live release)",
        "force-unlock": "first clear a lock whose owner is gone (its SSH session ended)",
    }
)
@boundary
def rollback(c, to=None, force_unlock=False):
    """Switch back to the previous release (or --to RELEASE), paused like a deploy; no upload."""
    rollback_hosts(target(c), to, force_unlock)
