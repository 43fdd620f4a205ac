"""The deploy lock against lab servers: alive while anything its run started still runs on the
server, whatever became of the run's connection; forced only when nothing of it runs."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import PROJECT, configure, current, history, make_build, stopped_httpd
from .test_murphy import poll
from .test_setup import deploy_user  # noqa: F401 (a fixture)


def _gone(pid):
    return not Path(f"/proc/{pid}").exists()


def _marks(log):
    return log.read_text().split() if log.exists() else []


def test_a_dead_runs_migration_keeps_the_lock_until_it_ends(lab1, tmp_path):
    """fab killed during a migration: its SSH session ends, its migration runs on. Forcing the lock
    is refused (deploy --force-unlock and check --repair alike), naming the migration, until the
    migration has ended: two migrations never run at once."""
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "m1"))
    assert lab1.fab("deploy").returncode == 0
    log = Path(server.root, "migrations.log")
    migrate = {"command": f"echo start >> {log}; sleep 6; echo end >> {log}"}
    configure(lab1, make_build(tmp_path, "m2"), migrate=migrate)
    killed = lab1.fab("deploy", "--migrate", env={"CUTOVER_TEST_KILL_AT": "migrate:0.5"})
    assert killed.returncode == -signal.SIGKILL
    assert _marks(log) == ["start"]
    owner = json.loads(Path(server.deploy_to, ".cutover", "lock", "owner.json").read_text())
    assert poll(lambda: _gone(owner["session_pid"])), "the killed run's sshd session should end with it"

    forced = lab1.fab("deploy", "--migrate", "--force-unlock")
    assert forced.returncode == 5, forced.stderr
    assert "lab1: force-unlock: the run that holds the lock (root@" in forced.stderr
    assert f"lost its connection, but its migration {migrate['command']!r} still runs on the server" in forced.stderr
    assert "wait for it to end, then run again with --force-unlock" in forced.stderr
    repair = lab1.fab("check", "--repair")
    assert repair.returncode == 5 and "its migration" in repair.stderr, repair.stderr
    assert _marks(log) == ["start"], "a second migration started beside the first"

    assert poll(lambda: _marks(log) == ["start", "end"], seconds=20)
    # once the migration has ended, nothing of the dead run is left: the lock can be cleared
    deadline = time.monotonic() + 20
    while (again := lab1.fab("deploy", "--migrate", "--force-unlock")).returncode == 5:
        assert time.monotonic() < deadline, again.stderr  # the agent's own end follows the migration's at once
    assert again.returncode == 0, again.stderr
    assert _marks(log) == ["start", "end", "start", "end"]
    assert [e["event"] for e in history(server)[-3:]] == ["force-unlock", "backup", "deploy"]
    assert current(server) == history(server)[-1]["release"]


def test_a_command_past_its_timeout_is_stopped_with_everything_it_started(tmp_path):
    """A migration that times out must not go on in the background once its run has moved on:
    its whole process group is killed, a child it put in the background too."""
    from tasks.remote import commands
    from tasks.remote.protocol import Refused

    pids = tmp_path / "pids"
    command = f"sleep 60 & echo $! > {pids}; sleep 60"
    t = time.monotonic()
    with pytest.raises(Refused) as timed_out:
        commands.run_command("migration", command, str(tmp_path), {}, 1, kind="migration")
    assert time.monotonic() - t < 10
    assert str(timed_out.value) == f"migration {command!r} timed out after 1s; it was stopped, with what it started"
    assert poll(lambda: _gone(int(pids.read_text())), seconds=5), "the background child still runs"


def test_a_run_that_locks_while_the_holder_releases_keeps_its_lock(tmp_path, monkeypatch):
    """Releasing empties the lock before removing it; a second run renaming its own lock onto the
    emptied one in between (rename(2) replaces an empty directory) must keep it, and the first
    run's release must still succeed."""
    from tasks.agent import LocalAgent
    from tasks.remote import lock
    from tasks.remote.paths import Layout

    site = Layout(str(tmp_path / "site"))
    LocalAgent().call("setup", {"deploy_to": site.deploy_to, "rules": "# rules\n", "serve": ""})
    who = {"user": "tester", "local_host": "here", "pid": 1, "command": "deploy"}
    lock.take(site, dict(who, token="first"))
    real_rmtree = lock.shutil.rmtree

    def rmtree_racing(path, *args, **kwargs):
        for name in os.listdir(path):  # what rmtree does first
            os.unlink(os.path.join(path, name))
        lock.take(site, dict(who, token="second"))  # lands on .cutover/lock if that is the emptied dir
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(lock.shutil, "rmtree", rmtree_racing)
    assert lock.release(site, "first") is True
    assert lock.owner(site)["token"] == "second"


