"""`fab -H GROUP deploy`: ship the local build to every host of the group, all-old or all-new.

The deploy reads top to bottom as the steps of the README: check, lock, upload, stage (link
shared, smoke test, promote), swap (with verify), finish (clean up, record, unlock). Phase one
(lock to stage) runs on every host in parallel; only when every host is ready do they all swap.
If any swap or verify fails, the hosts that switched are switched back.
"""

import os
import time
from pathlib import Path

from invoke import task

from . import maintenance, release, upload
from .cli import Timer, boundary, fault_point, say, shown, target
from .errors import ConfigError, CutoverError, HealthError, LockError, MigrationError, RemoteError, SmokeError
from .fleet import HostRun, Run, close, connect, in_parallel, owner_record
from .hostsfile import Build

# --- the steps --------------------------------------------------------------------------------


def check(target_, build_override, command):
    """Step 1: validate the build and decide the release id; nothing remote yet."""
    hosts = list(target_.hosts)
    build = hosts[0].build
    if build_override:
        try:
            build = Build(Path(build_override).resolve(), build.required, build.compare)
        except OSError as exc:
            raise ConfigError(f"--build {shown(build_override)}: {exc.strerror}") from None
    elif any(h.build != build for h in hosts[1:]):
        raise CutoverError("the hosts of this group name different builds; deploy them as separate groups")
    info = release.check_build(build)
    release_id = release.new_release_id(build.path)
    runs = [HostRun(h) for h in hosts]
    return Run(command, release_id, runs, owner_record(command)), build, info


def lock(run, build_info=None):
    """Step 2: take the lock on every host; a held lock stops all.

    For a deploy (build_info given) also create the incoming release dir and hard-link the live
    release's files into it (`prelink`), so that the upload sends and writes only what changed.
    """

    def one(r):
        t = Timer()
        args = {"release_id": None}
        if build_info:
            args = {"release_id": run.release_id, "prelink": dict(build_info.modes, shared=list(r.host.shared))}
        try:
            answer = r.agent("lock", "begin", owner=run.owner, **args)
        except RemoteError as exc:
            if exc.answer.get("error") == "locked":
                raise _lock_error(r, exc.answer.get("lock", {})) from None
            raise
        r.locked = True
        r.current = answer["current"]
        r.releases = answer["releases"]
        r.previous = answer.get("previous")
        prelink = answer.get("prelink_s", 0.0)
        r.steps["lock"] = t.seconds - prelink
        say(r.host, "lock", t.seconds - prelink, f"live release {r.current or '(none)'}")
        if "prelinked" in answer:
            r.steps["prelink"] = prelink
            note = f"{answer['prelinked']} files linked from {r.current}"
            if answer["prelink_error"]:
                note += f" (stopped early: {answer['prelink_error']}; rsync sends the rest)"
            say(r.host, "prelink", prelink, note)

    in_parallel(run.hosts, one)


def _lock_error(r, owner):
    since = owner.get("started", "?")
    who = f"{owner.get('user', '?')}@{owner.get('local_host', '?')} (pid {owner.get('pid', '?')})"
    held = f"locked by {who} running {owner.get('command', '?')!r} since {since} ({owner.get('age_s', '?')} s ago)"
    if owner.get("alive"):
        hint = "wait for that run to finish"
    else:
        hint = "its SSH session is gone, so its owner looks dead: deploy again with --force-unlock"
    return LockError(held, host=r.name, hint=hint)


def start_uploads(run, build):
    """Step 3 begins with the lock step: rsync's SSH start overlaps it, its server side waiting
    for the incoming dir (when_ready.py); on any failure abort() stops it."""
    for r in run.hosts:
        r.upload = upload.Upload(r.host, build.path, r.layout.incoming(run.release_id), when_ready=True)


def upload_all(run):
    """Step 3: rsync the build into releases/.incoming-<id>, over the files prelinked there."""

    def one(r):
        stats = r.upload.result(progress=lambda text: print(f"[{r.name}] upload     {text}", flush=True))
        r.steps["upload"] = stats.seconds
        r.bytes_sent, r.files_sent = stats.bytes_sent, stats.files
        say(r.host, "upload", stats.seconds, f"{stats.files} files changed, {_size(stats.bytes_sent)} sent")

    in_parallel(run.hosts, one)


def stage(run):
    """Steps 4-6 in one round trip: link shared entries, run the smoke tests, promote."""

    def one(r):
        h = r.host
        smoke = {
            "commands": list(h.smoke.commands),
            "timeout": h.smoke.timeout,
            "url": h.smoke.url,
            "health": _health_args(h),
        }
        pidfile = h.httpd.pidfile if h.httpd.pause == "sigstop" else None
        try:
            answer = r.agent(
                "smoke", "stage", release_id=run.release_id, shared=list(h.shared), smoke=smoke, pidfile=pidfile
            )
        except RemoteError as exc:
            if exc.answer.get("smoke"):
                output = exc.answer.get("output", "").rstrip()
                detail = "\n  output:\n    " + "\n    ".join(output.splitlines()) if output else ""
                raise SmokeError(exc.answer["error"] + detail, host=r.name) from None
            raise
        for step in ("link", "smoke", "promote"):
            r.steps[step] = answer["timings"][step]
            say(r.host, step, answer["timings"][step])

    in_parallel(run.hosts, one)


