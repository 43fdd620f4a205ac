"""Connections to servers, and the one function through which every remote command goes.

Host keys are checked strictly against the configured known_hosts file; rsync's ssh gets the
same settings (`ssh_command`). Every remote command is an argv list joined with shlex quoting.
"""

import json
import shlex
from pathlib import Path

import paramiko
from fabric import Config, Connection

from .errors import ConnectError, RemoteError

REMOTE_DIR = Path(__file__).resolve().parent / "remote"
CONNECT_TIMEOUT = 10


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
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=3",
    ]
    if host.key is not None:
        argv += ["-i", str(host.key), "-o", "IdentitiesOnly=yes"]
    if host.user:
        argv += ["-l", host.user]
    return argv


def run(conn, step, argv, *, timeout=None, stdin=None, check=True):
    """Run one argv on the server, every word quoted; a failure names the step and the host."""
    command = shlex.join(str(a) for a in argv)
    kwargs = {"hide": True, "warn": True, "timeout": timeout, "in_stream": stdin or False}
    try:
        result = conn.run(command, **kwargs)
    except Exception as exc:  # invoke raises CommandTimedOut, paramiko socket errors, ...
        raise RemoteError(f"{step}: {type(exc).__name__}: {exc}", host=conn.host) from None
    if check and result.exited != 0:
        detail = (result.stderr or result.stdout).strip()
        raise RemoteError(f"{step}: exit {result.exited}: {detail}", host=conn.host)
    return result


def remote_script(name):
    """The source of a script in tasks/remote/, as shipped to the server."""
    return (REMOTE_DIR / name).read_text()


HELPER = "/usr/local/lib/cutover/swap-helper"


def helper_argv(python):
    """How a deploy user who is not root runs the root-owned swap helper (installed by setup)."""
    return ["sudo", "-n", python, "-I", "-S", HELPER]


class AgentChannel:
    """One server-side agent process per connection, answering a JSON line per request."""

    def __init__(self, conn, python):
        self.channel = conn.client.get_transport().open_session()
        self.channel.exec_command(shlex.join([python, "-I", "-S", "-c", remote_script("agent.py"), "serve", "{}"]))
        self.requests = self.channel.makefile_stdin("wb")
        self.answers = self.channel.makefile("rb")

    def call(self, op, args, timeout=None):
        """Send one request and wait for its answer; None when the agent is gone."""
        self.channel.settimeout(timeout)
        self.requests.write((json.dumps({"op": op, "args": args}) + "\n").encode())
        self.requests.flush()
        line = self.answers.readline()
        return json.loads(line) if line.strip() else None

    def stderr(self):
        out = b""
        while self.channel.recv_stderr_ready():
            out += self.channel.recv_stderr(65536)
        return out.decode("utf-8", "replace")


def agent(conn, step, op, *, python="python3", host_name=None, timeout=None, helper=False, **args):
    """Run one operation of the remote agent (tasks/remote/agent.py) and return its JSON answer.

    The agent travels as `python3 -I -S -c SOURCE`: nothing installed on the server, no site
    packages or PYTHON* variables of the server in the way. It starts once per connection and
    then answers each step over the open channel. With helper=True the installed root-owned
    copy runs through sudo instead, once per call (the swap of a non-root user).
    """
    name = host_name or conn.host
    if helper:
        result = run(conn, step, [*helper_argv(python), op, json.dumps(args)], timeout=timeout, check=False)
        answer = _last_json(result.stdout)
        detail = (result.stderr or result.stdout).strip()[-2000:]
    else:
        try:
            channel = getattr(conn, "_cutover_agent", None)
            if channel is None or channel.channel.closed:
                channel = conn._cutover_agent = AgentChannel(conn, python)
            answer = channel.call(op, args, timeout)
            detail = channel.stderr().strip()[-2000:] if answer is None else ""
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise RemoteError(f"{step}: the connection failed: {type(exc).__name__}: {exc}", host=name) from None
    if answer is None:
        raise RemoteError(f"{step}: no answer from the server: {detail or 'the connection closed'}", host=name)
    if "error" in answer:
        error = RemoteError(f"{step}: {answer['error']}", host=name, hint=answer.get("hint"))
        error.answer = answer
        raise error
    return answer


def _last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None