def test_a_switch_whose_run_went_away_is_recorded_by_the_server(lab1, tmp_path):
    """fab killed after the switch, before its finish step: the server still writes the deploy's
    history line (the release it made live, the one before it), so history and rollback know it."""
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "h1"))
    assert lab1.fab("deploy").returncode == 0
    before = current(server)
    configure(lab1, make_build(tmp_path, "h2"))
    killed = lab1.fab("deploy", env={"CUTOVER_TEST_KILL_AT": "finish"})
    assert killed.returncode == -signal.SIGKILL
    assert current(server) != before
    assert poll(lambda: history(server)[-1].get("release") == current(server)), history(server)[-1]
    line = history(server)[-1]
    assert (line["release"], line["old"], line["result"]) == (current(server), before, "ok")
    assert line["note"] == "its run went away after the switch; the lock stays until --force-unlock"
    assert line["pause_ms"] > 0
    rolled = lab1.fab("rollback", "--force-unlock")
    assert rolled.returncode == 0, rolled.stderr
    assert current(server) == before


def test_ctrl_c_during_a_migration_keeps_the_lock_and_says_maintenance_stays_on(lab1, tmp_path):
    """Ctrl-C stops fab at once, but not the migration on the server: the run's lock stays until
    the migration has ended (no second run migrates beside it), and the message says that
    maintenance mode stays on."""
    import subprocess
    import sys

    from .conftest import PROJECT

    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "c1"))
    assert lab1.fab("deploy").returncode == 0
    before = current(server)
    log = Path(server.root, "ctrl-c-migration.log")
    configure(
        lab1, make_build(tmp_path, "c2"), migrate={"command": f"echo start >> {log}; sleep 12; echo end >> {log}"}
    )
    env = dict(os.environ, CUTOVER_HOSTS_FILE=str(lab1.hosts_file), XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "fabric", "deploy", "--migrate"], cwd=PROJECT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert poll(lambda: _marks(log) == ["start"], seconds=30), "the migration never started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "maintenance mode stays ON: the migration ran or runs on, and the old release is live" in err, err
    assert "so the lock stays until it has ended (then --force-unlock)" in err, err
    assert current(server) == before and _marks(log) == ["start"]
    again = lab1.fab("deploy", "--migrate", "--force-unlock")
    assert again.returncode == 5 and "its migration" in again.stderr, again.stderr
    assert poll(lambda: _marks(log) == ["start", "end"], seconds=30)
    deadline = time.monotonic() + 20
    while (again := lab1.fab("deploy", "--migrate", "--force-unlock")).returncode == 5:
        assert time.monotonic() < deadline, again.stderr
    assert again.returncode == 0, again.stderr
    assert _marks(log) == ["start", "end", "start", "end"]


