"""The upload: rsync over the connection's own SSH settings into the incoming release dir."""

import re
import shlex
import subprocess
import time
from dataclasses import dataclass

from . import ssh
from .errors import RemoteError

PROGRESS_EVERY = 2.0  # seconds between progress lines of a long upload


@dataclass(frozen=True)
class UploadStats:
    bytes_sent: int
    files: int
    seconds: float
    changed: tuple = ()


def rsync_argv(host, build_path, dest, dry_run=False):
    """rsync's argv: recursive, links, modes, delete; into a dir prelinked with the live files.

    Never --inplace: rsync replaces a changed file with a new one, so the inodes the incoming
    dir shares with the live release are never written. No owner or group (the deploy user
    owns its releases) and, with checksums, no times: attribute changes are the other way to
    touch a shared inode, and a build that rewrites every file with a new mtime still shares
    every unchanged one. The shared entries are excluded: they are symlinks into shared/,
    made on the server.
    Unchanged files are found by checksum by default: rsync's quick check (size and mtime to
    the second) takes a rebuilt file of the same size for unchanged and ships the old bytes.
    build.compare: mtime trades that for speed, comparing mtimes to the nanosecond (and keeping
    the build's mtimes).
    """
    argv = ["rsync", "--archive", "--no-owner", "--no-group", "--delete", "--stats", "--info=progress2"]
    if host.build.compare == "checksum":
        argv += ["--checksum", "--no-times"]
    else:
        argv.append("--modify-window=-1")
    argv += ["-e", shlex.join(ssh.ssh_command(host))]
    for entry in host.shared:
        argv.append(f"--exclude=/{entry}")
    if dry_run:
        argv += ["--dry-run", "--itemize-changes"]
    argv += [f"{str(build_path).rstrip('/')}/", f"{host.host}:{dest}/"]
    return argv


def _stat(text, label):
    m = re.search(rf"^{label}: ([\d,]+)", text, re.M)
    return int(m.group(1).replace(",", "")) if m else 0


def upload(host, build_path, dest, dry_run=False, progress=None):
    """Run rsync; returns UploadStats. progress(text) is called every few seconds on long uploads."""
    argv = rsync_argv(host, build_path, dest, dry_run)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out, last = [], start
    buf = b""
    while chunk := proc.stdout.read1(65536):
        out.append(chunk)
        buf = (buf + chunk)[-4096:]
        now = time.monotonic()
        if progress and now - last >= PROGRESS_EVERY:
            m = re.findall(rb"([\d,]+)\s+(\d+)%", buf)
            if m:
                progress(f"{int(m[-1][0].replace(b',', b'')) / 1e6:.1f} MB, {int(m[-1][1])}%")
            last = now
    err = proc.stderr.read().decode("utf-8", "replace")
    code = proc.wait()
    text = b"".join(out).decode("utf-8", "replace")
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
