"""The web server's user given write (writable:) or read (readable:) on an entry Cutover opened: a
POSIX ACL entry, or where the file system has none, its group and the group's mode bits.

Every node is reached and changed through a descriptor (nofollow.walk): extended attributes,
owners and modes are set on that inode, never on a path a symlink could redirect.
"""

import errno
import os
import stat
import struct

from . import nofollow
from .protocol import Refused

# POSIX ACLs as Linux stores them in the system.posix_acl_* extended attributes.
ACL_VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
NO_ID = 0xFFFFFFFF
ACCESS, DEFAULT = "system.posix_acl_access", "system.posix_acl_default"

# kind: (permission on a file, on a directory or an executable file, group bits on a file, on a directory)
KINDS = {"writable": (6, 7, 0o060, 0o2070), "readable": (4, 5, 0o040, 0o2050)}


def parse_acl(blob):
    """[(tag, perm, id)] from an ACL extended attribute."""
    if len(blob) < 4 or struct.unpack("<I", blob[:4])[0] != ACL_VERSION:
        return []
    return [struct.unpack("<HHI", blob[i : i + 8]) for i in range(4, len(blob) - 7, 8)]


def build_acl(entries):
    """An ACL extended attribute from [(tag, perm, id)], sorted as the kernel requires."""
    body = b"".join(struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in sorted(entries, key=lambda e: (e[0], e[2])))
    return struct.pack("<I", ACL_VERSION) + body


def acl_with_user(entries, mode, uid, perm, keep=False):
    """entries (or the ACL that mode alone means) with user uid granted perm (added to what it has,
    with keep); the mask widened to it."""
    if not entries:
        entries = [(USER_OBJ, (mode >> 6) & 7, NO_ID), (GROUP_OBJ, (mode >> 3) & 7, NO_ID), (OTHER, mode & 7, NO_ID)]
    had = [p for t, p, i in entries if t == USER and i == uid] if keep else []
    kept = [e for e in entries if not (e[0] == USER and e[2] == uid) and e[0] != MASK]
    kept.append((USER, perm | (had[0] if had else 0), uid))
    group_class = 0
    for tag, p, _ in kept:
        if tag in (USER, GROUP, GROUP_OBJ):
            group_class |= p
    return kept + [(MASK, group_class, NO_ID)]


def _acl(node, name):
    try:
        return parse_acl(os.getxattr(node, name))
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
        return []


def _has_user(node, uid, perm):
    try:
        entries = _acl(node, ACCESS)
    except OSError:
        return False
    mask = next((p for t, p, _ in entries if t == MASK), 7)
    return any(t == USER and i == uid and (p & mask & perm) == perm for t, p, i in entries)


def grant(kind, fd, st, user, whole, entry):
    """Give user the permission of `kind` on the opened entry (descriptor fd, its lstat st): by ACL,
    else by group. The whole tree when `whole` or when its top lacks the permission; symlinks in
    it and nodes the user owns are left alone. Returns "acl" or "group"."""
    done = _grant_acl(kind, fd, st, user.pw_uid, whole)
    return done or _grant_group(kind, fd, st, user, whole, entry)


def _perm(kind, st):
    on_file, on_dir, _, _ = KINDS[kind]
    return on_dir if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o100 else on_file


def _grant_acl(kind, fd, st, uid, whole):
    """Grant by ACL; None where the file system has no ACLs."""
    if not whole and _has_user(nofollow.handle(fd, st), uid, KINDS[kind][0]):
        return "acl"
    try:
        for node_fd, node_st in nofollow.walk(fd, st):
            if node_st.st_uid == uid:
                continue  # its own: nothing to grant (and a deploy user not root may not change its ACL)
            node = nofollow.handle(node_fd, node_st)
            perm = _perm(kind, node_st)
            keep = kind == "readable"  # never takes back a write that writable gave
            os.setxattr(node, ACCESS, build_acl(acl_with_user(_acl(node, ACCESS), node_st.st_mode, uid, perm, keep)))
            if stat.S_ISDIR(node_st.st_mode):  # inherited by what is created inside
                os.setxattr(node, DEFAULT, build_acl(acl_with_user(_acl(node, DEFAULT), 0o755, uid, perm, keep)))
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            return None
        raise
    return "acl"


def _grant_group(kind, fd, st, user, whole, entry):
    """Group gid with the kind's bits (and setgid on directories, so new files get the group)."""
    _, _, on_file, on_dir = KINDS[kind]
    if not whole and st.st_gid == user.pw_gid and st.st_mode & on_file & 0o070 == on_file & 0o070:
        return "group"
    try:
        for node_fd, node_st in nofollow.walk(fd, st):
            if node_st.st_uid == user.pw_uid:
                continue
            node = nofollow.handle(node_fd, node_st)
            os.chown(node, -1, user.pw_gid)
            extra = on_dir if stat.S_ISDIR(node_st.st_mode) else on_file
            os.chmod(node, stat.S_IMODE(node_st.st_mode) | extra)
    except PermissionError:
        raise Refused(
            "cannot make %s %s for the web server: this file system has no ACLs, and the deploy user "
            "may not give it to group %d" % (entry, kind, user.pw_gid),
            hint="add the deploy user to the web server's group, or use a file system with ACLs",
        )
    return "group"
