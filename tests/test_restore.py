"""Restore against a lab server: the data back as it was (modes, owners, ACLs, the web user's
grants), nothing changed before the restore knows it can finish, the backups a failed migration
needs kept, and only the entries hosts.yaml shares written."""

import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
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


# --- the server's side of a restore, in this process against a scratch deploy_to ----------------

RELEASE = "20261101T000000.000Z-aaaaaaa"


@pytest.fixture
def site(tmp_path):
    """A deploy_to with one live release sharing media and public/uploads, locked by token "t",
    and one complete backup of it; returns (layout, backup id)."""
    from tasks.agent import LocalAgent
    from tasks.remote import paths
    from tasks.remote.paths import Layout

    agent = LocalAgent()
    layout = Layout(str(tmp_path / "site"))
    agent.call("setup", {"deploy_to": layout.deploy_to, "rules": "# rules\n", "serve": ""})
    release = Path(layout.release(RELEASE))
    release.mkdir()
    for entry in ("media", "public/uploads"):
        Path(layout.shared, entry).mkdir(parents=True)
        (Path(layout.shared, entry) / "photo.txt").write_text(f"{entry} as backed up\n")
        (release / entry).parent.mkdir(parents=True, exist_ok=True)
        (release / entry).symlink_to(os.path.relpath(Path(layout.shared, entry), (release / entry).parent))
    (Path(layout.shared, "media") / "latest").symlink_to("photo.txt")
    paths.point(layout.current, f"releases/{RELEASE}")
    who = {"user": "tester", "local_host": "here", "pid": os.getpid(), "command": "backup", "token": "t"}
    agent.call("lock", {"deploy_to": layout.deploy_to, "who": who})
    bid = "20261102T000000.000Z"
    for phase in ("copy", "seal", "complete"):
        agent.call("backup", {"deploy_to": layout.deploy_to, "token": "t", "backup_id": bid, "phase": phase,
                              "shared": ["media", "public/uploads"], "keep": 5})  # fmt: skip
    return layout, bid


def restore_call(layout, bid, check=True, shared=("media", "public/uploads")):
    from tasks.agent import LocalAgent

    return LocalAgent().call("restore", {"deploy_to": layout.deploy_to, "token": "t", "backup_id": bid,
                                         "shared": list(shared), "check": check})  # fmt: skip


