"""Ctrl-C during a group's switch, with the group's hosts slow, silent or split: what the run
does and says must match what each server serves."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import PROJECT, configure, current, history, make_build, stopped_httpd
from .test_murphy import poll


def _session(server):
    """The sshd process of the connection of the run that holds this server's lock."""
    return json.loads(Path(server.deploy_to, ".cutover", "lock", "owner.json").read_text())["session_pid"]


HEALTH = {"expect_status": 200, "expect_text": 'name="release"'}  # the lab's


# fab, whose go loop gets Ctrl-C as it sends the first host's go (the loop takes microseconds: no
# test could time a signal into it from outside)
CTRL_C_IN_GO_LOOP = """
import os, signal, sys
from tasks import testhooks
real = testhooks.sends_go
def sends_go(host):
    if host == "lab1":
        os.kill(os.getpid(), signal.SIGINT)
    return real(host)
testhooks.sends_go = sends_go
from fabric.main import program
program.run(["fab", *sys.argv[1:]])
"""


class Lines:
    """A process's output as it comes, read by a thread, so that a test can wait for a line."""

    def __init__(self, stream):
        import threading

        self.lines = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True)
        self.thread.start()

    def count(self, text):
        return sum(text in line for line in self.lines)

    def text(self):
        self.thread.join(30)
        return "".join(self.lines)

    def stderr_of(self, proc, timeout=60):
        """proc's stderr once it has exited. Its stdout is this reader's alone: communicate() would
        read it too, and take the last lines from under it."""
        proc.wait(timeout)
        return proc.stderr.read()


