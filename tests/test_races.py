"""The web server's user racing Cutover's server side: what it may write (shared entries, the
databases' directories) it may change at any instant, between any check and any use. In this
process against a scratch deploy_to www-data can reach (tasks.agent.LocalAgent), the web user a
real www-data process flipping names in a bounded loop."""

import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tasks.agent import LocalAgent
from tasks.errors import RemoteError
from tasks.remote import paths
from tasks.remote.paths import Layout

RELEASE = "20261101T000000.000Z-aaaaaaa"
APP = {"name": "app", "kind": "sqlite", "path": "shared/media/app.sqlite"}
RACE_S = 15  # the longest a race runs (it stops at the first success of the web user)

# Run as www-data: NAME in DIRECTORY is a symlink to TARGET about half the time, absent the rest.
FLIPPER = """
import os, sys, time
directory, name, target, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
os.chdir(directory)
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        os.symlink(target, name + ".planting")
        os.rename(name + ".planting", name)
        time.sleep(0.0002)
        os.unlink(name)
        time.sleep(0.0002)
    except OSError:
        pass
"""


@pytest.fixture
def site():
    """A deploy_to www-data can reach, one live release sharing media (www-data's to write), locked
    by token "t"; yields (layout, victim): a name in a directory only root may enter, where a file
    written would be a foothold (an authorized_keys nobody has made yet)."""
    top = Path(tempfile.mkdtemp(prefix="cutover-test-", dir="/tmp"))
    top.chmod(0o755)
    layout = Layout(str(top / "site"))
    LocalAgent().call("setup", {"deploy_to": layout.deploy_to, "rules": "# rules\n", "serve": ""})
    release = Path(layout.release(RELEASE))
    release.mkdir()
    media = Path(layout.shared, "media")
    media.mkdir(parents=True)
    www = pwd.getpwnam("www-data")
    os.chown(media, www.pw_uid, www.pw_gid)
    (release / "media").symlink_to("../../shared/media")
    paths.point(layout.current, f"releases/{RELEASE}")
    who = {"user": "tester", "local_host": "here", "pid": os.getpid(), "command": "restore", "token": "t"}
    LocalAgent().call("lock", {"deploy_to": layout.deploy_to, "who": who})
    private = top / "root-only"
    private.mkdir(mode=0o700)
    yield layout, private / "authorized_keys"
    shutil.rmtree(top)


def web_user_flips(directory, name, target, seconds=RACE_S):
    """www-data keeps planting and removing a symlink name -> target in directory (bounded)."""
    return subprocess.Popen(["/usr/bin/python3", "-I", "-c", FLIPPER, str(directory), name, str(target), str(seconds)],
                            user="www-data", group="www-data")  # fmt: skip


def test_a_restore_of_a_database_never_writes_through_a_symlink_the_web_user_plants_meanwhile(site):
    """The restore checks the database's name for a planted symlink, then loads the dump into it:
    between the two, the web user puts a symlink there. The deploy user (root here) must never
    write the file it points to; at worst the restore refuses."""
    layout, victim = site
    db = Path(layout.shared, "media", "app.sqlite")
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (v TEXT)")
        con.execute("INSERT INTO t VALUES ('ssh-ed25519 AAAA the web user''s key')")
    bid = "20261104T000000.000Z"
    for phase in ("copy", "seal", "complete"):
        LocalAgent().call("backup", {"deploy_to": layout.deploy_to, "token": "t", "backup_id": bid, "phase": phase,
                                     "shared": ["media"], "databases": [APP], "keep": 5})  # fmt: skip
    db.unlink()
    args = {"deploy_to": layout.deploy_to, "token": "t", "backup_id": bid, "shared": ["media"], "databases": [APP],
            "check": False}  # fmt: skip
    flipper = web_user_flips(db.parent, db.name, victim)
    outcomes = []
    try:
        deadline = time.monotonic() + RACE_S - 2
        while time.monotonic() < deadline and not victim.exists() and len(outcomes) < 300:
            try:
                LocalAgent().call("restore", args)
                outcomes.append("restored")
            except RemoteError as exc:
                outcomes.append(exc.message)
    finally:
        flipper.kill()
        flipper.wait()
    assert not victim.exists(), f"written through the web user's symlink, restore {len(outcomes)}: {outcomes[-3:]}"
    assert "restored" in outcomes, outcomes[:10]
    assert all(o == "restored" or "symlink" in o for o in outcomes), sorted(set(outcomes))


def test_a_swap_that_waits_for_an_earlier_one_switches_from_what_that_one_made_live(tmp_path):
    """A swap waits while an earlier swap of the site still runs (a dead run's, detached); the
    release it switches away from, reports as old and would switch back to, is the one live when
    it starts switching, not the one live when it began to wait."""
    import threading

    from tasks.remote import procs

    layout = Layout(str(tmp_path / "site"))
    LocalAgent().call("setup", {"deploy_to": layout.deploy_to, "rules": "# rules\n", "serve": ""})
    ids = ["20261101T000000.000Z-aaaaaaa", "20261102T000000.000Z-bbbbbbb", "20261103T000000.000Z-ccccccc"]
    for rid in ids:
        Path(layout.release(rid)).mkdir()
    paths.point(layout.current, f"releases/{ids[0]}")
    earlier = subprocess.Popen(["sleep", "30"])  # stands for the earlier swap, still running
    try:
        Path(layout.swap_pid).write_text(f"{earlier.pid} {procs.start_time(earlier.pid)}\n")
        answer = {}
        later = threading.Thread(target=lambda: answer.update(
            LocalAgent().call("swap", {"deploy_to": layout.deploy_to, "release_id": ids[2], "pause": "none"})))  # fmt: skip
        later.start()
        time.sleep(0.5)  # it waits for the earlier swap
        assert later.is_alive()
        paths.point(layout.current, f"releases/{ids[1]}")  # what the earlier swap made live
        earlier.kill()
        earlier.wait()
        later.join(timeout=20)
    finally:
        if earlier.poll() is None:
            earlier.kill()
            earlier.wait()
    assert (answer["old"], answer["new"]) == (ids[1], ids[2]), answer
    assert os.readlink(layout.current) == f"releases/{ids[2]}"
