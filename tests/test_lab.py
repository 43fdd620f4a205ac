"""The lab itself: real sshd and Apache come up on loopback, accept only the lab key, go down by PID."""

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import lab
from lab.link import round_trips
from tasks import rsync, ssh
from tasks.errors import ConnectError, CutoverError
from tasks.remote.paths import PLACEHOLDER, Layout

from .conftest import accepted, descendants, new_lab_dir, process_gone, start_lab, stop_lab


def test_sshd_accepts_the_lab_key(lab2):
    for name in ("lab1", "lab2"):
        host = lab2.host(name)
        with ssh.connect(host) as conn:
            result = ssh.run(conn, "test", ["sh", "-c", 'echo "$1"', "sh", "it's me; $HOME"])
        assert result.stdout == "it's me; $HOME\n"  # quoted through the shell, not expanded


def test_the_ssh_socket_sends_and_acknowledges_small_packets_at_once(lab2):
    # sshd keeps Nagle on for a session without a terminal: its answer to opening the first
    # channel waited for this side's delayed ACK of the host keys it sent (40 ms), and the key
    # exchange's small packets for the ACKs of the ones before (40 ms more)
    with ssh.connect(lab2.host()) as conn:
        sock = conn.client.get_transport().sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        channel = conn.client.get_transport().open_session(timeout=10)
        channel.exec_command("cat")
        for _ in range(3):  # requests and answers: Linux leaves its quick-ACK mode by itself
            channel.sendall(b"ping\n")
            assert channel.recv(100) == b"ping\n"
            # what was read was acknowledged at once: the mode is set again after each read
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
        channel.close()


@pytest.mark.parametrize("what", ["agent", "run", "rsync"])
def test_a_server_silent_once_a_channel_is_open_ends_the_start_of_its_command_in_bounded_time(lab2, what, monkeypatch):
    """The server opens the channel, then goes silent (its sshd stopped) before it says it started
    the command: the agent's start, a command (conn.run, the sudo helper's swap) and rsync's
    channel each end at their bound. Paramiko's exec_command waited for ever, and Fabric's timeout
    only starts once the command has."""
    import threading

    import paramiko

    from tasks import agent, bridge

    server, host = lab2.servers[0], lab2.host()
    monkeypatch.setattr(ssh, "START_TIMEOUT", 2)
    monkeypatch.setattr(bridge, "DEAD_AFTER_S", 2)
    stopped = []
    real = paramiko.Channel.exec_command

    def silent_first(channel, command):  # the server goes silent between the open and the command
        for pid in descendants(server.sshd_pid):
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        return real(channel, command)

    monkeypatch.setattr(paramiko.Channel, "exec_command", silent_first)
    said, conn = {}, ssh.connect(host)

    def starting():
        try:
            if what == "agent":
                agent.Channel(conn, host.python, 2)
            elif what == "run":
                ssh.run(conn, "swap", ["true"], timeout=5)
            else:
                shell = bridge.Bridge(conn, "test")
                try:
                    shell._run("true", None, None, None)
                finally:
                    shell.close()
        except Exception as exc:
            said["error"] = exc

    try:
        t = time.monotonic()
        thread = threading.Thread(target=starting, daemon=True)
        thread.start()
        thread.join(20)
        took = time.monotonic() - t
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        conn.close()
    assert not thread.is_alive(), "starting the command waited for ever"
    assert took < 10, took
    assert "did not say within 2 s that it started the command" in str(said.get("error")), said


def test_a_host_name_that_does_not_resolve_is_named(lab2):
    host = lab2.host()
    nowhere = type(host)(**{**host.__dict__, "host": "cutover-test.invalid"})
    with pytest.raises(ConnectError) as err:
        ssh.connect(nowhere)
    assert f"cannot reach cutover-test.invalid port {host.port}" in str(err.value)


def test_a_connection_whose_transport_was_lost_opens_again_on_a_new_socket(lab2):
    # Fabric opens a Connection again when its transport is gone (conn.run, conn.sftp): on a TCP
    # connection of its own, never on the socket of the one that was lost
    with ssh.connect(lab2.host()) as conn:
        first = conn.client.get_transport().sock
        conn.client.close()  # as when the server or the network dropped it
        assert not conn.is_connected
        assert ssh.run(conn, "again", ["echo", "again"]).stdout == "again\n"
        sock = conn.client.get_transport().sock
        assert sock is not first and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def _free_port(family=socket.AF_INET, address="127.0.0.1"):
    with socket.socket(family) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _bound_on_both():
    """A port bound, not listening, on 127.0.0.1 and on ::1 while the block runs (a connection to
    either is refused): the first of a few ports the kernel gives on 127.0.0.1 that ::1 has free."""
    for _ in range(50):
        with socket.socket() as v4, socket.socket(socket.AF_INET6) as v6:
            v4.bind(("127.0.0.1", 0))
            port = v4.getsockname()[1]
            try:
                v6.bind(("::1", port))
            except OSError:
                continue  # taken on ::1: another
            yield port
            return
    raise AssertionError("no port free on both 127.0.0.1 and ::1 in 50 tries")


