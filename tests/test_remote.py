"""Cutover's server side driven in this process against a temporary deploy_to (tasks.agent.LocalAgent):
the lock, stage, finish, abort, history and the cleanup choice, without SSH or a lab."""

import json
import os
import signal
import struct
import time
from pathlib import Path

import pytest

from tasks.agent import LocalAgent
from tasks.errors import LockError, RemoteError
from tasks.remote import finish, grants, history, lock, paths, shared
from tasks.remote.paths import PLACEHOLDER, Layout

IDS = ["20261101T000000.000Z-aaaaaaa", "20261102T000000.000Z-bbbbbbb", "20261103T000000.000Z-ccccccc"]


def who(token, command="deploy"):
    return {"user": "tester", "local_host": "here", "pid": os.getpid(), "command": command, "token": token}


@pytest.fixture
def site(tmp_path):
    """A deploy_to made by setup, as on a server."""
    deploy_to = str(tmp_path / "site")
    LocalAgent().call("setup", {"deploy_to": deploy_to, "rules": "# rules\n", "serve": ""})
    return Layout(deploy_to)


def make_release(layout, release_id, text="page"):
    path = Path(layout.release(release_id))
    path.mkdir()
    (path / "index.html").write_text(text)
    return path


def test_setup_makes_the_layout_with_a_placeholder_and_the_rules(site):
    assert paths.current_release(site) == PLACEHOLDER
    assert os.readlink(site.release_map) == f"maps/{PLACEHOLDER}.map"
    assert Path(site.apache_conf).read_text() == "# rules\n"
    assert paths.releases(site) == [PLACEHOLDER]


def test_a_deploy_locks_stages_finishes_and_records_one_line(site, tmp_path):
    agent = LocalAgent()
    build = {"default": 0o644, "modes": {}, "shared": []}
    answer = agent.call("lock", {"deploy_to": site.deploy_to, "who": who("t1"), "release_id": IDS[0], "prelink": build,
                                 "shared": ["media"]})  # fmt: skip
    assert answer["current"] == PLACEHOLDER and answer["missing_shared"] == ["media"]
    incoming = Path(answer["incoming"])
    assert incoming == Path(site.incoming(IDS[0])) and (incoming / "index.html").exists()  # prelinked
    smoke = {"commands": ["test -s index.html"], "timeout": 5, "url": None, "health": {}}
    staged = agent.call(
        "stage", {"deploy_to": site.deploy_to, "release_id": IDS[0], "shared": ["media"], "smoke": smoke}
    )
    assert staged["shared"] == {"media": "created"}
    assert os.readlink(Path(site.release(IDS[0]), "media")) == "../../shared/media"
    done = agent.call("finish", {"deploy_to": site.deploy_to, "release_id": IDS[0], "token": "t1", "keep": 5,
                                 "steps": {"upload": 0.5}, "bytes_sent": 10, "pause_ms": 0.2})  # fmt: skip
    assert done["removed"] == []
    assert not os.path.exists(site.lock)
    [entry] = history.read(site)
    assert entry["event"] == "deploy" and entry["release"] == IDS[0] and entry["old"] == PLACEHOLDER
    assert entry["user"] == "tester" and entry["result"] == "ok" and entry["pause_ms"] == 0.2
    assert set(entry["steps"]) == {"upload", "cleanup"}


def test_abort_removes_only_this_runs_upload_and_unlocks(site):
    agent = LocalAgent()
    agent.call("lock", {"deploy_to": site.deploy_to, "who": who("t2"), "release_id": IDS[0]})
    answer = agent.call("abort", {"deploy_to": site.deploy_to, "token": "t2", "release_id": IDS[0], "remove": True,
                                  "error": "lab1: smoke: exited 3"})  # fmt: skip
    assert answer == {"removed": [".incoming-" + IDS[0]], "released": True, "current": PLACEHOLDER}
    assert history.read(site)[-1]["error"] == "lab1: smoke: exited 3"
    assert history.read(site)[-1]["result"] == "failed"


