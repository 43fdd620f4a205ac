"""rsync over Cutover's own SSH connection: its remote side runs on a new channel of the host's
connection, not on a second SSH connection.

rsync starts its remote side through a "remote shell" program (-e). Cutover gives it tasks/rsh.py,
which passes rsync's pipes over a Unix socket to this process; the Bridge runs the remote command
on a channel of the connection and carries the bytes both ways. No second key exchange, login and
host-key check (on a 20 ms link about half a second of round trips, and ~0.1 s of CPU on loopback),
and a ProxyJump route is the connection's own.

A link that goes silent is found as OpenSSH's ServerAliveInterval finds it: after KEEPALIVE_S with
nothing received, the server is asked for a reply; none within DEAD_AFTER_S and the connection is
closed, which ends every later call with "the connection was lost". rsync's own pipes are shut
down then too (Bridge.lost says why): rsync blocked sending into the bridge while the bridge waits
to hand it what the server sent before the silence would otherwise wait on each other for ever.
"""

import errno
import json
import os
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import ssh
from .ssh import KEEPALIVE_S  # the connection's own keepalive interval

RSH = Path(__file__).resolve().parent / "rsh.py"
CHUNK = 65536
DEAD_AFTER_S = 3 * KEEPALIVE_S  # as OpenSSH's ServerAliveCountMax=3
STATUS_WAIT_S = 60  # after the server's output ends, its exit status is due at once
GONE = (errno.EPIPE, errno.ECONNRESET)  # rsync closed its end: it exited, and says why itself


