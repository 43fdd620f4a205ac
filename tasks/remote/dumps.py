"""A site's databases in a backup: each entry checked, dumped (the SQLite online backup API; a
single-transaction mariadb-dump) and loaded back on restore.
"""

import os
import re
import shutil
import subprocess

from .protocol import Refused

DB_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
DUMP_TIMEOUT = 3600  # seconds for one database's dump or restore


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

        if not os.path.exists(db["file"]):
            return None  # not made yet (a first migration makes it): the backup records it absent
        out = os.path.join(dest, "databases", db["name"] + ".sqlite")
        src = sqlite3.connect("file:%s?mode=ro" % db["file"], uri=True)
        dst = sqlite3.connect(out)
        try:
            src.backup(dst)  # the online backup API: one consistent copy, never a torn file copy
        finally:
            dst.close()
            src.close()
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
    """Restore one database from its dump in a backup."""
    db = checked(layout, db)
    if db["kind"] == "sqlite":
        import sqlite3

        os.makedirs(os.path.dirname(db["file"]), exist_ok=True)
        src = sqlite3.connect("file:%s?mode=ro" % os.path.join(source, db["name"] + ".sqlite"), uri=True)
        dst = sqlite3.connect(db["file"])
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        return
    with open(os.path.join(source, db["name"] + ".sql"), "rb") as f:
        run = subprocess.run([_mariadb_program("mariadb", "mysql"), "--defaults-extra-file=" + db["credentials"]],
                             stdin=f, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=DUMP_TIMEOUT)
    if run.returncode != 0:
        raise Refused("database %s: the restore failed: %s" % (db["name"], run.stdout.decode("utf-8", "replace")[-500:]))


def remove_sqlite(layout, db):
    """Remove a SQLite database (and its journals) that did not exist when a backup was taken."""
    db = checked(layout, db)
    gone = []
    for path in [db["file"]] + [db["file"] + suffix for suffix in ("-journal", "-wal", "-shm")]:
        if db["kind"] == "sqlite" and os.path.isfile(path):
            os.unlink(path)
            gone.append(os.path.relpath(path, layout.deploy_to))
    return gone
