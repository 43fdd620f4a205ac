"""Restore: a backup's shared data and databases put back as they were, owners, modes and ACLs
included, and the web server's grants on the writable entries given again.

A restore is asked twice. First (check) it changes nothing: the backup is complete and matches
its manifest (every file rehashed, nothing in the tree that the manifest does not name), each
entry it names is a relative path inside shared/ (the grammar of hosts.yaml's shared entries),
the path down to each entry goes through no symlink, and the release it was taken with is still
here. Only the entries that hosts.yaml still shares are written. Then, with maintenance on and
the data as it is saved in a backup of its own, the restore itself runs the same checks again.
"""

import os
import pwd
import stat
import time

from . import backup, dumps, manifests, paths, protocol, shared
from .protocol import Refused

WHY = {
    "absolute": "is absolute",
    "climbs": "climbs out of shared/ with '..'",
    "empty": "is empty",
    "characters": "holds characters a shared entry cannot (letters, digits and . _ - + @ / only)",
}


def _normal(entry):
    return "/".join(p for p in entry.split("/") if p not in ("", "."))


def entries(bid, record, shared_now):
    """(the backup's entries to restore, those hosts.yaml no longer shares). Refused for an entry
    that is no relative path inside shared/: the backup's own backup.json is not trusted."""
    wanted = set()
    for entry in shared_now:
        if paths.relpath_fault(entry):
            raise Refused("the shared entry %r is no path inside shared/" % (entry,))
        wanted.add(_normal(entry))
    named = record.get("entries")
    if not isinstance(named, list):
        raise Refused("backup %s names no list of shared entries; nothing was restored" % bid)
    restore, skipped = [], []
    for entry in named:
        fault = paths.relpath_fault(entry)
        if fault:
            raise Refused("backup %s names the shared entry %r, which %s; nothing was restored" % (bid, entry, WHY[fault]),
                          hint="its backup.json was changed by hand, or this is no backup Cutover made")
        (restore if _normal(entry) in wanted else skipped).append(_normal(entry))
    return restore, skipped


def _no_symlink_down_to(layout, entry):
    """Refused where a directory on the way from shared/ to the entry, or the entry itself, is a
    symlink another user owns (the web server's user may write inside shared entries and plant
    one): a restore then writes inside shared/ only, and through the operator's own symlinks."""
    parts = entry.split("/")
    for i in range(1, len(parts) + 1):
        rel = "/".join(parts[:i])
        target = paths.foreign_symlink(layout.shared_entry(rel))
        if target is not None:
            raise Refused("shared/%s is a symlink (to %s) that another user owns: a restore writes only inside shared/; "
                          "nothing was restored" % (rel, target),
                          hint="remove it (the web server's user may have planted it), then restore again")  # fmt: skip


def _is_dir(path):
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _writable_under(a, restored):
    return [w for w in a.get("writable", []) if any(w == e or w.startswith(e + "/") or e.startswith(w + "/")
                                                    for e in restored)]  # fmt: skip


def _web_user_exists(a, restored, record):
    """Before anything changes: the user the grants go to is there, when there are grants to give."""
    if not _writable_under(a, restored) and not record.get("web_writable"):
        return
    try:
        pwd.getpwnam(a.get("web_user") or "")
    except KeyError:
        raise Refused("the web server's user %r does not exist on this server (%s is granted to it); nothing was "
                      "restored" % (a.get("web_user"), "writable:" if _writable_under(a, restored) else
                                    "a SQLite database it could write"),
                      hint="set web_user in hosts.yaml to the user Apache or php-fpm runs as") from None


