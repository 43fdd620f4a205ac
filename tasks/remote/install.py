"""One-time setup of a server: the layout with a placeholder release, Cutover's Apache rules,
and (as root) the sudo swap helper with its registration."""

import hashlib
import json
import os
import pwd
import sys

from . import paths, siteconf, swap
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
        swap.point_map(layout, paths.current_release(layout))
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


def op_install_helper(a):
    """As root: install the swap helper root-owned and register this site for the deploy user."""
    if os.geteuid() != 0:
        raise Refused("installing the helper needs root (connected as uid %d)" % os.geteuid())
    os.makedirs(os.path.dirname(a["path"]), mode=0o755, exist_ok=True)
    paths.write_file(a["path"], a["program"], mode=0o755)
    os.makedirs(os.path.dirname(HELPER_CONFIG), mode=0o755, exist_ok=True)
    try:
        with open(HELPER_CONFIG) as f:
            sites = json.load(f)
    except FileNotFoundError:
        sites = {}
    sites[a["deploy_to"]] = a["site"]
    paths.write_file(HELPER_CONFIG, json.dumps(sites, indent=2, sort_keys=True) + "\n")
    return {"path": a["path"], "sites": sorted(sites), "sha256": installed_hash(a["path"])}
