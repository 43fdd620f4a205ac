"""`fab run -- COMMAND`: a one-off command in the live release of each host, as the web server's user,
migrate.user or the deploy user, under the deploy lock, its output shown per host and recorded in
history. Against lab servers, and the server side in this process (tests/test_remote.py's way)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tasks.agent import LocalAgent
from tasks.errors import RemoteError
from tasks.remote.paths import Layout

from .conftest import PROJECT, configure, current, history, make_build, process_gone
from .test_murphy import deploy_until_smoking, poll
from .test_remote import IDS, make_release, site, who  # noqa: F401 (site: a fixture)
from .test_setup import deploy_user  # noqa: F401 (a fixture)

SHOW = 'echo "release $RELEASE_ID"; id -un; pwd; echo "home $HOME"'


def run_lines(result, host):
    """The output lines fab run showed for one host."""
    prefix = f"[{host}] | "
    return [line[len(prefix) :] for line in result.stdout.splitlines() if line.startswith(prefix)]


def runs(server):
    return [e for e in history(server) if e["event"] == "run"]


def fab_background(handle, *args):
    env = dict(os.environ, CUTOVER_HOSTS_FILE=str(handle.hosts_file), XDG_CACHE_HOME=str(handle.lab.root / "cache"))
    return subprocess.Popen(
        [sys.executable, "-m", "fabric", *args], cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def deployed(lab2, tmp_path_factory):
    """The two lab servers with a release of the example site live."""
    configure(lab2, make_build(tmp_path_factory.mktemp("run"), "r1"))
    result = lab2.fab("deploy")
    assert result.returncode == 0, result.stderr
    return lab2


# --- against lab servers ----------------------------------------------------------------------


def test_a_command_runs_in_each_hosts_live_release_as_the_web_user_and_is_recorded(deployed):
    result = deployed.fab("run", "--", SHOW)
    assert result.returncode == 0, result.stderr
    for server in deployed.servers:
        live = current(server)
        assert run_lines(result, server.name) == [
            f"release {live}",
            "www-data",
            f"{server.deploy_to}/releases/{live}",
            "home /var/www",
        ]
        assert f"[{server.name}] run " in result.stdout
        assert f"exit 0 as www-data in {live}" in result.stdout
        entry = runs(server)[-1]
        assert {k: entry[k] for k in ("command", "as", "release", "exit", "result")} == {
            "command": SHOW, "as": "www-data", "release": live, "exit": 0, "result": "ok",
        }  # fmt: skip
        assert entry["output"].startswith(f"release {live}\n")
        assert not Path(server.deploy_to, ".cutover", "lock").exists()
    assert "ran on 2 hosts: exit 0 on every one" in result.stdout
    shown = deployed.fab("history", "-n", "1")
    assert shown.returncode == 0 and shown.stdout.count(" run ") == 2


def test_the_words_after_the_dashes_are_one_command_for_the_servers_shell(deployed):
    # as with ssh: the words are joined by spaces and the server's sh runs them (pipes, variables)
    result = deployed.fab("-H", "lab1", "run", "--", "echo", "$DEPLOY_TO", "|", "tr", "a-z", "A-Z")
    assert result.returncode == 0, result.stderr
    assert run_lines(result, "lab1") == [deployed.servers[0].deploy_to.upper()]
    assert runs(deployed.servers[0])[-1]["command"] == "echo $DEPLOY_TO | tr a-z A-Z"
    assert run_lines(result, "lab2") == []  # -H lab1: that host only


def test_as_the_deploy_user_or_migrate_user(deployed, tmp_path):
    assert run_lines(deployed.fab("-H", "lab1", "run", "--as", "deploy", "--", "id -un"), "lab1") == ["root"]
    before = len(history(deployed.servers[0]))
    unset = deployed.fab("-H", "lab1", "run", "--as", "migrate", "--", "id -un")
    assert unset.returncode == 2
    assert "--as migrate: migrate.user is not set for lab1 in hosts.yaml" in unset.stderr
    assert len(history(deployed.servers[0])) == before  # nothing ran, nothing was recorded
    build = make_build(tmp_path, "r1")
    configure(deployed, build, migrate={"command": "true", "user": "nobody"})
    try:
        result = deployed.fab("-H", "lab1", "run", "--as", "migrate", "--", "id -un")
        assert result.returncode == 0, result.stderr
        assert run_lines(result, "lab1") == ["nobody"] and runs(deployed.servers[0])[-1]["as"] == "nobody"
    finally:
        configure(deployed, build)


def test_a_failing_command_fails_the_task_with_each_hosts_output(deployed):
    lab2 = deployed.servers[1]
    flag = Path(lab2.deploy_to, "fail-here")
    flag.write_text("")
    try:
        command = 'echo before; if test -e "$DEPLOY_TO/fail-here"; then echo failing >&2; exit 3; fi'
        result = deployed.fab("run", "--", command)
    finally:
        flag.unlink()
    assert result.returncode == 11, result.stderr
    assert run_lines(result, "lab1") == ["before"]
    assert run_lines(result, "lab2") == ["before", "failing"]
    assert "[lab2] run " in result.stdout and f"exit 3 as www-data in {current(lab2)}" in result.stdout
    assert "cutover: error: the command failed on lab2 (exit 3); it succeeded on lab1" in result.stderr
    assert runs(deployed.servers[0])[-1]["result"] == "ok"
    failed = runs(lab2)[-1]
    assert (failed["result"], failed["exit"], failed["output"]) == ("failed", 3, "before\nfailing\n")
    for server in deployed.servers:
        assert not Path(server.deploy_to, ".cutover", "lock").exists()


def test_a_host_that_cannot_run_it_is_named_beside_the_hosts_where_it_failed(deployed, tmp_path):
    # lab2's web_user does not exist there: a refusal (exit 4), said with lab1's exit status
    data = yaml.safe_load(Path(deployed.hosts_file).read_text())
    data["groups"]["sandbox"][1]["web_user"] = "no-such-user"
    Path(deployed.hosts_file).write_text(yaml.safe_dump(data))
    try:
        result = deployed.fab("run", "--", "exit 3")
    finally:
        configure(deployed, make_build(tmp_path, "r1"))
    assert result.returncode == 4, result.stderr
    assert "lab2: run: user 'no-such-user' does not exist on this server" in result.stderr
    assert "; the command failed on lab1 (exit 3)" in result.stderr
    assert runs(deployed.servers[1])[-1]["error"] == "user 'no-such-user' does not exist on this server"
    for server in deployed.servers:
        assert not Path(server.deploy_to, ".cutover", "lock").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "give the command after --, e.g. fab run -- php maintenance/runJobs.php"),
        (["--", " "], "give the command after --, e.g. fab run -- php maintenance/runJobs.php"),
        (["--as", "root", "--", "id"], "--as 'root': give web, migrate or deploy"),
        (["--timeout", "0", "--", "id"], "--timeout '0': give a whole number of seconds from 1 to 86400"),
        (["--timeout", "1e3", "--", "id"], "--timeout '1e3': give a whole number of seconds from 1 to 86400"),
        (["--", "x" * 10_001], "the command is 10,001 characters long; at most 10,000"),
    ],
    ids=["no command", "blank command", "unknown user", "zero timeout", "not a number", "too long"],
)
def test_bad_arguments_are_refused_and_run_nothing(deployed, args, message):
    before = [len(history(s)) for s in deployed.servers]
    result = deployed.fab("run", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert [len(history(s)) for s in deployed.servers] == before


def test_a_command_after_the_dashes_of_another_task_is_refused(deployed):
    result = deployed.fab("releases", "--", "ls")
    assert result.returncode == 2
    assert "only `fab run` takes a command after --" in result.stderr and "Traceback" not in result.stderr


def test_a_command_past_its_timeout_is_stopped_and_fails_the_task(deployed, tmp_path):
    pids = tmp_path / "pids"
    started = time.monotonic()
    result = deployed.fab(
        "-H", "lab1", "run", "--as", "deploy", "--timeout", "1", "--", f"sleep 30 & echo $! > {pids}; sleep 30"
    )
    assert time.monotonic() - started < 15
    assert result.returncode == 11, result.stderr
    assert "timed out after 1s; it was stopped, with what it started" in result.stderr
    assert poll(lambda: process_gone(int(pids.read_text())), seconds=5), "its background child still runs"
    entry = runs(deployed.servers[0])[-1]
    assert entry["result"] == "failed" and "timed out" in entry["error"]


def test_a_process_that_escapes_the_commands_group_holding_its_output_is_stopped_at_the_timeout(deployed, tmp_path):
    """`setsid cmd &`: the shell exits at once, and a process outside its process group holds its
    output open. The run waited for that process's end (forever, for a daemon), holding the lock,
    and then said it had stopped everything. Now it ends at the timeout, and stops that one too."""
    pids = tmp_path / "pids"
    started = time.monotonic()
    result = deployed.fab(
        "-H", "lab1", "run", "--as", "deploy", "--timeout", "2", "--", f"setsid sleep 60 & echo $! > {pids}; echo bg"
    )
    took = time.monotonic() - started
    assert result.returncode == 11, result.stderr
    assert took < 15, took
    assert run_lines(result, "lab1") == ["bg"]
    said = (
        f"the command failed on lab1 (command 'setsid sleep 60 & echo $! > {pids}; echo bg' exited 0, but what it "
        "left running still held its output after 2s; it was stopped, with what it started)"
    )
    assert said in result.stderr, result.stderr
    assert poll(lambda: process_gone(int(pids.read_text())), seconds=5), "the process that left the group still runs"
    assert not Path(deployed.servers[0].deploy_to, ".cutover", "lock").exists()


def test_a_command_that_prints_hundreds_of_megabytes_keeps_only_its_tail_in_the_servers_memory(tmp_path):
    """The server side reads a command's output as it comes, keeping its end: 200 MB of output
    cost the agent 200 MB twice over (the bytes, then the text) before it kept 100,000 characters."""
    probe = (
        "from tasks.remote.commands import run_command\n"
        "out = run_command('command', 'head -c 200000000 /dev/zero; echo; echo end', '/', {}, 120, kept=100000)\n"
        "peak = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')][0]\n"
        "print(len(out), out[-4:] == 'end\\n', peak)\n"
    )
    # VmHWM, this process's own peak (ru_maxrss would carry over the parent's across fork and exec)
    done = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    length, ends, peak_kb = done.stdout.split()
    assert int(peak_kb) < 100_000, f"peak {int(peak_kb) // 1024} MB"
    assert (int(length), ends) == (100_003, "True")


def test_run_refuses_while_a_deploy_holds_the_lock_and_a_deploy_waits_for_the_run(lab1, tmp_path):
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "a"))
    assert lab1.fab("deploy").returncode == 0
    ran = tmp_path / "ran"
    # a deploy holds the lock (its smoke test runs): run refuses and runs nothing
    smoking = tmp_path / "smoking"
    configure(lab1, make_build(tmp_path, "b"), smoke={"commands": [f"touch {smoking}; sleep 3"]})
    deploy = deploy_until_smoking(lab1, smoking)
    refused = lab1.fab("run", "--", f"touch {ran}")
    deploy.communicate(timeout=60)
    assert deploy.returncode == 0
    assert refused.returncode == 5, refused.stderr
    assert "running 'deploy'" in refused.stderr and not ran.exists()
    # a run holds the lock for its command: a deploy meanwhile is refused, naming the command
    started = tmp_path / "started"
    command = f"touch {started}; sleep 3; touch {ran}"
    one_off = fab_background(lab1, "run", "--as", "deploy", "--", command)
    assert poll(started.exists, seconds=20)
    blocked = lab1.fab("deploy")
    out, err = one_off.communicate(timeout=60)
    assert one_off.returncode == 0, err
    assert blocked.returncode == 5, blocked.stderr
    assert f"running 'run: {command}'" in blocked.stderr
    assert ran.exists()
    assert lab1.fab("deploy").returncode == 0  # the run let go of the lock
    assert [e["event"] for e in history(server)[-2:]] == ["run", "deploy"]


@pytest.mark.parametrize("how", ["killed", "Ctrl-C"])
def test_fab_gone_while_its_command_runs_holds_the_lock_until_the_command_ends(lab1, tmp_path, how):
    """The command runs on to its end (like a migration, it is not cut halfway); meanwhile its lock
    is alive and cannot be forced; when it ends the server records it and frees the lock itself."""
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "a"))
    assert lab1.fab("deploy").returncode == 0
    started, done = tmp_path / "started", tmp_path / "done"
    command = f"touch {started}; sleep 4; echo finished > {done}"
    one_off = fab_background(lab1, "run", "--as", "deploy", "--", command)
    assert poll(started.exists, seconds=20)
    session = json.loads(Path(server.deploy_to, ".cutover", "lock", "owner.json").read_text())["session_pid"]
    one_off.send_signal(signal.SIGKILL if how == "killed" else signal.SIGINT)
    out, err = one_off.communicate(timeout=30)
    if how == "Ctrl-C":
        assert one_off.returncode == 130, err
        assert (
            "interrupted; the command runs on to its end where it had started, and each server frees its lock then"
            in err
        )
    assert poll(lambda: process_gone(session), seconds=15), "the run's sshd session should end with it"
    assert not done.exists()
    forced = lab1.fab("deploy", "--force-unlock")
    assert forced.returncode == 5, forced.stderr
    assert f"lost its connection, but its command {command!r} still runs on the server" in forced.stderr
    assert poll(done.exists, seconds=20)
    assert poll(lambda: not Path(server.deploy_to, ".cutover", "lock").exists(), seconds=10)
    entry = runs(server)[-1]
    assert (entry["command"], entry["result"], entry["exit"]) == (command, "ok", 0)
    after = lab1.fab("deploy")  # no --force-unlock needed
    assert after.returncode == 0, after.stderr
    assert "force-unlock" not in [e["event"] for e in history(server)]


def test_a_silent_network_ends_the_run_with_a_clear_error_and_frees_the_lock(lab1, tmp_path):
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "a"))
    assert lab1.fab("deploy").returncode == 0
    started = tmp_path / "started"
    env = {"CUTOVER_TEST_MARGIN": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabric", "run", "--as", "deploy", "--timeout", "3", "--", f"touch {started}; sleep 1"], cwd=PROJECT,
        env=dict(os.environ, CUTOVER_HOSTS_FILE=str(lab1.hosts_file), CUTOVER_TEST="1", **env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert poll(started.exists, seconds=20)
    session = json.loads(Path(server.deploy_to, ".cutover", "lock", "owner.json").read_text())["session_pid"]
    os.kill(session, signal.SIGSTOP)
    silent = time.monotonic()
    try:
        out, err = proc.communicate(timeout=60)
        ended = time.monotonic() - silent
    finally:
        os.kill(session, signal.SIGCONT)
    assert proc.returncode == 4, err
    assert ended < 3 + 2 + 3, ended  # the command's timeout plus the margin
    assert "lab1: run: no answer from the server within 5 s (the network or the server is silent)" in err
    # once the connection is gone on the server too, the run's lock goes with it
    assert poll(lambda: not Path(server.deploy_to, ".cutover", "lock").exists(), seconds=20)
    assert runs(server)[-1]["result"] == "ok"


# --- the server side in this process --------------------------------------------------------


def _run(layout, token="t1", command="touch ran", **extra):
    return LocalAgent().call(
        "run", dict({"deploy_to": layout.deploy_to, "token": token, "command": command, "command_timeout": 10}, **extra)
    )


def _locked(layout, token="t1"):
    LocalAgent().call("lock", {"deploy_to": layout.deploy_to, "who": who(token, "run: touch ran")})


def test_the_server_runs_only_under_the_callers_lock(site):  # noqa: F811
    make_release(site, IDS[0])
    os.replace(site.current, site.current + ".old")
    os.symlink(f"releases/{IDS[0]}", site.current)
    with pytest.raises(RemoteError, match="run: this run does not hold the lock of"):
        _run(site)
    _locked(site, "other")
    with pytest.raises(RemoteError, match="run: this run does not hold the lock of"):
        _run(site)
    assert not Path(site.release(IDS[0]), "ran").exists()


@pytest.mark.parametrize("plant", ["outside", "dotdot", "release is a symlink", "absolute", "missing"])
def test_a_current_that_names_no_release_dir_is_refused_and_nothing_runs(site, tmp_path, plant):  # noqa: F811
    outside = tmp_path / "outside"
    outside.mkdir()
    make_release(site, IDS[0])
    os.unlink(site.current)
    target = {
        "outside": "../outside",
        "dotdot": f"releases/{IDS[0]}/../../../outside",
        "absolute": str(outside),
        "release is a symlink": f"releases/{IDS[1]}",
        "missing": f"releases/{IDS[2]}",
    }[plant]
    if plant == "release is a symlink":
        os.symlink(str(outside), site.release(IDS[1]))
    os.symlink(target, site.current)
    _locked(site)
    with pytest.raises(RemoteError) as refused:
        _run(site)
    assert f"current points at {target!r}" in str(refused.value) or f"releases/{IDS[1]} is not a directory" in str(
        refused.value
    )
    assert not (outside / "ran").exists() and not Path(site.release(IDS[0]), "ran").exists()
    assert [e["event"] for e in history_of(site)] == []  # refused before anything ran: nothing to record


def history_of(layout):
    path = Path(layout.history)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_server_records_the_run_and_its_output_tail(site):  # noqa: F811
    make_release(site, IDS[0])
    os.unlink(site.current)
    os.symlink(f"releases/{IDS[0]}", site.current)
    _locked(site)
    answer = _run(site, command="seq 1 20000; exit 4")
    assert answer["exit"] == 4 and answer["release"] == IDS[0]
    assert answer["output"].endswith("19999\n20000\n") and len(answer["output"]) <= 100_003
    [entry] = history_of(site)
    assert (entry["event"], entry["result"], entry["exit"]) == ("run", "failed", 4)
    assert entry["output"].endswith("20000\n") and len(entry["output"]) <= 503
    assert Layout(site.deploy_to).lock and os.path.isdir(site.lock)  # the client releases the lock


def test_a_command_run_as_another_user_through_sudo_is_stopped_at_its_timeout(lab1, deploy_user, tmp_path):  # noqa: F811
    """A deploy user who is not root runs `--as web` through `sudo -n -u www-data`: sudo runs as
    root, the command as www-data, and the deploy user may signal neither. The timeout killed
    nothing, and the run waited for the command's own end (a `sleep 60`: 60 s; a hung script: ever),
    holding the lock."""
    name, sudoers = deploy_user
    server = lab1.servers[0]
    sudoers.write_text(f"{name} ALL=(www-data) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    configure(lab1, make_build(tmp_path, "sudo-run"), user=name, httpd={"pidfile": server.pidfile, "pause": "none"})
    assert lab1.fab("deploy").returncode == 0
    pids = Path(server.root, "pids")  # where www-data may write
    pids.touch()
    pids.chmod(0o666)
    started = time.monotonic()
    result = lab1.fab("run", "--timeout", "2", "--", f"echo $$ >> {pids}; sleep 60 & echo $! >> {pids}; id -un; wait")
    took = time.monotonic() - started
    assert result.returncode == 11, result.stderr
    assert took < 20, took
    assert run_lines(result, "lab1") == ["www-data"]
    assert "timed out after 2s; it was stopped, with what it started" in result.stderr, result.stderr
    for pid in pids.read_text().split():
        assert poll(lambda pid=pid: process_gone(int(pid)), seconds=5), f"{pid} still runs"
    assert not Path(server.deploy_to, ".cutover", "lock").exists()
    # a sudoers rule that lets it run only the shell as www-data: what is left is named, never said stopped
    sudoers.write_text(f"{name} ALL=(www-data) NOPASSWD: /bin/sh\n")
    result = lab1.fab("run", "--timeout", "2", "--", f"sleep 60 & echo $! > {pids}; wait")
    assert result.returncode == 11, result.stderr
    left = int(pids.read_text())
    try:
        assert "timed out after 2s; it could not be stopped: pid " in result.stderr, result.stderr
        assert f"{left}" in result.stderr and "as www-data, which this user may not signal" in result.stderr
    finally:
        os.kill(left, signal.SIGKILL)