def test_ctrl_c_while_the_lock_step_links_the_live_release_leaves_the_lock_free(lab1, tmp_path):
    """Ctrl-C while the server takes the lock and links the live release into the incoming one: the
    server took the lock, but its answer never came. The run's way out must release it all the same
    (and remove what it made), not leave it to --force-unlock while saying the site is unchanged."""
    server = lab1.servers[0]
    many = {f"pages/p{i:05}.html": b"page\n" for i in range(20000)}
    configure(lab1, make_build(tmp_path, "big", extra=many))
    assert lab1.fab("deploy").returncode == 0
    live = current(server)
    configure(lab1, make_build(tmp_path, "next", extra=many))
    env = dict(os.environ, CUTOVER_HOSTS_FILE=str(lab1.hosts_file), XDG_CACHE_HOME=str(tmp_path / "cache"))
    fab = subprocess.Popen(
        [sys.executable, "-m", "fabric", "deploy"], cwd=PROJECT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    releases_dir = Path(server.deploy_to, "releases")
    agent = None
    try:
        assert poll(lambda: any(n.startswith(".prelink-") for n in os.listdir(releases_dir)), seconds=30)
        agent = json.loads(Path(server.deploy_to, ".cutover", "lock", "owner.json").read_text())["agent_pid"]
        os.kill(agent, signal.SIGSTOP)  # the lock step is under way on the server, its answer not sent
        fab.send_signal(signal.SIGINT)
        out, err = fab.communicate(timeout=60)
    finally:
        if agent is not None:
            os.kill(agent, signal.SIGCONT)
        if fab.poll() is None:
            fab.kill()
    assert fab.returncode == 130, err
    assert "interrupted" in err
    # the interrupted step's server side ends with the connection; then nothing of the run is left
    assert poll(lambda: _gone(agent), seconds=20)
    assert not Path(server.deploy_to, ".cutover", "lock").exists(), err
    assert [n for n in os.listdir(releases_dir) if n.startswith(".")] == []
    assert current(server) == live
    assert history(server)[-1]["result"] == "failed"
    assert lab1.fab("deploy").returncode == 0, "the next deploy needs no --force-unlock"


def test_a_command_past_its_timeout_is_stopped_with_what_it_started_in_a_session_of_its_own(tmp_path):
    """A migration that starts a child in a new session (setsid: out of its process group), which
    keeps the command's output open: at the timeout that child is stopped too, and the step ends
    then, instead of waiting for the child to close the output (for ever, for a daemon)."""
    from tasks.remote import commands
    from tasks.remote.protocol import Refused

    pids = tmp_path / "pids"
    command = f"setsid sleep 30 & echo $! > {pids}; sleep 30"
    t = time.monotonic()
    with pytest.raises(Refused) as timed_out:
        commands.run_command("migration", command, str(tmp_path), {}, 1, kind="migration")
    took = time.monotonic() - t
    escaped = int(pids.read_text())
    try:
        assert took < 10, f"the step waited {took:.0f} s for a child that left the command's process group"
        assert str(timed_out.value) == f"migration {command!r} timed out after 1s; it was stopped, with what it started"
        assert poll(lambda: _gone(escaped), seconds=5), "the child in a session of its own still runs"
    finally:
        if not _gone(escaped):
            os.kill(escaped, signal.SIGKILL)


def test_ctrl_c_during_the_switch_records_the_run_once_as_it_ended(lab1, tmp_path):
    """Ctrl-C while the server switches: the client switches back, and its abort records the run
    as failed and frees the lock. The server that made the switch, whose answer was never read,
    must not add a line of its own saying the release went live and the lock stays."""
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "c1"))
    assert lab1.fab("deploy").returncode == 0
    before = current(server)
    configure(lab1, make_build(tmp_path, "c2"))
    fab = lab1.started("deploy", env={"CUTOVER_TEST_HOLD_PAUSE_MS": "2000"})
    try:
        assert poll(lambda: stopped_httpd(server) != [], seconds=30), "the switch's pause never came"
        fab.send_signal(signal.SIGINT)  # inside the pause: the server has renamed, its answer is not sent
        out, err = fab.communicate(timeout=60)
    finally:
        if fab.poll() is None:
            fab.kill()
    assert fab.returncode == 130, err
    assert current(server) == before
    assert not Path(server.deploy_to, ".cutover", "lock").exists()
    # whatever the server side that made the switch does once its client is gone, it has done
    assert poll(lambda: _sessions_processes(server) == [], seconds=20), _sessions_processes(server)
    mine = [e for e in history(server) if e.get("release") not in (None, before) or e.get("result") == "failed"]
    said = [(e["event"], e["result"], e.get("error")) for e in mine]
    assert said == [("deploy", "failed", "interrupted (Ctrl-C)")], mine
    assert "note" not in mine[0]


