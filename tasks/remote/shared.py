"""Shared entries (kept under deploy_to/shared/ across releases, symlinked into each release), and
writable and readable entries (the web server's user may write, or only read, them).

A shared entry that does not exist on the server yet is seeded from the build's copy, which the
upload put into the incoming release for that purpose only; a directory or a file alike. Later
builds' copies are never uploaded (rsync excludes shared entries), so shared data is never
overwritten by a deploy. An entry that nothing seeds is created as an empty directory, unless its
name has a dot (LocalSettings.php, .env): Cutover never guesses a file's content, and a directory
or an empty file in its place breaks the app alike, so that is refused, saying where to put it.

shared/ and the web server's writable entries are data the app controls: everything here is
reached through directory descriptors (nofollow.py), never through a symlink, except the release's
own links into shared/ that link() made, which are followed by opening shared/<entry> itself.
"""

import os
import posixpath
import pwd
import stat

from . import grants, nofollow, paths

from .protocol import Refused


def missing(layout, entries):
    """The entries that shared/ does not hold yet: the first deploy seeds them."""
    return [e for e in entries if not os.path.lexists(layout.shared_entry(e))]


UNNAMED_SHOWN = 20  # entries of shared/ that no shared: entry names, listed by check


def unnamed(layout, entries):
    """What shared/ holds that no entry names (an entry removed from shared: since): a deploy no longer
    links it, so the app writes into each release instead, where cleanup deletes it. Returns
    (the first UNNAMED_SHOWN relative paths, how many in all)."""
    found = []

    def walk(fd, prefix):
        for name in sorted(os.listdir(fd)):
            rel = prefix + name
            if rel in entries:
                continue
            st = nofollow.lstat_at(fd, name)
            if st is not None and stat.S_ISDIR(st.st_mode) and any(e.startswith(rel + "/") for e in entries):
                sub = nofollow.open_dir(fd, name)
                try:
                    walk(sub, rel + "/")
                finally:
                    os.close(sub)
            else:
                found.append(rel)

    try:
        top = os.open(layout.shared, nofollow.DIR_FLAGS)
    except OSError:
        return [], 0  # no shared/ yet (or not a plain directory: the next deploy says so)
    try:
        walk(top, "")
    finally:
        os.close(top)
    return found[:UNNAMED_SHOWN], len(found)


def overlap(entries):
    """(inner, outer): the indexes of the first entry that lies inside another (or repeats it), or None."""
    for i, entry in enumerate(entries):
        for j, other in enumerate(entries):
            if i != j and (entry.startswith(other + "/") or (entry == other and j < i)):
                return i, j
    return None


def overlap_hint(inner, outer):
    """What to do about an entry lying inside another: hosts.yaml's error and the server's say the same."""
    return ("remove %r from shared: shared/%s holds it already, and linking both would make every deploy "
            "delete shared/%s" % (inner, outer, inner))  # fmt: skip


def looks_like_file(entry):
    """A name with a dot in its last part (.env, LocalSettings.php) is taken for a file when nothing
    seeds it; anything else (media, uploads, storage) is created as an empty directory."""
    return "." in entry.rsplit("/", 1)[-1]


def link_target(entry):
    """The symlink link() puts at releases/<id>/<entry>: relative, to shared/<entry>."""
    return "../" * (entry.count("/") + 2) + "shared/" + entry


