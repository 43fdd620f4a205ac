"""Restore against a lab server: the data back as it was (modes, owners, ACLs, the web user's
grants), nothing changed before the restore knows it can finish, the backups a failed migration
needs kept, and only the entries hosts.yaml shares written."""

import json
import os
import pwd
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import configure, current, history, make_build, releases

ORDERS = {"name": "orders", "kind": "sqlite", "path": "shared/storage/orders.sqlite"}


def last_backup(server):
    return [e for e in history(server) if e["event"] == "backup"][-1]["backup"]


def backups_of(server):
    return sorted(p.name for p in Path(server.deploy_to, "backups").iterdir() if not p.name.startswith("."))


def as_web_user(*argv):
    """Run argv as www-data, as Apache's PHP would act."""
    return subprocess.run(argv, user="www-data", group="www-data", capture_output=True, text=True, timeout=30)


def acl(paths):
    """{path: getfacl's text} of each path (numeric ids, no header)."""
    out = subprocess.run(["getfacl", "-p", "-n", "--omit-header", *paths], capture_output=True, text=True, check=True)
    return dict(zip(paths, out.stdout.strip().split("\n\n")))


def tree(root, databases=()):
    """Everything under root as the web server and a restore see it: kind, mode, owner, group, ACL,
    and the content (a symlink's target; not of the databases, which a restore loads page by page)."""
    state, plain = {}, []
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                state[rel] = ("link", st.st_uid, st.st_gid, os.readlink(path))
                continue
            body = Path(path).read_bytes() if os.path.isfile(path) and rel not in databases else None
            kind = "dir" if os.path.isdir(path) else "file"
            state[rel] = [kind, oct(st.st_mode & 0o7777), st.st_uid, st.st_gid, body]
            plain.append(path)
    for path, text in acl(plain).items():
        state[os.path.relpath(path, root)].append(text)
    return state


def test_a_restore_puts_the_data_back_as_it_was_and_the_web_user_writes_the_database(lab1, tmp_path):
    server = lab1.servers[0]
    settings = {"shared": ["media", "storage"], "writable": ["storage"], "backups": {"databases": [ORDERS], "hold": 0}}
    configure(lab1, make_build(tmp_path, "r1"), **settings)
    assert lab1.fab("deploy").returncode == 0
    shared = Path(server.deploy_to, "shared")
    db = shared / "storage" / "orders.sqlite"
    # the app makes its database as the web server's user, as a PHP request or a migration run as www-data would
    made = as_web_user("sqlite3", str(db), "CREATE TABLE orders (item TEXT); INSERT INTO orders VALUES ('first')")
    assert made.returncode == 0, made.stderr
    www = pwd.getpwnam("www-data")
    media = shared / "media"
    (media / "private.txt").write_text("for the web server only\n")
    os.chown(media / "private.txt", www.pw_uid, www.pw_gid)
    (media / "private.txt").chmod(0o640)
    (media / "shared-with-nobody.txt").write_text("an ACL of its own\n")
    subprocess.run(["setfacl", "-m", "u:nobody:r", str(media / "shared-with-nobody.txt")], check=True)
    (media / "albums").mkdir(mode=0o750)
    (media / "albums" / "cover.jpg").write_bytes(b"\xff\xd8" * 100)
    (media / "latest.jpg").symlink_to("albums/cover.jpg")
    before = tree(shared, databases=["storage/orders.sqlite"])
    assert lab1.fab("backup").returncode == 0
    bid = last_backup(server)
    # after the backup: contents, modes, ACLs and links change, and the app writes on
    (media / "private.txt").write_text("changed\n")
    (media / "private.txt").chmod(0o666)
    subprocess.run(["setfacl", "-b", str(media / "shared-with-nobody.txt")], check=True)
    (media / "latest.jpg").unlink()
    (media / "albums").chmod(0o777)
    assert as_web_user("sqlite3", str(db), "INSERT INTO orders VALUES ('after the backup')").returncode == 0
    restored = lab1.fab("restore", "--backup", bid)
    assert restored.returncode == 0, restored.stderr
    assert tree(shared, databases=["storage/orders.sqlite"]) == before
    # the web server writes its database again, as before the restore
    wrote = as_web_user("sqlite3", str(db), "INSERT INTO orders VALUES ('after the restore')")
    assert wrote.returncode == 0, wrote.stderr
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT item FROM orders").fetchall() == [("first",), ("after the restore",)]
    assert "storage writable by www-data" in restored.stdout
    # a backup holds the data of the web server's user: nobody else may read it
    assert oct(Path(server.deploy_to, "backups").stat().st_mode & 0o777) == "0o700"


