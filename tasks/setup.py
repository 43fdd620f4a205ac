"""`fab -H GROUP setup`: prepare each server once: the layout, Cutover's Apache rules, and the swap
helper for a deploy user who is not root."""

import dataclasses

from invoke import task

from . import agent, apache, ssh
from .cli import boundary, target
from .errors import ConfigError, CutoverError
from .fleet import in_parallel, on_group
from .output import say, table
from .steps import health_args, protected_urls


def sudoers_line(user, executable):
    """The one sudoers line that lets `user` run the swap helper as root, and nothing else.

    executable: the server's Python as an absolute path (sudoers accepts no other).
    """
    return f"{user} ALL=(root) NOPASSWD: {' '.join(agent.helper_argv(executable)[2:])} swap *"


def registration(r, deploy_user):
    """What the helper allows for this site: everything but the release id comes from here."""
    h = r.host
    return {
        "user": deploy_user,
        "pidfile": h.httpd.pidfile,
        "pause_timeout": h.httpd.pause_timeout,
        "pause": h.httpd.pause,
        "verify": health_args(h.health, protected=protected_urls(h)) if h.health.urls else None,
        "previous_depth": h.assets.releases,
    }


def install_helper(r, admin_user, deploy_user):
    """Connect as the admin user and install the root-owned swap helper for this host's site."""
    admin = dataclasses.replace(r.host, user=admin_user)
    with ssh.connect(admin) as conn:
        return agent.call(conn, r.name, r.host.python, "install helper", "install_helper", {
            "path": agent.HELPER, "program": agent.helper_program(), "deploy_to": r.host.deploy_to,
            "site": registration(r, deploy_user),
        }, 60)  # fmt: skip


@task(help={"admin-user": "the user (root, or one that can become root) that installs the swap helper (default root)"})
@boundary
def setup(c, admin_user="root"):
    """Create the layout on each host; for a non-root deploy user install the swap helper."""
    if not admin_user or not all(ch.isalnum() or ch in "._-" for ch in admin_user):
        raise ConfigError(f"--admin-user {admin_user!r} is not a user name")
    rows = [["host", "deploy_to", "created", "live release", "swap helper"]]
    lines = []

    def one(r):
        answer = r.call(
            "setup", "setup", rules=apache.snippet(r.host), serve=r.host.serve, pidfile=r.host.httpd.pidfile
        )
        helper = "not needed (root)" if not r.uses_helper else "installed"
        if r.uses_helper:
            try:
                install_helper(r, admin_user, answer["user"])
            except CutoverError as exc:
                helper = "NOT installed"
                lines.append(f"{r.name}: the swap helper could not be installed as {admin_user}: {exc.message}")
            lines.append(
                f"{r.name}: add this line to /etc/sudoers.d/cutover on the server (visudo -f):\n"
                f"    {sudoers_line(answer['user'], answer['executable'])}"
            )
        rows.append([r.name, r.host.deploy_to, str(len(answer["created"])), answer["current"] or "-", helper])
        say(r.host, "setup", 0, f"Cutover's Apache rules: Include {answer['rules']}")
        say(r.host, "setup", 0, apache.site_blocks_line(r.host, answer))

    on_group("setup", target(c), lambda run: in_parallel(run.hosts, one))
    print(table(rows))
    for line in lines:
        print(line)
    if any(row[-1] == "NOT installed" for row in rows[1:]):
        raise CutoverError("the swap helper is missing on some hosts; see above")