def _grants(a, layout, release_dir, restored, record):
    """The writable entries under what was restored made writable again (make_writable, as a
    deploy does), then checked: the web server's user can write each of them, and each SQLite
    database it could write when the backup was taken. Returns {entry: "acl" | "group"}."""
    writable = _writable_under(a, restored)
    done = shared.make_writable(release_dir, writable, a.get("web_user"), []) if writable else {}
    if not writable and not record.get("web_writable"):
        return done
    try:
        user = pwd.getpwnam(a.get("web_user") or "")
    except KeyError:
        raise Refused("the web server's user %r does not exist on this server" % a.get("web_user"),
                      hint="set web_user in hosts.yaml to the user Apache or php-fpm runs as") from None
    tops = [os.path.realpath(os.path.join(release_dir, w)) for w in writable]
    dbs = [dumps.checked(layout, db)["file"] for db in a.get("databases", []) if db.get("kind") == "sqlite" and
           db.get("name") in record.get("web_writable", [])]  # fmt: skip
    for path in tops + dbs:
        if not dumps.can_write(path, user):
            st = os.stat(path)
            raise Refused("after the restore %s cannot write %s (owner %d, mode %04o): the site would be read-only "
                          "there" % (user.pw_name, path, st.st_uid, st.st_mode & 0o7777),
                          hint="give it back to the web server's user (setfacl -m u:%s:rw, or chown), then `fab "
                          "maintenance-off`" % user.pw_name)  # fmt: skip
    return done


def op_restore(a):
    """Shared data and databases back as they were in a backup (maintenance is on already).
    check: only the checks; returns the release that was live then and whether it is still here."""
    layout = paths.Layout(a["deploy_to"])
    backup.held(layout, a["token"])
    bid = backup.backup_id(a["backup_id"])
    record = backup.info(layout, bid)
    if record is None and os.path.isdir(layout.incoming_backup(bid)):
        raise Refused("backup %s is incomplete (its run ended before it was sealed); nothing was restored" % bid)
    if record is None:
        raise Refused("backup %s does not exist on this server, or is incomplete" % bid,
                      hint="`fab backups` lists the complete ones")
    source = layout.backup(bid)
    restore, skipped = entries(bid, record, a.get("shared", []))
    for entry in restore:
        _no_symlink_down_to(layout, entry)
    dbs = a.get("databases", [])
    kept = [db for db in dbs if db.get("name") in record.get("databases", []) + record.get("absent", [])]
    for db in kept:
        if db.get("kind") == "sqlite":
            dumps.guarded(layout, dumps.checked(layout, db))
    release = record.get("release")
    if release is not None:
        paths.release_id(release)
    present = bool(release) and os.path.isdir(layout.release(release)) and not os.path.islink(layout.release(release))
    answer = {"release": release, "release_present": present, "entries": restore, "skipped": skipped,
              "databases": record.get("databases", [])}
    # the check rehashes every file; the restore, under the same lock minutes later and inside the
    # maintenance window, checks the tree and the sizes again only
    problem = manifests.verify(source, whole=True, rehash=bool(a.get("check")))
    if problem:
        raise Refused("backup %s does not match its manifest: %s; nothing was restored" % (bid, problem))
    _web_user_exists(a, restore, record)
    if a.get("check"):
        return answer
    keep = paths.current_release(layout) if a.get("data_only") else release
    if not keep or not os.path.isdir(layout.release(keep)):
        raise Refused("release %s is not on this server; nothing was restored" % keep)
    release_dir = layout.release(keep)
    protocol.settled("maintenance")  # from here the data changes: maintenance stays on if the client goes
    t = time.monotonic()
    skip = backup.database_files(layout, kept)  # loaded below, never mirrored (nor deleted) as files
    others = []  # files another user owns, whose owner and mode a deploy user who is not root may not set
    not_root = os.geteuid() != 0
    for entry in restore:
        src = os.path.join(source, "shared", entry)
        if not os.path.lexists(src):
            continue
        dst = layout.shared_entry(entry)
        if _is_dir(src):
            os.makedirs(dst, exist_ok=True)
            inside = [os.path.relpath(f, dst) for f in skip if f.startswith(dst + "/")]
            others += backup.rsync(src + "/", dst + "/", exclude=inside, others_kept=not_root)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            others += backup.rsync(src, os.path.dirname(dst) + "/", others_kept=not_root)
    removed = []
    for db in dbs:
        if db.get("name") in record.get("databases", []):
            dumps.load(layout, db, os.path.join(source, "databases"))
        elif db.get("name") in record.get("absent", []):
            removed += dumps.remove_sqlite(layout, db)  # made after this backup (saved by the one before the restore)
    writable = _grants(a, layout, release_dir, restore, record)
    return dict(answer, removed=removed, writable=writable, web_user=a.get("web_user"), others_kept=others,
                seconds=time.monotonic() - t)
