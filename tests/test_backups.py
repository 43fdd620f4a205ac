"""Backups against a lab server with PHP (mod_php) and a MariaDB server of its own: consistent to one
instant while the site writes, taken before a migration, restored with the release of that time."""

import http.client
import json
import sqlite3
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

import lab

from .conftest import Background, current, history, start_lab, stop_lab
from .test_php import SITE_CONF, build, configure_app

MIGRATION_BREAKS = (
    "sqlite3 ../../shared/storage/orders.sqlite 'ALTER TABLE accounts RENAME TO gone' && "
    "mariadb --defaults-extra-file=$CREDENTIALS shop -e 'DROP TABLE accounts; CREATE TABLE audit (x INT)'"
)


@pytest.fixture(scope="module")
def shop():
    handle, root = start_lab(1, php="mod_php", site_conf=SITE_CONF, serve="public", mariadb=True)
    yield handle
    stop_lab(handle, root)


def settings(server, **extra):
    credentials = lab.mariadb_credentials(server)
    databases = [
        {"name": "orders", "kind": "sqlite", "path": "shared/storage/orders.sqlite"},
        {"name": "shop", "kind": "mariadb", "database": "shop", "credentials": credentials},
    ]
    return {"backups": {"databases": databases, "hold": 0.5}, "keep_backups": 3, **extra}


