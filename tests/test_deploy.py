"""`fab deploy` against lab servers: atomic switch under load, prelinked uploads, smoke, verify, lock, watchdog."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import pytest
import yaml

from lab.loadgen import LoadGen
from tasks import rsync, ssh

from .conftest import (
    PROJECT,
    configure,
    current,
    history,
    known_bodies,
    make_build,
    releases,
    skip_without_cgroup,
    start_lab,
    stop_lab,
    stopped_httpd,
)


def deploy(handle, *args, env=None):
    return handle.fab("deploy", *args, env=env)


def test_deploy_under_load_fails_no_request_and_serves_whole_releases(lab2, tmp_path):
    old, new = make_build(tmp_path, "old"), make_build(tmp_path, "new")
    configure(lab2, old)
    first = deploy(lab2)
    assert first.returncode == 0, first.stderr
    configure(lab2, new)
    known = known_bodies(old, new)
    loads = [LoadGen(s.url, paths=("/", "/assets/style.css", "/assets/app.js"), threads=3) for s in lab2.servers]
    for load in loads:
        load.start()
    # answers from the old release before the deploy, from the new one after it
    wait_until(lambda: all(len(load.samples) > 50 for load in loads), "answers before the deploy")
    result = deploy(lab2)
    seen = [len(load.samples) for load in loads]
    wait_until(lambda: all(len(load.samples) > n + 50 for load, n in zip(loads, seen)), "answers after the deploy")
    for load in loads:
        load.stop()
    assert result.returncode == 0, result.stderr
    for server, load in zip(lab2.servers, loads):
        assert len(load.samples) > 100
        assert load.failures() == []
        assert load.unknown(known) == []
        seen = load.labels(known)
        assert seen["old"] > 0 and seen["new"] > 0
        # once a response from the new release had arrived, the switch was done: no request
        # sent after that moment may get the old release
        switched = min(s.at + s.latency for s in load.samples if s.body == known[s.path]["new"])
        late_old = [s for s in load.samples if s.at > switched and s.body == known[s.path]["old"]]
        assert late_old == []
        release_id = current(server)
        assert history(server)[-1]["release"] == release_id
        assert history(server)[-1]["result"] == "ok"
        assert history(server)[-1]["listen"] == {"overflows": 0, "drops": 0}  # nobody refused during the pause
    assert f"deployed {release_id} to 2 hosts in " in result.stdout and " s since fab started)" in result.stdout
    # httpd.pause auto: the event MPM has many threads per process, so signals pause it sooner
    assert "httpd stopped" in result.stdout
    # the switch spread, by the servers' clocks (one clock here), in the output and every host's history
    found = re.search(
        r", switch spread ([\d.]+) ms \(first to last host's rename; every go sent within ([\d.]+) ms\)", result.stdout
    )
    spread, sent = float(found.group(1)), float(found.group(2))
    assert [history(s)[-1]["switch_spread_ms"] for s in lab2.servers] == [spread, spread]
    assert [history(s)[-1]["go_sent_ms"] for s in lab2.servers] == [sent, sent]
    assert re.search(r"(?m)^host +now serves +was +sent +httpd paused +seconds$", result.stdout)
    for server in lab2.servers:
        assert re.search(
            rf"(?m)^{server.name} +{release_id} +\S+ +[\d,]+ B +[\d.]+ ms \(sigstop\) +[\d.]+$", result.stdout
        )
    assert current(lab2.servers[0]) == current(lab2.servers[1])  # one release id for the fleet


def test_one_file_change_sends_that_file_and_hard_links_the_rest(lab1, tmp_path):
    server = lab1.servers[0]
    assets = {f"assets/img{i}.bin": os.urandom(20_000) for i in range(40)}
    a = make_build(tmp_path, "a", assets)
    configure(lab1, a)
    assert deploy(lab1).returncode == 0
    first = current(server)
    b = Path(tmp_path, "build-b")
    os.rename(a, b)
    changed = os.urandom(50_000)
    (b / "assets" / "img7.bin").write_bytes(changed)
    configure(lab1, b)
    result = deploy(lab1)
    assert result.returncode == 0, result.stderr
    assert re.search(r"\[lab1\] upload +\d+ ms  1 file changed, ", result.stdout), result.stdout
    second = current(server)
    assert second != first
    sent = history(server)[-1]["bytes_sent"]
    assert len(changed) <= sent <= 1.2 * len(changed) + 8192, sent
    old_dir, new_dir = Path(server.deploy_to, "releases", first), Path(server.deploy_to, "releases", second)
    assert (new_dir / "assets/img3.bin").stat().st_ino == (old_dir / "assets/img3.bin").stat().st_ino
    assert (new_dir / "index.html").stat().st_ino == (old_dir / "index.html").stat().st_ino
    assert (new_dir / "assets/img7.bin").stat().st_ino != (old_dir / "assets/img7.bin").stat().st_ino
    assert (new_dir / "assets/img7.bin").read_bytes() == changed
    assert (new_dir / "media").is_symlink()
    assert (new_dir / "media").resolve() == Path(server.deploy_to, "shared", "media").resolve()


def _files(root):
    return {str(p.relative_to(root)): p for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink()}


def test_a_rebuild_that_rewrites_every_file_still_shares_every_unchanged_one(lab1, tmp_path):
    # Site generators often write the whole output anew: same bytes, new mtimes. rsync's
    # --link-dest then linked nothing and the new release cost the whole site again.
    server = lab1.servers[0]
    build = make_build(tmp_path, "a", {f"assets/img{i}.bin": os.urandom(30_000) for i in range(20)})
    configure(lab1, build)
    assert deploy(lab1).returncode == 0
    first = current(server)
    for path in _files(build).values():
        path.write_bytes(path.read_bytes())  # rewritten: new mtime, same bytes
        os.utime(path, (time.time() + 5, time.time() + 5))
    result = deploy(lab1)
    assert result.returncode == 0, result.stderr
    releases_dir = Path(server.deploy_to, "releases")
    old, new = _files(releases_dir / first), _files(releases_dir / current(server))
    assert new.keys() == old.keys() and len(new) > 20
    assert [rel for rel in new if new[rel].stat().st_ino != old[rel].stat().st_ino] == []
    assert history(server)[-1]["bytes_sent"] < 20_000  # the file list, no file data


@pytest.mark.parametrize("compare", ["checksum", "mtime"])
def test_a_mode_change_makes_a_new_file_and_leaves_the_live_one_alone(lab1, tmp_path, compare):
    server = lab1.servers[0]
    build = make_build(tmp_path, "a")
    configure(lab1, build, build_compare=compare)
    assert deploy(lab1).returncode == 0
    live = Path(server.deploy_to, "releases", current(server), "assets", "app.js")
    before = live.stat()
    (build / "assets" / "app.js").chmod(0o600)  # same bytes, same mtime, another mode
    result = deploy(lab1)
    assert result.returncode == 0, result.stderr
    new = Path(server.deploy_to, "releases", current(server), "assets", "app.js")
    assert oct(new.stat().st_mode & 0o777) == "0o600"
    assert new.stat().st_ino != before.st_ino
    assert (live.stat().st_mode, live.stat().st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert new.read_bytes() == live.read_bytes()


def test_no_local_rsync_is_a_clear_error_and_changes_nothing(lab1, tmp_path):
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "x"))
    before = (current(server), releases(server))
    result = deploy(lab1, env={"PATH": str(tmp_path / "empty")})
    assert result.returncode == 1
    assert "rsync is not installed on this machine" in result.stderr and "Traceback" not in result.stderr
    assert (current(server), releases(server)) == before
    assert not Path(server.deploy_to, ".cutover", "lock").exists()


def test_failing_smoke_test_leaves_the_site_untouched(lab1, tmp_path):
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "x"), smoke={"commands": ["test -s index.html", "echo broken >&2; exit 3"]})
    before_current, before_releases = current(server), releases(server)
    result = deploy(lab1)
    assert result.returncode == 6
    assert "smoke command 'echo broken >&2; exit 3' exited 3" in result.stderr
    assert "broken" in result.stderr
    assert f"lab1 serves {before_current}" in result.stderr
    assert (current(server), releases(server)) == (before_current, before_releases)
    assert not Path(server.deploy_to, ".cutover", "lock").exists()
    assert history(server)[-1]["result"] == "failed"


def test_smoke_commands_see_the_release(lab1, tmp_path):
    server = lab1.servers[0]
    probe = Path(server.deploy_to, "shared", "smoke-env")
    command = f'echo "$RELEASE_ID $RELEASE_DIR $(pwd)" > {probe}'
    configure(lab1, make_build(tmp_path, "x"), smoke={"commands": [command]})
    result = deploy(lab1)
    assert result.returncode == 0, result.stderr
    release_id, release_dir, cwd = probe.read_text().split()
    assert release_id == current(server)
    assert release_dir == cwd == f"{server.deploy_to}/releases/.incoming-{release_id}"


def test_failing_health_check_swaps_back(lab1, tmp_path):
    server = lab1.servers[0]
    before = current(server)
    pin = Path(server.deploy_to, ".cutover", "release.map")
    pinned = pin.read_text()
    configure(lab1, make_build(tmp_path, "x"), health={"expect_text": "release {release} is live", "retries": 1})
    result = deploy(lab1)
    assert result.returncode == 7
    assert "health check failed after the switch" in result.stderr
    assert f"switched back to {before} at once" in result.stderr
    assert current(server) == before
    assert releases(server) == [before]  # the failed release was removed
    assert pin.read_text() == pinned  # Apache's pin as before, `previous` included
    assert stopped_httpd(server) == []


def test_a_held_lock_refuses_a_second_deploy(lab1, tmp_path):
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "x"))
    before = current(server)
    # the second deploy is held before its lock step (tasks/testhooks.py) until the first holds the
    # lock, inside its widened pause: it then asks for the lock within ms, however slowly a loaded
    # machine started it
    hold = tmp_path / "hold"
    hold.touch()
    pool = futures.ThreadPoolExecutor(2)
    holder = pool.submit(deploy, lab1, env={"CUTOVER_TEST_HOLD_PAUSE_MS": "1500"})
    waiting = pool.submit(deploy, lab1, env={"CUTOVER_TEST_HOLD_AT": f"lock:{hold}"})
    lock = Path(server.deploy_to, ".cutover", "lock", "owner.json")
    try:
        wait_until(lambda: lock.exists() and Path(f"{hold}.waiting").exists(), "the lock held and the second waiting")
    finally:
        hold.unlink()
    second = waiting.result(timeout=120)
    first = holder.result(timeout=120)
    assert second.returncode == 5
    assert "lab1: locked by root@" in second.stderr
    assert "running 'deploy' since" in second.stderr
    assert "wait for that run to finish" in second.stderr
    assert first.returncode == 0, first.stderr
    assert current(server) != before
    assert len(releases(server)) == 2  # the refused deploy left nothing behind


def wait_until(condition, what, seconds=20):
    """Poll condition until it holds; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not seen within {seconds} s"
        time.sleep(0.02)


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return [b""]  # exited since the listing


