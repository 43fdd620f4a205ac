"""`fab backup`, `fab backups`, `fab restore`: the shared data and the databases, saved consistent to
one instant, listed, and put back with the release that was live when they were saved."""

from invoke import task

from .cli import FORCE_UNLOCK_HELP, boundary, target
from .errors import ConfigError, CutoverError, Interrupted, RemoteError
from .output import Timer, count, line, say, shown, size, table

# The steps are imported by the tasks that run them: `fab --list` loads none of them.

LABEL_MAX = 200  # characters of --label


def check_label(label):
    if label is not None and (len(label) > LABEL_MAX or any(ord(ch) < 32 for ch in label)):
        raise ConfigError(f"--label must be one line of at most {LABEL_MAX} characters, got {shown(label)}")
    return label


@task(
    help={
        "label": "a note kept with the backup, e.g. 'before the spring sale'",
        "force-unlock": FORCE_UNLOCK_HELP,
    }
)
@boundary
def backup(c, label=None, force_unlock=False):
    """Save every shared entry and the databases, consistent to one instant (the site held briefly)."""
    from .fleet import Run, connect
    from .steps import backup as backup_step
    from .steps.lock import force_unlock as clear_lock
    from .steps.lock import lock

    check_label(label)
    run = Run.of("backup", target(c))
    backup_step.database_host(run)
    bid = backup_step.new_backup_id()
    total = Timer()
    held = None
    try:
        connect(run)
        if force_unlock:
            clear_lock(run)
        lock(run)
        held = backup_step.take(run, bid, alone=True)
        seconds, held = held.end(run), None  # writers are back before the manifest is written
        backup_step.complete(run, bid, label)
        backup_step.push(run, bid)
    except BaseException as exc:
        backup_step.discard(run, bid)
        _end(run, held, exc)
        raise
    _end(run, held)
    line(f"backup {bid} of {len(run.hosts)} host(s) in {total.seconds:.2f} s; visitors were held {seconds:.2f} s")


def _end(run, held, exc=None):
    """Maintenance off again (where this run turned it on) and the locks released, whatever happened."""
    from .fleet import close
    from .steps.lock import unlock

    try:
        if held is not None:
            held.end(run)
        unlock(run)
    except CutoverError as failed:
        if isinstance(exc, CutoverError):
            exc.message += f"; and then: {failed.message}"
        elif exc is None:
            raise
    finally:
        close(run)


@task
@boundary
def backups(c):
    """List the backups of each host, newest first: which can be restored as they are, where their copy is."""
    from .fleet import in_parallel, on_group

    def read(run):
        return in_parallel(run.hosts, lambda r: r.call("backups", "backups"))

    for r, answer in on_group("backups", target(c), read):
        rows = [["backup", "created", "label", "release", "files", "size", "new", "databases", "copy", "kept because"]]
        for b in answer["backups"]:
            rows.append([b["id"], b["created"], b.get("label") or "-", release_of(b), f"{b['files']:,}",
                         size(b["bytes"]), size(b["new_bytes"]), databases(b), b.get("copied_to") or "-",
                         b.get("protected") or "-"])  # fmt: skip
        line(f"{r.name}: {len(answer['backups'])} backup(s)")
        line(table(rows) + "\n")


def release_of(b):
    """The release a backup was taken with; one cleanup has removed since restores with --data-only only."""
    if b.get("release_present", True):
        return b["release"] or "-"
    return f"{b['release'] or '-'} (removed: --data-only)"


def databases(b):
    names = [*b["databases"], *(f"{name} (absent)" for name in b.get("absent", []))]
    return ", ".join(names) or "-"