class Bridge:
    """One rsync run's remote shell: a listening Unix socket (in a 0700 directory of its own,
    removed once rsh.py has connected) and the thread that serves the one rsh.py that connects."""

    def __init__(self, conn, name):
        self.transport = conn.client.get_transport()
        self.dir = tempfile.mkdtemp(prefix="cutover-rsh-")
        self.path = os.path.join(self.dir, "rsh.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.channel = None
        self.lost = None  # why the connection failed under this upload, once it did
        self.pipes = None  # rsync's stdin and stdout, while the bridge holds them
        self.pipes_lock = threading.Lock()
        self.last_heard = time.monotonic()  # anything from the server, a keepalive reply too
        self.last_moved = time.monotonic()  # a byte of rsync's, either way: the upload's progress
        self.done = threading.Event()
        threading.Thread(target=self._serve, name=f"rsync-{name}", daemon=True).start()

    def argv(self):
        """The remote shell command for rsync's -e."""
        return [sys.executable, "-I", "-S", str(RSH), self.path]

    def close(self):
        self.done.set()
        self.listener.close()
        if self.channel is not None:
            self.channel.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _serve(self):
        try:
            client, _ = self.listener.accept()
        except OSError:
            return  # closed before rsync started its remote side
        # the one client is in: its socket and dir go now, so that a deploy killed from here on
        # (SIGTERM, SIGKILL while the upload waits for the lock step or runs) leaves no dir behind
        self.listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        with client:
            message, fds, _, _ = socket.recv_fds(client, CHUNK, 3)
            status = 255
            try:
                if len(fds) == 3:
                    # rsync makes the pipes it gives a remote shell non-blocking (unless
                    # --blocking-io): the end we write the server's output into is ours alone
                    # now (rsh.py closed its copy), so writes to it wait for rsync to read
                    os.set_blocking(fds[1], True)
                    status = self._run(" ".join(json.loads(message)), *fds)
            except Exception as exc:  # reported where rsync reports its remote side's errors
                _write_all(fds[2], f"cutover: the upload channel failed: {type(exc).__name__}: {exc}\n".encode())
            finally:
                with self.pipes_lock:
                    self.pipes = None
                    for fd in fds:
                        os.close(fd)
            try:
                client.sendall(bytes([status]))
            except OSError:
                pass  # rsh.py is gone (rsync was stopped): nobody waits for the status

    def _run(self, command, stdin, stdout, stderr):
        """The command on a new channel, as ssh runs it (its words joined by spaces, for the login
        shell); returns its exit status (255 when it had none, as ssh does)."""
        self.stderr_fd = stderr
        with self.pipes_lock:
            self.pipes = (stdin, stdout)
        channel = self.channel = self.transport.open_session(timeout=DEAD_AFTER_S)
        ssh.start(channel, command, DEAD_AFTER_S)
        threading.Thread(target=self._feed, args=(stdin, channel), daemon=True).start()
        threading.Thread(target=self._watch, args=(channel,), daemon=True).start()
        errors = threading.Thread(target=self._drain, args=(channel.recv_stderr, stderr), daemon=True)
        errors.start()
        self._drain(channel.recv, stdout)
        errors.join()
        self.done.set()
        # after the EOF the status comes at once, or the close (-1); a server that sends neither
        # must not hold the upload for ever
        if not channel.status_event.wait(STATUS_WAIT_S):
            channel.close()
            _write_all(stderr, f"cutover: no exit status from the server's rsync within {STATUS_WAIT_S} s\n".encode())
            return 255
        status = channel.recv_exit_status()
        return status if 0 <= status < 256 else 255

    def _feed(self, fd, channel):
        """rsync's output to the server, until rsync closes it."""
        try:
            while data := os.read(fd, CHUNK):
                self.last_moved = time.monotonic()
                channel.sendall(data)
            channel.shutdown_write()
        except OSError as exc:
            if self.done.is_set():
                return  # the bridge closing after rsync ended
            if channel.eof_received or channel.exit_status_ready():
                return  # the server's rsync ended first (a full disk): the drain brings rsync its words
            self._cut(f"the connection failed: {exc}")

    def _drain(self, recv, fd):
        """The server's output to rsync, until the channel ends. Nothing is dropped: a write waits
        for rsync to read. rsync gone first ends it quietly (rsync reports why); any other failure
        is said where rsync's remote errors go, and ends the channel, so that rsync ends too."""
        try:
            while data := recv(CHUNK):
                self.last_heard = self.last_moved = time.monotonic()
                _write_all(fd, data)
        except OSError as exc:
            if exc.errno in GONE or self.lost:
                return  # rsync exited first (it says why), or the connection was cut (lost says why)
            self._cut(f"the upload channel failed: {exc}")

    def _watch(self, channel):
        """Close the connection once the server stops answering keepalives (a silent link)."""
        while not self.done.wait(KEEPALIVE_S):
            if time.monotonic() - self.last_heard < KEEPALIVE_S:
                continue
            replied = threading.Event()
            threading.Thread(target=self._ask, args=(replied,), daemon=True).start()
            if replied.wait(DEAD_AFTER_S):
                self.last_heard = time.monotonic()
            elif not self.done.is_set():
                self._cut(
                    f"the connection went silent: no answer to a keepalive within {DEAD_AFTER_S:g} s, so it was closed"
                )
                self.transport.close()  # later calls say the connection was lost
                return

    def _cut(self, why):
        """The connection failed under the upload: close the channel and shut rsync's pipes down, so
        that rsync sees its remote side end at once and nothing of the bridge waits on rsync."""
        if self.lost is None:
            self.lost = why
            try:
                _write_all(self.stderr_fd, f"cutover: {why}\n".encode())
            except OSError:
                pass  # rsync's stderr is gone too: its exit status still tells
        self.channel.close()
        with self.pipes_lock:
            for fd in self.pipes or ():
                try:
                    with socket.socket(fileno=os.dup(fd)) as pipe:
                        pipe.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # not a socket (an rsync built without socketpair): build.stall_timeout ends it

    def _ask(self, replied):
        """One keepalive; any reply counts, a refusal too (OpenSSH refuses this request by name)."""
        self.transport.global_request("keepalive@openssh.com", wait=True)
        if self.transport.is_active():
            replied.set()


def _write_all(fd, data):
    """All of data to fd, waiting while it is full (a non-blocking fd, rsync reading slowly)."""
    while data:
        try:
            data = data[os.write(fd, data) :]
        except BlockingIOError:
            select.select([], [fd], [])
