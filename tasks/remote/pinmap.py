"""Apache's release map (.cutover/release.map -> maps/<id>.map): which release a pinned request
reads, written and read through directory descriptors that never follow a symlink (the deploy
user, or the web server's, may have planted one), for the swap and for setup."""

import os
import stat

from . import paths
from .protocol import Refused

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class Dirs:
    """deploy_to, .cutover and .cutover/maps opened once, never through a symlink.

    Every file the switch writes is made relative to these descriptors: even the root-owned
    sudo helper, working in a directory its caller owns, then cannot be steered elsewhere by a
    symlink planted in place of .cutover or maps.
    """

    def __init__(self, layout):
        self.top = os.open(layout.deploy_to, DIR_FLAGS)
        self.meta = self._subdir(self.top, ".cutover")
        self.maps = self._subdir(self.meta, "maps")

    @staticmethod
    def _subdir(parent, name):
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
        except FileExistsError:
            pass
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise Refused("%s is not a plain directory (%s); refusing to write the release pin through it" % (name, exc.strerror))

    def close(self):
        for fd in (self.maps, self.meta, self.top):
            os.close(fd)


MAP_READ = 65536  # bytes of a map read at most: a few lines, whatever a deploy user put there


def read_map(dirs, release_id):
    """{key: release} of maps/<release_id>.map, or {} when there is none. The sudo helper reads it
    as root where its caller writes: never through a symlink, never blocking (O_NONBLOCK: a FIFO
    would hold open() for ever), only a regular file (Refused otherwise)."""
    try:
        fd = os.open(release_id + ".map", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirs.maps)
    except FileNotFoundError:
        return {}
    except OSError:  # a symlink (ELOOP), a socket (ENXIO) ...
        fd = None
    try:
        if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused(".cutover/maps/%s.map is not a regular file; refusing to read it" % release_id)
        text = os.read(fd, MAP_READ).decode("utf-8", "replace")
    finally:
        if fd is not None:
            os.close(fd)
    return dict(line.split()[:2] for line in text.splitlines() if len(line.split()) >= 2)


def map_text(dirs, release_id, old, depth):
    """Apache's map for release_id: `current`, and the releases live before it as `previous`,
    `previous2` ... (depth of them), whose static assets pages still in flight may ask for."""
    earlier = [old] if old else []
    if old:
        before = read_map(dirs, old)
        earlier += [before[k] for k in ["previous"] + ["previous%d" % i for i in range(2, depth + 1)] if k in before]
    chain = []
    for rid in earlier:
        if rid != release_id and rid not in chain and paths.RELEASE_ID.fullmatch(rid):
            chain.append(rid)
    lines = ["current %s" % release_id]
    for i, rid in enumerate(chain[:depth]):
        lines.append("%s %s" % ("previous" if i == 0 else "previous%d" % (i + 1), rid))
    return "\n".join(lines) + "\n"


def pin_files(dirs, release_id, old, depth, restore=False):
    """The release's map file, and temp symlinks for release.map and current: what the switch renames.

    The map names the release live before this switch (`previous`), so the rename of release.map
    moves both at once: no extra rename in the pause. restore: a switch back to the release that
    was live before a failed switch; its map, naming what was before it, is used as it is."""
    if not (restore and read_map(dirs, release_id).get("current") == release_id):
        paths.write_file(release_id + ".map", map_text(dirs, release_id, old, depth), dir_fd=dirs.maps)
    temp_map = paths.temp_symlink("release.map", "maps/%s.map" % release_id, dir_fd=dirs.meta)
    temp_current = paths.temp_symlink("current", "releases/" + release_id, dir_fd=dirs.top)
    return [(dirs.meta, temp_map, "release.map"), (dirs.top, temp_current, "current")]


def point_map(layout, release_id):
    """Point .cutover/release.map at the map of release_id (outside any pause: setup)."""
    dirs = Dirs(layout)
    try:
        paths.write_file(release_id + ".map", "current %s\n" % release_id, dir_fd=dirs.maps)
        temp = paths.temp_symlink("release.map", "maps/%s.map" % release_id, dir_fd=dirs.meta)
        os.rename(temp, "release.map", src_dir_fd=dirs.meta, dst_dir_fd=dirs.meta)
    finally:
        dirs.close()