def mariadb(server, sql):
    run = subprocess.run(
        ["mariadb", f"--defaults-extra-file={lab.mariadb_credentials(server)}", "-N", "shop", "-e", sql],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def last_backup(server):
    return [e for e in history(server) if e["event"] == "backup"][-1]["backup"]


def sqlite_db(server):
    return Path(server.deploy_to, "shared", "storage", "orders.sqlite")


def seed_databases(server):
    with sqlite3.connect(sqlite_db(server)) as db:
        db.execute("CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, balance INTEGER)")
        db.execute("DELETE FROM accounts")
        db.executemany("INSERT INTO accounts VALUES (?, ?)", [(1, 600), (2, 400)])
    mariadb(server, "CREATE TABLE IF NOT EXISTS accounts (id INT PRIMARY KEY, balance INT) ENGINE=InnoDB; "
                    "DELETE FROM accounts; INSERT INTO accounts VALUES (1, 600), (2, 400)")  # fmt: skip


class Writers(Background):
    """The site writing while it is backed up: pairs of files through Apache (from a visitor's
    address, so maintenance holds it off), and money moving between two accounts in each database."""

    def __init__(self, server, seconds=120):
        super().__init__([(self.pairs, ()), (self.sqlite, ()), (self.mariadb, ())], seconds)
        self.server, self.errors = server, []
        self.written = {"pairs": 0, "sqlite": 0, "mariadb": 0}  # each writer's completed writes

    def have_written(self, n, timeout=60):
        """Wait until every writer has written n times (fails after timeout seconds)."""
        deadline = time.monotonic() + timeout
        while min(self.written.values()) < n:
            assert time.monotonic() < deadline, f"the writers wrote {self.written} in {timeout} s, not {n} each"
            assert self.running(), "the writers stopped"
            time.sleep(0.01)

    def pairs(self):
        n = 0
        while self.running():
            conn = http.client.HTTPConnection(
                "127.0.0.1", self.server.http_port, timeout=10, source_address=("127.0.0.2", 0)
            )
            try:
                conn.request("POST", "/pair", body=urllib.parse.urlencode({"n": n}),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
                status = conn.getresponse().status
                if status not in (200, 503):
                    self.errors.append(status)
            finally:
                conn.close()
            n += 1
            self.written["pairs"] += status == 200  # 503: held off by maintenance, nothing written

    def sqlite(self):
        while self.running():
            with sqlite3.connect(sqlite_db(self.server), timeout=10) as db:
                db.execute("UPDATE accounts SET balance = balance - 7 WHERE id = 1")
                time.sleep(0.005)
                db.execute("UPDATE accounts SET balance = balance + 7 WHERE id = 2")
            self.written["sqlite"] += 1

    def mariadb(self):
        while self.running():
            mariadb(self.server, "START TRANSACTION; UPDATE accounts SET balance = balance - 3 WHERE id = 1; "
                                 "DO SLEEP(0.005); UPDATE accounts SET balance = balance + 3 WHERE id = 2; COMMIT")  # fmt: skip
            self.written["mariadb"] += 1


def test_a_backup_is_consistent_while_the_site_writes(shop, tmp_path):
    server = shop.servers[0]
    configure_app(shop, build(tmp_path, "b1"), "b1", **settings(server))
    assert shop.fab("deploy").returncode == 0
    seed_databases(server)
    with Writers(server) as writers:
        writers.have_written(3)  # every writer is at it before the backup starts
        result = shop.fab("backup", "--label", "before the sale")
    assert result.returncode == 0, result.stderr
    assert writers.errors == []
    held = float(result.stdout.split("visitors were held ")[1].split(" s")[0])
    assert 0.5 <= held < 10
    bid = last_backup(server)
    backup = Path(server.deploy_to, "backups", bid)
    pairs = sorted((backup / "shared/public/uploads/pairs").glob("*-a.txt"))
    assert len(pairs) >= 3
    assert [p.name for p in pairs if p.read_text() != p.with_name(p.name.replace("-a", "-b")).read_text()] == []
    with sqlite3.connect(backup / "databases" / "orders.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT sum(balance) FROM accounts").fetchone() == (1000,)
    dump = (backup / "databases" / "shop.sql").read_text()
    assert "CREATE TABLE `accounts`" in dump and "password" not in " ".join(
        json.loads(Path(backup, "backup.json").read_text())
    )
    info = json.loads((backup / "backup.json").read_text())
    assert info["label"] == "before the sale" and info["release"] == current(server)
    listed = shop.fab("backups")
    assert bid in listed.stdout and "before the sale" in listed.stdout and "orders, shop" in listed.stdout


def test_a_migration_is_backed_up_first_and_restored_under_load(shop, tmp_path):
    server = shop.servers[0]
    configure_app(shop, build(tmp_path, "m1"), "m1", **settings(server))
    assert shop.fab("deploy").returncode == 0
    seed_databases(server)
    old = current(server)
    Path(server.deploy_to, "shared/public/uploads/keep.txt").write_text("before the migration\n")
    migrate = {"command": MIGRATION_BREAKS.replace("$CREDENTIALS", lab.mariadb_credentials(server))}
    configure_app(shop, build(tmp_path, "m2"), "m2", migrate=migrate, **settings(server))
    migrated = shop.fab("deploy", "--migrate")
    assert migrated.returncode == 0, migrated.stderr
    entry = [e for e in history(server) if e["event"] == "deploy"][-1]
    assert entry["backup"] == last_backup(server)
    assert mariadb(server, "SHOW TABLES") == "audit"  # the migration broke the schema
    Path(server.deploy_to, "shared/public/uploads/keep.txt").write_text("changed after\n")
    configure_app(shop, build(tmp_path, "m1x"), "m1", **settings(server))  # the front page restored to
    failures, stop = [], threading.Event()

    def visitor():
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            conn = http.client.HTTPConnection(
                "127.0.0.1", server.http_port, timeout=10, source_address=("127.0.0.2", 0)
            )
            try:
                conn.request("GET", "/")
                status = conn.getresponse().status
                if status not in (200, 503):  # 503: the maintenance window of the restore
                    failures.append(status)
            except OSError as exc:
                failures.append(repr(exc))
            finally:
                conn.close()

    load = threading.Thread(target=visitor)
    load.start()
    try:
        restored = shop.fab("restore", "--backup", entry["backup"])
    finally:
        stop.set()
        load.join()
    assert restored.returncode == 0, restored.stderr
    assert failures == []
    assert current(server) == old
    assert (
        mariadb(server, "SHOW TABLES") == "accounts" and mariadb(server, "SELECT sum(balance) FROM accounts") == "1000"
    )
    with sqlite3.connect(sqlite_db(server)) as db:
        assert db.execute("SELECT sum(balance) FROM accounts").fetchone() == (1000,)
    assert Path(server.deploy_to, "shared/public/uploads/keep.txt").read_text() == "before the migration\n"
    assert not Path(server.deploy_to, "maintenance", "index.html").exists()
    assert history(server)[-1]["event"] == "restore"
    # what the restore replaced was saved first: the restore itself can be undone
    before = restored.stdout.split("the data as it was before the restore: backup ")[1].split()[0]
    saved = Path(server.deploy_to, "backups", before)
    assert (saved / "shared/public/uploads/keep.txt").read_text() == "changed after\n"
    assert "CREATE TABLE `audit`" in (saved / "databases" / "shop.sql").read_text()
    # a rollback after a migrated deploy says that the database stays migrated, and how back
    configure_app(shop, build(tmp_path, "m4"), "m4", migrate={"command": "true"}, **settings(server))
    assert shop.fab("deploy", "--migrate").returncode == 0
    taken = last_backup(server)
    configure_app(shop, build(tmp_path, "m5"), "m1", **settings(server))  # the front page rolled back to
    back = shop.fab("rollback")
    assert back.returncode == 0, back.stderr
    assert f"the database stays as the migration of {history(server)[-2]['release']} left it" in back.stdout
    assert f"fab -H lab1 restore --backup {taken}" in back.stdout


def test_a_damaged_backup_or_a_bad_id_is_refused_and_changes_nothing(shop, tmp_path):
    server = shop.servers[0]
    configure_app(shop, build(tmp_path, "d1"), "d1", **settings(server))
    assert shop.fab("deploy").returncode == 0
    seed_databases(server)
    assert shop.fab("backup").returncode == 0
    bid = last_backup(server)
    dump = Path(server.deploy_to, "backups", bid, "databases", "orders.sqlite")
    data = bytearray(dump.read_bytes())
    data[200] ^= 0xFF
    dump.write_bytes(bytes(data))
    before = current(server)
    refused = shop.fab("restore", "--backup", bid)
    assert refused.returncode == 4
    assert (
        f"backup {bid} does not match its manifest: databases/orders.sqlite does not match its checksum"
        in refused.stderr
    )
    assert current(server) == before and not Path(server.deploy_to, "maintenance", "index.html").exists()
    for hostile in ("../../etc", "20261125T101500Z", "$(touch /tmp/cutover-pwned)", ""):
        bad = shop.fab("restore", "--backup", hostile)
        assert bad.returncode == 2 and "is not a backup id" in bad.stderr, hostile
    missing = shop.fab("restore", "--backup", "20200101T000000.000Z")
    assert missing.returncode == 4 and "backup 20200101T000000.000Z does not exist on this server" in missing.stderr
    label = shop.fab("backup", "--label", "two\nlines")
    assert label.returncode == 2 and "--label must be one line" in label.stderr
    assert not Path("/tmp/cutover-pwned").exists()


def test_backups_are_copied_off_the_server_over_ssh(lab_pair, tmp_path):
    # lab2 stands for a backup host: lab1 copies each backup there with rsync over SSH
    one, two = lab_pair.servers
    offsite = Path(two.root, "offsite")
    offsite.mkdir()
    to = {"host": "127.0.0.1", "port": two.ssh_port, "user": "root", "path": str(offsite),
          "key": str(lab_pair.lab.key), "known_hosts": str(lab_pair.lab.known_hosts)}  # fmt: skip
    from .conftest import configure, make_build

    configure(lab_pair, make_build(tmp_path, "x"), backups={"to": to})
    assert lab_pair.fab("deploy").returncode == 0
    Path(one.deploy_to, "shared", "media", "photo.jpg").write_bytes(b"\xff" * 50_000)
    for _ in range(2):
        result = lab_pair.fab("-H", "lab1", "backup")
        assert result.returncode == 0, result.stderr
    assert [p.name for p in offsite.iterdir()] == ["lab1"]  # each host's copies in a folder of its own
    first, second = sorted(p.name for p in (offsite / "lab1").iterdir())
    assert f"copied to root@127.0.0.1:{offsite}/lab1/{second}/, compared there with the backup" in result.stdout
    photo = [offsite / "lab1" / b / "shared" / "media" / "photo.jpg" for b in (first, second)]
    assert photo[0].read_bytes() == b"\xff" * 50_000
    assert photo[0].stat().st_ino == photo[1].stat().st_ino  # the second copy links the first's unchanged files
    manifest = json.loads((offsite / "lab1" / second / "manifest.json").read_text())
    assert manifest["files"]["shared/media/photo.jpg"][0] == 50_000
    # a restore copies the backup it takes first (the data it replaces) off the server like any other
    Path(one.deploy_to, "shared", "media", "photo.jpg").write_bytes(b"\x00" * 50_000)
    restored = lab_pair.fab("-H", "lab1", "restore", "--backup", first)
    assert restored.returncode == 0, restored.stderr
    assert "WARNING" not in restored.stdout
    before = restored.stdout.split("the data as it was before the restore: backup ")[1].split()[0]
    assert (offsite / "lab1" / before / "shared" / "media" / "photo.jpg").read_bytes() == b"\x00" * 50_000


def test_a_maintenance_window_the_operator_opened_stays_open(lab1, tmp_path):
    # maintenance-on, then a backup inside that window: the page and the window are the operator's
    from .conftest import configure, make_build

    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "w"), backups={"hold": 0})
    assert lab1.fab("deploy").returncode == 0
    assert lab1.fab("maintenance-on", "--message", "Moving to the new warehouse").returncode == 0
    try:
        result = lab1.fab("backup")
        assert result.returncode == 0, result.stderr
        assert "stays on: it was on before this run" in result.stdout
        page = Path(server.deploy_to, "maintenance", "index.html").read_text()
        assert "Moving to the new warehouse" in page
        status = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10, source_address=("127.0.0.2", 0))
        status.request("GET", "/")
        assert status.getresponse().status == 503
        status.close()
    finally:
        assert lab1.fab("maintenance-off").returncode == 0
    assert not Path(server.deploy_to, "maintenance", "index.html").exists()


