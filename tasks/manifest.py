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

from .remote.paths import RELEASE_ID

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
    """The file's sha256, its first 128 bits (32 hex digits: what tells two versions apart)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:32]


def digests(build_path, stats):
    """{relative path: sha256} of the build's regular files. stats: {relative path: (size,
    mtime_ns, ctime_ns, inode)} as the build check read them; a file whose four are as the last
    call saw them is not read again (a write changes its ctime, which nobody can set)."""
    path = cache_dir() / f"build-{_key(str(build_path))}.json"
    seen = _load(path) or {}
    now = time.time_ns()
    out, keep, changed = {}, {}, len(seen) != len(stats)
    for rel, st in stats.items():
        entry = seen.get(rel)
        if entry and entry[:4] == list(st) and entry[4]:
            out[rel] = entry[4]
            keep[rel] = entry
            continue
        out[rel] = _hash(os.path.join(build_path, rel))
        keep[rel] = [*st, out[rel] if now - st[1] > RACY_NS and now - st[2] > RACY_NS else None]
        changed = True
    if changed:  # a build that did not change is not written again
        _store(path, keep)
    return out


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
    """Whether this machine knows the files of the release it last saw live on host (plan() then
    needs the build's digests; otherwise the upload compares checksums and need not wait for them)."""
    live = _live(host)
    return live is not None and (_server_dir(host) / f"{live}.json").is_file()


def plan(host, stats, digest_of):
    """The prelink's `sized` plan for this host, or None when the live release is not known here:
    {"expect": live release, "unlink": the build's files that differ from it with the same size}."""
    live = _live(host)
    files = _load(_server_dir(host) / f"{live}.json") if live else None
    if files is None:
        return None
    unlink = [
        rel for rel, st in stats.items() if rel in files and files[rel][0] == st[0] and files[rel][1] != digest_of[rel]
    ]
    return {"expect": live, "unlink": unlink}


def remember(host, release_id, stats, digest_of):
    """After a deploy: this host serves release_id, whose files are the build's."""
    folder = _server_dir(host)
    _store(folder / f"{release_id}.json", {rel: [st[0], digest_of[rel]] for rel, st in stats.items()})
    _set_live(folder, release_id)
    try:
        known = sorted(p for p in folder.glob("*.json"))  # release ids sort by time
        for old in known[:-KEPT]:
            old.unlink()
    except OSError:
        pass  # kept longer: no harm


def now_serves(host, release_id):
    """After a rollback or repair: this host serves release_id (known here, or not)."""
    folder = _server_dir(host)
    if folder.is_dir():  # a release id from the server names a file here only once checked
        known = RELEASE_ID.fullmatch(release_id or "") and (folder / f"{release_id}.json").exists()
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
