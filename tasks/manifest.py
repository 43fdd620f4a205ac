"""What this machine knows about files it has seen, so that a deploy reads neither side's
unchanged files: the build's digests, computed again only for a file whose stat changed, and per
server the files of the releases deployed there from here.

With the live release's files known, the upload compares by size (rsync --size-only) instead of
by checksum (every file read on both sides): a file the build changed with the same size is left
out of the prelink, so rsync sends it; the server links only files as they were when their
release was uploaded (tasks/remote/seals.py). Where anything is unknown (another machine deployed
the live release, a cache file is lost) the deploy compares by checksum, as without this.

Kept in $XDG_CACHE_HOME/cutover (default ~/.cache/cutover), in Python's marshal format: a
build of 10,000 files reads and writes its tables in a few ms, where JSON took 20 ms. A file that
does not read back as this module wrote it (another Python's, damaged) counts as not known.
"""

import errno
import hashlib
import json
import marshal
import os
import stat
import tempfile
import time
from pathlib import Path

from .remote.paths import RELEASE_ID

KEPT = 3  # releases remembered per server
RACY_NS = 2_000_000_000  # a build file changed this recently may change again within its mtime tick
SUFFIX = ".marshal"


def cache_dir():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cutover"


def _key(*parts):
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _load(path, kind=dict):
    """What _store wrote at path, or None (missing, unreadable, or not of that kind)."""
    try:
        found = marshal.loads(path.read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    return found if isinstance(found, kind) else None


def _store(path, data):
    """Write data (or bytes marshal made of it) atomically; a cache that cannot be written is no
    error (the next deploy reads more)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
        with os.fdopen(fd, "wb") as f:
            f.write(data if isinstance(data, bytes) else marshal.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass


CHUNK = 1 << 20


def _hash(path, size):
    """The file's sha256, its first 128 bits (32 hex digits: what tells two versions apart).
    size: as the build check saw it. A file of up to CHUNK is read with one read of size + 1
    bytes: a third less time per small file than Python's buffered file object, whose read
    allocates its whole chunk for each file. A short read ends the file only where it brought
    the file to that size (a network or FUSE file system may answer short before the end);
    otherwise it is read on until a read brings nothing. OSError where the name is no longer a
    regular file (replaced since the check): a symlink is not followed (to /dev/zero it would be
    read for ever), a FIFO not waited for (O_NONBLOCK)."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file since the build check", path)
        want, total = min(size, CHUNK - 1) + 1, 0
        while chunk := os.read(fd, want):
            h.update(chunk)
            total += len(chunk)
            if len(chunk) < want and total == size:
                break
            want = CHUNK
    finally:
        os.close(fd)
    return h.hexdigest()[:32]


def build_files(build_path, stats):
    """{relative path: (size, sha256)} of the build's regular files. stats: {relative path: (size,
    mtime_ns, ctime_ns, inode)} as the build check read them; a file whose four are as the last
    call saw them is not read again (a write changes its ctime, which nobody can set). None where
    a file cannot be read as the regular file the check saw (gone, or replaced by a link, a FIFO
    or a device since): the digests are not known, nothing is kept."""
    path = cache_dir() / f"build-{_key(str(build_path))}{SUFFIX}"
    seen_stats, seen, racy = _tables(_load(path, tuple)) or ({}, {}, [])
    if not racy and seen_stats == stats:
        return seen  # nothing changed: no file read, nothing written
    racy = set(racy)
    now = time.time_ns()
    out, fresh, read = {}, [], False
    for rel, st in stats.items():
        known = seen.get(rel) if rel not in racy and seen_stats.get(rel) == st else None
        if known is None:
            try:
                known, read = (st[0], _hash(os.path.join(build_path, rel), st[0])), True
            except OSError:  # gone (or unreadable) since the check: the build is changing under us
                return None
        out[rel] = known
        if now - st[1] <= RACY_NS or now - st[2] <= RACY_NS:
            fresh.append(rel)  # it may be written again within its mtime's tick, unseen by its stat: read it again
    if read or fresh or stats != seen_stats:  # a build that did not change is not written again
        _store(path, (stats, out, fresh))
    return out


