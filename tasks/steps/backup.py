"""A backup of every host's shared data and the group's databases, consistent to one instant: a
first pass while the site runs, then maintenance on, requests in flight given `backups.hold`
seconds to end, and a second pass (only what changed meanwhile) with the databases dumped.
The caller turns maintenance off again, and says how long the site was held."""

import time
from datetime import UTC, datetime

from .. import maintenance
from ..errors import ConfigError, CutoverError
from ..fleet import each_host, in_parallel
from ..output import Timer, count, say, size
from ..testhooks import fault_point

BACKUP_TIMEOUT = 3600  # seconds for one pass on a large media directory, or a database's dump


def new_backup_id(now=None):
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S") + f".{now.microsecond // 1000:03d}Z"


def database_host(run):
    """Where the databases are dumped and restored: backups.host, else migrate.host, else the first host."""
    wanted = run.hosts[0].host.backups.host or run.hosts[0].host.migrate.host
    for r in run.hosts:
        if wanted is None or r.name == wanted:
            return r
    raise ConfigError(f"backups.host {wanted!r} is not a host of this group ({', '.join(r.name for r in run.hosts)})")


def databases_of(run, r):
    return [d.as_args() for d in r.host.backups.databases] if r is database_host(run) else []


def first_pass(run, backup_id, unlock_if_gone=False):
    """Copy the shared data while the site runs (hard links to the backup before where unchanged)."""

    def one(r):
        answer = r.call(
            "backup", "backup", timeout=BACKUP_TIMEOUT, token=run.who["token"], backup_id=backup_id, phase="copy",
            shared=list(r.host.shared), databases=databases_of(run, r), unlock_if_gone=unlock_if_gone,
        )  # fmt: skip
        say(
            r.host,
            "backup",
            answer["seconds"],
            f"first pass, while the site runs (since {answer['previous'] or 'nothing'})",
        )

    in_parallel(run.hosts, one)


class Held:
    """Writers held off: since when, and the hosts whose maintenance page this run put up (a page
    the operator had up already stays, and stays after)."""

    def __init__(self, timer, turned_on):
        self.timer, self.turned_on = timer, turned_on

    def end(self, run):
        """Maintenance off where this run turned it on; returns the seconds visitors were held."""
        maintenance.switch(run, False, only=self.turned_on)
        return self.timer.seconds


def hold_writers(run, message=None):
    """Maintenance on (a page already up kept), and time for requests in flight to end."""
    timer = Timer()
    held = Held(timer, maintenance.switch(run, True, message=message, keep=True, ends_with_run=True))
    fault_point("hold")
    try:
        time.sleep(max(r.host.backups.hold for r in run.hosts))
    except BaseException as exc:  # Ctrl-C while requests end: nothing was saved or changed
        end_after_failure(run, held, exc)
        raise
    return held


def seal(run, backup_id):
    """The second pass with writers held off, and the databases dumped."""

    def one(r):
        answer = r.call(
            "backup", "backup", timeout=BACKUP_TIMEOUT, token=run.who["token"], backup_id=backup_id, phase="seal",
            shared=list(r.host.shared), databases=databases_of(run, r), web_user=r.host.web_user,
        )  # fmt: skip
        dbs = f"; databases {', '.join(answer['databases'])} dumped" if answer["databases"] else ""
        if answer["absent"]:
            dbs += f" ({', '.join(answer['absent'])} not made yet)"
        say(r.host, "backup", answer["seconds"], f"second pass, writers held off{dbs}")

    in_parallel(run.hosts, one)


def complete(run, backup_id, label, protect=(), migration=None, restoring=None):
    """The manifest written and checked: the backup complete; old ones beyond keep_backups removed.
    migration: the release whose migration follows, restoring: the backup a restore puts back next
    (this backup, and that one, stay until a migration, or a restore, succeeds)."""

    def one(r):
        answer = r.call(
            "backup", "backup", timeout=BACKUP_TIMEOUT, token=run.who["token"], backup_id=backup_id,
            phase="complete", shared=list(r.host.shared), keep=r.host.keep_backups, label=label,
            protect=list(protect), migration=migration, restoring=restoring,
        )  # fmt: skip
        removed = f"; removed {count(len(answer['removed']), 'old backup')}" if answer["removed"] else ""
        say(
            r.host,
            "backup",
            answer["seconds"],
            f"{count(answer['files'], 'file')}, {size(answer['new_bytes'])} new, manifest checked{removed}",
        )

    in_parallel(run.hosts, one)


def push(run, backup_id, warn=False):
    """Copy the complete backup off each server that names backups.to, each host's into a folder
    of its own there, and compare it with the backup. Call it holding the lock. warn: a failure is
    a warning (the deploy or restore it belongs to is done), not an error."""

    def one(r):
        answer = r.call("backup", "backup_push", timeout=2 * BACKUP_TIMEOUT + 60, token=run.who["token"],
                        backup_id=backup_id, to=r.host.backups.to.__dict__, name=r.name)  # fmt: skip
        say(r.host, "backup", answer["seconds"], f"copied to {answer['copied_to']}, compared there with the backup")

    away = [r for r in run.hosts if r.host.backups.to]
    if not warn:
        in_parallel(away, one)
        return
    for r, outcome in each_host(away, one):
        if isinstance(outcome, CutoverError):
            say(r.host, "backup", 0, f"WARNING: backup {backup_id} stays on this server only: {outcome.message}")


def take(run, backup_id, message="We are taking a backup and will be back in a moment.", alone=False):
    """The first pass, writers held off, the second pass; returns the Held (maintenance on). On a
    failure, maintenance is off again; if this client goes away, the server turns it off itself
    (and, for a backup on its own (alone), releases the lock)."""
    first_pass(run, backup_id, unlock_if_gone=alone)
    held = hold_writers(run, message)
    try:
        seal(run, backup_id)
    except BaseException as exc:
        end_after_failure(run, held, exc)
        raise
    return held


def take_complete(run, backup_id, label, message, protect=(), migration=None, restoring=None):
    """A complete backup with writers still held off after it (for a migration or a restore that
    follows); on a failure, nothing is left of it and maintenance is off again."""
    try:
        held = take(run, backup_id, message)
    except BaseException:
        discard(run, backup_id)
        raise
    try:
        complete(run, backup_id, label, protect, migration, restoring)
    except BaseException as exc:
        discard(run, backup_id)
        end_after_failure(run, held, exc)
        raise
    return held


def end_after_failure(run, held, exc):
    """Maintenance off again where this run turned it on, after a failure that changed nothing;
    a failure to do so is added to the first one's message."""
    try:
        held.end(run)
    except CutoverError as failed:
        if isinstance(exc, CutoverError):
            exc.message += f"; and maintenance mode stays ON: {failed.message}"


def discard(run, backup_id):
    """Remove this run's incomplete backup on every host (best effort: the next backup does too)."""

    def one(r):
        r.call("backup", "backup_abort", token=run.who["token"], backup_id=backup_id)

    for r, outcome in each_host([r for r in run.hosts if r.locked], one):
        if isinstance(outcome, CutoverError):
            say(r.host, "backup", 0, f"the incomplete backup stays until the next one: {outcome.message}")