def test_a_backup_json_naming_a_path_outside_shared_is_refused_in_process(site, tmp_path):
    # the review's case: an entry ../../outside would have rsync --delete mirror backups/outside there
    from tasks.errors import RemoteError

    layout, bid = site
    backup = Path(layout.backup(bid))
    info = json.loads((backup / "backup.json").read_text())
    (backup / "backup.json").write_text(json.dumps(dict(info, entries=["media", "../../outside"])))
    Path(layout.backups, "outside").mkdir()
    Path(layout.backups, "outside", "planted.txt").write_text("planted\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "own.txt").write_text("its own\n")
    for check in (True, False):
        with pytest.raises(RemoteError) as refused:
            restore_call(layout, bid, check=check)
        assert (
            f"restore: backup {bid} names the shared entry '../../outside', which climbs out of shared/ with '..'; "
            "nothing was restored" in str(refused.value)
        )
    assert sorted(p.name for p in outside.iterdir()) == ["own.txt"]


def test_verify_fails_on_a_file_or_symlink_the_manifest_does_not_name_or_lacks(site):
    from tasks.errors import RemoteError
    from tasks.remote import backup as server_backup

    layout, bid = site
    tree = Path(layout.backup(bid))
    assert server_backup.verify(str(tree), whole=True) is None
    assert json.loads((tree / "manifest.json").read_text())["links"] == {"shared/media/latest": "photo.txt"}
    added = tree / "shared" / "media" / "added.php"
    added.write_text("<?php system($_GET['c']);\n")
    assert server_backup.verify(str(tree)) == "shared/media/added.php is in the backup but not in its manifest"
    with pytest.raises(RemoteError) as refused:
        restore_call(layout, bid)
    assert "shared/media/added.php is in the backup but not in its manifest; nothing was restored" in str(refused.value)
    added.unlink()
    (tree / "shared" / "media" / "more").symlink_to("/etc")
    assert server_backup.verify(str(tree)) == "the symlink shared/media/more is in the backup but not in its manifest"
    (tree / "shared" / "media" / "more").unlink()
    (tree / "shared" / "media" / "latest").unlink()
    (tree / "shared" / "media" / "latest").symlink_to("/etc/passwd")
    expected = "the symlink shared/media/latest is missing or points elsewhere than its manifest says"
    assert server_backup.verify(str(tree)) == expected
    (tree / "shared" / "media" / "latest").unlink()
    assert server_backup.verify(str(tree)) == expected


def plant(link, target):
    """A symlink as the web server's user would plant it where it may write."""
    link.symlink_to(target)
    www = pwd.getpwnam("www-data")
    os.lchown(link, www.pw_uid, www.pw_gid)


def test_a_restore_never_writes_through_a_symlink_planted_in_shared(site, tmp_path):
    from tasks.errors import RemoteError

    layout, bid = site
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "uploads").mkdir(parents=True)
    (elsewhere / "uploads" / "own.txt").write_text("not the site's\n")
    public = Path(layout.shared, "public")
    os.rename(public, tmp_path / "public-moved")
    plant(public, elsewhere)  # on the way to the entry public/uploads
    with pytest.raises(RemoteError) as refused:
        restore_call(layout, bid, check=False)
    assert f"restore: shared/public is a symlink (to {elsewhere}) that another user owns" in str(refused.value)
    assert sorted(p.name for p in (elsewhere / "uploads").iterdir()) == ["own.txt"]
    public.unlink()
    media = Path(layout.shared, "media")
    os.rename(media, tmp_path / "media-moved")
    plant(media, elsewhere / "uploads")  # the entry itself
    with pytest.raises(RemoteError) as refused:
        restore_call(layout, bid)
    assert f"restore: shared/media is a symlink (to {elsewhere}/uploads) that another user owns" in str(refused.value)
    assert sorted(p.name for p in (elsewhere / "uploads").iterdir()) == ["own.txt"]
    media.unlink()
    os.rename(tmp_path / "media-moved", media)
    (media / "photo.txt").write_text("changed\n")
    # the operator's own symlink (public on another disk, say) is theirs: the restore goes through it
    public.symlink_to(elsewhere)
    done = restore_call(layout, bid, check=False)
    assert done["entries"] == ["media", "public/uploads"] and done["skipped"] == []
    assert (media / "photo.txt").read_text() == "media as backed up\n"
    assert sorted(p.name for p in (elsewhere / "uploads").iterdir()) == ["photo.txt"]
    assert (elsewhere / "uploads" / "photo.txt").read_text() == "public/uploads as backed up\n"