def _tables(found):
    """The three tables build_files() writes, or None where found is not of their shape (another
    version's, or damaged in a way marshal does not notice): a digest of any other shape would
    be handed on as the build's."""
    if not (isinstance(found, tuple) and len(found) == 3):
        return None
    stats, digests, racy = found
    if not (isinstance(stats, dict) and isinstance(digests, dict) and isinstance(racy, list)):
        return None
    if digests.keys() != stats.keys() or not {type(r) for r in racy} <= {str} or not _digests(digests):
        return None
    return found


def _digests(table):
    """Whether table is {relative path: (size, digest)}, as build_files() returns it."""
    if not isinstance(table, dict) or not {type(rel) for rel in table} <= {str}:
        return False
    pairs = table.values()
    if not {type(pair) for pair in pairs} <= {tuple} or not set(map(len, pairs)) <= {2}:
        return False
    return {(type(size), type(digest)) for size, digest in pairs} <= {(int, str)}


def _server_dir(host):
    """One directory per server: `live` (the release it serves, as far as this machine knows) and
    one file per release deployed from here, the last KEPT."""
    return cache_dir() / f"server-{_key(host.host, host.port, host.deploy_to)}"


def _live(host):
    try:
        live = (_server_dir(host) / "live").read_text().strip()
    except OSError:
        return None
    return live if RELEASE_ID.fullmatch(live) else None


def knows(host):
    """Whether this machine knows the files of the release it last saw live on host (plans() then
    needs the build's digests; otherwise the upload compares checksums and need not wait for them)."""
    live = _live(host)
    return live is not None and (_server_dir(host) / f"{live}{SUFFIX}").is_file()


def plans(hosts, files):
    """The prelink's `sized` plan for each host (a list, in order), None where the live release is
    not known here: {"expect": live release, "unlink": the build's files that differ from it with
    the same size}. files: build_files(). Hosts that serve the same release share one plan."""
    out, made = [], {}
    for host in hosts:
        live = _live(host)
        path = _server_dir(host) / f"{live}{SUFFIX}" if live else None
        if path not in made:
            made[path] = _plan(live, path, files) if live else None
        out.append(made[path])
    return out


def _plan(live, path, files):
    known = _load(path)
    if known is None or not _digests(known):  # not what remember() writes (damaged): not known
        return None
    if known == files:
        return {"expect": live, "unlink": []}  # no change (the common redeploy)
    unlink = [rel for rel, (size, digest) in files.items() if (k := known.get(rel)) and k[0] == size and k[1] != digest]
    return {"expect": live, "unlink": unlink}


def remember(hosts, release_id, files):
    """After a deploy: these hosts serve release_id, whose files are `files` (build_files())."""
    data = marshal.dumps(files)
    for host in hosts:
        folder = _server_dir(host)
        _store(folder / f"{release_id}{SUFFIX}", data)
        _set_live(folder, release_id)
        try:
            known = sorted(folder.glob(f"*{SUFFIX}"))  # release ids sort by time
            for old in known[:-KEPT] + list(folder.glob("*.json")):  # and the JSON of earlier versions
                old.unlink()
        except OSError:
            pass  # kept longer: no harm


def now_serves(host, release_id):
    """After a rollback or repair: this host serves release_id (known here, or not)."""
    folder = _server_dir(host)
    if folder.is_dir():  # a release id from the server names a file here only once checked
        known = RELEASE_ID.fullmatch(release_id or "") and (folder / f"{release_id}{SUFFIX}").exists()
        _set_live(folder, release_id if known else "")


def _set_live(folder, release_id):
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="live.")
        with os.fdopen(fd, "w") as f:
            f.write(release_id + "\n")
        os.replace(tmp, folder / "live")
    except OSError:
        pass
