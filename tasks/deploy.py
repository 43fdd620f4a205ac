"""`fab -H GROUP deploy`: ship the local build to every host of the group, all-old or all-new.

The deploy reads top to bottom as the steps of the README: check, preflight (what would fail at
the switch, before anything is uploaded), lock, upload, stage (link shared, smoke test, promote),
swap (with verify), finish (clean up, record, unlock); each step is a module of tasks/steps/. Phase one (lock to stage) runs on every host in parallel; only when
every host is ready do they all swap. If any swap or verify fails, the switched hosts switch back.
"""

from dataclasses import replace
from pathlib import Path

from invoke import task

from . import cli, result
from .cli import BATCH_HELP, FORCE_UNLOCK_HELP, boundary, check_batch, target
from .errors import ConfigError, CutoverError, GroupError, Interrupted, MigrationError
from .output import Timer, count, line, live_table, say, shown, since_start, size, stop_live, table

# The steps are imported by the functions that run them: `fab --list` and `fab --help` load none of
# them, and a deploy only those it runs (no backup without --migrate, no git build without --ref).

DRY_RUN_SHOWN = 20  # changed files listed per host by --dry-run


def check(hosts, build_override, built=None):
    """Step 1: validate the build and decide the release id; nothing remote changes. built: a
    build of a git ref (tasks/gitbuild.py), made already. Returns (build, BuildInfo, release id)."""
    from . import release

    build = hosts[0].build
    if any(h.build != build for h in hosts[1:]):
        raise ConfigError("the hosts of this group name different builds; deploy them as separate groups")
    # every host's local files (hosts.yaml, its SSH key ...) stay out of the one build they share
    build = replace(build, private=tuple(sorted({p for h in hosts for p in h.build.private})))
    if built:
        build = replace(built.build, private=build.private)
    elif build_override:
        try:
            build = replace(build, path=Path(build_override).resolve())
        except OSError as exc:
            raise ConfigError(f"--build {shown(build_override)}: {exc.strerror}") from None
    info = release.check_build(build)
    return build, info, release.new_release_id(build.path, commit=built.commit if built else None)


def deploy_to_hosts(
    hosts, build_override=None, dry=False, force=False, migrating=False, ref=None, batch=None, live_health=True
):
    """The whole deploy, step by step; returns the Run. live_health=False: deploy even where the
    live release fails its health check."""
    from .steps import migrate as migration

    total = Timer()
    if ref and build_override:
        raise ConfigError("--ref and --build name two builds; give one")
    batch = check_batch(hosts, batch)
    if batch:
        from .steps.balancer import balancer_of

        balancer_of(hosts)  # a wrong balancer setting is refused before anything remote
    settings = migration.check_settings(hosts)
    migrating = migrating or settings.always
    if migrating and not settings.command:
        raise ConfigError("--migrate needs migrate.command in hosts.yaml", hint="set migrate: {command: ...}")
    if migrating:
        migration.check_databases(hosts)
    if migrating and batch:
        raise ConfigError("--batch and --migrate: a migration switches every host at once, in maintenance mode")
    built = None
    if ref:
        from . import gitbuild

        built = gitbuild.build(hosts[0], ref, say=line)
    try:
        return _deploy(total, hosts, build_override, dry, force, migrating, built, batch, live_health)
    finally:
        if built:
            built.remove()