def test_a_database_file_or_journal_planted_as_a_symlink_is_never_read_or_written_through(site, tmp_path):
    from tasks.agent import LocalAgent
    from tasks.errors import RemoteError

    layout, _ = site
    db = Path(layout.shared, "media", "app.sqlite")
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (v TEXT)")
        con.execute("INSERT INTO t VALUES ('backed up')")
    app = {"name": "app", "kind": "sqlite", "path": "shared/media/app.sqlite"}
    bid = "20261104T000000.000Z"
    for phase in ("copy", "seal", "complete"):
        LocalAgent().call("backup", {"deploy_to": layout.deploy_to, "token": "t", "backup_id": bid, "phase": phase,
                                     "shared": ["media"], "databases": [app], "keep": 5})  # fmt: skip
    victim = tmp_path / "root-only.sqlite"
    with sqlite3.connect(victim) as con:
        con.execute("CREATE TABLE secret (v TEXT)")
    before = victim.read_bytes()
    for planted in (db, Path(f"{db}-journal")):
        if planted == db:
            db.unlink()
        plant(planted, victim)
        for check in (True, False):
            with pytest.raises(RemoteError) as refused:
                LocalAgent().call("restore", {"deploy_to": layout.deploy_to, "token": "t", "backup_id": bid,
                                              "shared": ["media"], "databases": [app], "check": check})  # fmt: skip
            assert (
                f"database app: shared/media/{planted.name} is a symlink (to {victim}) that another user owns; "
                "nothing was read or written through it" in str(refused.value)
            )
        taking = {"deploy_to": layout.deploy_to, "token": "t", "backup_id": "20261105T000000.000Z", "keep": 5,
                  "shared": ["media"], "databases": [app]}  # fmt: skip
        LocalAgent().call("backup", dict(taking, phase="copy"))
        with pytest.raises(RemoteError) as refused:  # nor does a backup read through it
            LocalAgent().call("backup", dict(taking, phase="seal"))
        assert f"database app: shared/media/{planted.name} is a symlink (to {victim})" in str(refused.value)
        LocalAgent().call("backup_abort", taking)
        assert victim.read_bytes() == before and os.stat(victim).st_uid == 0
        planted.unlink()
    done = LocalAgent().call("restore", {"deploy_to": layout.deploy_to, "token": "t", "backup_id": bid,
                                         "shared": ["media"], "databases": [app], "check": False})  # fmt: skip
    assert done["databases"] == ["app"]
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT v FROM t").fetchall() == [("backed up",)]


def test_the_backups_a_way_back_needs_are_protected_until_a_later_success():
    from tasks.remote import history as h

    def deploy(release, result, backup=None):
        return {"event": "deploy", "release": release, "result": result, "backup": backup}

    ok1, failed1, failed2 = deploy("r1", "ok", "b1"), deploy("r2", "failed", "b2"), deploy("r2", "failed", "b3")
    assert h.protected([ok1, failed1, failed2], "r1") == {
        "b1": "before the migration of the live release r1",
        "b2": "before a migration that failed, until one succeeds (of r2)",
        "b3": "before a migration that failed, until one succeeds (of r2)",
    }
    # a later migration succeeds, then a rollback to r1: the failed ones go, the last success stays
    entries = [ok1, failed1, failed2, deploy("r3", "ok", "b4"), {"event": "rollback", "release": "r1", "result": "ok"}]
    assert h.protected(entries, "r1") == {
        "b1": "before the migration of the live release r1",
        "b4": "before the last migration that succeeded (of r3)",
    }
    # a deploy without a migration ends nothing; a restore that did not finish keeps its backup
    restore = {"event": "restore", "release": "r3", "result": "failed", "backup": "b5"}
    assert h.protected([*entries[:4], deploy("r4", "ok"), restore], "r4") == {
        "b4": "before the last migration that succeeded (of r3)",
        "b5": "the data before a restore that did not finish, until one succeeds",
    }
    assert "b5" not in h.protected([restore, dict(restore, result="ok", backup="b6")], "r4")