def test_ctrl_c_before_the_servers_swap_has_begun_switches_back_after_it(lab1, tmp_path):
    """Ctrl-C once a rollback's swap is asked for but before the server has begun it (held there):
    the switch back must come after that swap, not before it, or the release Ctrl-C stopped goes
    live after the run has ended, recorded as failed, unlocked. The client waits for the swap's
    answer, then switches back."""
    server = lab1.servers[0]
    for name in ("h1", "h2"):
        configure(lab1, make_build(tmp_path, name))
        assert lab1.fab("deploy").returncode == 0
    before = current(server)
    hold = Path(server.root, "hold-swap")
    hold.touch()
    fab = lab1.started("rollback", env={"CUTOVER_TEST_HOLD_SWAP": str(hold)})
    try:
        assert poll(lambda: _holder(hold), seconds=60), "the swap was never asked for"
        holder = _holder(hold)  # the server's agent, which waits for its swap to end
        fab.send_signal(signal.SIGINT)
        try:
            fab.wait(timeout=3)  # a client that switched back at once has ended by now
        except subprocess.TimeoutExpired:
            pass
        hold.unlink()  # the held swap begins
        out, err = fab.communicate(timeout=60)
    finally:
        hold.unlink(missing_ok=True)
        if fab.poll() is None:
            fab.kill()
    assert fab.returncode == 130, err
    assert poll(lambda: _gone(holder), seconds=20), "the held swap never ended"
    assert current(server) == before
    assert "Ctrl-C: waiting for the switch under way to answer" in out
    assert f"-> {before}" in out.split("switch back", 1)[1]
    assert not Path(server.deploy_to, ".cutover", "lock").exists()


def test_a_thread_waking_late_on_an_abandoned_agent_leaves_the_next_agent_alone(lab1, monkeypatch):
    """Ctrl-C abandons the agents the hosts' threads wait on (fleet.each_host), and the switch back
    starts a new agent on the same connection. A thread that runs again only after that (a loaded
    machine) finds its own agent closed: it must neither close the new one nor give up the
    connection, or the switch back is lost and the site stays on the release Ctrl-C stopped."""
    from tasks import agent, ssh

    host = lab1.host()
    waiting, woke, go_on = threading.Event(), threading.Event(), threading.Event()
    real = agent.Channel.receive

    def late(self, timeout):
        waiting.set()
        try:
            return real(self, timeout)
        finally:
            if threading.current_thread() is not threading.main_thread():
                woke.set()
                go_on.wait(30)  # the thread's agent is closed; it runs again once the next agent is up

    monkeypatch.setattr(agent.Channel, "receive", late)
    with ssh.connect(host) as conn:
        agent.start(conn, host.python)
        said = {}

        def step():
            try:
                said["answer"] = agent.receive(conn, host.name, "swap", 30)
            except Exception as exc:
                said["error"] = exc

        thread = threading.Thread(target=step)
        thread.start()
        assert waiting.wait(30)
        agent.abandon(conn)  # Ctrl-C
        assert woke.wait(30)
        agent.send(conn, host.name, host.python, "switch back", "state", {"deploy_to": host.deploy_to})
        go_on.set()
        thread.join(30)
        assert str(said.get("error")).endswith("swap: no answer: the run stopped waiting for it (Ctrl-C)"), said
        answer = agent.receive(conn, host.name, "switch back", 30)
    assert "lock" in answer


