"""A deploy held while its upload's rsync runs, its server side waiting for the lock step
(tasks/remote/when_ready.py). Interrupted or killed, it leaves nothing behind on either side: no
rsync, no rsh.py bridge client, no bridge dir in TMPDIR, no change. The build changed meanwhile,
the release still holds no link that leads outside it."""

import os
import signal
import time
from pathlib import Path

from .conftest import configure, current, make_build, processes, releases


def server_side_rsync(server):
    """PIDs of rsync's server side (or when_ready.py, which becomes it) under the server's sshd."""
    return processes(lambda argv: b"--server" in argv, under=server.sshd_pid)


def local_rsync_of(build):
    """PIDs of local rsync processes reading `build`."""
    return processes(lambda argv: argv[0].endswith(b"rsync") and f"{build}/".encode() in argv)


def rsh_clients(tmp):
    """PIDs of rsh.py bridge clients whose socket lies in tmp."""
    return processes(lambda argv: any(a.endswith(b"rsh.py") for a in argv)
                     and any(a.startswith(str(tmp).encode()) for a in argv))  # fmt: skip


def held_deploy(handle, server, tmp, hold):
    """`fab deploy` held before its lock step with a TMPDIR of the test's own (the bridge's dirs),
    returned once rsync's server side waits under the lab's sshd (at most 60 s)."""
    tmp.mkdir(exist_ok=True)
    fab = handle.held("lock", hold, "deploy", env={"TMPDIR": str(tmp)})
    deadline = time.monotonic() + 60
    while not server_side_rsync(server):
        assert fab.poll() is None and time.monotonic() < deadline, fab.communicate()
        time.sleep(0.05)
    return fab


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


def stopped(lab1, tmp_path, sig):
    """A deploy held with its upload waiting, sent `sig`: (server, build, tmp, state before, exit, stderr)."""
    build = make_build(tmp_path, "stopped")
    configure(lab1, build)
    server, tmp, hold = lab1.servers[0], tmp_path / "tmp", tmp_path / "hold"
    before = state(server)
    fab = held_deploy(lab1, server, tmp, hold)
    try:
        os.kill(fab.pid, sig)
        out, err = fab.communicate(timeout=60)
    finally:
        if fab.poll() is None:
            fab.kill()
            fab.wait()
        hold.unlink(missing_ok=True)
    return server, build, tmp, before, fab.returncode, err


def test_ctrl_c_while_the_upload_waits_leaves_nothing_running(lab1, tmp_path):
    server, build, tmp, before, code, err = stopped(lab1, tmp_path, signal.SIGINT)
    assert code == 130, err
    assert left_behind(server, build, tmp) == ([], [], [], [])
    assert state(server) == before
    assert not Path(server.deploy_to, ".cutover", "lock").exists()


def test_sigterm_while_the_upload_waits_leaves_nothing_running(lab1, tmp_path):
    server, build, tmp, before, code, err = stopped(lab1, tmp_path, signal.SIGTERM)
    assert code == -signal.SIGTERM
    assert left_behind(server, build, tmp) == ([], [], [], [])  # the bridge's dir too
    assert state(server) == before


def test_sigkill_while_the_upload_waits_leaves_nothing_running(lab1, tmp_path):
    server, build, tmp, before, code, err = stopped(lab1, tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert left_behind(server, build, tmp) == ([], [], [], [])  # the bridge's dir too
    assert state(server) == before


def test_a_link_leading_outside_added_after_the_build_check_is_not_deployed(lab1, tmp_path):
    """The build check refuses links that lead outside the build; one that appears after the check
    (a build still being written, a hand in the build dir) is left out by rsync (--safe-links):
    Apache would follow it to whatever that path holds on the server."""
    build = make_build(tmp_path, "changed")
    configure(lab1, build)
    server, tmp, hold = lab1.servers[0], tmp_path / "tmp", tmp_path / "hold"
    fab = held_deploy(lab1, server, tmp, hold)
    try:
        (build / "leak").symlink_to("/etc/passwd")
        (build / "assets" / "up").symlink_to("../../outside")
        (build / "assets" / "inside").symlink_to("../index.html")
    finally:
        hold.unlink()
    out, err = fab.communicate(timeout=120)
    assert fab.returncode == 0, err
    release = Path(server.deploy_to, "releases", current(server))
    assert not os.path.lexists(release / "leak") and not os.path.lexists(release / "assets" / "up")
    assert os.readlink(release / "assets" / "inside") == "../index.html"  # a link inside the build is kept
    assert "changed" in (release / "index.html").read_text()
