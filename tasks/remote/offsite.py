"""A complete backup copied off the server (backups.to), over SSH with rsync run from this server.

Each host of a group keeps its copies apart: <path>/<host's name>/<backup id>/ (the backup id is
the group's, the data each host's own). A copy hard-links the files of that host's copy before
it whose content is the same (rsync --checksum: never size and time alone, which a rewrite of
the same size within the same second keeps), and is compared with the backup after the copy,
content, file list and symlinks (a dry run with --checksum must find nothing to do): the backup
here was checked against its manifest when it was written, and the manifest is copied with it.
The key and known_hosts are files on this server. The copy keeps contents, modes and times;
owners and ACLs only where the user there may set them (a copy brought back is restored with
the writable grants given again).
"""

import json
import os
import re
import shlex
import subprocess
import tempfile
import time

from . import backup, manifests, paths
from .protocol import Refused

PUSH_TIMEOUT = 3600  # seconds for the copy off the server, and again for its comparison
CONNECT_TIMEOUT = 15  # seconds for the backup host to answer ssh's connection (the banner included)
ALIVE_INTERVAL, ALIVE_COUNT = 15, 4  # a backup host silent for a minute mid-copy ends it (ssh's keepalives)
IO_TIMEOUT = 600  # seconds rsync waits for data either way before it gives up
SAFE = re.compile(r"^[A-Za-z0-9._@+/:-]+$")  # what goes into the copy's ssh command line, word by word
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # a host's name in hosts.yaml
DIFFERENCES_SHOWN = 5


def ssh_command(to):
    """The ssh command rsync runs, from backups.to's words (each checked)."""
    for key in ("host", "user", "path", "key", "known_hosts"):
        if not SAFE.fullmatch(str(to.get(key, ""))):
            raise Refused("backups.to.%s is missing or holds characters a path or host name cannot" % key)
    port = int(to.get("port", 22))
    return ["ssh", "-F", "none", "-p", str(port), "-i", to["key"], "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + to["known_hosts"],
            "-o", "ConnectTimeout=%d" % CONNECT_TIMEOUT, "-o", "ServerAliveInterval=%d" % ALIVE_INTERVAL,
            "-o", "ServerAliveCountMax=%d" % ALIVE_COUNT]  # fmt: skip


def folder(to, name):
    """user@host:<path>/<name>/, where this host's copies go."""
    if not isinstance(name, str) or not HOST_NAME.fullmatch(name):
        raise Refused("%r is not a host name of hosts.yaml" % (name,))
    host = "[%s]" % to["host"] if ":" in to["host"] else to["host"]
    return "%s@%s:%s/%s/" % (to["user"], host, to["path"].rstrip("/"), name)


STAYS = "the backup is complete on this server"


def _run(argv, what, to):
    try:
        run = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             timeout=PUSH_TIMEOUT)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise Refused("%s took longer than %d s" % (what, PUSH_TIMEOUT), hint=STAYS) from None
    if run.returncode != 0:
        out = (run.stdout + run.stderr).decode("utf-8", "replace").strip()[-500:]
        cause, fix = _cause(out, to, run.returncode)
        raise Refused("%s failed: %s%s" % (what, cause + ": " if cause else "", out), hint="%s; %s" % (fix, STAYS))
    return run.stdout.decode("utf-8", "replace")


DISK_OR_RIGHTS = 11  # rsync's exit status for an error in file I/O (its message can be lost with ssh)


