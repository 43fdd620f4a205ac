"""A first deploy's upload, started while the build is checked (tasks/deploy.py EarlyUpload): a
refused, interrupted or killed deploy leaves nothing behind on either side, and what is deployed
is the build."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import PROJECT, configure, current, make_build, releases
from .test_local_cost import local_rsync_of, server_side_rsync

# The build check, held until rsync's server side runs under the lab's sshd (at most 10 s); it then
# says so and, while HOLD exists, waits (interruptible), then runs the real check.
HELD = """
import os, sys, time
import fabric.main
from tasks import release
sys.path.insert(0, sys.argv[2])
from tests.test_local_cost import server_side_rsync
sshd, hold, real = int(sys.argv[1]), sys.argv[3], release.check_build
class Server:
    sshd_pid = sshd
def check_build(build):
    deadline = time.monotonic() + 10
    while not server_side_rsync(Server) and time.monotonic() < deadline:
        time.sleep(0.02)
    print("UPLOAD DURING THE CHECK", bool(server_side_rsync(Server)), file=sys.stderr, flush=True)
    while os.path.exists(hold) and time.monotonic() < deadline + 30:
        time.sleep(0.02)
    return real(build)
release.check_build = check_build
fabric.main.program.run(["fab", *sys.argv[4:]])
"""


def env_of(handle, tmp):
    """fab's environment: the lab's hosts.yaml, and a TMPDIR of the test's own (the bridge's dirs)."""
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "CUTOVER_HOSTS_FILE": str(handle.hosts_file), "CUTOVER_TEST": "1",
            "XDG_CACHE_HOME": str(handle.lab.root / "cache"), "TMPDIR": str(tmp)}  # fmt: skip


def held(handle, server, hold, tmp, *args):
    """fab ARGS (default: deploy) with its build check held (see HELD), started; a Popen."""
    argv = [sys.executable, "-c", HELD, str(server.sshd_pid), str(PROJECT), str(hold), *(args or ["deploy"])]
    return subprocess.Popen(argv, cwd=PROJECT, env=env_of(handle, tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip


def rsh_clients(tmp):
    """PIDs of rsh.py bridge clients whose socket lies in tmp."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"rsh.py") for a in argv) and any(a.startswith(str(tmp).encode()) for a in argv):
            found.append(int(pid))
    return found


def wait_upload_running(fab, deadline=30):
    """Read fab's stderr until the held check says the upload runs on the server."""
    end = time.monotonic() + deadline
    seen = []
    while time.monotonic() < end:
        text = fab.stderr.readline()
        if not text:
            break
        seen.append(text)
        if text.startswith("UPLOAD DURING THE CHECK"):
            assert text.strip() == "UPLOAD DURING THE CHECK True", seen
            return seen
    raise AssertionError(f"no upload during the check: {seen}")


def left_behind(server, build, tmp, wait=10):
    """What stays after fab ended (given `wait` s to go): server-side rsync, local rsync, rsh.py, temp dirs."""
    deadline = time.monotonic() + wait
    while True:
        found = (server_side_rsync(server), local_rsync_of(build), rsh_clients(tmp), sorted(os.listdir(tmp)))
        if found == ([], [], [], []) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def state(server):
    return releases(server), current(server), sorted(os.listdir(Path(server.deploy_to, "releases")))


def test_a_refused_build_leaves_no_bridge_client_and_no_temp_dir(lab1, tmp_path):
    build = make_build(tmp_path, "refused")
    (build / "leak").symlink_to("/etc/passwd")
    configure(lab1, build)
    server, tmp, hold = lab1.servers[0], tmp_path / "tmp", tmp_path / "hold"
    before = state(server)
    fab = held(lab1, server, hold, tmp)
    wait_upload_running(fab)
    out, err = fab.communicate(timeout=60)
    assert fab.returncode == 2, err
    assert "holds links that lead outside it: leak -> /etc/passwd" in err
    assert left_behind(server, build, tmp) == ([], [], [], [])
    assert state(server) == before


def interrupted(lab1, tmp_path, sig):
    build = make_build(tmp_path, "interrupted")
    configure(lab1, build)
    server, tmp, hold = lab1.servers[0], tmp_path / "tmp", tmp_path / "hold"
    hold.touch()
    before = state(server)
    fab = held(lab1, server, hold, tmp)
    try:
        wait_upload_running(fab)
        os.kill(fab.pid, sig)
        out, err = fab.communicate(timeout=60)
    finally:
        if fab.poll() is None:
            fab.kill()
            fab.wait()
    return server, build, tmp, before, fab.returncode, err


def test_ctrl_c_during_the_check_leaves_nothing_running(lab1, tmp_path):
    server, build, tmp, before, code, err = interrupted(lab1, tmp_path, signal.SIGINT)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "cutover: interrupted"
    assert left_behind(server, build, tmp) == ([], [], [], [])
    assert state(server) == before
    assert not Path(server.deploy_to, ".cutover", "lock").exists()


def test_sigterm_during_the_check_leaves_nothing_running(lab1, tmp_path):
    server, build, tmp, before, code, err = interrupted(lab1, tmp_path, signal.SIGTERM)
    assert code == -signal.SIGTERM
    assert left_behind(server, build, tmp) == ([], [], [], [])
    assert state(server) == before


def test_sigkill_during_the_check_leaves_nothing_running(lab1, tmp_path):
    server, build, tmp, before, code, err = interrupted(lab1, tmp_path, signal.SIGKILL)
    assert code == -9
    assert left_behind(server, build, tmp) == ([], [], [], [])
    assert state(server) == before
