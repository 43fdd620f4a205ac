"""Paths opened, trees walked and removed through directory descriptors, never through a symlink.

Data the web server's user can write (shared/, writable entries) may hold a symlink put there to
steer Cutover elsewhere, or a directory swapped for one while Cutover works. So whatever Cutover
grants or removes is reached from a directory it opened itself, one component at a time with
O_NOFOLLOW, by *at calls relative to that descriptor: a symlink is never followed, and a directory
swapped for a symlink after it was listed is found to be one when it is opened, never walked into.

Standard library only, Python 3.7 (no shutil.rmtree(dir_fd=...)); Linux (O_PATH, /proc/self/fd).
"""

import errno
import os
import stat

from .protocol import Refused

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A file is opened as a place, never for reading: no read permission needed, no FIFO to block on.
NODE_FLAGS = getattr(os, "O_PATH", os.O_RDONLY | os.O_NONBLOCK) | os.O_NOFOLLOW | os.O_CLOEXEC


class SymlinkInPath(Exception):
    """A component of a path to be opened is a symlink (or not a directory where one was needed)."""

    def __init__(self, done, part, target):
        super().__init__(part)
        self.done, self.part, self.target = done, part, target  # the components opened before it


def lstat_at(parent, name):
    """lstat of name in the open directory parent, or None when there is nothing by that name."""
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_top(path, what):
    """A descriptor of a directory Cutover was given (deploy_to): its own last component must not be a
    symlink; the ones above it are the operator's."""
    try:
        return os.open(path, DIR_FLAGS)
    except OSError as exc:
        raise Refused("%s %s is not a plain directory (%s)" % (what, path, exc.strerror))


def open_dir(parent, name):
    """The directory name inside parent, opened without following a symlink; SymlinkInPath when it is
    a symlink or no directory, FileNotFoundError when it is missing."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    st = lstat_at(parent, name)
    target = os.readlink(name, dir_fd=parent) if st is not None and stat.S_ISLNK(st.st_mode) else None
    raise SymlinkInPath([], name, target)


def open_path(top, parts, create=False):
    """The directory top/parts[0]/parts[1]/..., each component opened from the one before without
    following a symlink (SymlinkInPath names the first that is one); missing ones are made when
    create, else FileNotFoundError. The caller closes the descriptor returned."""
    fd = os.dup(top)
    try:
        for i, part in enumerate(parts):
            try:
                child = open_dir(fd, part)
            except SymlinkInPath as exc:
                exc.done = list(parts[:i])
                raise
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                child = open_dir(fd, part)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_node(parent, name):
    """(descriptor, lstat) of a directory or regular file inside parent, opened without following a
    symlink; None for anything else (a symlink, a FIFO, a device, or nothing by that name)."""
    st = lstat_at(parent, name)
    if st is None or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return None
    try:
        fd = os.open(name, DIR_FLAGS if stat.S_ISDIR(st.st_mode) else NODE_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            return None  # swapped for a symlink (or removed) since the lstat: left alone
        raise
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or stat.S_IFMT(now.st_mode) != stat.S_IFMT(st.st_mode):
        os.close(fd)
        return None  # replaced since the lstat: what is there now was not checked
    return fd, now


def handle(fd, st):
    """What os.setxattr, os.chmod and os.chown take for a node open_node opened: the descriptor of a
    directory, the /proc/self/fd path of a file's O_PATH descriptor (that inode, never a path)."""
    return fd if stat.S_ISDIR(st.st_mode) else "/proc/self/fd/%d" % fd


def walk(top_fd, top_st):
    """(descriptor, lstat) of top and of every directory and regular file below it, depth first;
    symlinks (and what they point to) left out. Directories are opened without following a symlink
    as they are reached, relative to their open parent; a descriptor is valid until the next step.
    The descriptors open at once are those of the current path (one per level)."""
    yield top_fd, top_st
    if not stat.S_ISDIR(top_st.st_mode):
        return
    stack = [(top_fd, _names(top_fd))]
    try:
        while stack:
            parent, names = stack[-1]
            if not names:
                stack.pop()
                if parent != top_fd:
                    os.close(parent)
                continue
            opened = open_node(parent, names.pop())
            if opened is None:
                continue
            fd, st = opened
            if stat.S_ISDIR(st.st_mode):
                stack.append((fd, _names(fd)))
                yield fd, st
            else:
                try:
                    yield fd, st
                finally:
                    os.close(fd)
    finally:
        for fd, _ in stack:
            if fd != top_fd:
                os.close(fd)


def _names(fd):
    with os.scandir(fd) as it:
        return sorted((e.name for e in it), reverse=True)


def remove(parent, name):
    """Remove name from the open directory parent, a whole tree if it is a directory, without following
    any symlink in it (a symlink is removed, never what it points to). Nothing by that name: nothing."""
    st = lstat_at(parent, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
        return
    fd = _open_emptied(parent, name)
    stack = [[parent, name, fd, _names(fd), False]] if fd is not None else []
    try:
        while stack:
            frame = stack[-1]
            above, dname, fd, names, relisted = frame
            if not names and not relisted:
                frame[3], frame[4] = _names(fd), True  # written meanwhile (the app still runs): once more
                continue
            if not names:
                stack.pop()
                os.close(fd)
                os.rmdir(dname, dir_fd=above)
                continue
            child = names.pop()
            st = lstat_at(fd, child)
            if st is None:
                continue
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(child, dir_fd=fd)
                continue
            sub = _open_emptied(fd, child)
            if sub is not None:
                stack.append([fd, child, sub, _names(sub), False])
    finally:
        for frame in stack:
            os.close(frame[2])


def _open_emptied(parent, name):
    """name's descriptor, or None after unlinking it when it turned out not to be a directory."""
    try:
        return open_dir(parent, name)
    except SymlinkInPath:
        os.unlink(name, dir_fd=parent)
        return None
