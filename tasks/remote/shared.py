"""Shared entries (kept under deploy_to/shared/ across releases, symlinked into each release) and
writable entries (made writable by the web server's user).

A shared entry that does not exist on the server yet is seeded from the build's copy, which the
upload put into the incoming release for that purpose only; a directory or a file alike. Later
builds' copies are never uploaded (rsync excludes shared entries), so shared data is never
overwritten by a deploy.
"""

import errno
import os
import pwd
import shutil
import stat
import struct

from .protocol import Refused

# POSIX ACLs as Linux stores them in the system.posix_acl_* extended attributes.
ACL_VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
NO_ID = 0xFFFFFFFF
ACCESS, DEFAULT = "system.posix_acl_access", "system.posix_acl_default"


def missing(layout, entries):
    """The entries that shared/ does not hold yet: the first deploy seeds them."""
    return [e for e in entries if not os.path.lexists(layout.shared_entry(e))]


def link(layout, release_dir, entries):
    """Make each entry of release_dir a symlink to shared/<entry>, seeding shared/ from the
    release's copy when shared/ lacks it. Returns {entry: "seeded" | "created" | "linked"}."""
    done = {}
    for entry in entries:
        target = layout.shared_entry(entry)
        path = os.path.join(release_dir, entry)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.lexists(target):
            done[entry] = "linked"
            _remove(path)
        elif os.path.lexists(path) and not os.path.islink(path):
            os.rename(path, target)  # the build's copy becomes the shared data
            done[entry] = "seeded"
        else:
            _remove(path)
            os.mkdir(target)
            done[entry] = "created"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(os.path.relpath(target, os.path.dirname(path)), path)
    return done


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


# --- writable ----------------------------------------------------------------------------------


def make_writable(release_dir, entries, web_user, fresh):
    """Let web_user write each entry (resolved through the shared symlinks): a POSIX ACL entry for
    that user (and a default ACL on directories, inherited by what is created inside), or where
    the file system has no ACLs, the user's group with group write and setgid directories.

    The whole tree is walked when the entry is new (in `fresh`) or lacks the permission at its top;
    otherwise only its top is checked. Returns {entry: "acl" | "group"}.
    """
    try:
        user = pwd.getpwnam(web_user)
    except KeyError:
        raise Refused("the web server's user %r does not exist on this server" % web_user,
                      hint="set web_user in hosts.yaml to the user Apache or php-fpm runs as")
    done = {}
    for entry in entries:
        path = os.path.realpath(os.path.join(release_dir, entry))
        if not os.path.lexists(path):
            os.makedirs(path)
            fresh = set(fresh) | {entry}
        mode = _grant_acl(path, user.pw_uid, entry in fresh)
        if mode is None:
            mode = _grant_group(path, user.pw_gid, entry in fresh, entry)
        done[entry] = mode
    return done


def _walk(path):
    yield path
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                full = os.path.join(root, name)
                if not os.path.islink(full):
                    yield full


def parse_acl(blob):
    """[(tag, perm, id)] from an ACL extended attribute."""
    if len(blob) < 4 or struct.unpack("<I", blob[:4])[0] != ACL_VERSION:
        return []
    return [struct.unpack("<HHI", blob[i:i + 8]) for i in range(4, len(blob) - 7, 8)]


def build_acl(entries):
    """An ACL extended attribute from [(tag, perm, id)], sorted as the kernel requires."""
    body = b"".join(struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in sorted(entries, key=lambda e: (e[0], e[2])))
    return struct.pack("<I", ACL_VERSION) + body


def acl_with_user(entries, mode, uid, perm):
    """entries (or the ACL that mode alone means) with user uid granted perm, the mask widened to it."""
    if not entries:
        entries = [(USER_OBJ, (mode >> 6) & 7, NO_ID), (GROUP_OBJ, (mode >> 3) & 7, NO_ID), (OTHER, mode & 7, NO_ID)]
    kept = [e for e in entries if not (e[0] == USER and e[2] == uid) and e[0] != MASK]
    kept.append((USER, perm, uid))
    group_class = 0
    for tag, p, _ in kept:
        if tag in (USER, GROUP, GROUP_OBJ):
            group_class |= p
    return kept + [(MASK, group_class, NO_ID)]


def _has_user(path, uid, perm):
    try:
        entries = parse_acl(os.getxattr(path, ACCESS, follow_symlinks=False))
    except OSError:
        return False
    mask = next((p for t, p, _ in entries if t == MASK), 7)
    return any(t == USER and i == uid and (p & mask & perm) == perm for t, p, i in entries)


def _grant_acl(path, uid, whole):
    """Grant uid rw (rwx on directories) by ACL; None where the file system has no ACLs."""
    if not whole and _has_user(path, uid, 6):
        return "acl"
    try:
        for item in _walk(path) if whole or not _has_user(path, uid, 6) else [path]:
            st = os.lstat(item)
            is_dir = stat.S_ISDIR(st.st_mode)
            perm = 7 if is_dir or st.st_mode & 0o100 else 6
            try:
                current = parse_acl(os.getxattr(item, ACCESS, follow_symlinks=False))
            except OSError as exc:
                if exc.errno not in (errno.ENODATA,):
                    raise
                current = []
            os.setxattr(item, ACCESS, build_acl(acl_with_user(current, st.st_mode, uid, perm)), follow_symlinks=False)
            if is_dir:
                default = acl_with_user([], 0o755, uid, 7)
                os.setxattr(item, DEFAULT, build_acl(default), follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            return None
        raise
    return "acl"


def _grant_group(path, gid, whole, entry):
    """Group gid with write (and setgid on directories, so new files get the group)."""
    st = os.lstat(path)
    if not whole and st.st_gid == gid and st.st_mode & 0o020:
        return "group"
    try:
        for item in _walk(path):
            st = os.lstat(item)
            os.chown(item, -1, gid, follow_symlinks=False)
            extra = 0o2070 if stat.S_ISDIR(st.st_mode) else 0o060
            os.chmod(item, stat.S_IMODE(st.st_mode) | extra)
    except PermissionError:
        raise Refused(
            "cannot make %s writable for the web server: this file system has no ACLs, and the deploy user "
            "may not give it to group %d" % (entry, gid),
            hint="add the deploy user to the web server's group, or use a file system with ACLs",
        )
    return "group"