def _cause(out, to, status=None):
    """(what ssh or rsync's words mean, if known, or "", what to do) for a failed copy. An rsync
    receiver that dies of a write error does not always get its message through ssh before the
    connection closes: its exit status then still says what kind of error it was."""
    if not to:  # a comparison on this machine
        return "", "check backups.to"
    where = "%s port %s" % (to["host"], to.get("port", 22))
    if "Host key verification failed" in out:
        return ("the backup host %s: its host key is not one %s holds for it" % (where, to["known_hosts"]),
                "if the backup host is new or was really reinstalled, put its key into %s on this server "
                "(ssh-keyscan -p %s %s, checked); otherwise someone may be in between"
                % (to["known_hosts"], to.get("port", 22), to["host"]))  # fmt: skip
    if any(s in out for s in ("Connection refused", "No route to host", "Could not resolve", "not known",
                              "Connection timed out", "timed out during banner exchange")):  # fmt: skip
        return "nothing answers at %s" % where, "check backups.to.host and backups.to.port, and that sshd runs there"
    if "Permission denied (publickey" in out:
        return ("the backup host refuses %s's key %s" % (to["user"], to["key"]),
                "add the key's public half to ~%s/.ssh/authorized_keys on the backup host" % to["user"])  # fmt: skip
    if "No space left on device" in out:
        return "", ("the backup host's disk is full at %s: free space there, or give backups.to.path on a disk "
                    "with room" % to["path"])  # fmt: skip
    if status == DISK_OR_RIGHTS:
        return ("rsync could not write on the backup host (exit status 11: an error in file I/O)",
                "the backup host's disk may be full at %s, or %s may not write there: free space there (df -h %s), "
                "or give backups.to.path on a disk with room" % (to["path"], to["user"], to["path"]))  # fmt: skip
    return "", "check backups.to and that this server's key is authorized there"


def differences(src, dest, rsh=None, to=None):
    """What rsync would change to make dest (a directory, here or user@host:path) hold what src
    holds: files by content, symlinks by target, anything extra. [] when they are the same."""
    argv = [
        "rsync",
        "-r",
        "-l",
        "--checksum",
        "--dry-run",
        "--itemize-changes",
        "--delete",
        "--timeout=%d" % IO_TIMEOUT,
    ]
    if rsh:
        argv += ["-e", shlex.join(rsh)]
    out = _run(argv + [src.rstrip("/") + "/", dest], "comparing the copy at %s" % dest, to)
    return [line for line in out.splitlines() if line.strip()]


def push(layout, bid, to, name):
    """Copy backups/<bid> to <path>/<name>/<bid>/ on backups.to, compare it there with the
    backup, and note where it is in backup.json. Returns the destination."""
    rsh = ssh_command(to)
    into = folder(to, name)
    dest = into + bid + "/"
    problem = manifests.verify(layout.backup(bid), rehash=False)
    if problem:
        raise Refused("backup %s does not match its manifest: %s; it was not copied" % (bid, problem))
    earlier = [b for b in backup.complete(layout) if b < bid and (backup.info(layout, b) or {}).get("copied_to") ==
               into + b + "/"]  # fmt: skip
    with tempfile.TemporaryDirectory() as empty:  # <path>/<name>/ made if missing (rsync makes one level)
        _run(["rsync", "-d", "--timeout=%d" % IO_TIMEOUT, "-e", shlex.join(rsh), empty + "/", into], "making %s" % into,
             to)  # fmt: skip
    argv = ["rsync", "-a", "--checksum", "--delete", "--timeout=%d" % IO_TIMEOUT, "-e", shlex.join(rsh)]
    if earlier:
        argv.append("--link-dest=../" + earlier[-1])
    _run(argv + [layout.backup(bid) + "/", dest], "copying backup %s to %s" % (bid, dest), to)
    found = differences(layout.backup(bid), dest, rsh, to)
    if found:
        shown = "; ".join(found[:DIFFERENCES_SHOWN]) + (" ..." if len(found) > DIFFERENCES_SHOWN else "")
        raise Refused(
            "the copy of backup %s at %s differs from the backup after copying: %s" % (bid, dest, shown),
            hint="something else writes there: give each site and host a path of its own",
        )
    record = backup.info(layout, bid)
    record["copied_to"] = dest
    paths.write_file(os.path.join(layout.backup(bid), manifests.INFO), json.dumps(record, sort_keys=True))
    return dest


def op_backup_push(a):
    """Copy a complete backup off the server (backups.to), after the site is back."""
    layout = paths.Layout(a["deploy_to"])
    backup.held(layout, a["token"])
    bid = backup.backup_id(a["backup_id"])
    if backup.info(layout, bid) is None:
        raise Refused("backup %s is not complete" % bid)
    t = time.monotonic()
    return {"copied_to": push(layout, bid, a["to"], a.get("name")), "seconds": time.monotonic() - t}