def test_a_backup_whose_release_is_gone_is_refused_before_any_change_or_restored_as_data_only(lab1, tmp_path):
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "g1"), keep_releases=2, backups={"hold": 0})
    assert lab1.fab("deploy").returncode == 0
    first = current(server)
    photo = Path(server.deploy_to, "shared", "media", "photo.txt")
    photo.write_text("as backed up\n")
    assert lab1.fab("backup", "--label", "keep this one").returncode == 0
    old = last_backup(server)
    for label in ("g2", "g3"):
        configure(lab1, make_build(tmp_path, label), keep_releases=2, backups={"hold": 0})
        assert lab1.fab("deploy").returncode == 0
    live = current(server)
    assert first not in releases(server)  # cleanup removed the release the backup was taken with
    assert lab1.fab("backup").returncode == 0
    fresh = last_backup(server)
    photo.write_text("changed since\n")
    kept, lines = backups_of(server), len(history(server))
    refused = lab1.fab("restore", "--backup", old)
    assert refused.returncode == 4, refused.stderr
    assert (
        f"backup {old} was taken with release {first} live, which is no longer on lab1 (cleanup removed it); "
        "nothing was changed" in refused.stderr
    )
    assert f"fab restore --backup {old} --data-only" in refused.stderr
    # nothing changed: no backup taken (nor one pruned), the data, the release, no maintenance page, unlocked
    assert backups_of(server) == kept and photo.read_text() == "changed since\n" and current(server) == live
    assert not Path(server.deploy_to, "maintenance", "index.html").exists()
    assert not Path(server.deploy_to, ".cutover", "lock").exists()
    assert [e["event"] for e in history(server)[lines:]] == ["restore"]
    listed = lab1.fab("backups")  # which backups can be restored as they are
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line[:1].isdigit()}
    assert f"{first} (removed: --data-only)" in rows[old] and f"{live} " in rows[fresh]
    data_only = lab1.fab("restore", "--backup", old, "--data-only")
    assert data_only.returncode == 0, data_only.stderr
    assert photo.read_text() == "as backed up\n" and current(server) == live
    assert f"{live} stays live (--data-only)" in data_only.stdout
    assert history(server)[-1]["event"] == "restore" and history(server)[-1]["release"] == live


