"""`fab -H GROUP setup`: prepare each server once: the layout, and the swap helper for non-root users."""

import dataclasses

from invoke import task

from . import apache, ssh
from .check import render_table
from .cli import boundary, say, target
from .errors import ConfigError, CutoverError
from .fleet import HostRun, Run, close, connect, in_parallel, owner_record


def sudoers_line(user, python):
    """The one sudoers line that lets `user` run the swap helper as root, and nothing else."""
    return f"{user} ALL=(root) NOPASSWD: {' '.join(ssh.helper_argv(python)[2:])} swap *"


def install_helper(r, admin_user):
    """Connect as the admin user and install the root-owned swap helper for this host's site."""
    admin = dataclasses.replace(r.host, user=admin_user)
    with ssh.connect(admin) as conn:
        ssh.agent(
            conn,
            "install helper",
            "install_helper",
            python=r.host.python,
            host_name=r.name,
            path=ssh.HELPER,
            source=ssh.remote_script("agent.py"),
            deploy_to=r.host.deploy_to,
            pidfile=r.host.httpd.pidfile,
            user=r.deploy_user,
        )


@task(help={"admin-user": "the user (root, or one that can become root) that installs the swap helper (default root)"})
@boundary
def setup(c, admin_user="root"):
    """Create the layout on each host; for a non-root deploy user install the swap helper."""
    if not admin_user or not all(ch.isalnum() or ch in "._-" for ch in admin_user):
        raise ConfigError(f"--admin-user {admin_user!r} is not a user name")
    run = Run("setup", "", [HostRun(h) for h in target(c).hosts], owner_record("setup"))
    rows = [["host", "deploy_to", "created", "live release", "swap helper"]]
    lines = []

    def one(r):
        answer = r.agent("setup", "setup", shared=list(r.host.shared), snippet=apache.snippet(r.host))
        r.deploy_user = answer["user"]
        helper = "not needed (root)" if not r.uses_helper else "installed"
        if r.uses_helper:
            try:
                install_helper(r, admin_user)
            except CutoverError as exc:
                helper = "NOT installed"
                lines.append(f"{r.name}: the swap helper could not be installed as {admin_user}: {exc.message}")
            lines.append(
                f"{r.name}: add this line to /etc/sudoers.d/cutover on the server (visudo -f):\n"
                f"    {sudoers_line(r.deploy_user, r.host.python)}"
            )
        rows.append([r.name, r.host.deploy_to, str(len(answer["created"])), answer["current"] or "-", helper])
        say(r.host, "setup", 0, f"Apache snippet for maintenance mode: Include {answer['snippet']}")

    try:
        connect(run)
        in_parallel(run.hosts, one)
    finally:
        close(run)
    print(render_table(rows))
    for line in lines:
        print(line)
    if any(row[-1] == "NOT installed" for row in rows[1:]):
        raise CutoverError("the swap helper is missing on some hosts; see above")
