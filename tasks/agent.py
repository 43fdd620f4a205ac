"""The client half of Cutover's server protocol (tasks/remote/protocol.py).

The server side is the package tasks/remote/, standard library only. It travels as one bundle
(JSON, zlib-compressed: 36 KB, fewer round trips of a new TCP connection's slow start on a long
link) over the SSH channel's stdin to a short bootstrap (`python3 -I -S -c BOOTSTRAP N serve`), which
registers the files as the package `cutover` and answers one JSON request per line. Nothing is
installed on the server, and the command line stays short: the bundle has no size limit and
no `ps` listing shows it. A non-root deploy user's swap goes instead through the root-owned
helper that `fab setup` installed: the same files, with the helper's gate, run by sudo.
"""

import functools
import hashlib
import json
import shlex
import threading
import time
import zlib
from pathlib import Path

import paramiko

from .errors import CommandError, HookError, LockError, MigrationError, RemoteError, SmokeError

REMOTE = Path(__file__).resolve().parent / "remote"
BUNDLE = ("protocol", "paths", "limits", "history", "httpd", "listen", "pause", "pinmap", "swap", "health", "lock", "stage", "shared",
          "finish", "views", "install", "helper", "dumps", "manifests", "backup", "restore", "offsite", "intent", "seals",
          "balancer", "procs", "commands", "switching", "nofollow", "grants", "apacheconf", "siteconf", "private", "preflight",
          "run")  # fmt: skip
HELPER_BUNDLE = (
    "protocol",
    "paths",
    "limits",
    "httpd",
    "listen",
    "pause",
    "pinmap",
    "swap",
    "health",
    "helper",
)  # what sudo runs as root
HELPER = "/usr/local/lib/cutover/swap-helper"
DETAIL_KEPT = 2000  # characters of a dying agent's stderr shown
SEND_TIMEOUT = 30  # seconds a request may wait for room in the channel (a silent network)

_LOADER = """\
import json, sys
from importlib.machinery import ModuleSpec
class Bundle:
    def __init__(self, sources): self.sources = sources
    def find_spec(self, name, path=None, target=None):
        if name == "cutover" or (name.startswith("cutover.") and name[8:] in self.sources):
            return ModuleSpec(name, self, is_package=name == "cutover")
    def create_module(self, spec): return None
    def exec_module(self, module):
        if module.__name__ != "cutover":
            source = self.sources[module.__name__[8:]]
            exec(compile(source, "cutover/%s.py" % module.__name__[8:], "exec"), module.__dict__)
"""
BOOTSTRAP = (
    _LOADER
    + """\
import zlib
sys.meta_path.insert(0, Bundle(json.loads(zlib.decompress(sys.stdin.buffer.read(int(sys.argv[1]))))))
from cutover import protocol
sys.exit(protocol.main(sys.argv[2:]))
"""
)

# error kind from the server -> the client's error class
KINDS = {
    "locked": LockError,
    "smoke": SmokeError,
    "migration": MigrationError,
    "hook": HookError,
    "command": CommandError,
}


@functools.cache
def bundle():
    """The server side as the bootstrap reads it: every module's source, JSON, compressed."""
    return zlib.compress(json.dumps(sources(BUNDLE)).encode(), 6)


def sources(names):
    return {name: (REMOTE / f"{name}.py").read_text() for name in names}


def helper_program():
    """The sudo helper as one file: the helper bundle and the loader, gate on."""
    return (
        "# Cutover's swap helper, installed by `fab setup`; run through sudo (see README).\n"
        + _LOADER
        + f"sys.meta_path.insert(0, Bundle({sources(HELPER_BUNDLE)!r}))\n"
        + "from cutover import protocol\nsys.exit(protocol.main(sys.argv[1:], helper=True))\n"
    )


def helper_hash():
    """sha256 of the helper this Cutover installs: `fab check` compares it with the server's."""
    return hashlib.sha256(helper_program().encode()).hexdigest()


def helper_argv(python):
    """How a deploy user who is not root runs the root-owned swap helper."""
    return ["sudo", "-n", python, "-I", "-S", HELPER]


def failure(step, answer, host):
    """The error for a refusal: its class from the answer's kind, the whole answer kept as details."""
    cls = KINDS.get(answer.get("kind"), RemoteError)
    error = cls(f"{step}: {answer['error']}", host=host, hint=answer.get("hint"))
    error.details = answer
    return error


