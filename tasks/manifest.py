"""What this machine knows about files it has seen, so that a deploy reads neither side's
unchanged files: the build's digests, computed again only for a file whose stat changed, and per
server the files of the releases deployed there from here.

With the live release's files known, the upload compares by size (rsync --size-only) instead of
by checksum (every file read on both sides): a file the build changed with the same size is left
out of the prelink, so rsync sends it; the server links only files as they were when their
release was uploaded (tasks/remote/seals.py). Where anything is unknown (another machine deployed
the live release, a cache file is lost) the deploy compares by checksum, as without this.

Kept in $XDG_CACHE_HOME/cutover (default ~/.cache/cutover).
"""

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

KEPT = 3  # releases remembered per server
RACY_NS = 2_000_000_000  # a build file changed this recently may change again within its mtime tick


def cache_dir():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cutover"


def _key(*parts):
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _load(path):
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _store(path, data):
    """Write atomically; a cache that cannot be written is no error (the next deploy reads more)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError:
        pass


def _hash(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def digests(build_path, stats):
    """{relative path: sha256} of the build's regular files. stats: {relative path: (size,
    mtime_ns, ctime_ns, inode)} as the build check read them; a file whose four are as the last
    call saw them is not read again (a write changes its ctime, which nobody can set)."""
    path = cache_dir() / f"build-{_key(str(build_path))}.json"
    seen = _load(path) or {}
    now = time.time_ns()
    out, keep = {}, {}
    for rel, st in stats.items():
        entry = seen.get(rel)
        digest = entry[4] if entry and entry[:4] == list(st) and entry[4] else _hash(os.path.join(build_path, rel))
        out[rel] = digest
        keep[rel] = [*st, digest if now - st[1] > RACY_NS and now - st[2] > RACY_NS else None]
    _store(path, keep)
    return out


def _server_file(host):
    return cache_dir() / f"server-{_key(host.host, host.port, host.deploy_to)}.json"


def plan(host, stats, digest_of):
    """The prelink's `sized` plan for this host, or None when the live release is not known here:
    {"expect": live release, "unlink": the build's files that differ from it with the same size}."""
    known = _load(_server_file(host)) or {}
    live = known.get("live")
    files = (known.get("releases") or {}).get(live) if live else None
    if not isinstance(files, dict):
        return None
    unlink = [
        rel for rel, st in stats.items() if rel in files and files[rel][0] == st[0] and files[rel][1] != digest_of[rel]
    ]
    return {"expect": live, "unlink": unlink}


def remember(host, release_id, stats, digest_of):
    """After a deploy: this host serves release_id, whose files are the build's."""
    path = _server_file(host)
    known = _load(path) or {}
    releases = known.get("releases") if isinstance(known.get("releases"), dict) else {}
    releases.pop(release_id, None)
    releases[release_id] = {rel: [st[0], digest_of[rel]] for rel, st in stats.items()}
    while len(releases) > KEPT:
        releases.pop(next(iter(releases)))
    _store(path, {"live": release_id, "releases": releases})


def now_serves(host, release_id):
    """After a rollback or repair: this host serves release_id (known here, or not: then None)."""
    path = _server_file(host)
    known = _load(path)
    if known is not None:
        known["live"] = release_id if release_id in (known.get("releases") or {}) else None
        _store(path, known)