@pytest.fixture
def reachable(tmp_path):
    """A directory www-data can reach (pytest's own are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="cutover-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_can_write_decides_as_the_kernel_does(reachable):
    from tasks.remote.dumps import can_write

    www = pwd.getpwnam("www-data")
    path = reachable / "orders.sqlite"
    path.write_text("")
    path.chmod(0o644)
    assert not can_write(str(path), www)
    subprocess.run(["setfacl", "-m", "u:www-data:rwx,m::r", str(path)], check=True)  # the restore's bug: mask r--
    assert not can_write(str(path), www)
    subprocess.run(["setfacl", "-m", "m::rw", str(path)], check=True)
    assert can_write(str(path), www)
    subprocess.run(["setfacl", "-b", str(path)], check=True)
    os.chown(path, www.pw_uid, 0)
    assert can_write(str(path), www)
    path.chmod(0o444)
    assert not can_write(str(path), www)
    os.chown(path, 0, www.pw_gid)
    path.chmod(0o664)
    assert can_write(str(path), www)
    for check in (www.pw_uid, 0):  # each verdict against the kernel's own, as www-data
        os.chown(path, check, 0)
        path.chmod(0o604)
        assert can_write(str(path), www) == (as_web_user("test", "-w", str(path)).returncode == 0)


def test_a_change_that_keeps_a_files_size_and_mtime_is_backed_up(site):
    """rsync links or keeps a file whose size and mtime match; the file's ctime tells it changed."""
    from tasks.agent import LocalAgent

    layout, first = site
    photo = Path(layout.shared, "media", "photo.txt")
    stamp = photo.stat().st_mtime_ns

    def rewrite(text):  # as a copy that keeps times would (cp -p, rsync -t, unzip)
        assert len(text) == photo.stat().st_size
        photo.write_text(text)
        os.utime(photo, ns=(stamp, stamp))

    def phase(bid, name):
        LocalAgent().call("backup", {"deploy_to": layout.deploy_to, "token": "t", "backup_id": bid, "phase": name,
                                     "shared": ["media", "public/uploads"], "keep": 5})  # fmt: skip

    rewrite("MEDIA AS BACKED UP\n")  # since the backup before: its copy must not be linked
    phase("20261103T000000.000Z", "copy")
    rewrite("media CHANGED anew\n")  # between the two passes: the second must see it
    phase("20261103T000000.000Z", "seal")
    phase("20261103T000000.000Z", "complete")
    copy = Path(layout.backup("20261103T000000.000Z"), "shared", "media", "photo.txt")
    assert copy.read_text() == "media CHANGED anew\n"
    assert copy.stat().st_ino != Path(layout.backup(first), "shared", "media", "photo.txt").stat().st_ino
    assert Path(layout.backup(first), "shared", "media", "photo.txt").read_text() == "media as backed up\n"


def test_a_restore_that_would_leave_the_web_user_unable_to_write_its_database_says_so(site):
    from tasks.agent import LocalAgent
    from tasks.errors import RemoteError

    layout, _ = site
    www = pwd.getpwnam("www-data")
    db = Path(layout.shared, "media", "app.sqlite")
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (v TEXT)")
    os.chown(db, www.pw_uid, www.pw_gid)  # the app's: the web server writes it
    app = {"name": "app", "kind": "sqlite", "path": "shared/media/app.sqlite"}
    bid = "20261104T000000.000Z"
    for phase in ("copy", "seal", "complete"):
        LocalAgent().call("backup", {"deploy_to": layout.deploy_to, "token": "t", "backup_id": bid, "phase": phase,
                                     "shared": ["media"], "databases": [app], "keep": 5, "web_user": "www-data"})  # fmt: skip
    dump = Path(layout.backup(bid), "databases", "app.sqlite")
    assert json.loads(Path(layout.backup(bid), "backup.json").read_text())["web_writable"] == ["app"]
    assert (dump.stat().st_uid, oct(dump.stat().st_mode & 0o777)) == (www.pw_uid, "0o644")
    args = {"deploy_to": layout.deploy_to, "token": "t", "backup_id": bid, "shared": ["media"], "databases": [app],
            "web_user": "www-data", "check": False}  # fmt: skip
    os.chown(db, 0, 0)  # broken since: the restore gives the database back its owner
    LocalAgent().call("restore", args)
    assert db.stat().st_uid == www.pw_uid
    os.chown(dump, 0, 0)  # a backup whose dump lost its owner (copied back by hand, say)
    with pytest.raises(RemoteError) as refused:
        LocalAgent().call("restore", args)
    assert f"after the restore www-data cannot write {db} (owner 0, mode 0644): the site would be read-only" in str(
        refused.value
    )
