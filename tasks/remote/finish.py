"""The end of a run: clean up old releases and leftovers, record it in history, release the lock;
or, after a failure, remove what the run uploaded, record that, and release the lock."""

import os
import shutil

from . import history, intent, lock, paths, seals
from .protocol import Refused


def to_remove(kept, current, protect, keep):
    """Which kept releases (oldest first) to remove so that `keep` remain; never current or protected."""
    spare = {current, *protect} - {None}
    return [name for name in kept[: max(0, len(kept) - keep)] if name not in spare]


def remove_release_dir(layout, name):
    """Remove releases/<name>, after checking on this server that it is a real directory there."""
    path = os.path.join(layout.releases, name)
    if "/" in name or name in (".", "..") or os.path.realpath(os.path.dirname(path)) != os.path.realpath(layout.releases):
        raise Refused("refusing to remove %s: not directly inside %s" % (path, layout.releases))
    if os.path.islink(path):
        raise Refused("refusing to remove %s: it is a symlink" % path)
    if os.path.isdir(path):
        shutil.rmtree(path)


def _map_entries(layout, release_id):
    try:
        with open(layout.map_file(release_id or "")) as f:
            return dict(line.split()[:2] for line in f if len(line.split()) >= 2)
    except OSError:
        return {}


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


def cleanup(layout, keep, protect):
    """Remove old releases beyond `keep` and what dead runs left behind; call only under the lock."""
    current = paths.current_release(layout)
    # the releases the live map keeps reachable for assets (previous, previous2 ...) stay too
    protect = list(protect) + list(_map_entries(layout, current).values())
    removed = []
    for name in to_remove(paths.releases(layout), current, protect, keep):
        remove_release_dir(layout, name)
        removed.append(name)
    for name in os.listdir(layout.releases):
        if name.startswith((".incoming-", ".prelink-")):
            remove_release_dir(layout, name)  # we hold the lock: any incoming dir is a dead run's
            removed.append(name)
    kept = set(paths.releases(layout))
    seals.prune(layout, kept)
    if os.path.isdir(layout.maps) and not os.path.islink(layout.maps):
        for name in os.listdir(layout.maps):
            if name.endswith(".map") and name[: -len(".map")] not in kept:
                os.unlink(os.path.join(layout.maps, name))
    for name in os.listdir(layout.meta):
        # the result file of a swap whose agent died before reading it
        if name.startswith("swap-") and name.endswith(".json") and name[5:-5].isdigit():
            if not _pid_alive(int(name[5:-5])):
                os.unlink(os.path.join(layout.meta, name))
    for temp in lock.stale_temps(layout):
        shutil.rmtree(temp, ignore_errors=True)
    paths.unpoint(layout.next)  # a dead run's smoke preview
    return removed


def _run_fields(a, held, release_id):
    """The history fields of a deploy or rollback: what the server knows, plus the client's timings."""
    return {
        "release": release_id,
        "old": held.get("old"),
        "duration_s": a.get("duration_s"),
        "steps": a.get("steps"),
        "bytes_sent": a.get("bytes_sent"),
        "pause_ms": a.get("pause_ms"),
        "rename_ms": a.get("rename_ms"),
        "pause_method": a.get("pause_method"),
        "listen": a.get("listen"),
        "switch_spread_ms": a.get("switch_spread_ms"),
        "go_sent_ms": a.get("go_sent_ms"),
        "renamed_at": a.get("renamed_at"),
        "hooks": a.get("hooks"),
        "ref": a.get("ref"),
        "backup": a.get("backup"),
    }


def op_finish(a):
    """Clean up (keep_releases, never the live or the previous release), record, release the lock."""
    import time

    layout = paths.Layout(a["deploy_to"])
    release_id = paths.release_id(a["release_id"])
    held = lock.held_by(layout, a["token"])
    if held is None:
        raise Refused("this run no longer holds the lock of %s; nothing was cleaned or recorded" % layout.deploy_to,
                      hint="another run cleared it with --force-unlock; check `fab history` and `fab releases`")
    t = time.monotonic()
    removed = cleanup(layout, a["keep"], [held.get("old"), release_id]) if a.get("clean", True) else []
    fields = _run_fields(a, held, release_id)
    fields["steps"] = dict(fields["steps"] or {}, cleanup=round(time.monotonic() - t, 4))
    history.record(layout, held["command"], held, "ok", started=held.get("started"), cleaned=removed, **fields)
    intent.clear(layout, a["token"])  # the group's switch is done: every host serves the new release
    lock.release(layout, a["token"])
    return {"removed": removed, "cleanup_s": time.monotonic() - t}


def op_abort(a):
    """A run failed: remove what it uploaded (never the live release), record, release the lock."""
    layout = paths.Layout(a["deploy_to"])
    release_id = a.get("release_id")
    held = lock.held_by(layout, a["token"]) if a.get("token") else None
    removed = []
    live = paths.current_release(layout)
    if held:
        paths.unpoint(layout.next)  # the smoke preview of the release this run tested
    if held and a.get("remove") and paths.RELEASE_ID.fullmatch(release_id or "") and live != release_id:
        for name in (".prelink-" + release_id, ".incoming-" + release_id, release_id):
            if os.path.lexists(os.path.join(layout.releases, name)):
                remove_release_dir(layout, name)
                removed.append(name)
    if held and a.get("record", True):
        try:
            history.record(layout, held["command"], held, "failed", started=held.get("started"), cleaned=removed,
                           error=a.get("error"), **_run_fields(a, held, release_id))
        except OSError:
            pass  # a full disk must not keep the lock: unlocking matters more than the record
    if held:
        intent.clear(layout, a["token"])  # the run switched this host back (or never switched it)
    released = lock.release(layout, a["token"]) if held else False
    return {"removed": removed, "released": released, "current": live}