def test_finish_refuses_when_the_lock_is_no_longer_ours(site):
    agent = LocalAgent()
    agent.call("lock", {"deploy_to": site.deploy_to, "who": who("mine"), "release_id": IDS[0]})
    with pytest.raises(RemoteError) as refused:
        agent.call("finish", {"deploy_to": site.deploy_to, "release_id": IDS[0], "token": "other", "keep": 5})
    assert "no longer holds the lock" in str(refused.value)
    assert os.path.isdir(site.incoming(IDS[0]))  # nothing cleaned under someone else's lock


def test_a_held_lock_is_refused_with_its_owner(site):
    agent = LocalAgent()
    agent.call("lock", {"deploy_to": site.deploy_to, "who": who("first")})
    with pytest.raises(LockError) as held:
        agent.call("lock", {"deploy_to": site.deploy_to, "who": who("second")})
    owner = held.value.details["lock"]
    assert owner["token"] == "first" and owner["alive"] is True and owner["user"] == "tester"
    with pytest.raises(LockError) as forced:
        agent.call("unlock", {"deploy_to": site.deploy_to, "force": True, "who": who("second")})
    assert "the lock owner is still connected" in str(forced.value)
    assert lock.owner(site)["token"] == "first"


def _race(layout, rounds):
    """Two processes take the lock at the same instant, `rounds` times; a third reads it meanwhile."""
    outcomes = []
    for i in range(rounds):
        go_r, go_w = os.pipe()
        results = []
        children = []
        for n in range(2):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(go_w)
                os.read(go_r, 1)  # both start at the same instant
                try:
                    lock.take(layout, who(f"r{i}-{n}"))
                    os.write(w, b"won")
                except Exception as exc:  # reported to the parent, which asserts on it
                    os.write(w, json.dumps(getattr(exc, "extra", {"error": repr(exc)})).encode())
                os._exit(0)
            os.close(w)
            children.append((pid, r))
        os.close(go_r)
        os.write(go_w, b"xx")
        os.close(go_w)
        for pid, r in children:
            results.append(os.read(r, 65536).decode())
            os.close(r)
            os.waitpid(pid, 0)
        outcomes.append(results)
        owner = lock.owner(layout)
        assert owner is not None and not owner.get("unknown"), owner
        os.rename(layout.lock, f"{layout.lock}.done{i}")  # the winner's run ends
    return outcomes


def test_of_two_runs_started_together_exactly_one_locks_and_the_other_sees_who(site):
    for results in _race(site, 100):
        assert sorted(r == "won" for r in results) == [False, True], results
        loser = json.loads(next(r for r in results if r != "won"))
        # the loser is told who holds the lock: never a lock without its owner record
        assert loser["lock"]["user"] == "tester" and loser["lock"]["token"].startswith("r"), loser


def test_a_forced_unlock_never_clears_a_live_owners_lock(site):
    for i in range(30):
        r, w = os.pipe()
        holder = os.fork()
        if holder == 0:
            lock.take(site, who(f"live{i}"))
            os.write(w, b"x")
            time.sleep(5)
            os._exit(0)
        os.read(r, 1)
        with pytest.raises(LockError, match="the lock owner is still connected"):
            LocalAgent().call("unlock", {"deploy_to": site.deploy_to, "force": True, "who": who(f"force{i}")})
        assert lock.owner(site)["token"] == f"live{i}"
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
        # its owner is gone now: a forced unlock clears it, and records that
        answer = LocalAgent().call("unlock", {"deploy_to": site.deploy_to, "force": True, "who": who(f"force{i}")})
        assert answer["released"] is True and answer["owner"]["token"] == f"live{i}"
    assert [e["event"] for e in history.read(site)] == ["force-unlock"] * 30


def test_a_lock_without_owner_record_is_never_forced(site):
    os.makedirs(site.lock)
    with pytest.raises(RemoteError) as refused:
        LocalAgent().call("unlock", {"deploy_to": site.deploy_to, "force": True, "who": who("f")})
    assert "has no owner record, so nobody can tell whether its owner still runs" in str(refused.value)
    assert f"rm -r {site.lock}" in str(refused.value)


