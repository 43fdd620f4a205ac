"""A site's databases in a backup: each entry checked, dumped (the SQLite online backup API; a
single-transaction mariadb-dump) and loaded back on restore.

A SQLite database is a file the web server's user may own or be granted: its dump keeps the
file's owner, mode and ACL, and a restore loads it into the live file in place and gives it those
again, so that the web server writes it after a restore as before.
"""

import binascii
import errno
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess

from . import grants, nofollow, paths
from .protocol import Refused

DB_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
DUMP_TIMEOUT = 3600  # seconds for one database's dump or restore
MAX_LINKS = 40  # symlinks followed from a database's name to its file, as the kernel does


def checked(layout, db):
    if not isinstance(db, dict) or not DB_NAME.fullmatch(str(db.get("name", ""))):
        raise Refused("a database needs a name of letters, digits and _ . -")
    kind = db.get("kind")
    if kind == "sqlite":
        rel = str(db.get("path", ""))
        if rel.startswith("/") or ".." in rel.split("/") or not rel:
            raise Refused("database %s: path must lie inside deploy_to" % db["name"])
        return dict(db, file=os.path.join(layout.deploy_to, rel))
    if kind == "mariadb":
        creds = str(db.get("credentials", ""))
        if not creds.startswith("/") or not DB_NAME.fullmatch(str(db.get("database", ""))):
            raise Refused("database %s: needs database and an absolute credentials file" % db["name"])
        return db
    raise Refused("database %s: kind must be sqlite or mariadb" % db["name"])


JOURNALS = ("-journal", "-wal", "-shm")


def guarded(layout, db):
    """Refused where a directory on the way from deploy_to to the database's file, the file or a
    journal of it is a symlink another user owns: the deploy user (root, maybe) never reads or
    writes through a name the web server's user could have planted."""
    parts = db["path"].split("/")
    names = [os.path.join(layout.deploy_to, *parts[:i]) for i in range(1, len(parts))]
    for path in names + [db["file"] + suffix for suffix in ("",) + JOURNALS]:
        target = paths.foreign_symlink(path)
        if target is not None:
            raise Refused("database %s: %s is a symlink (to %s) that another user owns; nothing was read or written "
                          "through it" % (db["name"], os.path.relpath(path, layout.deploy_to), target),
                          hint="remove it (the web server's user may have planted it), then try again")  # fmt: skip


def _mariadb_program(*names):
    for name in names:
        if shutil.which(name):
            return name
    raise Refused("%s is not installed on this server" % names[0])


def dump(layout, db, dest):
    """One database into dest/databases/<name>.(sqlite|sql), consistent while it takes writes."""
    db = checked(layout, db)
    os.makedirs(os.path.join(dest, "databases"), exist_ok=True)
    if db["kind"] == "sqlite":
        import sqlite3

        guarded(layout, db)
        if not os.path.exists(db["file"]):
            return None  # not made yet (a first migration makes it): the backup records it absent
        out = os.path.join(dest, "databases", db["name"] + ".sqlite")
        src = sqlite3.connect("file:%s?mode=ro" % db["file"], uri=True)
        dst = sqlite3.connect(out)
        try:
            src.backup(dst)  # the online backup API: one consistent copy, never a torn file copy
        except sqlite3.Error as exc:
            raise Refused("database %s: reading %s failed: %s" % (db["name"], db["path"], exc))
        finally:
            dst.close()
            src.close()
        copy_owner_and_mode(db["file"], out)
        return out
    out = os.path.join(dest, "databases", db["name"] + ".sql")
    argv = [_mariadb_program("mariadb-dump", "mysqldump"), "--defaults-extra-file=" + db["credentials"],
            "--single-transaction", "--routines", "--triggers", "--add-drop-database", "--databases", db["database"]]
    with open(out, "wb") as f:
        run = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.PIPE, timeout=DUMP_TIMEOUT)
    if run.returncode != 0:
        raise Refused("database %s: the dump failed: %s" % (db["name"], run.stderr.decode("utf-8", "replace").strip()[-500:]))
    return out


def load(layout, db, source):
    """Restore one database from its dump in a backup. A SQLite database: the dump (a complete
    database file) copied into a new file beside the live one and renamed over it, its owner,
    mode and ACL as at the backup; nothing is opened by a name in that directory, which the web
    server's user may write (a symlink it plants there at any instant is replaced, never followed)."""
    db = checked(layout, db)
    if db["kind"] == "sqlite":
        guarded(layout, db)
        _put_in_place(db, os.path.join(source, db["name"] + ".sqlite"))
        return
    with open(os.path.join(source, db["name"] + ".sql"), "rb") as f:
        run = subprocess.run([_mariadb_program("mariadb", "mysql"), "--defaults-extra-file=" + db["credentials"]],
                             stdin=f, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=DUMP_TIMEOUT)
    if run.returncode != 0:
        raise Refused("database %s: the restore failed: %s" % (db["name"], run.stdout.decode("utf-8", "replace")[-500:]))


