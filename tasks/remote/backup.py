"""Backups of the shared data and the databases, consistent to one instant, and restoring them.

A backup is taken in two passes under the deploy lock. The first copies every shared entry while
the site runs (rsync, with hard links to the previous backup's unchanged files, as rsnapshot
does). Then, with writers held off (the client turns maintenance mode on and lets requests in
flight end), the second pass copies only what changed meanwhile and the databases are dumped
(the SQLite online backup API; a single-transaction mariadb-dump). Writers are back before a
manifest (every file's path, size and sha256, every symlink's target) is written and checked;
only then is backups/.incoming-<id> renamed to backups/<id>. Files keep their owner, mode, ACLs
and extended attributes (rsync -A -X), and backups/ is the deploy user's alone (0700): it holds
what the web server's user owns. A copy off the server (backups.to, offsite.py) is made last,
from the complete backup; a restore is restore.py.
"""

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time

from . import dumps, history, lock, paths, protocol
from .manifests import INFO, MANIFEST, manifest, verify
from .protocol import Refused

SEALED = "sealed.json"  # the second pass's facts, until the backup is complete
STARTED = "started.json"  # when the first pass started (this server's clock), until the second pass


def backup_id(value):
    if not isinstance(value, str) or not paths.BACKUP_ID.fullmatch(value):
        raise Refused("%r is not a backup id (like 20261125T101500.123Z)" % (value,))
    return value


def held(layout, token):
    """Refused unless this run (token) holds the lock."""
    held = lock.owner(layout)
    if not held or held.get("token") != token:
        raise Refused("this run does not hold the lock of %s" % layout.deploy_to)


def complete(layout):
    """Ids of the complete backups, oldest first."""
    try:
        names = os.listdir(layout.backups)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if paths.BACKUP_ID.fullmatch(n) and os.path.isfile(os.path.join(layout.backup(n), INFO)))


