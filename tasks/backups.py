"""`fab backup`, `fab backups`, `fab restore`: the shared data and the databases, saved consistent to
one instant, listed, and put back with the release that was live when they were saved."""

from invoke import task

from .cli import FORCE_UNLOCK_HELP, boundary, target
from .errors import ConfigError, CutoverError, Interrupted
from .fleet import Run, close, connect, in_parallel, on_group
from .output import Timer, line, say, shown, size, table
from .remote.paths import BACKUP_ID
from .steps import backup as backup_step
from .steps.finish import abort, finish
from .steps.lock import force_unlock as clear_lock
from .steps.lock import lock, unlock
from .steps.swap import swap

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
    """List the backups of each host, newest first."""

    def read(run):
        return in_parallel(run.hosts, lambda r: r.call("backups", "backups"))

    for r, answer in on_group("backups", target(c), read):
        rows = [["backup", "created", "label", "release", "files", "size", "new", "databases"]]
        for b in answer["backups"]:
            rows.append([b["id"], b["created"], b.get("label") or "-", b["release"] or "-", f"{b['files']:,}",
                         size(b["bytes"]), size(b["new_bytes"]), databases(b)])  # fmt: skip
        line(f"{r.name}: {len(answer['backups'])} backup(s)")
        line(table(rows) + "\n")


def databases(b):
    names = [*b["databases"], *(f"{name} (absent)" for name in b.get("absent", []))]
    return ", ".join(names) or "-"


@task(
    help={
        "backup": "the backup to restore (`fab backups` lists them)",
        "force-unlock": FORCE_UNLOCK_HELP,
    }
)
@boundary
def restore(c, backup=None, force_unlock=False):
    """Put the shared data and the databases back as a backup has them, and its release live."""
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
        checked = in_parallel(run.hosts, lambda r: _restore(run, r, backup, check=True))
        releases = {answer["release"] for _, answer in checked}
        if len(releases) > 1:
            raise CutoverError(
                f"the hosts' backups {backup} were taken with different releases live: {sorted(releases)}"
            )
        run.release_id = releases.pop()
        # what the restore replaces is saved first: a restore loses nothing and can itself be undone
        message = "We are restoring the site and will be back shortly."
        held = backup_step.take_complete(run, before, f"before restoring {backup}", message, protect=[backup])
        started = True
        for r, answer in in_parallel(run.hosts, lambda r: _restore(run, r, backup)):
            what = [f"shared {', '.join(answer['entries'])}"] if answer["entries"] else []
            what += [f"databases {', '.join(answer['databases'])}"] if answer["databases"] else []
            what += [f"removed {', '.join(answer['removed'])} (made since)"] if answer["removed"] else []
            say(r.host, "restore", answer["seconds"], "; ".join(what) or "nothing to restore: the backup holds no data")
        if any(r.current != run.release_id for r in run.hosts):
            swap(run)
        seconds = held.end(run)
        finish(run, clean=False)
        backup_step.push(run, before, warn=True)
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
    line(
        f"restored {backup} on {len(run.hosts)} host(s) in {total.seconds:.2f} s; {run.release_id} is live; "
        f"visitors were held {seconds:.2f} s\n  the data as it was before the restore: backup {before} "
        f"(fab restore --backup {before})"
    )


def _restore(run, r, backup, check=False):
    return r.call(
        "restore", "restore", timeout=backup_step.BACKUP_TIMEOUT, token=run.who["token"], backup_id=backup,
        databases=backup_step.databases_of(run, r), check=check,
    )  # fmt: skip