def test_cleanup_keeps_keep_releases_and_never_the_live_or_previous_one():
    kept = ["a", "b", "c", "d", "e", "f"]
    assert finish.to_remove(kept, current="f", protect=["e"], keep=3) == ["a", "b", "c"]
    assert finish.to_remove(kept, current="b", protect=["a"], keep=2) == ["c", "d"]  # live and previous are old
    assert finish.to_remove(kept, current="f", protect=[None], keep=10) == []


def test_previous_is_the_old_of_the_switch_that_made_current_live():
    entries = [
        {"event": "deploy", "result": "ok", "release": "a", "old": None},
        {"event": "deploy", "result": "ok", "release": "b", "old": "a"},
        {"event": "deploy", "result": "failed", "release": "c", "old": "b"},
        {"event": "rollback", "result": "ok", "release": "a", "old": "b"},
        {"event": "deploy", "result": "ok", "release": "d", "old": "a"},
    ]
    assert history.previous_of(entries, "d") == "a"
    assert history.previous_of(entries, "a") == "b"  # the rollback made it live again, from b
    assert history.previous_of(entries, "c") is None  # promoted, never live
    notes = history.release_notes(entries)
    assert notes["b"]["rolled_back"] is True and notes["d"]["rolled_back"] is False


def test_history_is_read_from_its_end_and_skips_a_torn_line(site):
    for i in range(3000):
        history.record(site, "deploy", who("t"), "ok", release=f"r{i}")
    with open(site.history, "a") as f:
        f.write('{"event": "deploy", "torn')
    last = history.read(site, last=5)
    assert [e["release"] for e in last] == ["r2995", "r2996", "r2997", "r2998", "r2999"]
    assert len(history.read(site)) == 3000


def test_shared_entries_are_seeded_from_the_release_once(site, tmp_path):
    release = make_release(site, IDS[0])
    (release / "storage" / "cache").mkdir(parents=True)
    (release / "storage" / "cache" / ".keep").write_text("skeleton")
    (release / ".env").write_text("DB=1")
    assert shared.link(site, str(release), ["storage", ".env", "media"]) == {
        "storage": "seeded", ".env": "seeded", "media": "created"}  # fmt: skip
    assert Path(site.shared, ".env").read_text() == "DB=1" and Path(site.shared, "storage/cache/.keep").exists()
    again = make_release(site, IDS[1])
    (again / ".env").write_text("DB=2 from a later build")
    assert shared.link(site, str(again), [".env"]) == {".env": "linked"}
    assert Path(again, ".env").read_text() == "DB=1"  # the shared file, never the build's


def test_acl_entries_grant_the_user_and_widen_the_mask():
    acl = grants.acl_with_user([], 0o640, 33, 6)
    assert sorted(acl) == sorted([(grants.USER_OBJ, 6, grants.NO_ID), (grants.GROUP_OBJ, 4, grants.NO_ID),
                                  (grants.OTHER, 0, grants.NO_ID), (grants.USER, 6, 33), (grants.MASK, 6, grants.NO_ID)])  # fmt: skip
    blob = grants.build_acl(acl)
    assert struct.unpack("<I", blob[:4]) == (2,) and len(blob) == 4 + 8 * 5
    assert sorted(grants.parse_acl(blob)) == sorted(acl)
    tags = [struct.unpack("<H", blob[i : i + 2])[0] for i in range(4, len(blob), 8)]
    assert tags == sorted(tags)  # the kernel wants them in tag order


def test_writable_entries_get_an_acl_for_the_web_user(site, tmp_path):
    import pwd
    import subprocess

    release = make_release(site, IDS[0])
    (release / "uploads").mkdir()
    (release / "uploads" / "old.txt").write_text("x")
    try:
        done = shared.make_writable(str(release), ["uploads", "cache"], "www-data", fresh=["uploads", "cache"])
    except RemoteError:
        pytest.skip("no www-data user here")
    if done["uploads"] != "acl":
        pytest.skip("this file system has no POSIX ACLs")
    out = subprocess.run(["getfacl", "-p", str(release / "uploads" / "old.txt")], capture_output=True, text=True).stdout
    assert "user:www-data:rw-" in out
    out = subprocess.run(["getfacl", "-p", str(release / "uploads")], capture_output=True, text=True).stdout
    assert "default:user:www-data:rwx" in out and (release / "cache").is_dir()
    assert pwd.getpwnam("www-data")


