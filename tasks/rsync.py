"""rsync into the incoming release dir, over a channel of the host's own SSH connection
(tasks/bridge.py)."""

import os
import re
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from . import buildfiles
from .bridge import Bridge
from .config import Build
from .errors import CutoverError, RemoteError

WHEN_READY = Path(__file__).resolve().parent / "remote" / "when_ready.py"
STOP_WAIT = 5  # seconds a stopped rsync gets to exit before it is killed

PROGRESS_EVERY = 2.0  # seconds between progress lines of a long upload
STALL_CHECK_S = 1.0  # how often a running upload's progress is looked at
WAIT_LIMIT = 600  # seconds an early-started upload waits on the server for the lock step


@dataclass(frozen=True)
class UploadStats:
    bytes_sent: int
    files: int
    seconds: float  # from the result being awaited to the end
    changed: tuple = ()


def rsync_argv(host, build, dest, rsh, dry_run=False, when_ready=False, sized=False):
    """rsync's argv: recursive, links, modes, delete; into a dir prelinked with the live files.

    Never --inplace: rsync replaces a changed file with a new one, so the inodes the incoming
    dir shares with the live release are never written. No owner or group (the deploy user
    owns its releases) and, with checksums, no times: attribute changes are the other way to
    touch a shared inode, and a build that rewrites every file with a new mtime still shares
    every unchanged one. The shared entries are excluded: they are symlinks into shared/,
    made on the server. What is not the site (tasks/buildfiles.py) is never sent, and deleted from
    the incoming dir where the prelink linked it from a live release that has it.
    Unchanged files are found by checksum by default: rsync's quick check (size and mtime to
    the second) takes a rebuilt file of the same size for unchanged and ships the old bytes.
    build.compare: mtime trades that for speed, comparing mtimes to the nanosecond (and keeping
    the build's mtimes).
    sized: compare by size only, where the prelink linked only files known to be the build's
    (tasks/manifest.py): unchanged files are then read on neither side.
    build: the run's Build (its exclusions), or a directory to upload with host.build's.
    rsh: the remote shell's argv (the bridge's, Bridge.argv()).
    """
    # --no-inc-recursive: the whole file list first, as one stream; sent directory by directory
    # (rsync's default) it costs round trips: 60 ms of a one-file change on a 20 ms link.
    # --safe-links: a link that leads outside the build is never sent. The build check refuses
    # one; this leaves out one that appears after the check (a build still being written).
    argv = ["rsync", "--archive", "--no-inc-recursive", "--safe-links", "--no-owner", "--no-group", "--delete",
            "--stats", "--info=progress2"]  # fmt: skip
    if host.build.compare == "checksum":
        argv += ["--size-only" if sized else "--checksum", "--no-times"]
    else:
        argv.append("--modify-window=-1")
    argv += ["-e", shlex.join(rsh)]
    if when_ready:
        # the server side waits for the lock step to have made the incoming dir (when_ready.py)
        wait = [host.python, "-I", "-S", "-c", WHEN_READY.read_text(), dest, str(WAIT_LIMIT), "rsync"]
        argv.append(f"--rsync-path={shlex.join(wait)}")
    for entry in host.shared:
        argv.append(f"--exclude=/{entry}")
    build = _build_of(host, build)
    argv += [r.rsync_filter() for r in buildfiles.rules(build)]
    if dry_run:
        argv += ["--dry-run", "--itemize-changes"]
    # the host part is for rsync's syntax only: the bridge's channel goes to the connection's host
    argv += [f"{str(build.path).rstrip('/')}/", f"cutover:{dest}/"]
    return argv


def _build_of(host, build):
    """The Build to upload: given, or host.build's settings for another directory."""
    return build if isinstance(build, Build) else replace(host.build, path=Path(build))


