"""The server-side layout: every path Cutover uses under deploy_to is named here, and only here.

    <deploy_to>/
      releases/<release_id>/           one complete, immutable release each
      releases/.prelink-<id>/          an incoming release while the live files are linked into it
      releases/.incoming-<id>/         a release being uploaded or tested; never served
      shared/                          survives every release (shared: entries)
      current -> releases/<id>         Apache's DocumentRoot (or current/<serve>)
      next -> releases/.incoming-<id>  the release a smoke.url checks before the switch (only then)
      maintenance/index.html           present only while maintenance mode is on
      maintenance/retry-after          the Retry-After of the maintenance page
      .cutover/lock/owner.json         the lock and who holds it
      .cutover/history.jsonl           one line per deploy, rollback, maintenance switch
      .cutover/release.map             Apache's release pin: a symlink to maps/<id>.map
      .cutover/maps/<id>.map
      .cutover/apache.conf             Cutover's Apache rules, written by setup
      .cutover/apache-site.conf        the site's <Directory current/...> blocks for releases/*/...
      .cutover/swap.pid, swap-<pid>.json, watchdog.log   the detached swap and its watchdog
      backups/<backup_id>/             a backup: shared/ (hard links to the backup before where
                                       unchanged), databases/, manifest.json, backup.json
      backups/.incoming-<backup_id>/   a backup being taken; never restored from

The client imports this module too (the rsync destination, the release-id grammar), so both
sides name the same paths. Standard library only; this file runs on the server.
"""

import os
import re
import stat
import time

from .protocol import Refused

# Sortable UTC time (to the millisecond), then the build's short git commit when there is one,
# and -dirty when the build had changes that commit does not hold.
RELEASE_ID = re.compile(r"^[0-9]{8}T[0-9]{6}(\.[0-9]{1,6})?Z(-[0-9a-z]{1,40})?(-dirty)?$")
PLACEHOLDER = "19700101T000000Z-placeholder"  # setup's first release, so Apache has a DocumentRoot
BACKUP_ID = re.compile(r"^[0-9]{8}T[0-9]{6}\.[0-9]{3}Z$")  # UTC time to the millisecond
# Characters allowed in server-side paths (deploy_to, shared entries, pidfile). Everything is
# quoted anyway; the narrow set keeps paths readable in Apache config and error messages.
SAFE_PATH = re.compile(r"^[A-Za-z0-9._/@+-]+$")


class Layout:
    """The paths under one deploy_to."""

    def __init__(self, deploy_to):
        self.deploy_to = deploy_to
        join = os.path.join
        self.releases = join(deploy_to, "releases")
        self.shared = join(deploy_to, "shared")
        self.current = join(deploy_to, "current")
        self.next = join(deploy_to, "next")
        self.maintenance = join(deploy_to, "maintenance")
        self.maintenance_page = join(self.maintenance, "index.html")
        self.retry_after = join(self.maintenance, "retry-after")
        self.meta = join(deploy_to, ".cutover")
        self.lock = join(self.meta, "lock")
        self.owner = join(self.lock, "owner.json")
        self.history = join(self.meta, "history.jsonl")
        self.maps = join(self.meta, "maps")
        self.release_map = join(self.meta, "release.map")
        self.apache_conf = join(self.meta, "apache.conf")
        self.apache_site = join(self.meta, "apache-site.conf")
        self.swap_pid = join(self.meta, "swap.pid")
        self.watchdog_log = join(self.meta, "watchdog.log")
        self.backups = join(deploy_to, "backups")

    def release(self, release_id):
        return os.path.join(self.releases, release_id)

    def incoming(self, release_id):
        return os.path.join(self.releases, ".incoming-" + release_id)

    def prelink(self, release_id):
        return os.path.join(self.releases, ".prelink-" + release_id)

    def map_file(self, release_id):
        return os.path.join(self.maps, release_id + ".map")

    def swap_result(self, pid):
        return os.path.join(self.meta, "swap-%d.json" % pid)

    def shared_entry(self, entry):
        return os.path.join(self.shared, entry)

    def backup(self, backup_id):
        return os.path.join(self.backups, backup_id)

    def incoming_backup(self, backup_id):
        return os.path.join(self.backups, ".incoming-" + backup_id)


def release_id(value):
    """value, checked to be a release id; Refused otherwise."""
    if not isinstance(value, str) or not RELEASE_ID.fullmatch(value):
        raise Refused("%r is not a release id" % (value,))
    return value


def relpath_fault(value, local=False):
    """Why value is not a relative path inside a directory ("absolute", "climbs" with '..', "empty",
    or "characters" outside SAFE_PATH unless local), or None: hosts.yaml's shared entries and a
    backup's entries are held to this one grammar."""
    if not isinstance(value, str) or not value:
        return "empty"
    if value.startswith("/"):
        return "absolute"
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        return "climbs"
    if not parts:
        return "empty"
    if not local and not SAFE_PATH.fullmatch(value):
        return "characters"
    return None


def foreign_symlink(path):
    """The target of path when it is a symlink that neither this user nor root owns (one another
    user, say the web server's, could have planted where it may write), else None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode) and st.st_uid not in (0, os.geteuid()):
        try:
            return os.readlink(path)
        except FileNotFoundError:
            return None  # removed since the lstat: no symlink there now
    return None


def commit_of(value):
    """The git commit part of a release id, or None."""
    match = RELEASE_ID.fullmatch(value or "")
    return match.group(2)[1:] if match and match.group(2) else None


def current_release(layout):
    """The release `current` points at, or None."""
    try:
        target = os.readlink(layout.current)
    except OSError:
        return None
    return os.path.basename(target.rstrip("/"))


def releases(layout):
    """The kept releases, oldest first (release ids sort by time)."""
    try:
        names = os.listdir(layout.releases)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if RELEASE_ID.fullmatch(n) and os.path.isdir(layout.release(n)))


def now():
    """UTC now, as history and the lock write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_file(path, text, mode=0o644, dir_fd=None):
    """Replace path atomically: a fresh temp file (never through a symlink, even as root), fsync,
    rename. With dir_fd, path is a name inside that open directory."""
    tmp = "%s.tmp%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fchmod(f.fileno(), mode)
        os.fsync(f.fileno())
    os.rename(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def temp_symlink(link, target, dir_fd=None):
    """A new symlink to target beside link (link.<pid>), ready to be renamed over link. With
    dir_fd, link is a name inside that open directory."""
    temp = "%s.%d" % (link, os.getpid())
    try:
        os.unlink(temp, dir_fd=dir_fd)  # left by a dead process that had our PID
    except FileNotFoundError:
        pass
    os.symlink(target, temp, dir_fd=dir_fd)
    return temp


def point(link, target):
    """Point the symlink link at target atomically: a temp symlink renamed over it."""
    os.replace(temp_symlink(link, target), link)


def unpoint(link):
    """Remove the symlink link, if there is one (never anything else)."""
    if os.path.islink(link):
        os.unlink(link)