@pytest.mark.parametrize("through", ["agent", "helper"])
def test_a_step_left_behind_by_ctrl_c_sends_nothing_after_it(lab1, through):
    """Ctrl-C while a host's step has not yet sent its request (fleet.each_host): the thread it
    leaves behind must send nothing once the run has moved on to its switch back and abort, and
    start no agent on the connection beside theirs; nor run the sudo helper's swap (a deploy user
    who is not root), which would then come after the switch back."""
    from types import SimpleNamespace

    from tasks import agent, fleet, ssh

    host = lab1.host()
    entered, go_on, done, said = threading.Event(), threading.Event(), threading.Event(), {}

    def step(r):
        entered.set()
        go_on.wait(30)  # Ctrl-C comes here, before the request leaves
        try:
            if through == "helper":
                said["answer"] = agent.call_helper(r.conn, host.name, host.python, "lock", {}, 30)
            else:
                said["answer"] = agent.call(
                    r.conn, host.name, host.python, "lock", "state", {"deploy_to": host.deploy_to}, 30
                )
        except Exception as exc:
            said["error"] = exc
        finally:
            done.set()

    def ctrl_c():
        entered.wait(30)
        main, deadline = threading.main_thread().ident, time.monotonic() + 30
        while time.monotonic() < deadline:  # until the main thread waits for the host's step
            frame = sys._current_frames().get(main)
            if frame is not None and frame.f_code is threading.Condition.wait.__code__:
                break
            time.sleep(0.01)
        # inside the lock's wait, which a signal interrupts; one that comes just before the wait
        # blocks is seen only once it ends (CPython), as a user's Ctrl-C would be
        time.sleep(0.1)
        signal.pthread_kill(main, signal.SIGINT)

    with ssh.connect(host) as conn:
        threading.Thread(target=ctrl_c).start()
        with pytest.raises(KeyboardInterrupt):
            fleet.each_host([SimpleNamespace(conn=conn, name=host.name)], step)
        go_on.set()
        assert done.wait(30)
        assert str(said.get("error")).endswith("lock: not sent: the run was interrupted"), said
        assert getattr(conn, "_cutover_channel", None) is None  # no agent started by it
        assert "lock" in agent.call(conn, host.name, host.python, "abort", "state", {"deploy_to": host.deploy_to}, 30)


@pytest.mark.parametrize("waiting_for", ["steps", "connect"])
def test_a_ctrl_c_another_thread_receives_stops_the_main_threads_wait_at_once(waiting_for, monkeypatch):
    """The kernel hands a process's SIGINT to any thread that does not block it; Python runs the
    handler on the main thread only, and a wait there is cut short only by a signal that thread
    receives. A Ctrl-C that a host's thread received was seen only once the hosts' steps (or
    connections) had ended: a swap's timeout, a silent host's connect. The main thread's waits wake
    to see it."""
    from types import SimpleNamespace

    from tasks import fleet, ssh

    entered, go_on, worker = threading.Event(), threading.Event(), {}

    def step(r):
        worker["ident"] = threading.get_ident()
        entered.set()
        go_on.wait(20)  # a host's step that takes its time

    def ctrl_c():
        entered.wait(20)
        time.sleep(0.2)  # the main thread blocks in its wait
        signal.pthread_kill(worker["ident"], signal.SIGINT)

    threading.Thread(target=ctrl_c).start()
    t = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            if waiting_for == "steps":
                fleet.each_host([SimpleNamespace(conn=None, name="web1")], step)
            else:
                host = SimpleNamespace(conn=None, name="web1", steps={}, host="web1")
                monkeypatch.setattr(ssh, "connect", step)  # the host's connect: slow
                fleet.connect(SimpleNamespace(hosts=[host], parallel=None))
        took = time.monotonic() - t
    finally:
        go_on.set()
    assert took < 3, f"Ctrl-C was seen after {took:.1f} s"


def _holder(hold):
    """The PID of the server's agent whose swap waits while `hold` exists (tasks/remote/swap.py _held)."""
    try:
        return int(Path(f"{hold}.waiting").read_text())
    except (OSError, ValueError):
        return None


def _parent(pid):
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return 0


