"""The end of a run: clean up old releases and leftovers, record it in history, release the lock;
or, after a failure, remove what the run uploaded, record that, and release the lock."""

import os
import stat

from . import history, intent, lock, nofollow, paths, protocol, seals
from .protocol import Refused

LEFT_NOTE = "its run went away after the switch; the lock stays until --force-unlock"
LEFT_WAIT_S = 3600  # how long a switch's agent given up by a connected client waits for the run to end


def to_remove(kept, current, protect, keep):
    """Which kept releases (oldest first) to remove so that `keep` remain; never current or protected."""
    spare = {current, *protect} - {None}
    return [name for name in kept[: max(0, len(kept) - keep)] if name not in spare]


def remove_release_dir(layout, name):
    """Remove releases/<name>, a directory directly inside releases/, through descriptors: neither
    releases/ nor anything inside the release is followed if it is a symlink."""
    path = os.path.join(layout.releases, name)
    if "/" in name or name in (".", "..", ""):
        raise Refused("refusing to remove %s: not directly inside %s" % (path, layout.releases))
    top = nofollow.open_top(layout.deploy_to, "deploy_to")
    try:
        try:
            releases = nofollow.open_dir(top, "releases")
        except nofollow.SymlinkInPath:
            raise Refused("refusing to remove %s: %s is not a plain directory" % (path, layout.releases))
        try:
            st = nofollow.lstat_at(releases, name)
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise Refused("refusing to remove %s: it is a symlink" % path)
            if st is not None and stat.S_ISDIR(st.st_mode):
                nofollow.remove(releases, name)
        finally:
            os.close(releases)
    finally:
        os.close(top)


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
    _remove_leftovers(layout, kept)
    paths.unpoint(layout.next)  # a dead run's smoke preview
    return removed


def _remove_leftovers(layout, kept):
    """The maps of releases no longer kept, dead swaps' result files and stale temp locks, removed
    inside .cutover/ opened without following a symlink."""
    top = nofollow.open_top(layout.deploy_to, "deploy_to")
    try:
        meta = nofollow.open_dir(top, ".cutover")
    except (nofollow.SymlinkInPath, FileNotFoundError):
        os.close(top)
        return
    os.close(top)
    try:
        try:
            maps = nofollow.open_dir(meta, "maps")
        except (nofollow.SymlinkInPath, FileNotFoundError):
            maps = None
        if maps is not None:
            try:
                for name in os.listdir(maps):
                    if name.endswith(".map") and name[: -len(".map")] not in kept:
                        os.unlink(name, dir_fd=maps)
            finally:
                os.close(maps)
        for name in os.listdir(meta):
            # the result file of a swap whose agent died before reading it
            if name.startswith("swap-") and name.endswith(".json") and name[5:-5].isdigit():
                if not _pid_alive(int(name[5:-5])):
                    os.unlink(name, dir_fd=meta)
        for temp in lock.stale_temps(layout):
            try:
                nofollow.remove(meta, os.path.basename(temp))
            except OSError:
                pass  # a temp lock is only litter; the next cleanup tries again
    finally:
        os.close(meta)


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


def record_left(layout, result, token, only_if_live=False):
    """The history line of a run whose client went away after this server's switch (result: the
    swap's answer); the run never finished, so its lock stays. A client that is still connected
    gave up only this agent (Ctrl-C while the switch ran): it goes on through another one, and
    its own finish or abort records the run; so this waits for the run's connection to end, and
    records nothing once the run has released its lock (token). only_if_live: nothing either unless
    the switch's release is live then (a switch through the helper, whose answer this agent never saw)."""
    import time

    held = lock.held_by(layout, token) if token else lock.owner(layout)
    deadline = time.monotonic() + LEFT_WAIT_S
    while held is not None and lock.connected(held) and time.monotonic() < deadline:
        time.sleep(0.2)
        held = lock.held_by(layout, token) if token else held
    if held is None:
        return  # the run's finish or abort released its lock, and recorded the run
    if only_if_live and paths.current_release(layout) != result.get("new"):
        return  # the helper did not switch, or switched back: nothing went live
    back = bool(result.get("swapped_back"))
    error = "health check failed after the switch: %s; switched back" % result.get("health") if back else None
    history.record(layout, held.get("command") or "deploy", held, "failed" if back else "ok",
                   started=held.get("started"), release=result.get("new"), old=result.get("old"),
                   pause_ms=result.get("pause_ms"), rename_ms=result.get("rename_ms"),
                   pause_method=result.get("method"), renamed_at=result.get("renamed_at"), error=error,
                   note=LEFT_NOTE)


def _settled(layout):
    from .switching import key  # the agent's; finish and abort record the run themselves

    protocol.settled(key(layout))


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
    _settled(layout)
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
    # the run was interrupted, its migration was not: the release it runs in stays, and the lock,
    # so that no other run migrates beside it
    migrating = lock.running_command(layout) if held else None
    migrating = migrating if migrating and migrating.get("what") == "migration" else None
    if held and a.get("remove") and paths.RELEASE_ID.fullmatch(release_id or "") and live != release_id and not migrating:
        for name in (".prelink-" + release_id, ".incoming-" + release_id, release_id):
            if os.path.lexists(os.path.join(layout.releases, name)):
                remove_release_dir(layout, name)
                removed.append(name)
    if held:
        _settled(layout)
    if held and a.get("record", True):
        try:
            history.record(layout, held["command"], held, "failed", started=held.get("started"), cleaned=removed,
                           error=a.get("error"), **_run_fields(a, held, release_id))
        except OSError:
            pass  # a full disk must not keep the lock: unlocking matters more than the record
    if held:
        intent.clear(layout, a["token"])  # the run switched this host back (or never switched it)
    if migrating:
        return {"removed": removed, "released": False, "current": live, "still": lock.describe_working(migrating)}
    released = lock.release(layout, a["token"]) if held else False
    return {"removed": removed, "released": released, "current": live}