def _silent_listener(family, address, port):
    """A port whose accept queue is full: a new connection's SYN goes unanswered (silent)."""
    full = socket.socket(family)
    full.bind((address, port))
    full.listen(0)
    port, filling = full.getsockname()[1], []
    for _ in range(4):
        s = socket.socket(family)
        s.setblocking(False)
        try:
            s.connect((address, port))
        except BlockingIOError:
            pass
        filling.append(s)
    time.sleep(0.2)
    return full, filling


@pytest.fixture
def two_addresses(monkeypatch):
    """The name cutover-two.test resolves to [::1, 127.0.0.1] (as localhost does where /etc/hosts
    maps it to both), the lookup of every other name unchanged."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "cutover-two.test":
            return real(host, port, *args, **kwargs)
        return real("::1", port, *args, **kwargs) + real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return "cutover-two.test"


def _elsewhere(host, name, port):
    return type(host)(**{**host.__dict__, "host": name, "port": port})


def test_a_port_nobody_listens_on_is_said_as_before(lab2, two_addresses):
    host = lab2.host()
    port = _free_port()
    with pytest.raises(ConnectError) as err:
        ssh.connect(_elsewhere(host, "127.0.0.1", port))
    assert (
        err.value.message
        == f"cannot reach 127.0.0.1 port {port}: [Errno None] Unable to connect to port {port} on 127.0.0.1"
    )
    port = _free_port(socket.AF_INET6, "::1")
    with pytest.raises(ConnectError) as err:
        ssh.connect(_elsewhere(host, "::1", port))
    assert err.value.message == f"cannot reach ::1 port {port}: [Errno None] Unable to connect to port {port} on ::1"
    # every address of the name refused: each is named
    with _bound_on_both() as port:
        with pytest.raises(ConnectError) as err:
            ssh.connect(_elsewhere(host, two_addresses, port))
    assert err.value.message == (
        f"cannot reach {two_addresses} port {port}: [Errno None] Unable to connect to port {port} on 127.0.0.1 or ::1"
    )


def test_a_name_whose_first_address_is_silent_is_tried_at_its_next(lab2, two_addresses, monkeypatch, tmp_path):
    monkeypatch.setattr(ssh, "CONNECT_TIMEOUT", 1)
    host = lab2.host()
    # the lab's host key, known under the name too
    known = tmp_path / "known_hosts"
    lines = host.known_hosts.read_text().splitlines()
    mine = [line for line in lines if line.startswith(f"[127.0.0.1]:{host.port} ")]
    known.write_text("".join(line.replace("127.0.0.1", two_addresses, 1) + "\n" for line in mine))
    host = type(host)(**{**host.__dict__, "known_hosts": known})
    # ::1 silent, 127.0.0.1 the lab's sshd: the connection is made, after the first one's timeout
    full, filling = _silent_listener(socket.AF_INET6, "::1", host.port)
    try:
        start = time.monotonic()
        with ssh.connect(_elsewhere(host, two_addresses, host.port)) as conn:
            assert ssh.run(conn, "probe", ["echo", "in"]).stdout == "in\n"
        assert 1 <= time.monotonic() - start < 5
    finally:
        for s in [full, *filling]:
            s.close()
    # ::1 silent, 127.0.0.1 refuses: the timeout is said, as when the first address alone was tried
    for _ in range(50):  # a silent port on ::1 whose number 127.0.0.1 has free: bound there, it refuses
        full, filling = _silent_listener(socket.AF_INET6, "::1", 0)
        port, refusing = full.getsockname()[1], socket.socket()
        try:
            refusing.bind(("127.0.0.1", port))
            break
        except OSError:
            for s in [full, *filling, refusing]:
                s.close()
    else:
        raise AssertionError("no port silent on ::1 and free on 127.0.0.1 in 50 tries")
    try:
        with pytest.raises(ConnectError) as err:
            ssh.connect(_elsewhere(host, two_addresses, port))
        assert err.value.message == f"cannot reach {two_addresses} port {port}: timed out"
    finally:
        for s in [full, *filling, refusing]:
            s.close()


def test_sshd_rejects_an_unknown_key(lab2, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    host = lab2.host()
    stranger = type(host)(**{**host.__dict__, "key": other})
    with pytest.raises(ConnectError) as err:
        ssh.connect(stranger)
    assert f"SSH authentication as root on 127.0.0.1 port {host.port} failed" in str(err.value)


def test_rsync_runs_on_a_channel_of_cutovers_connection(lab2, tmp_path):
    server, host = lab2.servers[0], lab2.host()
    (tmp_path / "f.txt").write_text("over rsync\n")
    dest = f"{host.deploy_to}/shared/rsync-probe"
    with ssh.connect(host) as conn:
        logins = accepted(server)
        stats = rsync.upload(host, conn, tmp_path, dest)
        assert accepted(server) == logins  # no second login: rsync's remote side ran on a channel
    assert Path(dest, "f.txt").read_text() == "over rsync\n" and stats.files == 1


def test_apache_serves_the_release_behind_current(lab2):
    server = lab2.servers[0]
    layout = Layout(server.deploy_to)
    Path(layout.current, "probe.txt").write_text("served through current\n")
    with urllib.request.urlopen(server.url + "probe.txt") as response:
        assert response.status == 200
        assert response.read() == b"served through current\n"
    assert Path(layout.current).resolve().name == PLACEHOLDER


def test_everything_listens_on_loopback_only(lab2):
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
    ours = [
        line
        for line in out.splitlines()
        if any(f":{p} " in line for s in lab2.servers for p in (s.ssh_port, s.http_port))
    ]
    assert len(ours) == 4
    assert all(" 127.0.0.1:" in line for line in ours)


def test_lab_goes_down_leaving_no_process():
    handle, root = start_lab(1)
    server = handle.servers[0]
    children = lab.children(server.httpd_pid)
    assert len(children) >= 1
    stop_lab(handle, root)  # asserts the recorded PIDs are gone
    assert all(process_gone(p) for p in children)
    assert not root.exists()


def test_a_lab_on_a_new_ext4_is_unmounted_and_removed_at_stop(tmp_path):
    probe = tmp_path / "probe.img"
    with open(probe, "wb") as f:
        f.truncate(8 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(probe)], capture_output=True)
    (tmp_path / "mnt").mkdir()
    if subprocess.run(["mount", "-o", "loop", str(probe), str(tmp_path / "mnt")], capture_output=True).returncode:
        pytest.skip("this machine cannot loop-mount a file system (used by the benchmarks only)")
    subprocess.run(["umount", str(tmp_path / "mnt")], check=True)
    handle, root = start_lab(1, ext4_mb=64)
    server = handle.servers[0]
    assert Path(server.deploy_to).is_mount()
    with urllib.request.urlopen(server.url, timeout=5) as response:
        assert response.status == 200  # the placeholder release, served from the new file system
    stop_lab(handle, root)
    assert not root.exists()
    assert server.deploy_to not in Path("/proc/mounts").read_text()


def test_stop_finds_an_apache_restarted_by_hand(tmp_path):
    handle, root = start_lab(1)
    server = handle.servers[0]
    # what a user does between sandbox-up and sandbox-down: apachectl restart (a new parent PID)
    os.kill(server.httpd_pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while not process_gone(server.httpd_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    Path(server.pidfile).unlink(missing_ok=True)
    restarted = subprocess.Popen(
        [lab.APACHE, "-f", server.httpd_conf, "-DFOREGROUND"], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    while not Path(server.pidfile).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lab.stop(root) is True
    restarted.wait(timeout=10)  # stopped by the PID its pidfile named
    os.rmdir(root.parent)


def test_a_lab_that_failed_to_start_is_stopped_and_a_new_one_starts():
    import socket

    root = new_lab_dir()  # reachable by Apache's www-data children
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    ports = [(lab.servers.free_port(), lab.servers.free_port()), (lab.servers.free_port(), busy.getsockname()[1])]
    try:
        with pytest.raises(CutoverError, match=f"port {ports[1][1]} on 127.0.0.1 is already in use"):
            lab.start(root, count=2, ports=ports)
        first = lab.load(root).servers[0]
        assert lab.stop(root) is True and not root.exists()
        assert process_gone(first.httpd_pid) and process_gone(first.sshd_pid)
    finally:
        busy.close()
    again = lab.start(root, count=1)
    assert lab.stop(root) is True and all(process_gone(p) for p in lab.pids(again))
    os.rmdir(root.parent)


def test_a_wan_link_delays_and_limits_and_goes_down_with_the_lab(tmp_path):
    """A server behind the wan profile (100 Mbit/s, 20 ms round trip) in a namespace of its own:
    a request costs a round trip, a transfer is held to the rate, a deploy works through it, and
    stop removes the namespace and the delay element."""
    handle, root = start_lab(1, link="wan")
    server = handle.servers[0]
    try:
        assert server.address.startswith("198.18.") and server.netns
        times = round_trips(server.address, server.http_port, 5)
        assert 0.020 <= sorted(times)[2] < 0.060, times  # one round trip of 20 ms, plus Apache
        host = handle.host()
        with ssh.connect(host) as c:
            start = time.monotonic()
            got = ssh.run(c, "transfer", ["head", "-c", str(5 * 2**20), "/dev/zero"]).stdout
            seconds = time.monotonic() - start
        assert len(got) == 5 * 2**20
        assert 5 * 2**20 * 8 / seconds < 110e6, f"{seconds:.2f} s for 5 MiB: faster than the link's 100 Mbit/s"
        result = handle.fab("deploy")
        assert result.returncode == 0, result.stderr
        assert "deployed" in result.stdout
    finally:
        pids = lab.pids(handle.lab) + [server.wire_pid]
        lab.stop(root)
        os.rmdir(root.parent)
    assert [p for p in pids if not process_gone(p)] == []
    assert not os.path.exists(f"/var/run/netns/{server.netns}")