def test_the_map_keeps_the_releases_live_before_as_far_back_as_asked(site):
    agent = LocalAgent()
    for rid in IDS:
        make_release(site, rid)
        agent.call("swap", {"deploy_to": site.deploy_to, "release_id": rid, "pause": "none", "previous_depth": 2})
    assert Path(site.release_map).read_text() == f"current {IDS[2]}\nprevious {IDS[1]}\nprevious2 {IDS[0]}\n"
    agent.call("swap", {"deploy_to": site.deploy_to, "release_id": IDS[1], "pause": "none", "previous_depth": 2})
    # a rollback: previous is the release rolled away from, then what was before it (not itself)
    assert Path(site.release_map).read_text() == f"current {IDS[1]}\nprevious {IDS[2]}\nprevious2 {IDS[0]}\n"
    # cleanup keeps what the live map names, whatever keep_releases says
    agent.call("lock", {"deploy_to": site.deploy_to, "who": who("c")})
    agent.call("finish", {"deploy_to": site.deploy_to, "release_id": IDS[1], "token": "c", "keep": 2})
    assert set(IDS) <= set(paths.releases(site))


def test_prelink_links_every_file_of_the_build_mode_in_parallel_and_leaves_the_rest(tmp_path):
    """Files in many directories are hard-linked (same inode), made directories included; a file whose
    mode differs, a symlink and a shared entry are left to rsync and stage; an error is reported."""
    from tasks.remote import stage

    live, incoming = tmp_path / "live", tmp_path / "incoming"
    for i in range(300):
        f = live / "assets" / f"d{i % 40:02d}" / "deep" / f"f{i}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(str(i))
        f.chmod(0o644)
    (live / "run.sh").write_text("#!/bin/sh\n")
    (live / "run.sh").chmod(0o755)  # the build gives it 0644: rsync must write a new file
    (live / "media").mkdir()
    (live / "media" / "upload.jpg").write_text("user data")
    (live / "link").symlink_to("assets")
    plan = {"default": 0o644, "modes": {}, "shared": ["media"]}
    incoming.mkdir()
    assert stage.prelink(str(live), str(incoming), plan) == (300, None)
    for i in (0, 41, 299):
        rel = Path("assets", f"d{i % 40:02d}", "deep", f"f{i}.txt")
        assert (incoming / rel).stat().st_ino == (live / rel).stat().st_ino
    assert not (incoming / "run.sh").exists() and not (incoming / "media").exists()
    assert not os.path.lexists(incoming / "link")
    # a target where the walk cannot make a directory: reported, the threads end, nothing hangs
    again = tmp_path / "again"
    (again / "assets").mkdir(parents=True)
    linked, error = stage.prelink(str(live), str(again), plan)
    assert linked == 0 and error.startswith("FileExistsError")


def test_a_release_id_from_a_clock_running_ahead_is_refused_before_the_lock(site):
    """Cleanup keeps the releases with the highest ids (the deploying machine's UTC time): one
    from a clock a day ahead would outlive the next deploys. The lock step refuses it, changing
    nothing; ten minutes of skew pass."""
    agent = LocalAgent()
    ahead = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() + 86400)) + ".000Z-aaaaaaa"
    with pytest.raises(RemoteError) as refused:
        agent.call("lock", {"deploy_to": site.deploy_to, "who": who("t1"), "release_id": ahead})
    assert f"release {ahead} is 1439 min ahead of this server's clock" in str(refused.value)
    assert "timedatectl set-ntp true" in refused.value.hint
    assert not os.path.lexists(site.lock)
    assert [n for n in os.listdir(site.releases) if n.startswith(".")] == []
    soon = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() + 300)) + ".000Z-bbbbbbb"
    agent.call("lock", {"deploy_to": site.deploy_to, "who": who("t2"), "release_id": soon})
    assert lock.owner(site)["token"] == "t2"
