"""Ctrl-C before the switch: the run removes its upload from each server and unlocks, which for a
large release on a busy disk takes seconds. The wait is said at once, and a second Ctrl-C ends
it with what each host serves."""

import json
import os
import signal
import time
from pathlib import Path

from .conftest import configure, current, make_build
from .test_ctrl_c_switch import Lines
from .test_murphy import poll

CLEANING = "Ctrl-C: removing this run's upload and unlocking on lab1"


def _session(server):
    """The sshd process of the connection of the run that holds this server's lock."""
    return json.loads(Path(server.deploy_to, ".cutover", "lock", "owner.json").read_text())["session_pid"]


def test_ctrl_c_while_the_server_is_slow_to_clean_up_says_so_and_ctrl_c_again_ends_the_wait(lab1, tmp_path):
    """The server slow to remove the upload (here: its connection stopped): the first Ctrl-C says
    at once what the run waits for, and that a second one stops waiting; the second ends the run
    (exit 130) within a second, saying what the host serves and that the clean up was left under
    way. The server had the request: it finishes once it runs again, the lock freed, the upload gone."""
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "c1"))
    assert lab1.fab("deploy").returncode == 0
    live = current(server)
    configure(lab1, make_build(tmp_path, "c2"))
    fab = lab1.held("upload", tmp_path / "hold", "deploy")  # the lock held, the upload under way
    out = Lines(fab.stdout)
    session = _session(server)
    try:
        os.kill(session, signal.SIGSTOP)  # the server answers nothing more: its clean up waits
        fab.send_signal(signal.SIGINT)
        said = poll(lambda: out.count(CLEANING) == 1, seconds=3)
        assert said, f"nothing said within 3 s of Ctrl-C while the clean up waits: {out.lines}"
        pressed = time.monotonic()
        fab.send_signal(signal.SIGINT)
        err = out.stderr_of(fab, timeout=30)
        took = time.monotonic() - pressed
    finally:
        os.kill(session, signal.SIGCONT)
        if fab.poll() is None:
            fab.kill()
    assert fab.returncode == 130, err
    assert took < 2, f"the second Ctrl-C ended the run after {took:.1f} s"
    assert out.text().count("stopped waiting (Ctrl-C again)") == 1, (out.text(), err)
    assert (
        f"the site now: lab1 serves {live} (removing its upload and unlocking left under way (Ctrl-C): if the "
        "server had not begun it, its lock stays until --force-unlock)" in err
    ), err
    # the request was sent before the server went silent: it runs to its end there
    releases = Path(server.deploy_to, "releases")
    assert poll(lambda: not Path(server.deploy_to, ".cutover", "lock").exists(), seconds=10), err
    assert [n for n in os.listdir(releases) if n.startswith(".")] == []
    assert current(server) == live
    assert lab1.fab("deploy").returncode == 0, "the next deploy needs no --force-unlock"


def test_ctrl_c_once_the_release_is_live_says_it_unlocks_and_removes_nothing(lab1, tmp_path):
    """Ctrl-C after the switch, before the clean up: the new release is live and stays; what the
    run says it waits for must not be the removal of that release."""
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "l1"))
    assert lab1.fab("deploy").returncode == 0
    configure(lab1, make_build(tmp_path, "l2"))
    fab = lab1.held("finish", tmp_path / "hold", "deploy")  # switched and verified
    out = Lines(fab.stdout)
    try:
        new = current(server)
        fab.send_signal(signal.SIGINT)
        err = out.stderr_of(fab, timeout=30)
    finally:
        if fab.poll() is None:
            fab.kill()
    assert fab.returncode == 130, err
    assert "Ctrl-C: unlocking on lab1; Ctrl-C again stops waiting" in out.text(), out.text()
    assert "removing this run's upload" not in out.text(), out.text()
    assert f"the site now: lab1 serves {new}" in err, err
    assert current(server) == new
    assert not Path(server.deploy_to, ".cutover", "lock").exists()


def test_a_slow_clean_up_after_the_switch_says_what_it_waits_for(lab1, tmp_path):
    """The clean up after the switch (old releases removed: seconds for a large site on a busy
    disk, here a server gone quiet for a while) says every few seconds what the run still waits
    for, instead of nothing after the switch's line; the run then ends as usual."""
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "q1"))
    assert lab1.fab("deploy").returncode == 0
    configure(lab1, make_build(tmp_path, "q2"))
    hold = tmp_path / "hold"
    fab = lab1.held("finish", hold, "deploy")  # switched and verified
    out = Lines(fab.stdout)
    session = _session(server)
    try:
        os.kill(session, signal.SIGSTOP)  # the server is slow to clean up
        hold.unlink()
        said = poll(lambda: out.count("cleanup: still removing old releases and unlocking on lab1") >= 1, seconds=8)
        os.kill(session, signal.SIGCONT)
        err = out.stderr_of(fab, timeout=30)
    finally:
        if fab.poll() is None:
            os.kill(session, signal.SIGCONT)
            fab.kill()
    assert said, f"nothing said for 8 s while the clean up waited: {out.lines}"
    assert fab.returncode == 0, err
    assert "[lab1] cleanup" in out.text() and "deployed " in out.text(), out.text()