def _deploy(total, hosts, build_override, dry, force, migrating, built, batch=None, live_health=True):
    """The steps from check to finish, and the failure path."""
    from . import manifest, release
    from .fleet import Background, Run, close, connect
    from .steps.finish import abort, finish
    from .steps.hooks import run_hooks
    from .steps.lock import force_unlock, lock
    from .steps.preflight import live_health_under_lock, preflight
    from .steps.repair import repair
    from .steps.stage import stage
    from .steps.swap import spread_note, swap
    from .steps.upload import start_uploads, upload_all
    from .testhooks import fault_point, hold_point

    run = Run.of("deploy", hosts)
    run.ref = built.ref if built else None
    connecting = Background(connect, run, True)  # connections and agents start while the build is checked
    try:
        hold_point("check")
        build, info, run.release_id = check(hosts, build_override, built)
    except BaseException:
        connecting.abandon(lambda: close(run))  # the refusal is said at once; each connection closes as it opens
        raise
    result.started(run)
    doing = "dry run of release" if dry else "deploying release"
    line(f"{doing} {run.release_id} to {', '.join(r.name for r in run.hosts)}")
    if run.parallel and run.parallel < len(run.hosts):
        line(f"preparing {count(run.parallel, 'host')} at a time (parallel: {run.parallel}); all switch together")
    if not dry:
        live_table([r.name for r in run.hosts])
    run.build = info
    hashing = None
    if not dry and build.compare == "checksum":  # the build's digests, read while the SSH connections open
        hashing = Background(manifest.build_files, build.path, info.stats)
    try:
        connecting.result()
        if dry:
            return dry_run(run, build, info)
        if hashing is not None and any(manifest.knows(r.host) for r in run.hosts):
            run.files = hashing.result()  # the prelink's plan needs them: the upload waits for them
        fault_point("lock")
        start_uploads(run, build)  # rsync's server side waits for the lock step: nothing moves yet
        # what would fail at the switch, while rsync starts; refused, the waiting uploads are stopped
        preflight(run, live_health, migrating)
        if force:
            force_unlock(run)
        hold_point("lock")
        lock(run, info)
        repair(run)  # a group switch a dead run left half done: whole again before this one
        live_health_under_lock(run)  # where another run held the lock at the preflight
        hold_point("upload")
        fault_point("upload")
        upload_all(run, build)
        unchanged = Background(release.changed_since, build, info)  # while the servers stage
        fault_point("stage")
        stage(run, build)
        if unchanged.result() is not None:
            raise unchanged.result()
        fault_point("swap")
        if migrating:
            migrate_with_backup(run)
        else:
            swap(run, batch)
        hook_error = run_hooks(run, "after_switch", run.release_id)
        hold_point("finish")
        fault_point("finish")
        finish(run)
        if hashing is not None:  # read while the upload ran, where nothing waited for them
            files = run.files if run.files is not None else hashing.result()
            if files is not None:
                manifest.remember([r.host for r in run.hosts], run.release_id, files)
            else:  # a build file went while it was read: this release's files are not known here
                for r in run.hosts:
                    manifest.now_serves(r.host, run.release_id)
        if hook_error:
            raise hook_error
    except BaseException as exc:
        ctrl_c = isinstance(exc, KeyboardInterrupt)
        notes = abort(run, "interrupted (Ctrl-C)" if ctrl_c else exc, interrupted=ctrl_c)
        failed = exc.failures if isinstance(exc, GroupError) else [(None, exc)]
        if run.migration and not any(isinstance(e, MigrationError) for _, e in failed):
            # a failed migration says so itself; anything else after the migration began leaves the site
            # in maintenance mode just the same (the server keeps it on once the migration has started)
            notes.append(
                "maintenance mode stays ON: the migration ran or runs on, and the old release is live; "
                "`fab maintenance-off` once the database suits it"
            )
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"interrupted\n  the site now: {'; '.join(notes) or 'unchanged'}") from None
        if isinstance(exc, CutoverError) and notes:
            exc.message += f"\n  the site now: {'; '.join(notes)}"
        raise
    finally:
        stop_live()
        close(run)
    sent = sum(r.bytes_sent for r in run.hosts)
    pauses = "/".join(f"{r.switch.get('pause_ms')}" for r in run.hosts)
    whole = since_start()
    started = f" ({whole:.2f} s since {cli.PROGRAM or 'fab'} started)" if whole else ""
    line(
        f"deployed {run.release_id} to {count(len(run.hosts), 'host')} in {total.seconds:.2f} s{started}: "
        f"{size(sent)} sent, httpd paused {pauses} ms{spread_note(run)}"
    )
    if len(run.hosts) > 1:
        line(table(run.summary()))
    return run


def migrate_with_backup(run):
    """A backup first (its second pass inside the maintenance window the migration needs anyway),
    then the migration, the switch, maintenance off."""
    from .steps import backup as backup_step
    from .steps import migrate as migration
    from .steps.swap import swap

    bid = backup_step.new_backup_id()
    # on a failure here nothing was migrated: the site comes back as it was
    label = f"before the migration of {run.release_id}"
    held = backup_step.take_complete(run, bid, label, message=None, migration=run.release_id)
    run.backup = bid
    try:
        migration.migrate(run)
        swap(run)
    except CutoverError as exc:
        exc.message += f"\n  the backup taken before the migration: {bid} (fab restore --backup {bid})"
        raise
    held.end(run)
    run.migration = None  # maintenance is off: the new release is live on the migrated database
    backup_step.push(run, bid, warn=True)


def dry_run(run, build, info):
    """--dry-run: the plan and the files that would change on each host; nothing is changed."""
    from . import rsync
    from .fleet import in_parallel
    from .remote.paths import Layout

    line(f"release {run.release_id}: {count(info.files, 'file')}, {size(info.bytes)} from {build.path}")

    def one(r):
        current = r.call("plan", "state")["current"]
        layout = Layout(r.host.deploy_to)
        dest = layout.release(current) if current else layout.releases + "/.dry-run-empty"
        stats = rsync.upload(r.host, r.conn, build, dest, dry_run=True)
        changed = [c for c in stats.changed if not c.endswith("/")]
        shown = [f"    {path}" for path in changed[:DRY_RUN_SHOWN]]
        if len(changed) > DRY_RUN_SHOWN:
            shown.append(f"    ... and {len(changed) - DRY_RUN_SHOWN} more")
        say(r.host, "plan", stats.seconds, f"live {current or '(none)'}; {count(len(changed), 'file')} would change")
        for text in shown:
            line(text)

    in_parallel(run.hosts, one)
    line("dry run: nothing was changed")
    return run


@task(
    help={
        "dry-run": "print the plan and the files that would change; change nothing",
        "force-unlock": FORCE_UNLOCK_HELP,
        "build": "deploy this directory instead of build.path from hosts.yaml",
        "migrate": "run migrate.command in the new release, with maintenance mode on around it",
        "split": "deploy to some hosts of a group only (-H naming hosts), leaving it on two releases",
        "ref": "build and deploy this branch, tag or commit of the local git repository (build.command)",
        "batch": BATCH_HELP,
        "ignore-live-health": "deploy even to hosts whose live release fails its health check (a release that fixes it)",
        "json": result.JSON_HELP,
    }
)
@boundary
def deploy(
    c, dry_run=False, force_unlock=False, build=None, migrate=False, split=False, ref=None, batch=None,
    ignore_live_health=False, json=None,
):  # fmt: skip
    """Ship the local build: upload, smoke test, switch live atomically, verify."""
    with result.reported(c, "deploy", json, dry_run) as report:
        report.hosts = target(c, split or dry_run)
        deploy_to_hosts(
            report.hosts, build, dry_run, force_unlock, migrate, ref, batch, live_health=not ignore_live_health
        )