def _sessions_processes(server):
    """Processes the lab server's sshd started for its logins (sessions, agents, commands)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == server.sshd_pid:
            continue
        pid = int(name)
        while pid > 1 and pid != server.sshd_pid:
            pid = _parent(pid)
        if pid == server.sshd_pid:
            found.append(int(name))
    return found


def test_two_force_unlocks_at_once_clear_the_dead_lock_once_and_neither_fails(tmp_path, monkeypatch):
    """Two runs force the same dead lock at the same instant: one clears it (and records that), the
    other finds it gone, which is no failure: there is nothing left to clear."""
    from tasks.agent import LocalAgent
    from tasks.remote import lock
    from tasks.remote.paths import Layout

    site = Layout(str(tmp_path / "site"))
    LocalAgent().call("setup", {"deploy_to": site.deploy_to, "rules": "# rules\n", "serve": ""})
    dead = {"user": "alice", "local_host": "laptop", "pid": 1, "command": "deploy", "token": "dead"}
    lock.take(site, dead)
    with open(site.owner) as f:
        record = json.load(f)
    record.update(session_pid=2**22 + 1, session_start=1, agent_pid=2**22 + 1, agent_start=1)  # long gone
    with open(site.owner, "w") as f:
        json.dump(record, f)
    real_owner = lock.owner
    raced = []

    def owner_then_the_other_clears_it(layout):
        found = real_owner(layout)
        if not raced:  # the other --force-unlock gets in between this one's look and its rename
            raced.append(None)
            raced[0] = LocalAgent().call("unlock", {"deploy_to": site.deploy_to, "force": True,
                                                    "who": {"user": "bob", "local_host": "b", "token": "second"}})  # fmt: skip
        return found

    monkeypatch.setattr(lock, "owner", owner_then_the_other_clears_it)
    answer = LocalAgent().call("unlock", {"deploy_to": site.deploy_to, "force": True,
                                          "who": {"user": "carol", "local_host": "c", "token": "first"}})  # fmt: skip
    assert raced[0]["released"] is True
    assert answer == {"released": False, "owner": None}
    assert not os.path.lexists(site.lock)
    assert [e["event"] for e in history_lines(site)] == ["force-unlock"]


def history_lines(site):
    with open(site.history) as f:
        return [json.loads(line) for line in f]


def test_a_switch_through_the_sudo_helper_whose_run_went_away_is_recorded_by_the_server(lab1, deploy_user, tmp_path):  # noqa: F811
    """As for root: fab killed after the helper switched, before its finish step, the server's
    history still names the release that went live (the helper itself records nothing)."""
    from tasks import agent

    name, sudoers = deploy_user
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "u1"), user=name)
    setup = lab1.fab("setup")
    assert setup.returncode == 0, setup.stderr
    sudoers.write_text(f"{name} ALL=(root) NOPASSWD: /usr/bin/python3 -I -S {agent.HELPER} swap *\n")
    sudoers.chmod(0o440)
    assert lab1.fab("deploy").returncode == 0
    before = current(server)
    configure(lab1, make_build(tmp_path, "u2"), user=name)
    killed = lab1.fab("deploy", env={"CUTOVER_TEST_KILL_AT": "finish"})
    assert killed.returncode == -signal.SIGKILL
    assert current(server) != before
    assert poll(lambda: history(server)[-1].get("release") == current(server), seconds=20), history(server)[-1]
    line = history(server)[-1]
    assert (line["event"], line["release"], line["old"], line["result"]) == ("deploy", current(server), before, "ok")
    assert line["note"] == "its run went away after the switch; the lock stays until --force-unlock"


def test_a_lock_that_is_a_symlink_is_never_forced_through(tmp_path):
    """.cutover/lock replaced by a symlink to a directory with a dead owner's record: no lock
    Cutover made. --force-unlock refuses it, naming it, and changes nothing (it used to rename the
    link aside and then fail on it)."""
    from tasks.agent import LocalAgent
    from tasks.errors import RemoteError
    from tasks.remote.paths import Layout

    site = Layout(str(tmp_path / "site"))
    LocalAgent().call("setup", {"deploy_to": site.deploy_to, "rules": "# rules\n", "serve": ""})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "owner.json").write_text(json.dumps({"user": "x", "local_host": "y", "command": "deploy",
                                                      "token": "dead", "session_pid": 2**22 + 1, "session_start": 1}))  # fmt: skip
    os.symlink(elsewhere, site.lock)
    before = sorted(os.listdir(site.meta))
    with pytest.raises(RemoteError) as refused:
        LocalAgent().call("unlock", {"deploy_to": site.deploy_to, "force": True,
                                     "who": {"user": "me", "local_host": "h", "token": "mine"}})  # fmt: skip
    assert f"the lock {site.lock} is a symlink (to {elsewhere})" in refused.value.message
    assert sorted(os.listdir(site.meta)) == before
    assert os.path.islink(site.lock) and sorted(os.listdir(elsewhere)) == ["owner.json"]
