"""SSH connections to servers, and the two places a shell command line is built.

Host keys are checked strictly against the configured known_hosts file, for every ProxyJump hop
too; rsync runs over a channel of this connection (tasks/bridge.py). Values otherwise travel as
JSON to Cutover's server side (tasks/agent.py); the only shell strings are argv lists joined with
shlex quoting, here (`run`) and in tasks/agent.py and tasks/rsync.py.
"""

import errno
import shlex
import socket
import threading

import invoke
import paramiko
from fabric import Config, Connection
from fabric.connection import opens

from .errors import ConnectError, RemoteError

CONNECT_TIMEOUT = 10
LOGIN_TIMEOUT = 30  # Paramiko's: a loaded server's PAM or DNS lookups may take seconds, which is no failure
START_TIMEOUT = 30  # seconds for a server to open a channel, and again to start its command (run)
RUN_TIMEOUT = 60  # seconds a command run without a timeout of its own may take (a server silent once it started it)
KEEPALIVE_S = 5  # an SSH keepalive every few seconds keeps NAT and firewall state of a quiet deploy


class _Connection(Connection):
    """A Connection that also closes the jump host's connection it was opened through, and makes
    its own TCP connection (_tcp) each time it opens (Fabric opens it again where its transport
    was lost): a direct one, not through a jump host, whose socket is a channel of the hop's."""

    def open(self):
        if self.gateway is None and not self.is_connected:
            self.connect_kwargs["sock"] = _tcp(self.host, self.port)
        return super().open()

    def close(self):
        super().close()
        if isinstance(self.gateway, Connection):
            self.gateway.close()

    def open_gateway(self):
        """The way through the jump host (its direct-tcpip channel), waited for CONNECT_TIMEOUT:
        Fabric waits Paramiko's default of an hour for a jump host that went silent after the login."""
        if not isinstance(self.gateway, Connection):
            return super().open_gateway()
        self.gateway.open()
        try:
            return self.gateway.transport.open_channel(
                "direct-tcpip", (self.host, int(self.port)), ("", 0), timeout=CONNECT_TIMEOUT
            )
        except paramiko.ChannelException:
            raise  # the jump host refused (its own error says why)
        except paramiko.SSHException as exc:
            if "Timeout" not in str(exc):
                raise
            raise TimeoutError(
                f"the jump host did not open the connection to it within {CONNECT_TIMEOUT:.0f} s"
            ) from None

    @opens
    def create_session(self):
        """The channel of conn.run (Fabric's), with the agent's bounds: Fabric opens it with
        Paramiko's default of an hour, and starts the command without any; its own timeout
        begins only once the command has started."""
        channel = self.transport.open_session(timeout=START_TIMEOUT)
        channel.exec_command = lambda command: start(channel, command, START_TIMEOUT)
        return channel


def start(channel, command, seconds):
    """channel.exec_command(command), waiting at most `seconds` for the server to say it started
    it: Paramiko's waits for ever on a server gone silent after opening the channel. A server
    that does not answer in time has the channel closed, and TimeoutError is raised. The request
    may have reached it all the same (a link that stalled, then resumed): the error says the
    command may have started, and a caller must not take it for one that did not."""
    state = {"answered": False, "fired": False}
    lock = threading.Lock()

    def give_up():
        with lock:  # once the server has answered, the channel is the caller's: never closed here
            if state["answered"]:
                return
            state["fired"] = True
        try:
            channel.close()  # marked closed first, which wakes exec_command's wait ("Channel closed")
        except Exception:  # noqa: BLE001 (the close message could not be sent: the connection is gone)
            pass

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    try:
        type(channel).exec_command(channel, command)
    except (paramiko.SSHException, EOFError):
        if not state["fired"]:
            raise
    finally:
        with lock:
            state["answered"] = True
        timer.cancel()
    if state["fired"]:
        raise TimeoutError(
            f"the server did not say within {seconds:.0f} s that it started the command; "
            "the channel was closed, but the command may have started"
        )


# Linux's: ACK what arrived at once, instead of up to 40 ms later (macOS and the BSDs lack it)
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class _Socket(socket.socket):
    """The TCP connection to an SSH server (or a first jump host), without the kernel's waits on
    small packets. Nagle's algorithm is off, so the key exchange's and each request's small
    packets leave at once. And what arrives is acknowledged at once: sshd keeps Nagle on for a
    session without a terminal, so a reply that follows its own unacknowledged packet (the host
    keys it sends after the login, then the answer to opening the first channel) waited for
    this side's delayed ACK. Each wait was 40 ms: 85 ms of every connection's start."""

    def recv(self, size, flags=0):
        data = super().recv(size, flags)
        if _QUICKACK is not None:  # Linux leaves the quick-ACK mode by itself: set again after each read
            try:
                self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass
        return data


_REFUSED = (errno.ECONNREFUSED, errno.EHOSTUNREACH)


def _tcp(address, port):
    """The TCP connection SSH runs on: each address the name has, in turn (a silent one for
    CONNECT_TIMEOUT). When none answers, the error Paramiko raised: the first that is not a
    refusal (a timeout), else one naming every address that refused."""
    refused, other = {}, None
    for family, kind, proto, _, where in socket.getaddrinfo(address, port, type=socket.SOCK_STREAM):
        sock = _Socket(family, kind, proto)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(where)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno in _REFUSED:
                refused[where] = exc
            elif other is None:
                other = exc
    if other is not None:
        raise other
    if refused:
        raise paramiko.ssh_exception.NoValidConnectionsError(refused)
    raise OSError(f"no address for {address}")