class Channel:
    """One server-side agent per connection, answering a JSON line per request."""

    def __init__(self, conn, python, open_timeout, sudo=False):
        """sudo: run the agent as root through `sudo -n` (an admin user who is not root)."""
        from . import ssh

        payload = bundle()
        self.channel = conn.client.get_transport().open_session(timeout=open_timeout)
        argv = [python, "-I", "-S", "-c", BOOTSTRAP, str(len(payload)), "serve"]
        ssh.start(self.channel, shlex.join(["sudo", "-n", *argv] if sudo else argv), open_timeout)
        self.channel.settimeout(open_timeout)
        self.channel.sendall(payload)
        self.answers = self.channel.makefile("rb")
        self.abandoned = False  # closed at Ctrl-C with an answer still owed (abandon)

    def send(self, op, args):
        self.channel.settimeout(SEND_TIMEOUT)
        self.channel.sendall((json.dumps({"op": op, "args": args}) + "\n").encode())

    def receive(self, timeout):
        """Wait up to timeout seconds for the next answer; None when the agent is gone."""
        self.channel.settimeout(timeout)
        line = self.answers.readline()
        return json.loads(line) if line.strip() else None

    def stderr(self):
        out = b""
        while self.channel.recv_stderr_ready():
            out += self.channel.recv_stderr(65536)
        return out.decode("utf-8", "replace")

    def close(self):
        self.channel.close()


def start(conn, python, timeout=SEND_TIMEOUT):
    """Start the connection's agent now, so that its first call finds it up (its Python started,
    the bundle read) instead of waiting for that. A failure is left to that first call, which
    starts it again and says what failed; but a server that stayed silent for the whole timeout
    (give it the first call's) is not waited for again: the first call says so at once."""
    began = time.monotonic()
    try:
        if getattr(conn, "_cutover_channel", None) is None:
            _install(conn, Channel(conn, python, timeout), "", "start")
    except (TimeoutError, OSError, paramiko.SSHException, EOFError) as exc:
        if time.monotonic() - began >= timeout:
            conn._cutover_silent = exc


def call(conn, host_name, python, step, op, args, timeout, sudo=False):
    """One operation on the server over the connection's agent; returns its answer or raises.
    sudo: the agent this call starts runs as root through `sudo -n`.

    A call that gets no answer within `timeout` seconds ends with a clear error, and the
    connection is given up: a network that went silent stays silent, so a later call on it (the
    abort path) fails at once instead of waiting out a timeout of its own.
    """
    send(conn, host_name, python, step, op, args, timeout, sudo)
    return receive(conn, host_name, step, timeout)


def send(conn, host_name, python, step, op, args, open_timeout=None, sudo=False):
    """The request half of call(): sent, not waited for (receive() gets the answer). The swap sends
    every host's go from one thread, back to back, then waits for the answers."""
    lost = getattr(conn, "_cutover_lost", None)
    if lost:
        raise RemoteError(f"{step}: not sent: the connection was lost earlier ({lost})", host=host_name)
    if _stopped():
        raise RemoteError(f"{step}: not sent: the run was interrupted", host=host_name)
    channel = getattr(conn, "_cutover_channel", None)
    try:
        if channel is None or channel.channel.closed:
            silent, conn._cutover_silent = getattr(conn, "_cutover_silent", None), None
            if silent is not None:  # start() waited its whole timeout for this agent
                raise silent
            channel = _install(conn, Channel(conn, python, open_timeout or SEND_TIMEOUT, sudo), host_name, step)
        channel.send(op, args)
    except (TimeoutError, OSError, paramiko.SSHException, EOFError) as exc:
        _drop(conn, channel, type(exc).__name__)
        raise RemoteError(f"{step}: the connection failed: {type(exc).__name__}: {exc}", host=host_name) from None