def test_the_backup_before_a_failed_migration_stays_until_a_migration_succeeds(lab1, tmp_path):
    server = lab1.servers[0]
    data = {"databases": [{"name": "data", "kind": "sqlite", "path": "shared/db/data.sqlite"}], "hold": 0}
    base = {"shared": ["media", "db"], "keep_backups": 1, "backups": data}
    configure(lab1, make_build(tmp_path, "p1", {"db/.keep": b""}), **base)
    assert lab1.fab("deploy").returncode == 0
    live = current(server)
    db = Path(server.deploy_to, "shared", "db", "data.sqlite")
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (v TEXT)")
        con.execute("INSERT INTO t VALUES ('original')")
    fails = {"command": f"sqlite3 {db} \"UPDATE t SET v = 'half-migrated'\" && exit 1"}
    configure(lab1, make_build(tmp_path, "p2"), migrate=fails, **base)
    failed = lab1.fab("deploy", "--migrate")
    assert failed.returncode == 8, failed.stderr
    first = failed.stderr.split("the backup taken before the migration: ")[1].split()[0]
    assert f"(fab restore --backup {first})" in failed.stderr
    retry = lab1.fab("deploy", "--migrate")
    assert retry.returncode == 8, retry.stderr
    assert lab1.fab("backup").returncode == 0
    assert first in backups_of(server)  # neither the retry nor `fab backup` pruned it (keep_backups: 1)
    listed = lab1.fab("backups")
    row = next(line for line in listed.stdout.splitlines() if line.startswith(first))
    assert "before a migration that failed, until one succeeds" in row
    restored = lab1.fab("restore", "--backup", first)  # the command the first error printed
    assert restored.returncode == 0, restored.stderr
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT v FROM t").fetchall() == [("original",)]
    assert current(server) == live
    assert lab1.fab("maintenance-off").returncode == 0  # the failed migration's window, the operator's to end
    # a migration that succeeds, then a rollback: its backup stays; the failed ones' go
    configure(lab1, make_build(tmp_path, "p3"), migrate={"command": "true"}, **base)
    migrated = lab1.fab("deploy", "--migrate")
    assert migrated.returncode == 0, migrated.stderr
    good = [e for e in history(server) if e["event"] == "deploy"][-1]["backup"]
    assert lab1.fab("rollback").returncode == 0
    assert lab1.fab("backup").returncode == 0
    assert backups_of(server) == sorted([good, last_backup(server)])
    row = next(line for line in lab1.fab("backups").stdout.splitlines() if line.startswith(good))
    assert "before the last migration that succeeded" in row


@pytest.mark.parametrize("hostile", ["../escape", "/tmp/cutover-restore-abs"])
def test_a_backup_naming_an_entry_outside_shared_is_refused_and_nothing_changes(lab1, tmp_path, hostile):
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "e1"), backups={"hold": 0})
    assert lab1.fab("deploy").returncode == 0
    photo = Path(server.deploy_to, "shared", "media", "photo.txt")
    photo.write_text("as backed up\n")
    assert lab1.fab("backup").returncode == 0
    bid = last_backup(server)
    backup = Path(server.deploy_to, "backups", bid)
    info = json.loads((backup / "backup.json").read_text())
    (backup / "backup.json").write_text(json.dumps(dict(info, entries=["media", hostile])))
    outside = Path(server.deploy_to, "escape") if hostile.startswith("..") else Path(hostile)
    outside.mkdir()
    (outside / "own.txt").write_text("not Cutover's\n")
    try:
        photo.write_text("changed since\n")
        kept = backups_of(server)
        refused = lab1.fab("restore", "--backup", bid)
        assert refused.returncode == 4, refused.stderr
        why = "climbs out of shared/ with '..'" if hostile.startswith("..") else "is absolute"
        assert f"backup {bid} names the shared entry {hostile!r}, which {why}; nothing was restored" in refused.stderr
        assert sorted(p.name for p in outside.iterdir()) == ["own.txt"]
        assert photo.read_text() == "changed since\n" and backups_of(server) == kept
        assert not Path(server.deploy_to, "maintenance", "index.html").exists()
    finally:
        (outside / "own.txt").unlink()
        outside.rmdir()


def test_a_restore_writes_only_the_entries_hosts_yaml_still_shares(lab1, tmp_path):
    server = lab1.servers[0]
    build = make_build(tmp_path, "s1")
    configure(lab1, build, shared=["media", "cache"], backups={"hold": 0})
    assert lab1.fab("deploy").returncode == 0
    cache = Path(server.deploy_to, "shared", "cache", "page.txt")
    cache.write_text("backed up\n")
    assert lab1.fab("backup").returncode == 0
    bid = last_backup(server)
    cache.write_text("written since\n")
    configure(lab1, build, shared=["media"], backups={"hold": 0})
    restored = lab1.fab("restore", "--backup", bid)
    assert restored.returncode == 0, restored.stderr
    assert cache.read_text() == "written since\n"
    assert "cache not restored: hosts.yaml no longer shares it" in restored.stdout


