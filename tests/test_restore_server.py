"""The server's side of backups and restores, in this process against a scratch deploy_to
(tasks.agent.LocalAgent): entries outside shared/, the whole tree against its manifest, planted
symlinks, the backups a way back needs, the web user's write as the kernel decides it, and a
change that kept a file's size and mtime."""

import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest

from tasks.agent import LocalAgent
from tasks.errors import RemoteError
from tasks.remote import history, manifests, paths
from tasks.remote.dumps import can_write
from tasks.remote.paths import Layout

from .test_restore import as_web_user

RELEASE = "20261101T000000.000Z-aaaaaaa"


@pytest.fixture
def site(tmp_path):
    """A deploy_to with one live release sharing media and public/uploads, locked by token "t",
    and one complete backup of it; returns (layout, backup id)."""

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
    return LocalAgent().call("restore", {"deploy_to": layout.deploy_to, "token": "t", "backup_id": bid,
                                         "shared": list(shared), "check": check})  # fmt: skip


def test_a_backup_json_naming_a_path_outside_shared_is_refused_in_process(site, tmp_path):
    # the review's case: an entry ../../outside would have rsync --delete mirror backups/outside there

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

    layout, bid = site
    tree = Path(layout.backup(bid))
    assert manifests.verify(str(tree), whole=True) is None
    assert json.loads((tree / "manifest.json").read_text())["links"] == {"shared/media/latest": "photo.txt"}
    added = tree / "shared" / "media" / "added.php"
    added.write_text("<?php system($_GET['c']);\n")
    assert manifests.verify(str(tree)) == "shared/media/added.php is in the backup but not in its manifest"
    with pytest.raises(RemoteError) as refused:
        restore_call(layout, bid)
    assert "shared/media/added.php is in the backup but not in its manifest; nothing was restored" in str(refused.value)
    added.unlink()
    (tree / "shared" / "media" / "more").symlink_to("/etc")
    assert manifests.verify(str(tree)) == "the symlink shared/media/more is in the backup but not in its manifest"
    (tree / "shared" / "media" / "more").unlink()
    (tree / "shared" / "media" / "latest").unlink()
    (tree / "shared" / "media" / "latest").symlink_to("/etc/passwd")
    expected = "the symlink shared/media/latest is missing or points elsewhere than its manifest says"
    assert manifests.verify(str(tree)) == expected
    (tree / "shared" / "media" / "latest").unlink()
    assert manifests.verify(str(tree)) == expected


def plant(link, target):
    """A symlink as the web server's user would plant it where it may write."""
    link.symlink_to(target)
    www = pwd.getpwnam("www-data")
    os.lchown(link, www.pw_uid, www.pw_gid)


def test_a_restore_never_writes_through_a_symlink_planted_in_shared(site, tmp_path):

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

    def deploy(release, result, backup=None):
        return {"event": "deploy", "release": release, "result": result, "backup": backup}

    ok1, failed1, failed2 = deploy("r1", "ok", "b1"), deploy("r2", "failed", "b2"), deploy("r2", "failed", "b3")
    assert history.protected([ok1, failed1, failed2], "r1") == {
        "b1": "before the migration of the live release r1",
        "b2": "before a migration that failed, until one succeeds (of r2)",
        "b3": "before a migration that failed, until one succeeds (of r2)",
    }
    # a later migration succeeds, then a rollback to r1: the failed ones go, the last success stays
    entries = [ok1, failed1, failed2, deploy("r3", "ok", "b4"), {"event": "rollback", "release": "r1", "result": "ok"}]
    assert history.protected(entries, "r1") == {
        "b1": "before the migration of the live release r1",
        "b4": "before the last migration that succeeded (of r3)",
    }
    # a deploy without a migration ends nothing; a restore that did not finish keeps its backup
    restore = {"event": "restore", "release": "r3", "result": "failed", "backup": "b5"}
    assert history.protected([*entries[:4], deploy("r4", "ok"), restore], "r4") == {
        "b4": "before the last migration that succeeded (of r3)",
        "b5": "the data before a restore that did not finish, until one succeeds",
    }
    assert "b5" not in history.protected([restore, dict(restore, result="ok", backup="b6")], "r4")


@pytest.fixture
def reachable(tmp_path):
    """A directory www-data can reach (pytest's own are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="cutover-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_can_write_decides_as_the_kernel_does(reachable):

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


def test_a_database_behind_the_operators_own_symlink_is_restored_where_the_link_points(site, tmp_path):
    """shared/media/app.sqlite is the operator's symlink to a database on another disk (the app may
    open either name): a restore loads the database the link points to and leaves the link a link,
    so that the app and the next backup read the restored data."""
    layout, _ = site
    disk = tmp_path / "disk"
    disk.mkdir()
    real = disk / "app.sqlite"
    with sqlite3.connect(real) as con:
        con.execute("CREATE TABLE t (v TEXT)")
        con.execute("INSERT INTO t VALUES ('backed up')")
    link = Path(layout.shared, "media", "app.sqlite")
    link.symlink_to(real)
    app = {"name": "app", "kind": "sqlite", "path": "shared/media/app.sqlite"}
    bid = "20261104T000000.000Z"
    for phase in ("copy", "seal", "complete"):
        LocalAgent().call("backup", {"deploy_to": layout.deploy_to, "token": "t", "backup_id": bid, "phase": phase,
                                     "shared": ["media"], "databases": [app], "keep": 5})  # fmt: skip
    with sqlite3.connect(real) as con:
        con.execute("UPDATE t SET v = 'changed since'")
    done = LocalAgent().call("restore", {"deploy_to": layout.deploy_to, "token": "t", "backup_id": bid,
                                         "shared": ["media"], "databases": [app], "check": False})  # fmt: skip
    assert done["databases"] == ["app"]
    assert link.is_symlink() and os.readlink(link) == str(real)
    with sqlite3.connect(real) as con:
        assert con.execute("SELECT v FROM t").fetchall() == [("backed up",)]
    assert sorted(p.name for p in disk.iterdir()) == ["app.sqlite"]  # no temp file left beside it
