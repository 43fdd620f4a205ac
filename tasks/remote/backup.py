"""Backups of the shared data and the databases, consistent to one instant, and restoring them.

A backup is taken in two passes under the deploy lock. The first copies every shared entry while
the site runs (rsync, with hard links to the previous backup's unchanged files, as rsnapshot
does). Then, with writers held off (the client turns maintenance mode on and lets requests in
flight end), the second pass copies only what changed meanwhile and the databases are dumped
(the SQLite online backup API; a single-transaction mariadb-dump). Writers are back before a
manifest (path, size, sha256) is written and checked; only then is backups/.incoming-<id> renamed
to backups/<id>. A copy off the server (backups.to) is made last, from the complete backup.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import time

from . import dumps, history, lock, paths, protocol
from .protocol import Refused

MANIFEST = "manifest.json"
INFO = "backup.json"
SEALED = "sealed.json"  # the second pass's facts, until the backup is complete
HASH_CHUNK = 1 << 20


def backup_id(value):
    if not isinstance(value, str) or not paths.BACKUP_ID.fullmatch(value):
        raise Refused("%r is not a backup id (like 20261125T101500.123Z)" % (value,))
    return value


def _held(layout, token):
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


def _rsync(src, dst, link_dest=None, exclude=()):
    argv = ["rsync", "-a", "--delete", "--modify-window=-1"] + ["--exclude=/" + e for e in exclude]
    if link_dest and os.path.exists(link_dest):
        argv.append("--link-dest=" + link_dest)
    run = subprocess.run(argv + [src, dst], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if run.returncode not in (0, RSYNC_VANISHED):
        raise Refused("copying %s failed: %s" % (src, run.stdout.decode("utf-8", "replace").strip()[-500:]))


def _database_files(layout, databases):
    """The files of the SQLite databases (with their journals), which the online backup API saves
    instead of a file copy that could be torn."""
    out = []
    for db in databases:
        if db.get("kind") == "sqlite":
            path = dumps.checked(layout, db)["file"]
            out += [path] + [path + suffix for suffix in ("-journal", "-wal", "-shm")]
    return out


def copy_shared(layout, entries, dest, previous, databases=()):
    """Copy each shared entry into dest/shared/, hard-linking what the previous backup holds unchanged."""
    skip = _database_files(layout, databases)
    for entry in entries:
        src = layout.shared_entry(entry)
        if not os.path.lexists(src):
            continue  # not made yet: nothing to back up
        target = os.path.join(dest, "shared", entry)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        prev = os.path.join(previous, "shared", entry) if previous else None
        if os.path.isdir(src) and not os.path.islink(src):
            inside = [os.path.relpath(f, src) for f in skip if f.startswith(src + "/")]
            _rsync(src + "/", target + "/", prev and prev + "/", exclude=inside)
        elif src in skip:
            continue
        else:
            _rsync(src, os.path.dirname(target) + "/", prev and os.path.dirname(prev) + "/")


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest(dest, previous):
    """{relative path: [size, sha256]} of every file in dest; a file hard-linked from the previous
    backup reuses that backup's checksum. Returns (files, bytes not linked, paths reused)."""
    before = {}
    if previous:
        try:
            with open(os.path.join(previous, MANIFEST)) as f:
                before = json.load(f)["files"]
        except (OSError, ValueError, KeyError):
            before = {}
    files, new_bytes, reused = {}, 0, set()
    for root, _dirs, names in os.walk(dest):
        for name in names:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, dest)
            if rel in (MANIFEST, INFO) or os.path.islink(full):
                continue
            st = os.stat(full)
            old = os.path.join(previous, rel) if previous else None
            if rel in before and old and os.path.exists(old) and os.stat(old).st_ino == st.st_ino:
                files[rel] = before[rel]
                reused.add(rel)
            else:
                files[rel] = [st.st_size, _sha256(full)]
                new_bytes += st.st_size
    return files, new_bytes, reused


def verify(dest, whole=False, skip=()):
    """The first file of dest that its manifest does not match, or None. whole: rehash every file."""
    try:
        with open(os.path.join(dest, MANIFEST)) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError):
        return "the manifest is missing or unreadable"
    for rel, (size, digest) in sorted(files.items()):
        full = os.path.join(dest, rel)
        if not os.path.isfile(full) or os.path.getsize(full) != size:
            return "%s is missing or has another size" % rel
        if (whole or rel not in skip) and _sha256(full) != digest:
            return "%s does not match its checksum" % rel
    return None


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
    _held(layout, a["token"])
    bid = backup_id(a["backup_id"])
    incoming = layout.incoming_backup(bid)
    done = complete(layout)
    previous = layout.backup(done[-1]) if done else None
    t = time.monotonic()
    if a["phase"] == "copy":
        os.makedirs(os.path.join(incoming, "shared"), exist_ok=True)
        protocol.at_disconnect("backup", lambda: _orphaned(layout, incoming, a["token"], a.get("unlock_if_gone")))
        copy_shared(layout, a["shared"], incoming, previous, a.get("databases", []))
        return {"seconds": time.monotonic() - t, "previous": done[-1] if done else None}
    if a["phase"] == "seal":
        if not os.path.isdir(incoming):
            raise Refused("backup %s has no first pass" % bid)
        # no --link-dest: what is unchanged since the first pass is in place already, and rsync
        # would look up every file in the backup before too (0.28 s against 0.11 s for 10,000 files)
        copy_shared(layout, a["shared"], incoming, None, a.get("databases", []))
        dumped, absent = [], []
        for db in a.get("databases", []):
            (dumped if dumps.dump(layout, db, incoming) else absent).append(db["name"])
        sealed = {"release": paths.current_release(layout), "databases": dumped, "absent": absent}
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
    files, new_bytes, reused = manifest(incoming, previous)
    paths.write_file(os.path.join(incoming, MANIFEST), json.dumps({"files": files}, sort_keys=True))
    # checked after writing: every size, and the checksum of every file this backup wrote anew
    # (one hard-linked from the backup before is that backup's, checked when it was written)
    problem = verify(incoming, skip=reused)
    if problem:
        raise Refused("the backup does not match its manifest right after writing: %s" % problem)
    record = dict(sealed, id=bid, label=a.get("label"), created=paths.now(), entries=list(a["shared"]),
                  files=len(files), bytes=sum(size for size, _ in files.values()), new_bytes=new_bytes)
    paths.write_file(os.path.join(incoming, INFO), json.dumps(record, sort_keys=True))
    os.rename(incoming, layout.backup(bid))
    # never the backup the live release's migration was taken before: it is the way back
    needed = history.backup_of(history.read(layout), paths.current_release(layout))
    record["removed"] = prune(layout, a["keep"], [needed, *a.get("protect", [])])
    owner = lock.owner(layout) or {}
    history.record(layout, "backup", owner, "ok", backup=bid, label=a.get("label"), release=record["release"],
                   databases=record["databases"], files=record["files"], new_bytes=new_bytes)
    record["seconds"] = time.monotonic() - t
    return record