def test_ctrl_c_again_after_one_held_in_the_go_loop_stops_waiting(lab_pair, tmp_path):
    """Ctrl-C in an armed group's go loop is held until every go is sent, and said: the run then
    waits for the answers. The next Ctrl-C is the second: it stops that wait at once, as the
    message says, instead of starting the same wait again; every host still switches back."""
    servers = lab_pair.servers
    configure(lab_pair, make_build(tmp_path, "g1"))
    assert lab_pair.fab("deploy").returncode == 0
    before = [current(s) for s in servers]
    configure(lab_pair, make_build(tmp_path, "g2"))
    env = dict(os.environ, CUTOVER_HOSTS_FILE=str(lab_pair.hosts_file), XDG_CACHE_HOME=str(tmp_path / "cache"),
               CUTOVER_TEST="1", CUTOVER_TEST_HOLD_PAUSE_MS="4000")  # fmt: skip
    fab = subprocess.Popen([sys.executable, "-c", CTRL_C_IN_GO_LOOP, "deploy"], cwd=PROJECT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    out = Lines(fab.stdout)
    waiting = "Ctrl-C: waiting for the switch under way to answer"
    try:
        assert poll(lambda: out.count(waiting) == 1, seconds=60), out.text()
        assert poll(lambda: all(stopped_httpd(s) != [] for s in servers), seconds=3)  # the held Ctrl-C cut no go
        fab.send_signal(signal.SIGINT)
        assert poll(lambda: out.count("stopped waiting (Ctrl-C again)") == 1, seconds=2), out.lines
        err = out.stderr_of(fab)
    finally:
        if fab.poll() is None:
            fab.kill()
    assert fab.returncode == 130, err
    assert out.text().count(waiting) == 1, out.text()
    # the switch back came after each host's swap (the server waits for a swap still running)
    assert [current(s) for s in servers] == before
    assert all(not Path(s.deploy_to, ".cutover", "lock").exists() for s in servers), err
    assert all(stopped_httpd(s) == [] for s in servers)


def test_ctrl_c_with_a_host_gone_silent_waits_its_timeout_and_says_it_may_serve_the_new_release(lab3, tmp_path):
    """Ctrl-C while a group switches, one host's connection silent: the wait ends at that host's
    swap timeout, as said; the others switch back. The silent host may serve the new release (here
    it does: its swap runs on, detached) and cannot be switched back: the last line must say so,
    not only that it could not be cleaned up."""
    servers = lab3.servers
    configure(lab3, make_build(tmp_path, "s1"))
    assert lab3.fab("deploy").returncode == 0
    before = current(servers[0])
    # the swap's timeout: 2 pauses of 2 s, 2 health checks of 0.5 s + 0.5 s between retries, margin 1 s
    quick = {"httpd": {"pause_timeout": 2}, "health": {**HEALTH, "retries": 0, "timeout": 0.5}}
    configure(lab3, make_build(tmp_path, "s2"), **quick)
    fab = lab3.started("deploy", env={"CUTOVER_TEST_HOLD_PAUSE_MS": "1000", "CUTOVER_TEST_MARGIN": "1"})
    session = None
    try:
        assert poll(lambda: all(stopped_httpd(s) != [] for s in servers), seconds=60), "the switch never came"
        session = _session(servers[2])
        os.kill(session, signal.SIGSTOP)  # lab3's connection: silent, its swap runs on
        fab.send_signal(signal.SIGINT)
        pressed = time.monotonic()
        out, err = fab.communicate(timeout=60)
        took = time.monotonic() - pressed
    finally:
        if session is not None:
            os.kill(session, signal.SIGCONT)
        if fab.poll() is None:
            fab.kill()
    assert fab.returncode == 130, err
    assert "Ctrl-C: waiting for the switch under way to answer (at most 7 s)" in out
    assert 6 < took < 7 + 5, took
    new = current(servers[2])
    assert new != before and [current(s) for s in servers[:2]] == [before, before]
    said = err.split("the site now: ", 1)[1]
    assert f"lab1 serves {before}; lab2 serves {before}; lab3: " in said, err
    assert f"; it may serve {new}: switching it back failed; its lock stays until --force-unlock" in said, err
    again = lab3.fab("deploy", "--force-unlock")  # the next run makes the group whole
    assert again.returncode == 0, again.stderr
    assert len({current(s) for s in servers}) == 1


@pytest.mark.parametrize("fourth", [False, True], ids=["3 Ctrl-C", "4 Ctrl-C"])
def test_ctrl_c_during_the_switch_back_waits_for_it_and_says_what_the_host_serves(lab1, tmp_path, fourth):
    """Ctrl-C during the switch (waited for), again (the wait stopped: the switch back starts, and
    the server holds it until the swap under way has ended), and a third time during that switch
    back: the switch back still runs on the server, so the run waits for it before its abort reads
    what the host serves, records the run and frees the lock; else the last line says the host
    serves the release Ctrl-C stopped while it ends on the old one. A fourth Ctrl-C stops that
    wait too: the last line then says the switch back was left under way."""
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "b1"))
    assert lab1.fab("deploy").returncode == 0
    before = current(server)
    configure(lab1, make_build(tmp_path, "b2"))
    fab = lab1.started("deploy", env={"CUTOVER_TEST_HOLD_PAUSE_MS": "3000"})
    out = Lines(fab.stdout)
    try:
        assert poll(lambda: stopped_httpd(server) != [], seconds=60), "the switch never came"
        new = current(server)
        fab.send_signal(signal.SIGINT)
        assert poll(lambda: out.count("Ctrl-C: waiting for the switch under way") == 1, seconds=5), out.lines
        fab.send_signal(signal.SIGINT)
        assert poll(lambda: out.count("stopped waiting (Ctrl-C again)") == 1, seconds=5), out.lines
        time.sleep(0.5)  # the switch back is asked for; the server holds it while the swap's pause lasts (3 s)
        fab.send_signal(signal.SIGINT)
        assert poll(lambda: out.count("Ctrl-C: waiting for the switch back under way") == 1, seconds=5), out.lines
        if fourth:
            fab.send_signal(signal.SIGINT)
        err = out.stderr_of(fab)
    finally:
        if fab.poll() is None:
            fab.kill()
    assert fab.returncode == 130, err
    if fourth:
        assert out.text().count("stopped waiting (Ctrl-C again)") == 2
        said = f"the site now: lab1 serves {new} (switching it back to {before} left under way (Ctrl-C))\n"
        assert said in err, err
        assert poll(lambda: current(server) == before, seconds=20)  # the server's switch back ended
    else:
        assert f"the site now: lab1 serves {before}\n" in err, err
        assert current(server) == before
        assert stopped_httpd(server) == []
    assert not Path(server.deploy_to, ".cutover", "lock").exists()
    assert history(server)[-1]["result"] == "failed"
