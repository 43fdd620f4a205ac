"""`fab -H GROUP rollback [--to RELEASE]`: switch back to the release before, no upload.

The same paused swap as a deploy, on one SSH connection per host. The release rolled away
from is kept (and marked in history), so `rollback --to` or a new deploy can return to it.
"""

from invoke import task

from . import result
from .cli import BATCH_HELP, FORCE_UNLOCK_HELP, boundary, check_batch, target
from .errors import ConfigError, CutoverError, Interrupted
from .output import Timer, count, line, live_table, shown, stop_live, table

# The steps are imported by rollback_hosts, which runs them: `fab --list` loads none of them.


def choose(hosts, to):
    """The release to switch to: --to, or the one before the live release; the same on every host.

    hosts: what each host's lock step learned (name, current, releases oldest first, previous).
    """
    from .remote.paths import PLACEHOLDER

    if to is not None:
        missing = [r.name for r in hosts if to not in r.releases]
        if missing:
            raise ConfigError(f"--to {to}: no such release on {', '.join(missing)}", hint=_kept_hint(hosts))
        if to == PLACEHOLDER:
            raise ConfigError(f"--to {to}: that is setup's placeholder, not a deployed release", hint=_kept_hint(hosts))
        return to
    picks = {}
    for r in hosts:
        if r.current is None or r.current not in r.releases:
            raise CutoverError("the live release is not a kept release; use --to RELEASE", host=r.name)
        # What was live before, from history; by release order only when history has nothing.
        # A release that a killed deploy promoted but never switched to is never chosen.
        if r.previous in r.releases and r.previous != PLACEHOLDER:
            picks[r.name] = r.previous
            continue
        i = r.releases.index(r.current)
        if i == 0 or r.releases[i - 1] == PLACEHOLDER:
            raise CutoverError(
                f"nothing to roll back to: {r.current} is the oldest deployed release; nothing was changed", host=r.name
            )
        picks[r.name] = r.releases[i - 1]
    if len(set(picks.values())) > 1:
        listed = ", ".join(f"{name}: {pick}" for name, pick in picks.items())
        raise CutoverError(f"the hosts would roll back to different releases ({listed}); pick one with --to")
    return next(iter(picks.values()))


def target_name(run):
    return ",".join(r.name for r in run.hosts)


def _kept_hint(hosts):
    """The releases every host keeps, newest first: what --to can name."""
    from .remote.paths import PLACEHOLDER

    common = set.intersection(*(set(r.releases) for r in hosts)) - {PLACEHOLDER}
    return f"releases kept on every host: {', '.join(sorted(common, reverse=True)) or 'none'}"


def rollback_hosts(hosts, to=None, force=False, batch=None):
    """The whole rollback: lock, choose, swap (with verify), record and unlock; returns the Run."""
    from . import manifest
    from .fleet import Run, close, connect
    from .remote.paths import RELEASE_ID
    from .steps.finish import abort, finish
    from .steps.hooks import run_hooks
    from .steps.lock import force_unlock, lock, unlock
    from .steps.preflight import preflight
    from .steps.repair import record_intent, repair
    from .steps.swap import spread_note, swap
    from .testhooks import fault_point, hold_point

    total = Timer()
    batch = check_batch(hosts, batch)
    if batch:
        from .steps.balancer import balancer_of

        balancer_of(hosts)  # a wrong balancer setting is refused before anything remote
    run = Run.of("rollback", hosts)
    result.started(run)
    live_table([r.name for r in run.hosts])
    try:
        connect(run)
        if to is not None and not RELEASE_ID.fullmatch(to):
            for r in run.hosts:
                r.releases = r.call("releases", "state")["releases"]
            raise ConfigError(
                f"--to {shown(to)} is not a release name; nothing was changed", hint=_kept_hint(run.hosts)
            )
        preflight(run, live_health=False)  # sudo and the helper's registration; a rollback mends a failing site
        if force:
            force_unlock(run)
        fault_point("lock")
        hold_point("lock")
        lock(run, want_previous=to is None)
        repair(run)  # a group switch a dead run left half done: whole again first
        run.release_id = choose(run.hosts, to)
        if all(r.current == run.release_id for r in run.hosts):
            raise CutoverError(f"{run.release_id} is already live; nothing was changed")
        fault_point("swap")
        record_intent(run)
        swap(run, batch)
        hook_error = run_hooks(run, "after_rollback", run.release_id)
        fault_point("finish")
        finish(run, clean=False)
        for r in run.hosts:
            manifest.now_serves(r.host, run.release_id)
        if hook_error:
            raise hook_error
    except BaseException as exc:
        # a refusal before the swap is not a failed rollback: unlock without a history line
        if any(r.switched != "no" or r.switch for r in run.hosts):
            notes = abort(run, "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else exc, remove=False)
            if isinstance(exc, KeyboardInterrupt):
                raise Interrupted(f"interrupted\n  the site now: {'; '.join(notes)}") from None
        else:
            try:
                unlock(run)
            except CutoverError as failed:  # the refusal stays the error; the unlock failure is added
                if isinstance(exc, CutoverError):
                    exc.message += f"; unlocking failed too: {failed.message}"
        raise
    finally:
        stop_live()
        close(run)
    line(
        f"rolled back to {run.release_id} on {count(len(run.hosts), 'host')} in {total.seconds:.2f} s{spread_note(run)}"
    )
    if len(run.hosts) > 1:
        line(table(run.summary()))
    migrated = {r.migrated for r in run.hosts if r.migrated}
    if migrated:
        line(
            f"note: the database stays as the migration of {run.hosts[0].current} left it; to bring it back as it "
            f"was before that migration: fab -H {target_name(run)} restore --backup {sorted(migrated)[-1]}"
        )
    return run


@task(
    help={
        "to": "the release to switch to (default: the one before the live release)",
        "force-unlock": FORCE_UNLOCK_HELP,
        "split": "roll back some hosts of a group only (-H naming hosts), leaving it on two releases",
        "batch": BATCH_HELP,
        "json": result.JSON_HELP,
    }
)
@boundary
def rollback(c, to=None, force_unlock=False, split=False, batch=None, json=None):
    """Switch back to the previous release (or --to RELEASE), paused like a deploy; no upload."""
    with result.reported(c, "rollback", json) as report:
        report.hosts = target(c, split)
        rollback_hosts(report.hosts, to, force_unlock, batch)
