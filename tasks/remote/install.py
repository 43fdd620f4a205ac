"""One-time setup of a server: the layout with a placeholder release, Cutover's Apache rules,
and (as root) the sudo swap helper with its registration."""

import errno
import fcntl
import hashlib
import json
import os
import pwd
import stat
import sys

from . import paths, pinmap, siteconf
from .helper import HELPER_CONFIG
from .protocol import Refused

PLACEHOLDER_PAGE = "<!doctype html><title>Nothing deployed yet</title><p>Nothing deployed yet.</p>\n"


def op_setup(a):
    """Create the layout (and a first placeholder release so Apache has a DocumentRoot)."""
    layout = paths.Layout(a["deploy_to"])
    created = []
    if not os.path.isdir(layout.deploy_to):
        parent = os.path.dirname(layout.deploy_to)
        if not os.access(parent if os.path.isdir(parent) else "/", os.W_OK):
            raise Refused("cannot create %s: %s is not writable by this user" % (layout.deploy_to, parent),
                          hint="create it as root: install -d -o USER %s" % layout.deploy_to)
        os.makedirs(layout.deploy_to)
        created.append(layout.deploy_to)
    for d in (layout.releases, layout.shared, layout.meta, layout.maintenance):
        if not os.path.isdir(d):
            os.makedirs(d)
            created.append(d)
    if not os.access(layout.deploy_to, os.W_OK) or not os.access(layout.releases, os.W_OK):
        raise Refused("%s is not writable by this user" % layout.deploy_to, hint="chown it to the deploy user")
    if paths.current_release(layout) is None:
        placeholder(layout, a.get("serve") or "")
        created.append(layout.current)
    if not os.path.exists(layout.release_map):  # Apache refuses to start while a RewriteMap file is missing
        pinmap.point_map(layout, paths.current_release(layout))
        created.append(layout.release_map)
    # the site's blocks for current/... first: the rules include them
    site, config = siteconf.render(layout.deploy_to, a.get("pidfile"), a.get("apache_config"), layout.apache_conf)
    paths.write_file(layout.apache_site, site)
    paths.write_file(layout.apache_conf, a["rules"])
    return {"created": created, "user": pwd.getpwuid(os.geteuid()).pw_name, "rules": layout.apache_conf,
            "current": paths.current_release(layout), "executable": sys.executable,
            "site_config": config, "mirrored": site.count(siteconf.MARK)}


def placeholder(layout, serve=""):
    """releases/<PLACEHOLDER> with an index page (in `serve`), and current pointing at it."""
    release = layout.release(paths.PLACEHOLDER)
    root = os.path.join(release, serve) if serve else release
    os.makedirs(root, exist_ok=True)
    paths.write_file(os.path.join(root, "index.html"), PLACEHOLDER_PAGE)
    paths.point(layout.current, os.path.relpath(release, layout.deploy_to))


def installed_hash(path):
    """sha256 of the installed helper program, or None when it is missing."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


SYMLINKS_MAX = 40  # as the kernel's limit on symlinks followed in one path


def replaceable(path):
    """None when only root can change what `path` runs: every directory on the way and the file
    itself, symlinks followed, owned by root and writable by no one else (a sticky directory such
    as /tmp aside: there only an entry's owner may replace it). Else the first that someone else
    can change, and why. The sudoers line for the swap helper names the Python it runs under."""
    if not path.startswith("/"):
        return "%s is not an absolute path" % path
    todo, here, hops = [p for p in path.split("/") if p], "/", 0
    problem = _changeable("/", os.lstat("/"))
    while todo and problem is None:
        name = todo.pop(0)
        if name in (".", ".."):
            here = here if name == "." else os.path.dirname(here)
            continue
        entry = os.path.join(here, name)
        try:
            st = os.lstat(entry)
        except OSError as exc:
            return "%s: %s" % (entry, exc.strerror)
        if stat.S_ISLNK(st.st_mode):  # its parent, checked already, says who may replace it
            hops += 1
            if hops > SYMLINKS_MAX:
                return "%s: %s" % (path, os.strerror(errno.ELOOP).lower())
            target = os.readlink(entry)
            here = "/" if target.startswith("/") else here
            todo[:0] = [p for p in target.split("/") if p]
            continue
        problem = _changeable(entry, st)
        here = entry
    return problem


def _changeable(path, st):
    """Why someone other than root can change path (lstat st), or None."""
    if st.st_uid != 0:
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = "uid %d" % st.st_uid
        return "%s is owned by %s" % (path, owner)
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return None
    if st.st_mode & stat.S_IWOTH:
        return "%s is writable by everyone" % path
    if st.st_mode & stat.S_IWGRP and st.st_gid != 0:
        return "%s is writable by its group" % path
    return None


def op_install_helper(a):
    """As root: install the swap helper root-owned and register this site for the deploy user."""
    if os.geteuid() != 0:
        raise Refused("installing the helper needs root (connected as uid %d)" % os.geteuid())
    os.makedirs(os.path.dirname(a["path"]), mode=0o755, exist_ok=True)
    paths.write_file(a["path"], a["program"], mode=0o755)
    config = HELPER_CONFIG
    os.makedirs(os.path.dirname(config), mode=0o755, exist_ok=True)
    # two sites of one server set up at once (two groups' setups, or a group on one machine): each
    # reads, adds its site and writes; without the lock one's registration was lost
    held = os.open(os.path.dirname(config), os.O_RDONLY | os.O_DIRECTORY)  # its directory: no file left
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            with open(config) as f:
                sites = json.load(f)
        except FileNotFoundError:
            sites = {}
        sites[a["deploy_to"]] = a["site"]
        paths.write_file(config, json.dumps(sites, indent=2, sort_keys=True) + "\n")
    finally:
        os.close(held)
    return {"path": a["path"], "sites": sorted(sites), "sha256": installed_hash(a["path"])}