def _connection(address, port, user, key, known_hosts, gateway=None):
    # the banner keeps Paramiko's 15 s, so that the key exchange's bound ends a silent start first
    connect_kwargs = {"allow_agent": key is None, "look_for_keys": key is None, "auth_timeout": LOGIN_TIMEOUT}
    if key is not None:
        connect_kwargs["key_filename"] = [str(key)]
    conn = _Connection(
        address,
        user=user,
        port=port,
        connect_timeout=CONNECT_TIMEOUT,
        connect_kwargs=connect_kwargs,
        config=Config(overrides={"load_ssh_configs": False}),  # tasks/sshconfig.py has read it
        gateway=gateway,
    )
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    if known_hosts.exists():
        conn.client.load_host_keys(str(known_hosts))
    return conn


def connect(host):
    """Open an SSH connection to a Host (through its ProxyJump hops, each opened here in turn),
    every host key checked strictly; raise ConnectError with a fix."""
    gateway, via = None, ""
    try:
        for hop in host.jump:
            gateway = _connection(hop.host, hop.port, hop.user, hop.key, host.known_hosts, gateway)
            _open(gateway, host, hop.host, hop.port, hop.user, via, "jump host ")
            via = f" (through jump host {hop.host} port {hop.port})"
        conn = _connection(host.host, host.port, host.user, host.key, host.known_hosts, gateway)
        _open(conn, host, host.host, host.port, host.user, via)
    except BaseException:
        if gateway is not None:
            gateway.close()
        raise
    conn.transport.set_keepalive(KEEPALIVE_S)
    return conn


def _open(conn, host, address, port, user, via, role=""):
    """conn.open(), its failures as ConnectError naming the server (or jump host) that failed."""
    try:
        conn.open()
    except paramiko.BadHostKeyException:
        raise ConnectError(
            f"the host key of {role}{address} port {port} does not match {host.known_hosts}",
            host=host.name,
            hint="if the server was really reinstalled, remove its old line with "
            f"ssh-keygen -R {_known_hosts_name(address, port)} -f {host.known_hosts}, then add the new key; "
            "otherwise someone may be in between: do not deploy",
        ) from None
    except paramiko.AuthenticationException as exc:
        if str(exc) == "Authentication timeout.":  # no answer to the login: a silent server, not a wrong key
            raise _silent(host, address, port, via, role, "did not answer the login", LOGIN_TIMEOUT) from None
        raise ConnectError(
            f"SSH authentication as {user or 'the local user'} on {role}{address} port {port} failed: {exc}",
            host=host.name,
            hint="check user: and key: in hosts.yaml (or User and IdentityFile in ssh_config) and the "
            "server's authorized_keys",
        ) from None
    except paramiko.ChannelException as exc:
        raise ConnectError(
            f"the jump host could not open a connection to {address} port {port}{via}: {exc}",
            host=host.name,
            hint="check that the jump host reaches the server and allows TCP forwarding (AllowTcpForwarding)",
        ) from None
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise ConnectError(
                f"the host key of {role}{address} port {port} is not in {host.known_hosts}",
                host=host.name,
                hint=f"check the server's fingerprint, then add it: ssh-keyscan -p {port} "
                f"{address} >> {host.known_hosts}",
            ) from None
        if str(exc) == "No existing session":  # Paramiko's word for a key exchange not done in time
            raise _silent(host, address, port, via, role, "did not finish the SSH key exchange") from None
        raise ConnectError(f"SSH to {role}{address}:{port}{via} failed: {exc}", host=host.name) from None
    except (TimeoutError, OSError) as exc:
        raise ConnectError(
            f"cannot reach {role}{address} port {port}{via}: {exc}",
            host=host.name,
            hint="check host: and port: in hosts.yaml (or ssh_config) and that sshd runs there",
        ) from None


def _silent(host, address, port, via, role, what, seconds=None):
    seconds = CONNECT_TIMEOUT if seconds is None else seconds
    return ConnectError(
        f"the {role or 'server '}{address} port {port}{via} {what} within {seconds:.0f} s",
        host=host.name,
        hint="it took the TCP connection, then went silent: check that its sshd is not stuck or "
        "overloaded, and the network to it",
    )


def _known_hosts_name(address, port):
    return address if port == 22 else f"[{address}]:{port}"


def run(conn, step, argv, *, timeout=None, check=True):
    """Run one argv on the server, every word quoted; a failure names the step and the host.
    timeout: seconds it may take once started (default RUN_TIMEOUT: Fabric's run would wait for
    ever on a server gone silent before the command's exit status)."""
    command = shlex.join(str(a) for a in argv)
    timeout = RUN_TIMEOUT if timeout is None else timeout
    try:
        result = conn.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
    except (TimeoutError, invoke.exceptions.CommandTimedOut, paramiko.SSHException, OSError) as exc:
        raise RemoteError(f"{step}: {type(exc).__name__}: {exc}", host=conn.host) from None
    if check and result.exited != 0:
        detail = (result.stderr or result.stdout).strip()
        raise RemoteError(f"{step}: exit {result.exited}: {detail}", host=conn.host)
    return result