def remove_sqlite(layout, db):
    """Remove a SQLite database (and its journals) that did not exist when a backup was taken."""
    db = checked(layout, db)
    if db["kind"] != "sqlite":
        return []
    guarded(layout, db)
    parent, name = _open_dir_of(db)
    gone = []
    try:
        for suffix in ("",) + JOURNALS:
            st = nofollow.lstat_at(parent, name + suffix)
            if st is not None and stat.S_ISREG(st.st_mode):
                os.unlink(name + suffix, dir_fd=parent)
                gone.append(os.path.relpath(db["file"] + suffix, layout.deploy_to))
    finally:
        os.close(parent)
    return gone


def _linked_file(db):
    """The database's file with the operator's own symlinks of the file itself followed (guarded()
    let them through): a restore loads the database the link points to, the link stays a link."""
    path = db["file"]
    for _ in range(MAX_LINKS):
        try:
            if not os.path.islink(path):
                return path
            target = paths.foreign_symlink(path)
            if target is not None:
                raise Refused("database %s: %s is a symlink (to %s) that another user owns; nothing was read or "
                              "written through it" % (db["name"], path, target))  # fmt: skip
            path = os.path.join(os.path.dirname(path), os.readlink(path))
        except FileNotFoundError:
            continue  # the link went away while it was looked at: what the name is now counts
    raise Refused("database %s: %s is a chain of more than %d symlinks" % (db["name"], db["file"], MAX_LINKS))


def _open_dir_of(db):
    """(descriptor, name): the directory holding a SQLite database, opened from / one component at
    a time without following a symlink (the operator's own symlinks on the way and of the file,
    which guarded() let through, resolved first; missing directories made), and the file's name in it."""
    file = _linked_file(db)
    real = os.path.realpath(os.path.dirname(file))
    root = os.open("/", nofollow.DIR_FLAGS)
    try:
        return nofollow.open_path(root, [p for p in real.split("/") if p], create=True), os.path.basename(file)
    except nofollow.SymlinkInPath as exc:
        raise Refused("database %s: /%s became a symlink while it was looked at; nothing was written through it"
                      % (db["name"], "/".join(exc.done + [exc.part])))  # fmt: skip
    finally:
        os.close(root)


def _put_in_place(db, dump):
    """The dump's bytes in a new file of the database's directory (O_EXCL, O_NOFOLLOW, through its
    descriptor), given the dump's owner, mode and ACL, then renamed over the database's name. The
    old database's journals go first: a WAL left beside the restored file would be applied to it."""
    parent, name = _open_dir_of(db)
    temp = ".%s.cutover-restore-%s" % (name, binascii.hexlify(os.urandom(6)).decode())
    try:
        out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            with open(dump, "rb") as f:
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    while chunk:
                        chunk = chunk[os.write(out, chunk):]
            os.fsync(out)
            copy_owner_and_mode(dump, out)
        finally:
            os.close(out)
        for suffix in JOURNALS:
            try:
                os.unlink(name + suffix, dir_fd=parent)  # a name: a symlink there is removed, never followed
            except FileNotFoundError:
                pass
        os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        try:
            os.unlink(temp, dir_fd=parent)
        except OSError:
            pass  # renamed away (by the web server's user, in its own directory), or never made
        raise
    finally:
        os.close(parent)


def copy_owner_and_mode(src, dst):
    """Give dst (a path, or a descriptor) the owner, group, mode and access ACL of src."""
    st = os.stat(src)
    try:
        os.chown(dst, st.st_uid, st.st_gid)
    except PermissionError:
        pass  # a deploy user who is not root cannot give a file away; the file stays its own
    os.chmod(dst, st.st_mode & 0o7777)
    try:
        acl = os.getxattr(src, grants.ACCESS)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        acl = None
    try:
        if acl:
            os.setxattr(dst, grants.ACCESS, acl)
        else:
            os.removexattr(dst, grants.ACCESS)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def can_write(path, user):
    """Whether user (a pwd entry) may write path, as the kernel decides it (acl(5)): the owner's
    bits, a named user's entry under the mask, the groups' entries under the mask, the others'."""
    if user.pw_uid == 0:
        return True
    st = os.stat(path)
    want = 3 if stat.S_ISDIR(st.st_mode) else 2  # a directory also needs x to be written into
    if st.st_uid == user.pw_uid:
        return (st.st_mode >> 6) & want == want
    try:
        acl = grants.parse_acl(os.getxattr(path, grants.ACCESS))
    except OSError:
        acl = []
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    if not acl:
        perm = (st.st_mode >> 3) & 7 if st.st_gid in groups else st.st_mode & 7
        return perm & want == want
    mask = next((p for tag, p, _ in acl if tag == grants.MASK), 7)
    named = [p for tag, p, uid in acl if tag == grants.USER and uid == user.pw_uid]
    if named:
        return named[0] & mask & want == want
    matching = [p for tag, p, gid in acl if (tag == grants.GROUP_OBJ and st.st_gid in groups) or
                (tag == grants.GROUP and gid in groups)]  # fmt: skip
    if matching:
        return any(p & mask & want == want for p in matching)
    return st.st_mode & want == want


def web_user_writes(layout, db, web_user):
    """Whether the web server's user (a name, or None) may write this SQLite database's file."""
    db = checked(layout, db)
    if db["kind"] != "sqlite" or not web_user or not os.path.exists(db["file"]):
        return False
    try:
        return can_write(db["file"], pwd.getpwnam(web_user))
    except KeyError:
        return False  # no such user on this server: the restore's make_writable says so
