"""What would fail at the switch, found before anything is uploaded (the deploy's first step, and
`fab check`): whether sudo lets the deploy user run the swap helper, asked with `sudo -n -l`,
which runs nothing; the helper's version and its registration for this site, which the client
compares with hosts.yaml; whether the live release passes its health check.

Standard library only; this file runs on the server, as the deploy user.
"""

import json
import os
import pwd
import subprocess
import sys

from . import lock, paths
from .protocol import Refused

# install (with siteconf, apacheconf, pinmap) and health are imported where they are used: a root
# deploy user's preflight needs neither the helper's modules nor, in a rollback, the health check

SUDO_TIMEOUT = 15  # seconds `sudo -n -l` may take (a directory service behind sudo can be slow)
SUDO_SAID = 500  # characters of sudo's answer sent back


def sudo_allows(argv):
    """(whether sudo's policy lets this user run the command without a password prompt, what sudo
    said). argv is `sudo -n -l COMMAND...`: sudo lists the command if allowed and runs nothing."""
    if argv[:3] != ["sudo", "-n", "-l"]:
        raise Refused("the sudo probe must be `sudo -n -l ...`, which runs nothing")
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=SUDO_TIMEOUT)  # fmt: skip
    except FileNotFoundError:
        return False, "sudo is not installed on the server (apt-get install sudo)"
    except subprocess.TimeoutExpired:
        return False, "sudo gave no answer within %d s" % SUDO_TIMEOUT
    said = done.stdout.decode("utf-8", "replace").strip()
    if said.startswith("sudo: "):
        said = said[len("sudo: "):]
    return done.returncode == 0, said[-SUDO_SAID:] or "exit %d" % done.returncode


def registration(deploy_to):
    """(this site's entry of the helper's registration or None, why it could not be read or None)."""
    from .helper import HELPER_CONFIG

    try:
        with open(HELPER_CONFIG) as f:
            sites = json.load(f)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, "%s: %s" % (type(exc).__name__, getattr(exc, "strerror", None) or exc)
    site = sites.get(deploy_to) if isinstance(sites, dict) else None
    return (site if isinstance(site, dict) else None), None


def helper_state(deploy_to, probe):
    """What the client needs to tell whether the swap through the helper will work."""
    from . import install

    allowed, said = sudo_allows(probe["sudo"])
    site, unreadable = registration(deploy_to)
    return {
        "user": pwd.getpwuid(os.geteuid()).pw_name,
        "executable": sys.executable,
        # the sudoers line names this Python: one the deploy user could replace would run as root
        "executable_problem": install.replaceable(sys.executable),
        "sudo": {"allowed": allowed, "said": said},
        "helper_sha256": install.installed_hash(probe["path"]),
        "registration": site,
        "registration_error": unreadable,
    }


def unwritable(layout):
    """The directories of the layout (those that exist) this user may not write, each with its
    owner: deploy_to, releases/, shared/, .cutover/, maintenance/ and backups/ are the deploy
    user's (the web server's user owns only what it writes in shared/)."""
    out = []
    for path in (layout.deploy_to, layout.releases, layout.shared, layout.meta, layout.maintenance, layout.backups):
        try:
            owner = os.stat(path).st_uid
        except OSError:
            continue  # not made yet: setup or the first deploy makes it, as this user
        if not os.access(path, os.W_OK | os.X_OK):
            try:
                name = pwd.getpwuid(owner).pw_name
            except KeyError:
                name = "uid %d" % owner
            out.append({"path": path, "owner": name})
    return out


def missing_users(users):
    """The settings (web_user, migrate.user) naming a user this server does not have."""
    out = []
    for key, name in sorted(users.items()):
        try:
            pwd.getpwnam(name)
        except KeyError:
            out.append(key)
    return out


def server_state(layout, users):
    """What the deploy user and the users hosts.yaml names need of this server."""
    return {"unwritable": unwritable(layout), "missing_users": missing_users(users or {}),
            "me": pwd.getpwuid(os.geteuid()).pw_name}


def live_health(layout, verify, token=None):
    """{"release", "problem"}: the live release's health check as a switch to it would run it; no
    problem where nothing is deployed yet (setup's placeholder cannot hold the site's pages).
    token: the asking run's own lock, which is no other run's."""
    current = paths.current_release(layout)
    if current is None or current == paths.PLACEHOLDER:
        return {"release": current, "problem": None, "skipped": "nothing deployed yet"}
    from . import health

    problem = health.problem(verify, current)
    if problem is None:
        return {"release": current, "problem": None}
    # A run holding the lock may be switching the site right now (httpd paused, the live release
    # changing under the check): what failed may be its doing, and this run cannot go on while it
    # runs anyway. The lock step says who holds it; the live site is checked again next time.
    held = lock.owner(layout)
    others = held and held.get("alive") and (token is None or held.get("token") != token)
    now = paths.current_release(layout)
    if now != current:
        return {"release": current, "problem": None, "deferred": True, "switched_to": now,
                "skipped": "not checked yet: the live release changed to %s during the check" % now}  # fmt: skip
    if others:
        return {"release": current, "problem": None, "deferred": True,
                "skipped": "not checked yet: another run holds the lock"}  # fmt: skip
    return {"release": current, "problem": problem}


def op_preflight(a):
    """helper: {"sudo": argv, "path": the helper} for a deploy user who is not root; verify: the
    health settings, to check the live release with; users: {setting: user name} that must exist."""
    layout = paths.Layout(a["deploy_to"])
    out = server_state(layout, a.get("users"))
    if a.get("helper"):
        out.update(helper_state(layout.deploy_to, a["helper"]))
    if a.get("verify"):
        out["live"] = live_health(layout, a["verify"], a.get("token"))
    return out
