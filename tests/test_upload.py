"""The upload's wire (tasks/bridge.py, tasks/rsync.py): rsync over a channel of Cutover's own SSH
connection, against a lab server. A reader slower than the server, a server that goes silent: the
upload finishes, or ends with an error naming the host and the step; it never waits for ever."""

import os
import shutil
import signal
import time
from concurrent import futures
from pathlib import Path

from .conftest import configure, current, history, make_build, releases
from tasks import rsync, ssh

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