def op_backup_push(a):
    """Copy a complete backup off the server (backups.to), after the site is back."""
    layout = paths.Layout(a["deploy_to"])
    _held(layout, a["token"])
    bid = backup_id(a["backup_id"])
    if info(layout, bid) is None:
        raise Refused("backup %s is not complete" % bid)
    t = time.monotonic()
    return {"copied_to": push(layout, bid, a["to"]), "seconds": time.monotonic() - t}


PUSH_TIMEOUT = 3600  # seconds for the copy off the server
SAFE = re.compile(r"^[A-Za-z0-9._@+/:-]+$")  # what goes into the copy's ssh command line, word by word


def push(layout, bid, to):
    """Copy backups/<bid> to another machine over SSH (rsync, hard links to the copy before there);
    the key and known_hosts are files on this server. Returns the destination."""
    for key in ("host", "user", "path", "key", "known_hosts"):
        if not SAFE.fullmatch(str(to.get(key, ""))):
            raise Refused("backups.to.%s is missing or holds characters a path or host name cannot" % key)
    port = int(to.get("port", 22))
    ssh = ["ssh", "-F", "none", "-p", str(port), "-i", to["key"], "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
           "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + to["known_hosts"]]
    import shlex

    done = [b for b in complete(layout) if b != bid and info(layout, b) and info(layout, b).get("copied_to")]
    argv = ["rsync", "-a", "-e", shlex.join(ssh)]
    if done:
        argv.append("--link-dest=../" + done[-1])
    host = "[%s]" % to["host"] if ":" in to["host"] else to["host"]
    dest = "%s@%s:%s/%s/" % (to["user"], host, to["path"].rstrip("/"), bid)
    run = subprocess.run(argv + [layout.backup(bid) + "/", dest], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=PUSH_TIMEOUT)
    if run.returncode != 0:
        raise Refused("copying backup %s to %s failed: %s" % (bid, dest, run.stdout.decode("utf-8", "replace")[-500:]),
                      hint="the backup is complete on this server; check backups.to and that this server's key is "
                           "authorized there")
    record = info(layout, bid)
    record["copied_to"] = dest
    paths.write_file(os.path.join(layout.backup(bid), INFO), json.dumps(record, sort_keys=True))
    return dest


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
    _held(layout, a["token"])
    shutil.rmtree(layout.incoming_backup(backup_id(a["backup_id"])), ignore_errors=True)
    return {}


def op_backups(a):
    """The backups of this server, newest first."""
    layout = paths.Layout(a["deploy_to"])
    out = [info(layout, bid) for bid in reversed(complete(layout))]
    return {"backups": [b for b in out if b]}


def op_restore(a):
    """Shared data and databases back as they were in a backup (maintenance is on already); its
    manifest is checked first, every file rehashed. Returns the release that was live then."""
    layout = paths.Layout(a["deploy_to"])
    _held(layout, a["token"])
    bid = backup_id(a["backup_id"])
    record = info(layout, bid)
    if record is None and os.path.isdir(layout.incoming_backup(bid)):
        raise Refused("backup %s is incomplete (its run ended before it was sealed); nothing was restored" % bid)
    if record is None:
        raise Refused("backup %s does not exist on this server, or is incomplete" % bid,
                      hint="`fab backups` lists the complete ones")
    source = layout.backup(bid)
    problem = verify(source, whole=True)
    if problem:
        raise Refused("backup %s does not match its manifest: %s; nothing was restored" % (bid, problem))
    if a.get("check"):
        return {"release": record["release"], "entries": record["entries"], "databases": record["databases"]}
    protocol.settled("maintenance")  # from here the data changes: maintenance stays on if the client goes
    t = time.monotonic()
    for entry in record["entries"]:
        src = os.path.join(source, "shared", entry)
        if not os.path.lexists(src):
            continue
        dst = layout.shared_entry(entry)
        if os.path.isdir(src):
            os.makedirs(dst, exist_ok=True)
            _rsync(src + "/", dst + "/")
        else:
            _rsync(src, os.path.dirname(dst) + "/")
    removed = []
    for db in a.get("databases", []):
        if db.get("name") in record["databases"]:
            dumps.load(layout, db, os.path.join(source, "databases"))
        elif db.get("name") in record.get("absent", []):
            removed += dumps.remove_sqlite(layout, db)  # made after this backup (saved by the one before the restore)
    return {"release": record["release"], "entries": record["entries"], "databases": record["databases"],
            "removed": removed, "seconds": time.monotonic() - t}