def receive(conn, host_name, step, timeout):
    """The answer half of call()."""
    channel = getattr(conn, "_cutover_channel", None)
    if channel is None:
        raise RemoteError(f"{step}: no answer from the server: the connection was given up", host=host_name)
    try:
        answer = channel.receive(timeout)
        detail = channel.stderr().strip()[-DETAIL_KEPT:] if answer is None else ""
    except TimeoutError:
        _drop(conn, channel, f"no answer within {timeout:.0f} s")
        raise RemoteError(
            f"{step}: no answer from the server within {timeout:.0f} s (the network or the server is silent)",
            host=host_name,
        ) from None
    except (OSError, paramiko.SSHException, EOFError) as exc:
        _drop(conn, channel, type(exc).__name__)
        raise RemoteError(f"{step}: the connection failed: {type(exc).__name__}: {exc}", host=host_name) from None
    except BaseException:
        # Ctrl-C while waiting: this agent still owes that answer, and would give it to the next
        # request (the abort's) as its own; the next call starts a new agent instead
        channel.abandoned = True
        _drop(conn, channel)
        raise
    if answer is None:
        if channel.abandoned:
            raise RemoteError(f"{step}: no answer: the run stopped waiting for it (Ctrl-C)", host=host_name)
        _drop(conn, channel)
        raise RemoteError(f"{step}: no answer from the server: {detail or 'the connection closed'}", host=host_name)
    if "error" in answer:
        raise failure(step, answer, host_name)
    return answer


_lock = threading.Lock()  # a connection's agent: installed, dropped or abandoned by one thread at a time
_thread = threading.local()


def abandon(conn):
    """Close the connection's agent without waiting for the answer it owes (after Ctrl-C); the
    next call starts a new one. A thread still waiting on the old agent, or about to start one
    (stop_threads), finds it closed and changes nothing on the connection."""
    with _lock:
        channel = getattr(conn, "_cutover_channel", None)
        conn._cutover_channel = None
        if channel is not None:
            channel.abandoned = True
    if channel is not None:
        channel.close()


def stop_threads(event):
    """This thread works for a step that Ctrl-C may leave behind (fleet.each_host): once `event` is
    set, it starts no agent and sends nothing, so that none of its requests reaches a server after
    the run's switch back or abort."""
    _thread.stop = event


def _stopped():
    stop = getattr(_thread, "stop", None)
    return stop is not None and stop.is_set()


def _install(conn, channel, host_name, step):
    """The connection's agent from now on, unless this thread's step was left behind meanwhile."""
    with _lock:
        if not _stopped():
            conn._cutover_channel = channel
            return channel
    channel.close()
    raise RemoteError(f"{step}: not sent: the run was interrupted", host=host_name)


def _drop(conn, channel, lost=None):
    """Close `channel`, the agent a call used, and forget it; with `lost`, give up the connection.
    Only while it is still the connection's agent: a thread that wakes late on one abandoned at
    Ctrl-C must not close the agent started since (the switch back's, the abort's)."""
    with _lock:
        if getattr(conn, "_cutover_channel", None) is channel:  # or None both: the agent failed to start
            conn._cutover_channel = None
            if lost:
                conn._cutover_lost = lost
    if channel is not None:
        channel.close()


def call_helper(conn, host_name, python, step, args, timeout):
    """The swap through the root-owned sudo helper (a non-root deploy user); returns its answer or raises."""
    from . import ssh

    if _stopped():  # a thread Ctrl-C left behind: its swap would come after the switch back
        raise RemoteError(f"{step}: not sent: the run was interrupted", host=host_name)
    result = ssh.run(conn, step, [*helper_argv(python), "swap", json.dumps(args)], timeout=timeout, check=False)
    answer = _last_json(result.stdout)
    if answer is None:
        detail = (result.stderr or result.stdout).strip()[-DETAIL_KEPT:]
        said = [line for line in detail.splitlines() if line.startswith("sudo: ")]
        if said:  # sudo itself refused: the helper never ran, nothing switched
            error = RemoteError(f"{step}: {_sudo_refusal(said[0])}", host=host_name,
                                hint="`fab check` says what sudo needs")  # fmt: skip
            error.details = {"current": None, "helper_ran": False}
            raise error
        raise RemoteError(
            f"{step}: no answer from the swap helper: {detail or f'exit {result.exited}'}", host=host_name
        )
    if "error" in answer:
        raise failure(step, answer, host_name)
    return answer


def _sudo_refusal(said):
    """sudo's refusal to run the swap helper, said with what it means."""
    if "password is required" in said:
        return (
            f"sudo asks a password to run the swap helper ({said}): the sudoers line for it needs NOPASSWD:, "
            "and no other line of the deploy user may ask a password for it"
        )
    return f"sudo refused to run the swap helper ({said})"


def _last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


class LocalAgent:
    """The same server side, run in this process against a local deploy_to: for tests of the
    server's decisions without SSH (no lab, milliseconds per call)."""

    def call(self, op, args):
        from .remote import protocol

        answer = protocol.answer(op, args)
        if "error" in answer:
            raise failure(op, answer, "local")
        return answer
