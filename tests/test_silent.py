"""A server (or a jump host) that goes silent at the exact point where the client waits for it:
each wait ends at its bound and says what it knows. The server's sshd processes are stopped
(SIGSTOP) at that point, and resumed (SIGCONT) after."""

import contextlib
import os
import signal
import threading
import time

import paramiko
import pytest

from tasks import hostsfile, ssh
from tasks.errors import ConnectError, RemoteError

from .conftest import descendants, make_build
from .test_sshconfig import through_bastion


@contextlib.contextmanager
def resumed_after(stopped):
    """Every PID of `stopped` (a list the block fills) gets SIGCONT when the block ends."""
    try:
        yield stopped
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def stop_sshd(server, stopped, listener=False):
    """The server goes silent: every process of its sshd below the listener is stopped (and the
    listener too: a connection it has not accepted yet gets no process of its own)."""
    for pid in [server.sshd_pid] * listener + descendants(server.sshd_pid):
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)


def bounded(work, seconds):
    """work() in a thread, waited for at most `seconds`: (returned or raised, seconds taken), or
    AssertionError when it still runs."""
    said = {}

    def body():
        try:
            said["value"] = work()
        except BaseException as exc:  # noqa: BLE001 (what the test asserts)
            said["value"] = exc

    began = time.monotonic()
    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    return said["value"], time.monotonic() - began


def test_a_command_the_server_starts_after_the_bound_is_not_said_to_be_unstarted(lab2, tmp_path, monkeypatch):
    """The server goes silent before it answers the request to start a command, and resumes after
    the bound: the request is in its input by then, so it runs the command. The error must not
    say the command did not start (the sudo helper's swap is such a command)."""
    server, marker = lab2.servers[0], tmp_path / "ran"
    monkeypatch.setattr(ssh, "START_TIMEOUT", 2)
    real = paramiko.Channel.exec_command
    with resumed_after([]) as stopped:

        def silent_first(channel, command):
            stop_sshd(server, stopped)
            return real(channel, command)

        monkeypatch.setattr(paramiko.Channel, "exec_command", silent_first)
        with ssh.connect(lab2.host()) as conn:
            error, took = bounded(lambda: ssh.run(conn, "touch", ["touch", str(marker)], timeout=5), 10)
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
            deadline = time.monotonic() + 5
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
    assert isinstance(error, RemoteError), error
    assert took < 4, took
    assert marker.exists()  # the server ran it after all
    assert "did not start the command" not in str(error)
    assert (
        "touch: TimeoutError: the server did not say within 2 s that it started the command; "
        "the channel was closed, but the command may have started" in str(error)
    ), error


def test_a_jump_host_silent_before_it_opens_the_way_to_the_server_ends_the_connect_at_its_bound(
    lab2, tmp_path, monkeypatch
):
    """The jump host takes the login, then goes silent before it opens the connection to the
    server (its direct-tcpip channel): the connect ends at CONNECT_TIMEOUT naming both. Fabric
    opens that channel with Paramiko's default of an hour."""
    bastion = lab2.servers[1]
    host = hostsfile.load(through_bastion(lab2, tmp_path, make_build(tmp_path, "jump"))).resolve("web1")[0]
    monkeypatch.setattr(ssh, "CONNECT_TIMEOUT", 2)
    real = paramiko.Transport.open_channel
    with resumed_after([]) as stopped:

        def silent_first(transport, kind, *args, **kwargs):
            if kind == "direct-tcpip":
                stop_sshd(bastion, stopped)
            return real(transport, kind, *args, **kwargs)

        monkeypatch.setattr(paramiko.Transport, "open_channel", silent_first)
        error, took = bounded(lambda: ssh.connect(host), 10)
    assert stopped, "the jump host was never asked for the way to the server"
    assert isinstance(error, ConnectError), error
    assert took < 4, took
    assert (
        f"cannot reach 127.0.0.1 port {lab2.servers[0].ssh_port} (through jump host 127.0.0.1 port "
        f"{bastion.ssh_port}): the jump host did not open the connection to it within 2 s" in str(error)
    ), error


@pytest.mark.parametrize(
    "point, said",
    [("start_client", "did not finish the SSH key exchange"), ("auth_publickey", "did not answer the login")],
)
def test_a_server_silent_during_the_login_ends_the_connect_at_its_bound_saying_so(lab2, monkeypatch, point, said):
    """The server takes the TCP connection, then goes silent in the key exchange or the login: the
    connect ends at its bound (CONNECT_TIMEOUT, LOGIN_TIMEOUT) and says the server went silent
    (Paramiko's login said "Authentication timeout", which read as a wrong key; the key
    exchange's said "No existing session")."""
    server = lab2.servers[0]
    monkeypatch.setattr(ssh, "CONNECT_TIMEOUT", 2)
    monkeypatch.setattr(ssh, "LOGIN_TIMEOUT", 2)
    real = getattr(paramiko.Transport, point)
    with resumed_after([]) as stopped:

        def silent_first(transport, *args, **kwargs):
            stop_sshd(server, stopped, listener=True)
            return real(transport, *args, **kwargs)

        monkeypatch.setattr(paramiko.Transport, point, silent_first)
        error, took = bounded(lambda: ssh.connect(lab2.host()), 10)
    assert isinstance(error, ConnectError), error
    assert took < 4, took
    assert f"lab1: the server 127.0.0.1 port {server.ssh_port} {said} within 2 s" in str(error), error
    assert "authentication" not in str(error).lower(), error
    assert "silent" in error.hint, error.hint


def test_a_command_run_without_a_timeout_of_its_own_ends_when_the_server_goes_silent_after_starting_it(
    lab2, monkeypatch
):
    """The server starts the command, then goes silent before its exit status: a run given no
    timeout (`fab setup`'s check that the admin user becomes root with sudo) ends at RUN_TIMEOUT.
    Fabric's run waited for ever."""
    server = lab2.servers[0]
    monkeypatch.setattr(ssh, "RUN_TIMEOUT", 2)
    real = ssh.start
    with resumed_after([]) as stopped:

        def silent_after(channel, command, seconds):
            real(channel, command, seconds)
            stop_sshd(server, stopped)

        monkeypatch.setattr(ssh, "start", silent_after)
        with ssh.connect(lab2.host()) as conn:
            error, took = bounded(lambda: ssh.run(conn, "become root", ["true"], check=False), 10)
    assert stopped, "the command was never started"
    assert isinstance(error, RemoteError), error
    assert took < 4, took
    assert "become root: CommandTimedOut: Command did not complete within 2 seconds" in str(error), error


def test_a_server_slow_to_start_a_command_but_within_the_bound_runs_it(lab2, monkeypatch):
    """The server answers the request to start the command late, but before the bound: the
    command runs and its output arrives, the channel untouched by the bound."""
    server = lab2.servers[0]
    monkeypatch.setattr(ssh, "START_TIMEOUT", 3)
    real = paramiko.Channel.exec_command
    with resumed_after([]) as stopped:

        def slow_first(channel, command):
            stop_sshd(server, stopped)
            threading.Timer(2, lambda: [os.kill(pid, signal.SIGCONT) for pid in stopped]).start()
            return real(channel, command)

        monkeypatch.setattr(paramiko.Channel, "exec_command", slow_first)
        with ssh.connect(lab2.host()) as conn:
            result, took = bounded(lambda: ssh.run(conn, "echo", ["echo", "late"], timeout=5), 10)
    assert not isinstance(result, BaseException), result
    assert result.stdout == "late\n" and result.exited == 0
    assert 2 <= took < 3, took
