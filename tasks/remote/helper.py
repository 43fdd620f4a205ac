"""The sudo swap helper's gate: run as root for a deploy user who is not root.

The caller chooses only the release id, whether to verify and whether to switch back on a
failed check. Everything else (deploy_to's paths, the pidfile, pause_timeout, the health URLs
and what they must answer) comes from the root-owned registration that `fab setup` wrote, and
the helper keeps its own files in a root-owned directory, never in deploy_to.
"""

import hashlib
import json
import os

from . import limits
from .protocol import Refused

HELPER_CONFIG = "/etc/cutover/helper.json"  # root-owned: what the helper allows, per deploy_to
RUN_DIR = "/run/cutover"


def checked(op, args):
    """The swap's arguments rebuilt from the registration; Refused for anything else."""
    if op != "swap":
        raise Refused("the Cutover helper runs only the swap, not %r" % (op,))
    deploy_to = args.get("deploy_to")
    user = os.environ.get("SUDO_USER")
    with open(HELPER_CONFIG) as f:
        sites = json.load(f)
    site = sites.get(deploy_to) if isinstance(deploy_to, str) else None
    if site is None or site.get("user") != user:
        raise Refused("%s is not registered for user %s in %s" % (deploy_to, user, HELPER_CONFIG),
                      hint="run `fab setup` for this host")
    if os.path.realpath(deploy_to) != deploy_to:
        raise Refused("deploy_to %s goes through a symlink; the helper refuses it" % deploy_to)
    timeout = site.get("pause_timeout", limits.PAUSE_TIMEOUT_DEFAULT)
    if not limits.within(timeout, limits.PAUSE_TIMEOUT):
        raise Refused("the registered pause_timeout %r is out of bounds; rerun `fab setup`" % (timeout,))
    return {
        "deploy_to": deploy_to,
        "release_id": args.get("release_id"),
        "pidfile": site["pidfile"],
        "pause": site.get("pause") if site.get("pause") in ("auto", "freeze", "sigstop") else "auto",
        "pause_timeout": timeout,
        "hold_ms": 0,
        "verify": site.get("verify") if args.get("verify") else None,
        "swap_back": bool(args.get("swap_back")),
        "restore": bool(args.get("restore")),
        "previous_depth": site.get("previous_depth", 1),
        "meta": meta_dir(deploy_to),
    }


def meta_dir(deploy_to):
    """The helper's own directory for one site's swap files (swap.pid, results, watchdog log):
    readable (the path's start, / as _) and one per site (a hash of the path: /srv/a_b and
    /srv/a/b read alike but never share a swap.pid)."""
    os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
    digest = hashlib.sha256(deploy_to.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    path = os.path.join(RUN_DIR, "%s-%s" % (deploy_to.strip("/").replace("/", "_")[:40], digest))
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path