def _health_args(h):
    return {
        "urls": list(h.health.urls),
        "expect_status": h.health.expect_status,
        "expect_text": h.health.expect_text,
        "retries": h.health.retries,
        "timeout": h.health.timeout,
    }


def migration_host(run):
    """The host that runs the migration: migrate.host, else the first host of the group."""
    wanted = run.hosts[0].host.migrate.host
    for r in run.hosts:
        if wanted is None or r.name == wanted:
            return r
    raise CutoverError(f"migrate.host {wanted!r} is not a host of this group ({', '.join(r.name for r in run.hosts)})")


def migrate(run):
    """Run migrate.command inside the new release, on one host; maintenance is on already."""
    r = migration_host(run)
    m = r.host.migrate
    try:
        answer = r.agent("migrate", "migrate", release_id=run.release_id, command=m.command, limit=m.timeout)
    except RemoteError as exc:
        output = exc.answer.get("output", "").rstrip()
        detail = "\n  output:\n    " + "\n    ".join(output.splitlines()) if output else ""
        raise MigrationError(
            f"{exc.answer.get('error', exc.message)}{detail}\n  nothing was switched; maintenance mode stays ON "
            "so that no visitor meets a half-migrated database",
            host=r.name,
            hint="fix the database and the migration, then deploy again with --migrate; `fab maintenance-off` "
            "turns the site back on as it is",
        ) from None
    say(
        r.host,
        "migrate",
        answer["seconds"],
        answer["output"].strip().splitlines()[-1] if answer["output"].strip() else "",
    )


def swap_args(h):
    return {"pidfile": h.httpd.pidfile, "pause": h.httpd.pause, "pause_timeout": h.httpd.pause_timeout}


def swap(run):
    """Steps 7-8: switch every host at once (httpd paused), verify; switch all back on any failure."""
    hold_ms = int(os.environ.get("CUTOVER_TEST_HOLD_PAUSE_MS", "0"))  # fault tests widen the pause

    def one(r):
        t = Timer()
        verify = _health_args(r.host) if r.host.health.urls else None
        answer = r.agent(
            "swap",
            "swap",
            helper=r.uses_helper,
            release_id=run.release_id,
            verify=verify,
            swap_back=True,
            hold_ms=hold_ms,
            **swap_args(r.host),
        )
        r.swap = answer
        r.swapped = not answer.get("swapped_back")
        r.steps["swap"] = t.seconds
        note = f" ({answer['note']})" if answer.get("note") else ""
        say(
            r.host, "swap", t.seconds, f"{answer['old']} -> {answer['new']}, httpd paused {answer['pause_ms']} ms{note}"
        )
        if verify is None:
            say(r.host, "verify", 0, "skipped: no health.url")
        elif answer["health"] != "ok":
            raise HealthError(
                f"health check failed after the switch: {answer['health']}; switched back to {answer['old']} at once "
                f"(health after switching back: {answer.get('health_after_swap_back', 'not checked')})",
                host=r.name,
            )
        else:
            say(r.host, "verify", 0, "healthy")

    try:
        in_parallel(run.hosts, one)
    except CutoverError as exc:
        undone = switch_back(run)
        if undone:
            exc.message += f"; switched back on {', '.join(undone)} so the group stays on one release"
        raise


def switch_back(run):
    """Return every host this run switched to the release it served before; names those hosts."""
    back = [r for r in run.hosts if r.swapped and r.current]
    if not back:
        return []

    def one(r):
        answer = r.agent("switch back", "swap", helper=r.uses_helper, release_id=r.current, **swap_args(r.host))
        r.swapped = False
        say(r.host, "switch back", 0, f"{answer['old']} -> {answer['new']}, httpd paused {answer['pause_ms']} ms")

    in_parallel(back, one)
    return [r.name for r in back]


def record(run, r, result, error=None):
    """The history line of one host."""
    entry = {
        "event": run.command,
        "release": run.release_id,
        "old": r.current,
        "user": run.owner["user"],
        "local_host": run.owner["local_host"],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run.started)),
        "duration_s": round(time.time() - run.started, 3),
        "steps": {k: round(v, 4) for k, v in r.steps.items()},
        "bytes_sent": r.bytes_sent,
        "pause_ms": r.swap.get("pause_ms"),
        "result": result,
    }
    if error:
        entry["error"] = error
    return entry


def finish(run, clean=True):
    """Steps 9-10: keep keep_releases releases (never current or previous), record, unlock."""

    def one(r):
        answer = r.agent(
            "finish",
            "finish",
            clean=clean,
            keep=r.host.keep_releases,
            protect=[r.current],
            record=record(run, r, "ok"),
            token=run.owner["token"],
        )
        r.locked = False
        r.steps["cleanup"] = answer["cleanup_s"]
        removed = f"removed {len(answer['removed'])} old release(s)" if answer["removed"] else "nothing to remove"
        say(
            r.host,
            "cleanup" if clean else "record",
            answer["cleanup_s"],
            (removed + ", " if clean else "") + "unlocked",
        )

    in_parallel(run.hosts, one)


