"""A backup's manifest: every file's path, size and sha256 and every symlink's target, written
when the backup is complete, and the whole tree checked against it before a restore or a copy.
"""

import hashlib
import json
import os
import stat

from .protocol import Refused

MANIFEST = "manifest.json"
INFO = "backup.json"
HASH_CHUNK = 1 << 20


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def tree(dest):
    """({relative path: lstat} of the regular files, {relative path: target} of the symlinks,
    [paths of anything else]) under dest, symlinks never followed; the manifest and backup.json
    themselves left out."""
    files, links, other = {}, {}, []
    for root, dirs, names in os.walk(dest):
        for name in dirs + names:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, dest)
            if rel in (MANIFEST, INFO):
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                links[rel] = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                files[rel] = st
            elif not stat.S_ISDIR(st.st_mode):
                other.append(rel)
    return files, links, other


def manifest(dest, previous):
    """{relative path: [size, sha256]} of every file in dest and {relative path: target} of every
    symlink; a file hard-linked from the previous backup reuses that backup's checksum. Returns
    (files, links, bytes not linked, paths reused)."""
    before = {}
    if previous:
        try:
            with open(os.path.join(previous, MANIFEST)) as f:
                before = json.load(f)["files"]
        except (OSError, ValueError, KeyError):
            before = {}
    found, links, other = tree(dest)
    if other:
        raise Refused("%s in the backup is neither a file, a directory nor a symlink" % other[0])
    files, new_bytes, reused = {}, 0, set()
    for rel, st in sorted(found.items()):
        old = os.path.join(previous, rel) if previous else None
        if rel in before and old and os.path.exists(old) and os.stat(old).st_ino == st.st_ino:
            files[rel] = before[rel]
            reused.add(rel)
        else:
            files[rel] = [st.st_size, _sha256(os.path.join(dest, rel))]
            new_bytes += st.st_size
    return files, links, new_bytes, reused


def verify(dest, whole=False, skip=(), rehash=True):
    """What in dest its manifest does not match, or None: every file and symlink of the tree must
    be in the manifest, and every one the manifest names in the tree, with its size and target.
    whole: rehash every file (else those in skip are not); rehash=False: none, sizes only."""
    try:
        with open(os.path.join(dest, MANIFEST)) as f:
            listed = json.load(f)
        files, links = listed["files"], listed.get("links")
    except (OSError, ValueError, KeyError, TypeError):
        return "the manifest is missing or unreadable"
    found, found_links, other = tree(dest)
    if other:
        return "%s is neither a file, a directory nor a symlink" % other[0]
    extra = sorted(set(found) - set(files))
    if extra:
        return "%s is in the backup but not in its manifest" % extra[0]
    if links is not None:  # a manifest written before symlinks were listed names none
        for rel in sorted(set(found_links) | set(links)):
            if rel not in links:
                return "the symlink %s is in the backup but not in its manifest" % rel
            if found_links.get(rel) != links[rel]:
                return "the symlink %s is missing or points elsewhere than its manifest says" % rel
    for rel, (size, digest) in sorted(files.items()):
        st = found.get(rel)
        if st is None or st.st_size != size:
            return "%s is missing or has another size" % rel
        if rehash and (whole or rel not in skip) and _sha256(os.path.join(dest, rel)) != digest:
            return "%s does not match its checksum" % rel
    return None
