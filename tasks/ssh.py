"""SSH connections to servers, and the two places a shell command line is built.

Host keys are checked strictly against the configured known_hosts file; rsync's ssh gets the
same settings (`ssh_command`). Values otherwise travel as JSON to Cutover's server side
(tasks/agent.py); the only shell strings are argv lists joined with shlex quoting, here (`run`)
and in tasks/agent.py and tasks/rsync.py.
"""

import shlex

import invoke
import paramiko
from fabric import Config, Connection

from .errors import ConnectError, RemoteError

CONNECT_TIMEOUT = 10
KEEPALIVE_S = 5  # an SSH keepalive every few seconds keeps NAT and firewall state of a quiet deploy


def connect(host):
    """Open an SSH connection to a Host, host key checked strictly; raise ConnectError with a fix."""
    connect_kwargs = {"allow_agent": host.key is None, "look_for_keys": host.key is None}
    if host.key is not None:
        connect_kwargs["key_filename"] = [str(host.key)]
    conn = Connection(
        host.host,
        user=host.user,
        port=host.port,
        connect_timeout=CONNECT_TIMEOUT,
        connect_kwargs=connect_kwargs,
        config=Config(overrides={"load_ssh_configs": False}),
    )
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    if host.known_hosts.exists():
        conn.client.load_host_keys(str(host.known_hosts))
    try:
        conn.open()
    except paramiko.BadHostKeyException:
        raise ConnectError(
            f"the host key of {host.host} port {host.port} does not match {host.known_hosts}",
            host=host.name,
            hint="if the server was really reinstalled, remove its old line with "
            f"ssh-keygen -R {_known_hosts_name(host)} -f {host.known_hosts}, then add the new key; "
            "otherwise someone may be in between: do not deploy",
        ) from None
    except paramiko.AuthenticationException as exc:
        raise ConnectError(
            f"SSH authentication as {host.user or 'the local user'} failed: {exc}",
            host=host.name,
            hint="check user: and key: in hosts.yaml and the server's authorized_keys",
        ) from None
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise ConnectError(
                f"the host key of {host.host} port {host.port} is not in {host.known_hosts}",
                host=host.name,
                hint=f"check the server's fingerprint, then add it: ssh-keyscan -p {host.port} "
                f"{host.host} >> {host.known_hosts}",
            ) from None
        raise ConnectError(f"SSH to {host.host}:{host.port} failed: {exc}", host=host.name) from None
    except (TimeoutError, OSError) as exc:
        raise ConnectError(
            f"cannot reach {host.host} port {host.port}: {exc}",
            host=host.name,
            hint="check host: and port: in hosts.yaml and that sshd runs there",
        ) from None
    conn.transport.set_keepalive(KEEPALIVE_S)
    return conn


def _known_hosts_name(host):
    return host.host if host.port == 22 else f"[{host.host}]:{host.port}"


def ssh_command(host):
    """The ssh command line (for rsync -e) with exactly the settings of `connect`."""
    argv = [
        "ssh",
        "-F",
        "none",
        "-p",
        str(host.port),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={host.known_hosts}",
        "-o",
        f"ConnectTimeout={CONNECT_TIMEOUT}",
        "-o",
        f"ServerAliveInterval={KEEPALIVE_S}",
        "-o",
        "ServerAliveCountMax=3",
    ]
    if host.key is not None:
        argv += ["-i", str(host.key), "-o", "IdentitiesOnly=yes"]
    if host.user:
        argv += ["-l", host.user]
    return argv


def run(conn, step, argv, *, timeout=None, check=True):
    """Run one argv on the server, every word quoted; a failure names the step and the host."""
    command = shlex.join(str(a) for a in argv)
    try:
        result = conn.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
    except (TimeoutError, invoke.exceptions.CommandTimedOut, paramiko.SSHException, OSError) as exc:
        raise RemoteError(f"{step}: {type(exc).__name__}: {exc}", host=conn.host) from None
    if check and result.exited != 0:
        detail = (result.stderr or result.stdout).strip()
        raise RemoteError(f"{step}: exit {result.exited}: {detail}", host=conn.host)
    return result


def destination(host, path):
    """host:path as rsync reads it; an IPv6 address goes in brackets ([::1]:path)."""
    return f"[{host.host}]:{path}" if ":" in host.host else f"{host.host}:{path}"
