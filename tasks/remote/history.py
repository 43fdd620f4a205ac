"""history.jsonl: one JSON line per deploy, rollback, maintenance switch and forced unlock.

Every line has one schema, built here and only here:
    {"event", "started", "user", "local_host", "result", ...what the event adds}
A deploy or rollback adds release, old, duration_s, steps, bytes_sent, pause_ms, rename_ms,
cleaned, hooks and, when it failed, error. Lines are appended with one O_APPEND write each, so
two writers never interleave; a torn last line (a full disk) is skipped when read.
"""

import json
import os

from . import paths

TAIL_READ = 262144  # bytes read from the end first: enough for the last ~1,000 entries


def record(layout, event, who, result, started=None, **fields):
    """Append one entry. who: {"user", "local_host"} of the person running Cutover."""
    entry = {"event": event, "started": started or paths.now(), "user": who.get("user"),
             "local_host": who.get("local_host"), "result": result}
    entry.update((k, v) for k, v in fields.items() if v is not None)
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(layout.history, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write with O_APPEND: lines never interleave
    finally:
        os.close(fd)
    return entry


def _parse(lines):
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn line from a full disk: skip it, keep the rest
        if isinstance(entry, dict):
            out.append(entry)
    return out


def read(layout, last=None):
    """The entries, oldest first; with `last`, only the last ones (read from the end of the file)."""
    try:
        with open(layout.history, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - TAIL_READ) if last else 0
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.splitlines()
    if start:
        lines = lines[1:]  # the first line may be cut
    entries = _parse(lines)
    if last is None:
        return entries
    if len(entries) < last and start:
        return read(layout)[-last:]
    return entries[-last:]


def previous_of(entries, current):
    """The release live before `current`: the `old` of the last switch that made it live."""
    for e in reversed(entries):
        if e.get("result") != "ok" or e.get("release") != current or e.get("old") == current:
            continue  # a repair that found this host on the group's release already switched nothing
        if e.get("event") in ("deploy", "rollback", "restore", "repair"):
            return e.get("old")
    return None


def previous(layout, current):
    """previous_of() over the history, read from its end first."""
    found = previous_of(read(layout, last=1000), current)
    return found if found is not None else previous_of(read(layout), current)


def backup_of(entries, release):
    """The backup taken before the migration of the deploy that made `release` live, or None."""
    for e in reversed(entries):
        if e.get("result") == "ok" and e.get("event") == "deploy" and e.get("release") == release:
            return e.get("backup")
    return None


def protected(entries, current):
    """{backup id: why} of the backups that are a way back, which no pruning removes whatever
    keep_backups says: the one taken before the live release's migration; the one before the last
    migration that succeeded (a rollback since does not end it) and those before every migration
    that failed after it, or whose run did not finish (its backup's line names the migration), until
    another succeeds; and the data as it was before a restore that did not finish, and the backup it
    restores, until a restore succeeds."""
    out = {}
    live = backup_of(entries, current)
    if live:
        out[live] = "before the migration of the live release %s" % current
    for e in reversed(entries):
        if e.get("event") == "backup" and e.get("migration") and e.get("backup"):
            # taken before a migration whose run never wrote its own line (fab killed meanwhile)
            out.setdefault(e["backup"], "before a migration whose run did not finish, until one succeeds (of %s)"
                           % e["migration"])
            continue
        if e.get("event") != "deploy" or not e.get("backup"):
            continue
        if e.get("result") == "ok":
            out.setdefault(e["backup"], "before the last migration that succeeded (of %s)" % e.get("release"))
            break
        out.setdefault(e["backup"], "before a migration that failed, until one succeeds (of %s)" % e.get("release"))
    for e in reversed(entries):
        if e.get("event") == "backup" and e.get("restoring") and e.get("backup"):
            # saved by a restore before it changed anything: its run may have gone away since (fab killed)
            out.setdefault(e["backup"], "the data before a restore that did not finish, until one succeeds")
            out.setdefault(e["restoring"], "what a restore that did not finish restores, until one succeeds")
            continue
        if e.get("event") != "restore":
            continue
        if e.get("result") == "ok":
            break
        if e.get("backup"):
            out.setdefault(e["backup"], "the data before a restore that did not finish, until one succeeds")
    return out


def release_notes(entries):
    """{release: {"deployed", "user", "rolled_back"}} from the entries."""
    info = {}
    for e in entries:
        if e.get("result") != "ok":
            continue
        if e.get("event") == "deploy":
            info.setdefault(e.get("release"), {}).update(deployed=e.get("started"), user=e.get("user"), rolled_back=False,
                                                         ref=e.get("ref"))
        elif e.get("event") == "rollback":
            info.setdefault(e.get("old"), {})["rolled_back"] = True
            info.setdefault(e.get("release"), {})["rolled_back"] = False
    return info