def abort(run, error, remove=True):
    """On any failure: remove this run's uploads (never a live release), record it, unlock.

    Runs on every host still reachable; a host that cannot be reached keeps its lock, which
    --force-unlock clears once its owner (this run) is gone.
    """
    notes = []
    for r in run.hosts:
        if r.upload is not None:
            r.upload.stop()  # before the incoming dir it writes into is removed
    for r in run.hosts:
        if not r.locked or r.conn is None:
            continue
        try:
            answer = r.agent(
                "abort",
                "abort",
                release_id=run.release_id,
                remove=remove,
                record=record(run, r, "failed", str(error)),
                token=run.owner["token"],
            )
            r.locked = False
            notes.append(f"{r.name} serves {answer['current']}")
        except CutoverError as exc:
            notes.append(f"{r.name}: could not clean up ({exc.message}); its lock stays until --force-unlock")
    return notes


def force_unlock(run):
    """--force-unlock: clear each host's lock when its owner's SSH session is gone."""

    def one(r):
        answer = r.agent("force-unlock", "unlock", force=True, user=run.owner["user"])
        if answer["released"]:
            owner = answer["owner"]
            say(
                r.host,
                "unlock",
                0,
                f"cleared the lock of {owner.get('user')}@{owner.get('local_host')} since {owner.get('started')}",
            )

    in_parallel(run.hosts, one)


def dry_run(run, build, info):
    """--dry-run: the plan and the files that would change on each host; nothing is changed."""
    print(f"release {run.release_id}: {info.files} files, {_size(info.bytes)} from {build.path}")

    def one(r):
        state = r.agent("plan", "state")
        current = state["current"]
        dest = r.layout.release(current) if current else r.layout.releases + "/.dry-run-empty"
        stats = upload.upload(r.host, build.path, dest, dry_run=True)
        changed = [c for c in stats.changed if not c.endswith("/")]
        say(r.host, "plan", stats.seconds, f"live {current or '(none)'}; {len(changed)} files would change")
        for line in changed[:20]:
            print(f"    {line}")
        if len(changed) > 20:
            print(f"    ... and {len(changed) - 20} more")

    in_parallel(run.hosts, one)
    print("dry run: nothing was changed")


def _size(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


# --- the flow ---------------------------------------------------------------------------------


def deploy_to_hosts(target_, build_override=None, dry=False, force=False, migrating=False):
    """The whole deploy, step by step; returns the Run."""
    total = Timer()
    run, build, info = check(target_, build_override, "deploy")
    migrating = migrating or run.hosts[0].host.migrate.always
    if migrating and not run.hosts[0].host.migrate.command:
        raise CutoverError("--migrate needs migrate.command in hosts.yaml", hint="set migrate: {command: ...}")
    print(f"deploying release {run.release_id} to {', '.join(r.name for r in run.hosts)}", flush=True)
    try:
        connect(run)
        if dry:
            dry_run(run, build, info)
            return run
        if force:
            force_unlock(run)
        fault_point("lock")
        start_uploads(run, build)
        lock(run, info)
        fault_point("upload")
        upload_all(run)
        fault_point("stage")
        stage(run)
        fault_point("swap")
        if migrating:
            maintenance.switch(run, True)
            migrate(run)
            swap(run)
            maintenance.switch(run, False)
        else:
            swap(run)
        fault_point("finish")
        finish(run)
    except BaseException as exc:
        notes = abort(run, exc)
        if migrating and isinstance(exc, HealthError):
            notes.append("maintenance mode stays ON: the database is migrated but the old release is live")
        if isinstance(exc, CutoverError) and notes:
            state = "; ".join(notes)
            exc.message += f"\n  the site now: {state}"
        raise
    finally:
        close(run)
    sent = sum(r.bytes_sent for r in run.hosts)
    pauses = "/".join(f"{r.swap.get('pause_ms')}" for r in run.hosts)
    print(
        f"deployed {run.release_id} to {len(run.hosts)} host(s) in {total.seconds:.2f} s: "
        f"{_size(sent)} sent, httpd paused {pauses} ms",
        flush=True,
    )
    return run


@task(
    help={
        "dry-run": "print the plan and the files that would change; change nothing",
        "force-unlock": "first clear a lock whose owner is gone (its SSH session ended)",
        "build": "deploy this directory instead of build.path from hosts.yaml",
        "migrate": "run migrate.command in the new release, with maintenance mode on around it",
    }
)
@boundary
def deploy(c, dry_run=False, force_unlock=False, build=None, migrate=False):
    """Ship the local build: upload, smoke test, switch live atomically, verify."""
    deploy_to_hosts(target(c), build, dry_run, force_unlock, migrate)