def _cpu_ticks(pid):
    """CPU time (user + system, clock ticks) of a local process so far; None where /proc has none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def _stat(text, label):
    m = re.search(rf"^{label}: ([\d,]+)", text, re.M)
    return int(m.group(1).replace(",", "")) if m else 0


class Upload:
    """One rsync run; started early (`when_ready`) it overlaps its SSH start with the lock step."""

    def __init__(self, host, conn, make_argv, dry_run=False):
        """make_argv(rsh): rsync's argv for the remote shell argv `rsh`."""
        self.host, self.dry_run = host, dry_run
        self.stalled = None  # seconds without progress, once the upload was stopped for it
        self.last_output = 0.0  # when rsync last printed (its progress)
        self.bridge = Bridge(conn, host.name)
        argv = make_argv(self.bridge.argv())
        # stderr into a file, not a pipe: rsync blocked on a full stderr pipe while this reads
        # its stdout to the end would never finish (thousands of warnings fill 64 KB)
        self.errors = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=self.errors,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            self.errors.close()
            self.bridge.close()
            raise CutoverError(
                "rsync is not installed on this machine (not found in PATH)",
                hint="install it: apt-get install rsync, dnf install rsync or brew install rsync",
            ) from None

    @classmethod
    def start(cls, host, conn, build, dest, dry_run=False, when_ready=False, sized=False):
        """rsync the build (a Build or a directory) into dest (see rsync_argv) over conn, started now."""
        return cls(host, conn, lambda rsh: rsync_argv(host, build, dest, rsh, dry_run, when_ready, sized), dry_run)

    def stop(self):
        """Stop a running rsync (the deploy failed); its server side then exits too."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped rsync (Ctrl-Z) acts on SIGTERM only once continued
            except ProcessLookupError:
                pass  # it has ended already (and not been waited for: the pid is still ours)
            try:
                self.proc.wait(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.errors.close()
        self.bridge.close()

    def result(self, progress=None):
        """Wait for rsync; returns UploadStats. progress(text) is called every few seconds. An
        upload that makes no progress for build.stall_timeout seconds is stopped: RemoteError."""
        ended = threading.Event()
        threading.Thread(target=self._watch, args=(ended,), name=f"stall-{self.host.name}", daemon=True).start()
        try:
            return self._result(progress)
        finally:
            ended.set()
            self.stop()

    def _watch(self, ended):
        """Kill rsync once nothing has moved for stall_timeout: no byte on the channel either way,
        no output, no CPU time of the local rsync (which checksums the build before it sends)."""
        limit, pid = self.host.build.stall_timeout, self.proc.pid
        since, cpu = time.monotonic(), _cpu_ticks(pid)  # the clock starts when the result is awaited
        while not ended.wait(STALL_CHECK_S):
            now, used = time.monotonic(), _cpu_ticks(pid)
            if used != cpu:
                since, cpu = now, used
            idle = now - max(since, self.bridge.last_moved, self.last_output)
            if idle >= limit:
                self.stalled = limit
                self.proc.kill()  # a stopped rsync too; its server side sees the channel end
                return

    def _result(self, progress):
        host, proc, dry_run, start = self.host, self.proc, self.dry_run, time.monotonic()
        out, last = [], start
        buf = b""
        while chunk := proc.stdout.read1(65536):
            self.last_output = time.monotonic()
            out.append(chunk)
            buf = (buf + chunk)[-4096:]
            now = time.monotonic()
            if progress and now - last >= PROGRESS_EVERY:
                m = re.findall(rb"([\d,]+)\s+(\d+)%", buf)
                if m:
                    progress(f"{int(m[-1][0].replace(b',', b'')) / 1e6:.1f} MB, {int(m[-1][1])}%")
                last = now
        code = proc.wait()
        self.errors.seek(0)
        err = self.errors.read().decode("utf-8", "replace")
        text = b"".join(out).decode("utf-8", "replace")
        if self.bridge.lost and code != 0:
            raise RemoteError(
                f"upload: {self.bridge.lost}",
                host=host.name,
                hint="the network to the server or the server itself stopped answering; deploy again once it answers",
            )
        if self.stalled is not None:
            raise RemoteError(
                f"upload: no progress for {self.stalled:g} s (no byte moved either way), so it was stopped",
                host=host.name,
                hint="if the network and the server are fine and the server is only slow (a big site read "
                "file by file from a slow disk), raise build.stall_timeout in hosts.yaml",
            )
        if code != 0:
            if "No space left on device" in err:
                raise RemoteError(
                    f"upload: the server's disk is full under {host.deploy_to} (rsync exit {code}); "
                    "the incoming release is removed, the live site is untouched",
                    host=host.name,
                    hint="free space on the server (fewer keep_releases, old logs) and deploy again",
                )
            detail = err.strip().splitlines()[-3:] if err.strip() else [f"rsync exit {code}"]
            raise RemoteError(f"upload: rsync exit {code}: {' / '.join(detail)}", host=host.name)
        changed = ()
        if dry_run:
            changed = tuple(
                line.split(" ", 1)[1]
                for line in text.splitlines()
                if re.match(r"^(\*deleting|[<>ch.]f)", line) and " " in line
            )
        return UploadStats(
            bytes_sent=_stat(text, "Total bytes sent"),
            files=_stat(text, r"Number of regular files transferred"),
            seconds=time.monotonic() - start,
            changed=changed,
        )


def seed(host, conn, build, entries, dest):
    """Upload the build's copies of these shared entries (files or directories) into dest, keeping
    their paths: what the first deploy seeds shared/ with. Returns UploadStats."""
    build = _build_of(host, build)
    sources = [f"{str(build.path).rstrip('/')}/./{entry}" for entry in entries]

    def argv(rsh):
        full = rsync_argv(host, build, dest, rsh)
        return [a for a in full[:-2] if not a.startswith("--exclude=")] + ["--relative", *sources, full[-1]]

    return Upload(host, conn, argv).result()


def upload(host, conn, build, dest, dry_run=False, progress=None):
    """Run rsync now and wait for it; returns UploadStats."""
    return Upload.start(host, conn, build, dest, dry_run).result(progress)
