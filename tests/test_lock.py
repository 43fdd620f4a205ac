"""The deploy lock against lab servers: alive while anything its run started still runs on the
server, whatever became of the run's connection; forced only when nothing of it runs."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from .conftest import configure, current, history, make_build
from .test_murphy import poll


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
    configure(lab1, make_build(tmp_path, "c2"), migrate={"command": f"echo start >> {log}; sleep 5; echo end >> {log}"})
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
    assert poll(lambda: _marks(log) == ["start", "end"], seconds=20)
    deadline = time.monotonic() + 20
    while (again := lab1.fab("deploy", "--migrate", "--force-unlock")).returncode == 5:
        assert time.monotonic() < deadline, again.stderr
    assert again.returncode == 0, again.stderr
    assert _marks(log) == ["start", "end", "start", "end"]