class Opened:
    """deploy_to, its shared/ and the release directory releases/<name>, opened once each without
    following a symlink (deploy_to's own parents are the operator's)."""

    def __init__(self, release_dir):
        release_dir = os.path.normpath(release_dir)
        above = os.path.dirname(release_dir)
        if os.path.basename(above) != "releases":
            raise Refused("%s is not a release directory (releases/<id>)" % release_dir)
        self.deploy_to, self.name = os.path.dirname(above), os.path.basename(release_dir)
        self.fds = [nofollow.open_top(self.deploy_to, "deploy_to")]
        try:
            try:
                self.release = self.open(["releases", self.name])
            except FileNotFoundError:
                raise Refused("release %s does not exist on this server" % release_dir)
            self.shared = self.open(["shared"], create=True)
        except BaseException:
            self.close()
            raise

    def open(self, parts, create=False):
        try:
            fd = nofollow.open_path(self.fds[0], parts, create)
        except nofollow.SymlinkInPath as exc:
            raise Refused("%s/%s is not a plain directory; refusing to work through it"
                          % (self.deploy_to, "/".join(exc.done + [exc.part])))  # fmt: skip
        self.fds.append(fd)
        return fd

    def below(self, top, parts, create=False):
        """top/parts (top one of the open directories), opened as open_path does; kept until close."""
        fd = nofollow.open_path(top, parts, create)
        self.fds.append(fd)
        return fd

    def close(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _parent(o, top, parts, entry, where):
    """The directory holding entry's last part below top (shared/ or the release), or None when a
    part of the way is missing; Refused when one is a symlink or not a directory."""
    try:
        return o.below(top, parts[:-1])
    except FileNotFoundError:
        return None
    except nofollow.SymlinkInPath as exc:
        shown = "/".join(exc.done + [exc.part])
        what = "a symlink" if exc.target is not None else "not a directory"
        raise Refused("shared entry %r: %s is %s %s; nothing was linked" % (entry, shown, what, where),
                      hint="shared entries must lie in plain directories: check hosts.yaml's shared: and "
                      "what is at %s" % shown)  # fmt: skip


def plain(kind, entries):
    """entries, each checked to be a plain relative path (hosts.yaml checks them too; a request from
    anything else is held to the same): no leading /, no empty, '.' or '..' part."""
    for entry in entries:
        if paths.relpath_fault(entry) or entry != posixpath.normpath(entry):  # hosts.yaml's grammar, normalised
            raise Refused("%s entry %r is not a plain relative path inside the release; nothing was changed"
                          % (kind, entry), hint="give paths such as media or storage/logs, without '..'")  # fmt: skip
    return entries


def link(layout, release_dir, entries):
    """Make each entry of release_dir a symlink to shared/<entry>, seeding shared/ from the
    release's copy when shared/ lacks it. Everything is checked before anything changes.
    Returns {entry: "seeded" | "created" | "linked"}."""
    found = overlap(plain("shared", entries))
    if found:
        inner, outer = entries[found[0]], entries[found[1]]
        if inner == outer:
            raise Refused("shared entry %r is given twice" % inner, hint="give each shared entry once")
        raise Refused("shared entries overlap: %r lies inside shared entry %r" % (inner, outer),
                      hint=overlap_hint(inner, outer))  # fmt: skip
    with Opened(release_dir) as o:
        if os.path.normpath(o.deploy_to) != os.path.normpath(layout.deploy_to):
            raise Refused("%s is not a release of %s" % (release_dir, layout.deploy_to))
        plan = []
        for entry in entries:
            parts = entry.split("/")
            rparent = _parent(o, o.release, parts, entry, "in the release")
            sparent = _parent(o, o.shared, parts, entry, "in shared/")
            in_shared = sparent is not None and nofollow.lstat_at(sparent, parts[-1]) is not None
            st = nofollow.lstat_at(rparent, parts[-1]) if rparent is not None else None
            in_release = st is not None and not stat.S_ISLNK(st.st_mode)
            if not in_shared and not in_release and looks_like_file(entry):
                where = layout.shared_entry(entry)
                raise Refused(
                    "shared entry %r is neither in shared/ nor in the build: Cutover creates a missing directory, "
                    "never a file; nothing was linked" % entry,
                    hint="put the file at %s on this server (or add it to the build), then deploy again; if it is a "
                    "directory: mkdir %s" % (where, where),
                )
            plan.append((entry, parts, in_shared, in_release))
        done = {}
        for entry, parts, in_shared, in_release in plan:
            rparent, sparent = _made(o, o.release, parts[:-1]), _made(o, o.shared, parts[:-1])
            name = parts[-1]
            if in_shared:
                nofollow.remove(rparent, name)
                done[entry] = "linked"
            elif in_release:
                os.rename(name, name, src_dir_fd=rparent, dst_dir_fd=sparent)  # the build's copy becomes the shared data
                done[entry] = "seeded"
            else:
                nofollow.remove(rparent, name)
                os.mkdir(name, 0o755, dir_fd=sparent)
                done[entry] = "created"
            os.symlink(link_target(entry), name, dir_fd=rparent)
        return done


def _made(o, top, parts):
    """The directory top/parts, made where missing (checked before to hold no symlink)."""
    try:
        return o.below(top, parts, create=True)
    except nofollow.SymlinkInPath as exc:  # put there since the check
        raise Refused("%s is a symlink now; nothing more was changed" % "/".join(exc.done + [exc.part]))


# --- writable and readable -------------------------------------------------------------------------


def make_writable(release_dir, entries, web_user, fresh):
    """Let web_user write each entry (through the release's links into shared/): a POSIX ACL entry for
    that user (and a default ACL on directories, inherited by what is created inside), or where
    the file system has no ACLs, the user's group with group write and setgid directories.

    The whole tree is walked when the entry is new (in `fresh`) or lacks the permission at its top;
    otherwise only its top is checked. Every entry is resolved before anything is granted: one whose
    way goes through a symlink (other than the release's own links into shared/) is refused, and
    nothing is granted. Returns {entry: "acl" | "group"}.
    """
    return _grant("writable", release_dir, entries, web_user, fresh)


def make_readable(release_dir, entries, web_user, fresh):
    """Let web_user read, never write, each entry (a config hardened to 0640): as make_writable, with r
    (r-x on directories). A permission the user has already (a writable entry) is never taken back."""
    return _grant("readable", release_dir, entries, web_user, fresh)


def _grant(kind, release_dir, entries, web_user, fresh):
    try:
        user = pwd.getpwnam(web_user)
    except KeyError:
        raise Refused("the web server's user %r does not exist on this server" % web_user,
                      hint="set web_user in hosts.yaml to the user Apache or php-fpm runs as")  # fmt: skip
    fresh = set(fresh)
    plain(kind, entries)
    with Opened(release_dir) as o:
        found = [(entry, _resolve(o, kind, entry)) for entry in entries]  # refused here, before any grant
        done = {}
        for entry, (fd, st, rest) in found:
            if rest:
                fd = _made(o, fd, rest)
                st = os.fstat(fd)
                fresh.add(entry)
            done[entry] = grants.grant(kind, fd, st, user, entry in fresh, entry)
        return done


def _resolve(o, kind, entry):
    """(descriptor, lstat, []) of entry, or (descriptor of the deepest directory there is, None, the
    missing parts) for a writable entry to be made. Refused when the way goes through a symlink
    other than the release's own link into shared/, which is taken by opening shared/ itself."""
    parts = entry.split("/")
    fd, shown, in_shared = o.release, [], False
    for i, part in enumerate(parts):
        st = nofollow.lstat_at(fd, part)
        if st is not None and stat.S_ISLNK(st.st_mode) and not in_shared:
            target = os.readlink(part, dir_fd=fd)
            if target != link_target("/".join(parts[: i + 1])):
                _through_symlink(kind, entry, "/".join(parts[: i + 1]) + " in the release", target)
            try:
                fd = o.below(o.shared, parts[:i])
            except FileNotFoundError:  # the release's link dangles: made from shared/ down
                return _missing(kind, entry, o.shared, parts)
            except nofollow.SymlinkInPath as exc:
                _through_symlink(kind, entry, "/".join(["shared"] + exc.done + [exc.part]), exc.target)
            shown, in_shared = ["shared"] + parts[:i], True
            st = nofollow.lstat_at(fd, part)
        shown.append(part)
        if st is None:
            return _missing(kind, entry, fd, parts[i:])
        if stat.S_ISLNK(st.st_mode):
            _through_symlink(kind, entry, "/".join(shown), os.readlink(part, dir_fd=fd))
        if i == len(parts) - 1:
            node = nofollow.open_node(fd, part)
            if node is None:
                raise Refused("%s entry %r: %s is not a file or a directory (or changed while it was checked); "
                              "nothing was granted" % (kind, entry, "/".join(shown)))  # fmt: skip
            o.fds.append(node[0])
            return node[0], node[1], []
        try:
            fd = o.below(fd, [part])
        except nofollow.SymlinkInPath as exc:
            _through_symlink(kind, entry, "/".join(shown), exc.target)


def _missing(kind, entry, fd, rest):
    if kind != "writable":
        raise Refused("%s entry %r does not exist in the release or shared/" % (kind, entry))
    if looks_like_file(entry):
        raise Refused("writable entry %r does not exist in the release or shared/: Cutover creates a missing "
                      "directory, never a file; nothing was granted" % entry,
                      hint="add the file to the build or shared/ (then list it in shared:), or if it is a "
                      "directory, create it there")  # fmt: skip
    return fd, None, rest


def _through_symlink(kind, entry, shown, target):
    if target is None:
        raise Refused("%s entry %r: %s is not a directory; nothing was granted" % (kind, entry, shown))
    raise Refused("%s entry %r: %s is a symlink (to %s); Cutover never grants through a symlink; nothing was "
                  "granted" % (kind, entry, shown, target),
                  hint="remove the symlink (the web server's user, i.e. the app, may have put it there: check what "
                  "it points to) and put back a directory, then deploy again; for data on another disk, mount it "
                  "there instead of a symlink")  # fmt: skip