@task(
    help={
        "backup": "the backup to restore (`fab backups` lists them)",
        "data-only": "put back the shared data and the databases only, under the live release (for a backup "
        "whose release cleanup has removed since)",
        "force-unlock": FORCE_UNLOCK_HELP,
    }
)
@boundary
def restore(c, backup=None, data_only=False, force_unlock=False):
    """Put the shared data and the databases back as a backup has them, and its release live."""
    from .fleet import Run, close, connect, in_parallel
    from .remote.paths import BACKUP_ID
    from .steps import backup as backup_step
    from .steps.finish import abort, finish
    from .steps.lock import force_unlock as clear_lock
    from .steps.lock import lock
    from .steps.swap import swap
    from .testhooks import fault_point

    if backup is None or not BACKUP_ID.fullmatch(backup):
        raise ConfigError(f"--backup {shown(backup)} is not a backup id (like 20261125T101500.123Z)",
                          hint="`fab backups` lists them")  # fmt: skip
    run = Run.of("restore", target(c))
    backup_step.database_host(run)
    total = Timer()
    before = backup_step.new_backup_id()
    started = False
    try:
        connect(run)
        if force_unlock:
            clear_lock(run)
        lock(run)
        # nothing changes before every host is known to be able to finish
        checked = in_parallel(run.hosts, lambda r: _restore(run, r, backup, data_only, check=True))
        run.release_id = _release(run, backup, checked, data_only)
        # what the restore replaces is saved first: a restore loses nothing and can itself be undone
        message = "We are restoring the site and will be back shortly."
        held = backup_step.take_complete(
            run, before, f"before restoring {backup}", message, protect=[backup], restoring=backup
        )
        run.backup = before
        started = True
        fault_point("restore")
        for r, answer in in_parallel(run.hosts, lambda r: _restore(run, r, backup, data_only)):
            say(r.host, "restore", answer["seconds"], _restored(r, answer))
        if any(r.current != run.release_id for r in run.hosts):
            swap(run)
        seconds = held.end(run)
        backup_step.push(run, before, warn=True)  # under the lock, which the server asks of a copy
        finish(run, clean=False)
    except BaseException as exc:
        notes = abort(run, "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else exc, remove=False)
        if started:
            notes.append(
                f"maintenance mode stays ON: the data may be partly restored; rerun the restore (the data as it "
                f"was before: backup {before})"
            )
        message = "; ".join(notes)
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"interrupted\n  the site now: {message}") from None
        if isinstance(exc, CutoverError) and notes:
            exc.message += f"\n  the site now: {message}"
        raise
    finally:
        close(run)
    live = f"{run.release_id} stays live (--data-only)" if data_only else f"{run.release_id} is live"
    line(
        f"restored {backup} on {len(run.hosts)} host(s) in {total.seconds:.2f} s; {live}; "
        f"visitors were held {seconds:.2f} s\n  the data as it was before the restore: backup {before} "
        f"(fab restore --backup {before})"
    )


def _release(run, backup, checked, data_only):
    """The release live after the restore: the backup's (refused where cleanup has removed it on a
    host), or with data_only the live one."""
    if data_only:
        live = {r.current for r in run.hosts}
        if len(live) > 1:
            raise CutoverError(f"the hosts serve different releases ({', '.join(sorted(map(str, live)))}); nothing "
                               "was changed", hint="make the group whole first: fab check --repair")  # fmt: skip
        return live.pop()
    releases = {answer["release"] for _, answer in checked}
    if len(releases) > 1:
        raise CutoverError(f"the hosts' backups {backup} were taken with different releases live: {sorted(releases)}")
    release = releases.pop()
    gone = [r.name for r, answer in checked if not answer["release_present"]]
    if gone:
        raise RemoteError(
            f"backup {backup} was taken with release {release} live, which is no longer on {', '.join(gone)} "
            "(cleanup removed it); nothing was changed",
            hint=f"`fab restore --backup {backup} --data-only` puts its data back under the live release; `fab "
            "backups` says which backups can be restored as they are",
        )
    return release


def _restored(r, answer):
    """What one host's restore did, in one line."""
    what = [f"shared {', '.join(answer['entries'])}"] if answer["entries"] else []
    what += [f"databases {', '.join(answer['databases'])}"] if answer["databases"] else []
    what += [f"removed {', '.join(answer['removed'])} (made since)"] if answer["removed"] else []
    what += [f"{', '.join(answer['writable'])} writable by {answer['web_user']}"] if answer["writable"] else []
    if answer.get("others_kept"):
        what.append(f"{count(len(answer['others_kept']), 'file')} of other users kept their owner and mode (the "
                    "deploy user may not change them)")  # fmt: skip
    if answer["skipped"]:
        what.append(f"{', '.join(answer['skipped'])} not restored: hosts.yaml no longer shares it")
    return "; ".join(what) or "nothing to restore: the backup holds no data"


def _restore(run, r, backup, data_only, check=False):
    from .steps import backup as backup_step

    return r.call(
        "restore", "restore", timeout=backup_step.BACKUP_TIMEOUT, token=run.who["token"], backup_id=backup,
        databases=backup_step.databases_of(run, r), shared=list(r.host.shared), writable=list(r.host.writable),
        web_user=r.host.web_user, data_only=data_only, check=check,
    )  # fmt: skip
