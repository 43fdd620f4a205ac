"""The upload's wire (tasks/bridge.py, tasks/rsync.py): rsync over a channel of Cutover's own SSH
connection, against a lab server. A reader slower than the server, a server that goes silent: the
upload finishes, or ends with an error naming the host and the step; it never waits for ever."""

import os
import shutil
import signal
import time
from concurrent import futures
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tasks import bridge, rsync, ssh
from tasks.errors import RemoteError

from .conftest import configure, current, history, make_build, releases
from .test_deploy import _cmdline, _rsync_processes, deploy, wait_until

FILES, FILE_KB = 1000, 48  # a site of tens of MB, whose every file the server already has an older copy of


def _site(root, version):
    """FILES files of FILE_MB random-looking bytes; `version` changes one byte in each, not the size."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(FILES):
        data = bytearray(_bytes(i))
        data[len(data) // 2] = version
        (root / f"blob{i:02}.bin").write_bytes(bytes(data))
    (root / "index.html").write_text(f"version {version}\n")
    return root


_CACHE = {}


def _bytes(i):
    if i not in _CACHE:
        _CACHE[i] = os.urandom(FILE_KB << 10)
    return _CACHE[i]


def _upload_with_a_stopped_reader(host, conn, build, dest, stops):
    """Run the upload while the local rsync is stopped for a second now and then (`stops` times,
    0.1 s running in between), as a loaded machine or a terminal's Ctrl-Z would; wait at most 60 s
    for the result."""
    upload = rsync.Upload.start(host, conn, build, str(dest))
    waiting = futures.ThreadPoolExecutor(1).submit(upload.result)
    stopped = 0
    for _ in range(stops):
        time.sleep(0.1)
        if waiting.done():
            break
        try:
            os.kill(upload.proc.pid, signal.SIGSTOP)
        except ProcessLookupError:
            break  # rsync has ended (and been waited for)
        stopped += 1
        try:
            time.sleep(1)
        finally:
            os.kill(upload.proc.pid, signal.SIGCONT)
    assert stopped, "the upload ended before rsync could be stopped once: a bigger site is needed"
    try:
        return waiting.result(timeout=60)
    except futures.TimeoutError:
        upload.stop()
        raise AssertionError("the upload hung: rsync and fab wait on each other") from None


def test_a_local_rsync_that_reads_slower_than_the_server_writes_still_finishes(lab1, tmp_path):
    # The server's answers to a delta upload (block checksums of every changed file, some 600 KB
    # in all here) fill the socket rsync reads them from while rsync is stopped; the bridge must wait
    # for rsync to read, never drop what it could not write at once.
    server, host = lab1.servers[0], lab1.host()
    dest = Path(server.deploy_to, "releases", ".incoming-slow-reader")
    _site(dest, 1)
    build = _site(tmp_path / "build", 2)
    conn = ssh.connect(host)
    try:
        stats = _upload_with_a_stopped_reader(host, conn, build, dest, stops=4)
    finally:
        conn.close()
    assert stats.files == FILES + 1
    for i in range(FILES):
        assert (dest / f"blob{i:02}.bin").read_bytes() == (build / f"blob{i:02}.bin").read_bytes()
    shutil.rmtree(dest)


def test_an_upload_whose_server_stays_silent_ends_with_an_error_naming_host_and_step(lab1, tmp_path):
    # The server side of an early-started upload waits, silent, for an incoming dir that never comes.
    server = lab1.servers[0]
    host = lab1.host()
    host = replace(host, build=replace(host.build, stall_timeout=2))
    dest = Path(server.deploy_to, "releases", ".incoming-never-made")
    conn = ssh.connect(host)
    t = time.monotonic()
    try:
        upload = rsync.Upload.start(host, conn, make_build(tmp_path, "x"), str(dest), when_ready=True)
        with pytest.raises(RemoteError) as failed:
            futures.ThreadPoolExecutor(1).submit(upload.result).result(timeout=30)
    finally:
        conn.close()
    took = time.monotonic() - t
    assert failed.value.host == "lab1"
    assert failed.value.message.startswith("upload: no progress for 2 s (no byte moved either way), so it was stopped")
    assert "raise build.stall_timeout" in failed.value.hint
    assert 2 <= took < 10, took
    wait_until(lambda: _rsync_processes(server) == [], "the upload's processes on both ends to end", 10)
    assert not dest.exists()


def test_a_deploy_whose_upload_stalls_fails_on_that_host_and_releases_the_lock(lab1, tmp_path):
    # The local rsync is stopped as soon as it starts (a machine too loaded to run it, a Ctrl-Z):
    # after build.stall_timeout the deploy ends, the site as it was, the lock free.
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "one"))
    assert deploy(lab1).returncode == 0
    live = current(server)
    configure(lab1, make_build(tmp_path, "two"))
    settings = yaml.safe_load(lab1.hosts_file.read_text())
    settings["defaults"]["build"]["stall_timeout"] = 2
    lab1.hosts_file.write_text(yaml.safe_dump(settings))
    running = futures.ThreadPoolExecutor(1).submit(deploy, lab1)
    stopped = set()

    def local_rsync_stopped():
        for pid in _rsync_processes(server):
            if pid not in stopped and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"rsync\0"):
                os.kill(pid, signal.SIGSTOP)  # the deploy's own rsync, started by this test's fab
                stopped.add(pid)
        return bool(stopped)

    wait_until(local_rsync_stopped, "the deploy's local rsync")
    result = running.result(timeout=60)
    assert result.returncode != 0
    assert "lab1: upload: no progress for 2 s (no byte moved either way), so it was stopped" in result.stderr
    assert current(server) == live
    assert not Path(server.deploy_to, ".cutover", "lock").exists()
    assert [r for r in releases(server) if r.startswith(".incoming")] == []
    assert history(server)[-1]["result"] == "failed"
    assert deploy(lab1).returncode == 0, "the next deploy goes through"


def _session_of(pid):
    """The sshd process serving the connection that started pid (its nearest sshd ancestor)."""
    while pid > 1:
        if Path(f"/proc/{pid}/comm").read_text().startswith("sshd"):
            return pid
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    raise AssertionError("no sshd above the server's rsync")


def test_an_upload_whose_connection_goes_silent_mid_transfer_ends_once_the_keepalives_go_unanswered(
    lab1, tmp_path, monkeypatch
):
    # The first upload of a site of 20,000 small files: the server's rsync asks for every file while
    # the local one sends them. The local rsync is held a second (the server's requests pile up in
    # the connection's buffers), then the connection's sshd stops (a link that goes silent).
    # Unanswered keepalives close the connection; the upload must end then, saying so, instead of
    # the bridge waiting to hand rsync requests while rsync waits to send, until
    # build.stall_timeout (a day here).
    monkeypatch.setattr(bridge, "KEEPALIVE_S", 1)
    monkeypatch.setattr(bridge, "DEAD_AFTER_S", 2)
    server = lab1.servers[0]
    host = lab1.host()
    host = replace(host, build=replace(host.build, stall_timeout=86400))
    dest = Path(server.deploy_to, "releases", ".incoming-silent-link")
    build = tmp_path / "build"
    build.mkdir()
    for i in range(20000):
        (build / f"page{i:05}.html").write_bytes(os.urandom(1024))
    (build / "index.html").write_text("many pages\n")
    conn = ssh.connect(host)
    session = None
    try:
        upload = rsync.Upload.start(host, conn, build, str(dest))
        waiting = futures.ThreadPoolExecutor(1).submit(upload.result)
        wait_until(lambda: upload.last_output > 0, "the upload's first progress line", 60)
        os.kill(upload.proc.pid, signal.SIGSTOP)
        time.sleep(1)
        server_rsync = [p for p in _rsync_processes(server) if _cmdline(p)[:2] == [b"rsync", b"--server"]]
        session = _session_of(min(server_rsync))
        os.kill(session, signal.SIGSTOP)
        os.kill(upload.proc.pid, signal.SIGCONT)
        t = time.monotonic()
        try:
            with pytest.raises(RemoteError) as failed:
                waiting.result(timeout=30)
        except futures.TimeoutError:
            upload.stop()
            raise AssertionError("the upload still waits 30 s after its connection went silent") from None
        took = time.monotonic() - t
    finally:
        if session is not None:
            os.kill(session, signal.SIGCONT)
        conn.close()
    assert failed.value.host == "lab1"
    assert failed.value.message == (
        "upload: the connection went silent: no answer to a keepalive within 2 s, so it was closed"
    )
    assert 2 <= took < 8, took
    local = [p for p in _rsync_processes(server) if _cmdline(p)[0] == b"rsync" and b"--server" not in _cmdline(p)]
    assert local == []
    # resumed, the server finds the connection closed: its rsync ends too
    wait_until(lambda: _rsync_processes(server) == [], "the server's rsync to end", 30)
    shutil.rmtree(dest)


def test_stopping_an_upload_whose_rsync_is_stopped_ends_it_at_once(lab1, tmp_path):
    # Ctrl-C or a failed host while the local rsync is stopped (Ctrl-Z, a machine too loaded):
    # a stopped process acts on SIGTERM only once continued; the way out must not wait its 5 s
    server, host = lab1.servers[0], lab1.host()
    dest = Path(server.deploy_to, "releases", ".incoming-stopped")
    conn = ssh.connect(host)
    try:
        upload = rsync.Upload.start(host, conn, make_build(tmp_path, "s"), str(dest), when_ready=True)
        wait_until(lambda: _rsync_processes(server) != [] and len(_rsync_processes(server)) >= 3, "rsync on both ends")
        time.sleep(0.5)  # rsync's own signal handlers in place: it waits for the server's incoming dir
        os.kill(upload.proc.pid, signal.SIGSTOP)
        t = time.monotonic()
        upload.stop()
        took = time.monotonic() - t
    finally:
        conn.close()
    assert upload.proc.returncode == 20, upload.proc.returncode  # rsync's own exit on SIGTERM, not a SIGKILL
    assert took < 2, took
    wait_until(lambda: _rsync_processes(server) == [], "the upload's processes on both ends to end", 10)