def _rsync_processes(server):
    """Processes of this lab server's uploads: the local rsync and its remote shell, the server's rsync
    or its wait."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(server.deploy_to.encode() in arg for arg in cmdline) and any(b"rsync" in arg for arg in cmdline):
            found.append(int(proc.name))
    return found


def test_a_dead_owners_lock_needs_force_unlock(lab1, tmp_path):
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "x"))
    lock = Path(server.deploy_to, ".cutover", "lock")
    lock.mkdir()
    (lock / "owner.json").write_text(
        '{"user": "alice", "local_host": "laptop", "pid": 4242, "command": "deploy", "token": "t",'
        ' "started": "2026-11-24T03:00:00Z", "session_pid": 999999, "session_start": 1}'
    )
    refused = deploy(lab1)
    assert refused.returncode == 5
    assert "locked by alice@laptop (pid 4242) running 'deploy' since 2026-11-24T03:00:00Z" in refused.stderr
    assert "its SSH session is gone, so its owner is dead: run again with --force-unlock" in refused.stderr
    # the upload, started together with the lock step, is gone on both ends
    deadline = time.monotonic() + 5
    while _rsync_processes(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _rsync_processes(server) == []
    assert [p.name for p in Path(server.deploy_to, "releases").iterdir() if p.name.startswith(".")] == []
    forced = deploy(lab1, "--force-unlock")
    assert forced.returncode == 0, forced.stderr
    assert "cleared the lock of alice@laptop since 2026-11-24T03:00:00Z" in forced.stdout
    assert history(server)[0]["event"] == "force-unlock"


def test_an_early_upload_waits_for_the_incoming_dir_and_ends_with_its_client(lab1, tmp_path):
    server = lab1.servers[0]
    incoming = Path(server.deploy_to, "releases", ".incoming-20300101T000000.000Z")
    build = make_build(tmp_path, "x")
    conn = ssh.connect(lab1.host())
    waiting = rsync.Upload.start(lab1.host(), conn, build, str(incoming), when_ready=True)

    def argv0():
        return sorted(_cmdline(pid)[0] for pid in _rsync_processes(server))

    upload_processes = sorted([sys.executable.encode(), b"/usr/bin/python3", b"rsync"])

    try:
        # the local rsync and its remote shell (tasks/rsh.py, whose arguments are rsync's remote
        # command), and on the server the python that waits for the incoming dir
        wait_until(lambda: argv0() == upload_processes, "the server side of the upload")
        assert waiting.proc.poll() is None and not incoming.exists()
    finally:
        waiting.stop()  # as when the deploy fails before its lock step has made the dir
    deadline = time.monotonic() + 5
    while _rsync_processes(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _rsync_processes(server) == [] and not incoming.exists()
    # and once the dir appears, it becomes rsync and uploads into it
    ready = rsync.Upload.start(lab1.host(), conn, build, str(incoming), when_ready=True)
    try:
        wait_until(lambda: argv0() == upload_processes, "the server side of the upload")
        incoming.mkdir()
        stats = ready.result()
    finally:
        ready.stop()
        conn.close()
    assert stats.files > 3 and (incoming / "index.html").read_bytes() == (build / "index.html").read_bytes()
    shutil.rmtree(incoming)


@pytest.mark.parametrize("pause", ["freeze", "sigstop"])
def test_watchdog_resumes_httpd_when_the_swap_is_killed_inside_the_pause(lab1, tmp_path, pause):
    server = lab1.servers[0]
    skip_without_cgroup(server, pause)
    configure(lab1, make_build(tmp_path, "x"), httpd={"pidfile": server.pidfile, "pause_timeout": 3, "pause": pause})
    before = current(server)
    holder = futures.ThreadPoolExecutor(1).submit(deploy, lab1, env={"CUTOVER_TEST_HOLD_PAUSE_MS": "20000"})
    deadline = time.monotonic() + 20
    while not stopped_httpd(server) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert stopped_httpd(server), "httpd was never paused"
    swap_pid = int(Path(server.deploy_to, ".cutover", "swap.pid").read_text().split()[0])
    os.kill(swap_pid, 9)
    killed = time.monotonic()
    while stopped_httpd(server) and time.monotonic() - killed < 5:
        time.sleep(0.01)
    resumed_after = time.monotonic() - killed
    result = holder.result(timeout=120)
    assert stopped_httpd(server) == []
    assert resumed_after < 3 + 1
    log = Path(server.deploy_to, ".cutover", "watchdog.log").read_text()  # then the switch back's, held too
    thawed = f"thawed {server.cgroup}; " if pause == "freeze" else ""
    assert f"the swap process died; {thawed}SIGCONT sent to" in log
    assert result.returncode == 4
    assert "lab1: swap: the swap process was killed by signal 9 before it reported" in result.stderr
    # the renames had happened before the kill, unverified: the deploy switched back at once
    assert "switched back on lab1" in result.stderr
    assert current(server) == before


@pytest.mark.parametrize("pause", ["freeze", "sigstop"])
def test_watchdog_resumes_httpd_after_pause_timeout(lab1, pause):
    server = lab1.servers[0]
    skip_without_cgroup(server, pause)
    from tasks import agent, ssh
    from tasks.remote.paths import Layout

    host = lab1.host()
    layout = Layout(host.deploy_to)
    release_id = "20300101T000000Z"
    Path(layout.release(release_id)).mkdir()
    Path(layout.release(release_id), "index.html").write_text("stuck")

    def run_swap():
        with ssh.connect(host) as conn:
            return agent.call(conn, host.name, host.python, "swap", "swap", {
                "deploy_to": host.deploy_to, "release_id": release_id, "pidfile": server.pidfile, "pause": pause,
                "pause_timeout": 1, "hold_ms": 4000,
            }, 30)  # fmt: skip

    swapper = futures.ThreadPoolExecutor(1).submit(run_swap)
    wait_until(lambda: stopped_httpd(server), "httpd paused", seconds=10)
    paused_at = time.monotonic()
    while stopped_httpd(server) and time.monotonic() - paused_at < 5:
        time.sleep(0.01)
    resumed_after = time.monotonic() - paused_at
    answer = swapper.result(timeout=30)
    assert 0.8 < resumed_after < 1 + 1
    assert "pause_timeout of 1s passed" in Path(layout.meta, "watchdog.log").read_text()
    assert answer["new"] == release_id and stopped_httpd(server) == []
    assert answer["note"] == "the watchdog resumed httpd after pause_timeout (1s)" and answer["method"] == pause


def test_clean_up_keeps_exactly_keep_releases(lab1, tmp_path):
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "x"), keep_releases=3)
    deployed = []
    for _ in range(5):
        result = deploy(lab1)
        assert result.returncode == 0, result.stderr
        deployed.append(current(server))
    assert releases(server) == deployed[-3:]
    assert "removed 1 old release(s)" in result.stdout


def test_refusals_change_nothing_on_the_server(lab1, tmp_path):
    server = lab1.servers[0]
    before = (current(server), releases(server))
    empty = tmp_path / "build-empty"
    empty.mkdir()
    configure(lab1, empty)
    result = deploy(lab1)
    assert result.returncode == 2 and "is empty: refusing to deploy an empty site" in result.stderr
    configure(lab1, tmp_path / "nope")
    result = deploy(lab1)
    assert result.returncode == 2 and "does not exist or is not a directory" in result.stderr
    no_index = make_build(tmp_path, "noindex")
    (no_index / "index.html").unlink()
    configure(lab1, no_index)
    result = deploy(lab1)
    assert result.returncode == 2 and "lacks index.html (build.required)" in result.stderr
    assert (current(server), releases(server)) == before
    assert not Path(server.deploy_to, ".cutover", "history.jsonl").exists()


def test_missing_deploy_to_says_run_setup(lab1, tmp_path):
    server = lab1.servers[0]
    hosts = lab1.hosts_file.read_text().replace(server.deploy_to, server.deploy_to + "-missing")
    hosts_file = tmp_path / "hosts.yaml"
    hosts_file.write_text(hosts)
    result = lab1.fab("deploy", hosts_file=hosts_file)
    assert result.returncode == 4
    assert f"deploy_to {server.deploy_to}-missing does not exist on this server" in result.stderr
    assert "run `fab setup` or create it" in result.stderr
    assert not Path(server.deploy_to + "-missing").exists()


def test_dry_run_lists_changes_and_changes_nothing(lab1, tmp_path):
    server = lab1.servers[0]
    build = make_build(tmp_path, "dry", {"new-page.html": b"<p>new</p>"})
    configure(lab1, build)
    before = (current(server), releases(server))
    result = deploy(lab1, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "new-page.html" in result.stdout
    assert "files would change" in result.stdout
    assert result.stdout.startswith("dry run of release ") and "deploying release" not in result.stdout
    assert "dry run: nothing was changed" in result.stdout
    assert (current(server), releases(server)) == before
    assert not Path(server.deploy_to, ".cutover", "lock").exists()


def test_hostile_values_are_refused_or_quoted(lab1, tmp_path):
    from tasks import agent, ssh
    from tasks.errors import RemoteError

    canary = tmp_path / "canary"
    host = lab1.host()
    with ssh.connect(host) as conn:
        for hostile in (f"20300101T000000Z; touch {canary}", f"$(touch {canary})", "../../etc", "20300101T000000Z\n"):
            try:
                agent.call(conn, host.name, host.python, "swap", "swap", {
                    "deploy_to": host.deploy_to, "release_id": hostile, "pidfile": host.httpd.pidfile,
                    "pause": "sigstop", "pause_timeout": 1,
                }, 30)  # fmt: skip
            except RemoteError as exc:
                assert "is not a release id" in str(exc)
            else:
                raise AssertionError(f"{hostile!r} was accepted")
    # a build path with shell metacharacters is passed to rsync as one argument, never to a shell
    odd = make_build(tmp_path, "odd")
    name = f"cutover-canary-{os.getpid()}"
    weird = tmp_path / f"build $(touch {name}); `touch {name}` 'x\""
    os.rename(odd, weird)
    configure(lab1, weird)
    result = deploy(lab1)
    assert result.returncode == 0, result.stderr
    server = lab1.servers[0]
    for where in (tmp_path, PROJECT, Path.home(), Path(server.deploy_to), Path(server.deploy_to, "current")):
        assert not (where / name).exists()
    assert not canary.exists()


def test_smoke_url_checks_the_incoming_release_before_the_switch(lab1, tmp_path):
    server = lab1.servers[0]
    url = f"{server.url}_cutover_next/"
    configure(lab1, make_build(tmp_path, "good"), smoke={"url": url})
    result = deploy(lab1)
    assert result.returncode == 0, result.stderr
    assert not os.path.lexists(Path(server.deploy_to, "next"))  # the preview exists only while it is tested
    before = current(server)
    broken = make_build(tmp_path, "broken")
    (broken / "index.html").chmod(0o600)  # Apache's children cannot read it: 403 on the preview
    configure(lab1, broken, smoke={"url": url})
    result = deploy(lab1)
    assert result.returncode == 6
    assert f"smoke URL failed: {url} answered 403, expected 200" in result.stderr
    assert current(server) == before


def test_a_group_switches_back_when_one_host_fails_verify(lab_pair, tmp_path):
    one, two = lab_pair.servers
    configure(lab_pair, make_build(tmp_path, "base"))
    assert deploy(lab_pair).returncode == 0
    before = [current(one), current(two)]
    configure(lab_pair, make_build(tmp_path, "next"))
    # lab2's check wants what only the live release has: it passes before the switch, fails after
    data = yaml.safe_load(lab_pair.hosts_file.read_text())
    data["groups"]["sandbox"][1]["health"]["expect_text"] = 'content="base"'
    lab_pair.hosts_file.write_text(yaml.safe_dump(data, sort_keys=False))
    result = deploy(lab_pair)
    assert result.returncode == 7
    assert "lab2: health check failed after the switch" in result.stderr
    assert "switched back on lab1 so the group stays on one release" in result.stderr
    assert [current(one), current(two)] == before
    assert stopped_httpd(one) == stopped_httpd(two) == []


def test_an_upload_that_writes_much_to_stderr_still_finishes(lab1, tmp_path, monkeypatch):
    # rsync with thousands of warnings: a full stderr pipe must not stall the upload
    fake = tmp_path / "bin" / "rsync"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nhead -c 300000 /dev/zero | tr '\\0' w >&2\necho 'Total bytes sent: 1,234'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    conn = ssh.connect(lab1.host())
    running = rsync.Upload.start(lab1.host(), conn, make_build(tmp_path, "x"), "/nowhere")
    done = futures.ThreadPoolExecutor(1).submit(running.result)
    try:
        stats = done.result(timeout=20)
    except futures.TimeoutError:
        running.stop()
        raise AssertionError("the upload hung on rsync's stderr") from None
    finally:
        conn.close()
    assert stats.bytes_sent == 1234


def test_output_piped_into_head_ends_quietly(lab1, tmp_path):
    configure(lab1, make_build(tmp_path, "x"))
    assert deploy(lab1).returncode == 0
    # far more output than a pipe holds, so that fab writes on after head has gone
    entry = history(lab1.servers[0])[-1]
    with open(Path(lab1.servers[0].deploy_to, ".cutover", "history.jsonl"), "a") as f:
        f.write((json.dumps(entry) + "\n") * 3000)
    env = dict(os.environ, CUTOVER_HOSTS_FILE=str(lab1.hosts_file))
    piped = subprocess.run(
        f"{shlex.quote(sys.executable)} -m fabric history -n 3000 | head -1", shell=True, cwd=PROJECT, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert piped.stdout == "lab1: last 3000 entries\n"
    assert piped.stderr == ""  # no BrokenPipeError traceback


def test_pause_freeze_is_refused_where_httpd_shares_its_cgroup_and_auto_signals(lab1, tmp_path):
    server = lab1.servers[0]
    skip_without_cgroup(server, "freeze")
    # a process httpd did not start, in httpd's cgroup (as in a container that runs everything in one)
    intruder = subprocess.Popen(
        ["sleep", "120"], preexec_fn=lambda: Path(server.cgroup, "cgroup.procs").write_text(str(os.getpid()))
    )
    try:
        configure(lab1, make_build(tmp_path, "f"), httpd={"pidfile": server.pidfile, "pause": "freeze"})
        before, kept = current(server), releases(server)
        refused = deploy(lab1)
        assert refused.returncode == 4, refused.stderr
        assert (
            f"httpd.pause is freeze, but httpd's cgroup {server.cgroup} also holds PID {intruder.pid} (sleep)"
            in refused.stderr
        )
        assert "run Apache in a cgroup of its own (systemd does), or set httpd.pause: auto" in refused.stderr
        assert current(server) == before and releases(server) == kept  # nothing left behind
        check = lab1.fab("check")
        assert check.returncode != 0 and f"also holds PID {intruder.pid} (sleep)" in check.stdout + check.stderr
        configure(lab1, make_build(tmp_path, "a"), httpd={"pidfile": server.pidfile, "pause": "auto"})
        result = deploy(lab1)
        assert result.returncode == 0, result.stderr
        assert "httpd stopped" in result.stdout and history(server)[-1]["pause_method"] == "sigstop"
    finally:
        intruder.kill()
        intruder.wait()
    configure(lab1, make_build(tmp_path, "b"), httpd={"pidfile": server.pidfile, "pause": "freeze"})
    result = deploy(lab1)  # now that httpd's cgroup is its own
    assert result.returncode == 0, result.stderr
    assert "httpd frozen" in result.stdout and history(server)[-1]["pause_method"] == "freeze"


def test_pause_auto_freezes_prefork_and_signals_the_threaded_event_mpm(lab1, tmp_path):
    skip_without_cgroup(lab1.servers[0], "freeze")
    handle, root = start_lab(1, mpm="prefork")
    try:
        for lab_, mpm, how, cell in ((handle, "prefork", "frozen", "freeze"), (lab1, "event", "stopped", "sigstop, ")):
            server = lab_.servers[0]
            configure(lab_, make_build(tmp_path, mpm), httpd={"pidfile": server.pidfile, "pause": "auto"})
            result = deploy(lab_)
            assert result.returncode == 0, result.stderr
            assert f"httpd {how} " in result.stdout, result.stdout
            check = lab_.fab("check")
            assert check.returncode == 0 and f"(pid {server.httpd_pid}, {cell}" in check.stdout, check.stdout
    finally:
        stop_lab(handle, root)