def test_the_backup_before_a_migration_whose_run_was_killed_stays_until_a_migration_succeeds(lab1, tmp_path):
    """fab killed during its migration writes no deploy line: the backup it took first must stay
    protected all the same (keep_backups: 1), through a `fab backup` and a retry that fails, and
    `fab backups` must say why."""
    server = lab1.servers[0]
    data = {"databases": [{"name": "data", "kind": "sqlite", "path": "shared/db/data.sqlite"}], "hold": 0}
    base = {"shared": ["media", "db"], "keep_backups": 1, "backups": data}
    configure(lab1, make_build(tmp_path, "k1", {"db/.keep": b""}), **base)
    assert lab1.fab("deploy").returncode == 0
    db = Path(server.deploy_to, "shared", "db", "data.sqlite")
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (v TEXT)")
        con.execute("INSERT INTO t VALUES ('original')")
    slow = {"command": f"sqlite3 {db} \"UPDATE t SET v = 'half-migrated'\" && sleep 3 && exit 1"}
    configure(lab1, make_build(tmp_path, "k2"), migrate=slow, **base)
    killed = lab1.fab("deploy", "--migrate", env={"CUTOVER_TEST_KILL_AT": "migrate:0.5"})
    assert killed.returncode == -9
    first = last_backup(server)
    deadline = time.monotonic() + 30  # the killed run's migration runs on to its end, holding the lock
    while (retry := lab1.fab("deploy", "--migrate", "--force-unlock")).returncode == 5:
        assert time.monotonic() < deadline, retry.stderr
        time.sleep(0.5)
    assert retry.returncode == 8, retry.stderr
    assert lab1.fab("backup").returncode == 0
    assert first in backups_of(server), "the backup taken before the killed run's migration was pruned"
    row = next(line for line in lab1.fab("backups").stdout.splitlines() if line.startswith(first))
    assert "before a migration whose run did not finish, until one succeeds" in row
    restored = lab1.fab("restore", "--backup", first)
    assert restored.returncode == 0, restored.stderr
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT v FROM t").fetchall() == [("original",)]


def test_the_backup_of_the_data_before_a_restore_whose_run_was_killed_stays_until_a_restore_succeeds(lab1, tmp_path):
    """fab killed once the restore has saved the data as it was (keep_backups: 1): that backup is
    the only way back, and must survive the next `fab backup`, with `fab backups` saying why."""
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "x1"), keep_backups=1, backups={"hold": 0})
    assert lab1.fab("deploy").returncode == 0
    photo = Path(server.deploy_to, "shared", "media", "photo.txt")
    photo.write_text("as backed up\n")
    assert lab1.fab("backup").returncode == 0
    old = last_backup(server)
    photo.write_text("written since\n")
    killed = lab1.fab("restore", "--backup", old, env={"CUTOVER_TEST_KILL_AT": "restore"})
    assert killed.returncode == -9, killed.stderr
    before = last_backup(server)  # the data as it was before the restore: "written since"
    assert before != old
    assert lab1.fab("backup", "--force-unlock").returncode == 0
    assert before in backups_of(server), "the data as it was before the killed restore was pruned"
    assert old in backups_of(server), "the backup the killed restore was putting back was pruned"
    rows = lab1.fab("backups").stdout.splitlines()
    assert "the data before a restore that did not finish, until one succeeds" in next(
        r for r in rows if r.startswith(before)
    )
    assert "what a restore that did not finish restores, until one succeeds" in next(
        r for r in rows if r.startswith(old)
    )
    rerun = lab1.fab("restore", "--backup", old)  # the restore, run again, finishes
    assert rerun.returncode == 0, rerun.stderr
    assert photo.read_text() == "as backed up\n"