def info(layout, bid):
    try:
        with open(os.path.join(layout.backup(bid), INFO)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


RSYNC_VANISHED = 24  # a file went away while rsync copied: the site deleted it, which the backup then reflects
RSYNC_PARTIAL = 23  # some files or attributes were not transferred (rsync says which)
# rsync could not give a file another user owns its owner, group, mode, times or ACL (not root)
ATTRIBUTE_REFUSED = re.compile(r'^rsync: (?:\[\w+\] )?(?:chgrp|chown|failed to set (?:times|permissions) on|set_acl: \w+\()'
                               r' ?"?(.+?)"?[):]* ?(?:failed)?:? Operation not permitted \(1\)$')
CTIME_SLACK = 1.0  # seconds: a file system's ctime may lag this server's clock (a coarse tick, an NFS server); compare a little early


def rsync(src, dst, link_dest=None, exclude=(), only=None, others_kept=False):
    """Mirror src to dst with owners, modes, times, ACLs and extended attributes (those that
    --link-dest links must match in all of them too). only: these files of src (relative) and
    nothing else, each compared by content (--checksum), whatever its size and time say.
    others_kept: a deploy user who is not root may not change the owner, mode or times of a file
    another user owns: such a file, with the content it should have, keeps them; returns those
    files (any other failure is one)."""
    argv = ["rsync", "-aAX", "--modify-window=-1"] + ["--exclude=/" + e for e in exclude]
    if link_dest and os.path.exists(link_dest):
        argv.append("--link-dest=" + link_dest)
    with tempfile.TemporaryFile() as listed:
        if only is None:
            argv.append("--delete")
        else:
            listed.write(b"".join(os.fsencode(rel) + b"\0" for rel in only))
            listed.seek(0)
            argv += ["--checksum", "--from0", "--files-from=-"]
        run = subprocess.run(argv + [src, dst], stdin=listed, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = run.stdout.decode("utf-8", "replace")
    if run.returncode == RSYNC_PARTIAL and others_kept:
        problems = [line for line in out.splitlines() if line.startswith("rsync: ")]
        kept = [ATTRIBUTE_REFUSED.match(line) for line in problems]
        if all(kept):
            return sorted({m.group(1) for m in kept})
    if run.returncode not in (0, RSYNC_VANISHED):
        raise Refused("copying %s failed: %s" % (src, out.strip()[-500:]))
    return []


def changed_since(src, since, skip=()):
    """The files under the directory src (relative paths) whose ctime is `since` or later: a
    change that kept a file's size and mtime (a copy or unpack that sets times) shows only there,
    and rsync's size-and-time check would keep the old content."""
    out = []
    for root, _dirs, names in os.walk(src):
        for name in names:
            full = os.path.join(root, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue  # deleted meanwhile
            if full not in skip and stat.S_ISREG(st.st_mode) and st.st_ctime >= since - CTIME_SLACK:
                out.append(os.path.relpath(full, src))
    return out


def database_files(layout, databases):
    """The files of the SQLite databases (with their journals), which the online backup API saves
    instead of a file copy that could be torn."""
    out = []
    for db in databases:
        if db.get("kind") == "sqlite":
            path = dumps.checked(layout, db)["file"]
            out += [path] + [path + suffix for suffix in dumps.JOURNALS]
    return out


def copy_shared(layout, entries, dest, previous, databases=(), since=None):
    """Copy each shared entry into dest/shared/, hard-linking what the previous backup holds
    unchanged. since: a time (this server's clock) after which a file whose ctime is later is
    compared by content too, and copied again where it differs."""
    skip = database_files(layout, databases)
    for entry in entries:
        src = layout.shared_entry(entry)
        if not os.path.lexists(src):
            continue  # not made yet: nothing to back up
        target = os.path.join(dest, "shared", entry)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        prev = os.path.join(previous, "shared", entry) if previous else None
        if os.path.isdir(src) and not os.path.islink(src):
            inside = [os.path.relpath(f, src) for f in skip if f.startswith(src + "/")]
            rsync(src + "/", target + "/", prev and prev + "/", exclude=inside)
            recent = changed_since(src, since, skip) if since is not None else []
            if recent:
                rsync(src + "/", target + "/", only=recent)
        elif src in skip:
            continue
        else:
            rsync(src, os.path.dirname(target) + "/", prev and os.path.dirname(prev) + "/")
            if since is not None and os.lstat(src).st_ctime >= since - CTIME_SLACK:
                rsync(os.path.dirname(src) + "/", os.path.dirname(target) + "/", only=[os.path.basename(src)])


def _orphaned(layout, incoming, token, unlock):
    """The client went away: its incomplete backup goes, and (a backup on its own, which changes
    nothing) its lock too."""
    shutil.rmtree(incoming, ignore_errors=True)
    if unlock:
        lock.release(layout, token)


def op_backup(a):
    """phase copy: the first pass while the site runs. phase seal (writers held off): the second
    pass and the databases. phase complete (writers back): the manifest written and checked, the
    backup made complete, old ones beyond keep removed."""
    layout = paths.Layout(a["deploy_to"])
    held(layout, a["token"])
    bid = backup_id(a["backup_id"])
    incoming = layout.incoming_backup(bid)
    done = complete(layout)
    previous = layout.backup(done[-1]) if done else None
    t = time.monotonic()
    if a["phase"] == "copy":
        os.makedirs(layout.backups, mode=0o700, exist_ok=True)
        os.chmod(layout.backups, 0o700)  # the web server's user owns some of what backups hold
        os.makedirs(os.path.join(incoming, "shared"), exist_ok=True)
        protocol.at_disconnect("backup", lambda: _orphaned(layout, incoming, a["token"], a.get("unlock_if_gone")))
        paths.write_file(os.path.join(incoming, STARTED), json.dumps(time.time()))
        # what changed since the backup before started is compared by content: a file linked from
        # there by size and time alone may hold other bytes now (a backup from before this field:
        # every file is)
        since = (info(layout, done[-1]) or {}).get("copy_started", 0) if done else None
        copy_shared(layout, a["shared"], incoming, previous, a.get("databases", []), since)
        return {"seconds": time.monotonic() - t, "previous": done[-1] if done else None}
    if a["phase"] == "seal":
        try:
            with open(os.path.join(incoming, STARTED)) as f:
                started = json.load(f)
        except (OSError, ValueError):
            raise Refused("backup %s has no first pass" % bid) from None
        # no --link-dest: what is unchanged since the first pass is in place already, and rsync
        # would look up every file in the backup before too (0.28 s against 0.11 s for 10,000 files);
        # what changed since the first pass started is compared by content
        copy_shared(layout, a["shared"], incoming, None, a.get("databases", []), since=started)
        os.unlink(os.path.join(incoming, STARTED))
        dumped, absent, web_writable = [], [], []
        for db in a.get("databases", []):
            (dumped if dumps.dump(layout, db, incoming) else absent).append(db["name"])
            if db["name"] in dumped and dumps.web_user_writes(layout, db, a.get("web_user")):
                web_writable.append(db["name"])  # a restore checks that it still can
        sealed = {"release": paths.current_release(layout), "databases": dumped, "absent": absent,
                  "web_writable": web_writable, "copy_started": started}
        paths.write_file(os.path.join(incoming, SEALED), json.dumps(sealed, sort_keys=True))
        return dict(sealed, seconds=time.monotonic() - t)
    if a["phase"] != "complete":
        raise Refused("phase must be copy, seal or complete")
    try:
        with open(os.path.join(incoming, SEALED)) as f:
            sealed = json.load(f)
    except (OSError, ValueError):
        raise Refused("backup %s was not sealed" % bid)
    os.unlink(os.path.join(incoming, SEALED))
    files, links, new_bytes, reused = manifest(incoming, previous)
    paths.write_file(os.path.join(incoming, MANIFEST), json.dumps({"files": files, "links": links}, sort_keys=True))
    # checked after writing: every size, and the checksum of every file this backup wrote anew
    # (one hard-linked from the backup before is that backup's, checked when it was written)
    problem = verify(incoming, skip=reused)
    if problem:
        raise Refused("the backup does not match its manifest right after writing: %s" % problem)
    record = dict(sealed, id=bid, label=a.get("label"), created=paths.now(), entries=list(a["shared"]),
                  files=len(files), bytes=sum(size for size, _ in files.values()), new_bytes=new_bytes,
                  migration=a.get("migration"), restoring=a.get("restoring"))
    paths.write_file(os.path.join(incoming, INFO), json.dumps(record, sort_keys=True))
    os.rename(incoming, layout.backup(bid))
    # never a backup that is the way back from a migration or a restore (history.protected)
    needed = history.protected(history.read(layout), paths.current_release(layout))
    record["removed"] = prune(layout, a["keep"], [*needed, *a.get("protect", [])])
    owner = lock.owner(layout) or {}
    history.record(layout, "backup", owner, "ok", backup=bid, label=a.get("label"), release=record["release"],
                   databases=record["databases"], files=record["files"], new_bytes=new_bytes,
                   migration=a.get("migration"), restoring=a.get("restoring"))
    record["seconds"] = time.monotonic() - t
    return record


def prune(layout, keep, protect):
    """Remove complete backups beyond `keep` (never a protected one) and backups left incomplete."""
    removed = []
    done = complete(layout)
    for bid in done[: max(0, len(done) - keep)]:
        if bid not in protect:
            shutil.rmtree(layout.backup(bid))
            removed.append(bid)
    for name in os.listdir(layout.backups) if os.path.isdir(layout.backups) else []:
        if name.startswith(".incoming-") and paths.BACKUP_ID.fullmatch(name[len(".incoming-") :]):
            shutil.rmtree(os.path.join(layout.backups, name))  # we hold the lock: a dead run's
    return removed


def op_backup_abort(a):
    """Remove an incomplete backup of this run (the run failed)."""
    layout = paths.Layout(a["deploy_to"])
    held(layout, a["token"])
    shutil.rmtree(layout.incoming_backup(backup_id(a["backup_id"])), ignore_errors=True)
    return {}


def op_backups(a):
    """The backups of this server, newest first, each with whether the release it was taken with
    is still here (else only `restore --data-only` can restore it) and why no pruning removes it."""
    layout = paths.Layout(a["deploy_to"])
    kept = history.protected(history.read(layout), paths.current_release(layout))
    out = []
    for bid in reversed(complete(layout)):
        record = info(layout, bid)
        if record:
            release = record.get("release")
            present = bool(release) and paths.RELEASE_ID.fullmatch(release) and os.path.isdir(layout.release(release))
            out.append(dict(record, release_present=bool(present), protected=kept.get(bid)))
    return {"backups": out}
