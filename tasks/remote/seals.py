"""What each release's files were when its upload ended: size and mtime (ns) of every regular file.

A later deploy links a live file into the new release without reading it only where the file is
as its seal says (nobody wrote it since: a write changes the mtime) and the client knows its
content (tasks/manifest.py); anything else is left to rsync.

    <deploy_to>/.cutover/seals/<release_id>.json   {"relative/path": [size, mtime_ns], ...}

Standard library only.
"""

import json
import os
import stat
import time

from . import paths


def _path(layout, release_id):
    return os.path.join(layout.meta, "seals", release_id + ".json")


CLOCK_REALTIME_COARSE = 5  # Linux: the clock file timestamps are taken from (one tick: 1 to 10 ms)


def _tick_ns():
    try:
        return int(time.clock_getres(CLOCK_REALTIME_COARSE) * 1e9) or 10_000_000
    except (OSError, ValueError):
        return 10_000_000


def seal(layout, release_id, directory, skip=()):
    """Record the regular files of the release being staged in `directory` (the shared and writable
    entries left out: they are never linked), before its smoke tests and hooks run in it.

    A file's timestamps come from a coarse clock: a write within the tick of the upload's last
    write would leave the mtime as recorded. So the seal returns only once two ticks have passed
    since the newest mtime: any later write (smoke tests, hooks, the live site) changes it."""
    found = {}
    skip = set(skip)
    newest = [0]

    def walk(path, prefix):
        with os.scandir(path) as it:
            for e in it:
                rel = prefix + e.name
                if rel in skip:
                    continue
                if e.is_dir(follow_symlinks=False):
                    walk(e.path, rel + "/")
                elif e.is_file(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        found[rel] = [st.st_size, st.st_mtime_ns]
                        newest[0] = max(newest[0], st.st_mtime_ns)

    walk(directory, "")
    wait = newest[0] + 2 * _tick_ns() - time.time_ns()
    if wait > 0:
        time.sleep(wait / 1e9)
    os.makedirs(os.path.dirname(_path(layout, release_id)), exist_ok=True)
    paths.write_file(_path(layout, release_id), json.dumps(found, separators=(",", ":")))
    return len(found)


def read(layout, release_id):
    """The release's seal, or None (a release promoted by an older Cutover, or a lost file)."""
    try:
        with open(_path(layout, release_id)) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def prune(layout, kept):
    """Remove the seals of releases no longer kept (.cutover/seals opened without following a symlink)."""
    try:
        folder = os.open(os.path.join(layout.meta, "seals"), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return  # none yet, or not a plain directory: nothing of ours to remove
    try:
        for name in os.listdir(folder):
            if name.endswith(".json") and name[: -len(".json")] not in kept:
                os.unlink(name, dir_fd=folder)
    finally:
        os.close(folder)