def test_the_example_shop_first_migration_and_its_restore(lab1, tmp_path):
    # the example site's SQLite database is made by its first migration: the backup before it
    # records it absent, and restoring that backup removes it again (saved by the restore first)
    from .conftest import configure, make_build

    server = lab1.servers[0]
    db = Path(server.deploy_to, "shared", "db", "shop.sqlite")
    shop_db = {"databases": [{"name": "shop", "kind": "sqlite", "path": "shared/db/shop.sqlite"}], "hold": 0}
    configure(lab1, make_build(tmp_path, "v1"), backups=shop_db)
    assert lab1.fab("deploy").returncode == 0
    first = current(server)
    configure(lab1, make_build(tmp_path, "v2"), backups=shop_db, migrate={"command": "python3 migrations/migrate.py"})
    migrated = lab1.fab("deploy", "--migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "(shop not made yet)" in migrated.stdout and db.exists()
    taken = last_backup(server)
    restored = lab1.fab("restore", "--backup", taken)
    assert restored.returncode == 0, restored.stderr
    assert "removed shared/db/shop.sqlite (made since)" in restored.stdout
    assert not db.exists() and current(server) == first
    before = restored.stdout.split("the data as it was before the restore: backup ")[1].split()[0]
    with sqlite3.connect(Path(server.deploy_to, "backups", before, "databases", "shop.sqlite")) as saved:
        assert saved.execute("SELECT name FROM schema_migrations").fetchall() == [("001_orders",)]


def test_each_host_s_own_sqlite_database_is_dumped_on_that_host(lab_pair, tmp_path):
    """A SQLite database is a file of each server: every host's backup holds its own database
    dumped through SQLite's backup API (consistent while it is written), never the live file
    copied as a file, and a restore puts each host's own back; backups.host names where the
    databases of a database server are dumped, not SQLite's."""
    from .conftest import configure, make_build

    one, two = lab_pair.servers
    notes = {"databases": [{"name": "notes", "kind": "sqlite", "path": "shared/db/notes.sqlite"}], "hold": 0,
             "host": "lab1"}  # fmt: skip
    configure(lab_pair, make_build(tmp_path, "v1"), backups=notes, shared=["db"])
    assert lab_pair.fab("deploy").returncode == 0
    for server, text in ((one, "one's"), (two, "two's")):
        with sqlite3.connect(Path(server.deploy_to, "shared", "db", "notes.sqlite")) as db:
            db.execute("CREATE TABLE notes (text TEXT)")
            db.execute("INSERT INTO notes VALUES (?)", (text,))
    taken = lab_pair.fab("backup")
    assert taken.returncode == 0, taken.stderr
    bid = last_backup(one)
    for server, text in ((one, "one's"), (two, "two's")):
        backup = Path(server.deploy_to, "backups", bid)
        assert not (backup / "shared" / "db" / "notes.sqlite").exists(), f"{server.name} copied the live file"
        with sqlite3.connect(backup / "databases" / "notes.sqlite") as db:
            assert db.execute("SELECT text FROM notes").fetchall() == [(text,)]
        with sqlite3.connect(Path(server.deploy_to, "shared", "db", "notes.sqlite")) as db:
            db.execute("UPDATE notes SET text = 'changed'")
    restored = lab_pair.fab("restore", "--backup", bid)
    assert restored.returncode == 0, restored.stderr
    for server, text in ((one, "one's"), (two, "two's")):
        with sqlite3.connect(Path(server.deploy_to, "shared", "db", "notes.sqlite")) as db:
            assert db.execute("SELECT text FROM notes").fetchall() == [(text,)]
