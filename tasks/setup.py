"""`fab -H GROUP setup`: prepare each server once: the layout, Cutover's Apache rules, and the swap
helper for a deploy user who is not root (installed through an admin login, or written to local
files that root installs by hand)."""

import dataclasses
import json
import os
from pathlib import Path

from invoke import task

from .cli import boundary, target
from .errors import ConfigError, CutoverError
from .output import say, table

# What setup does on the servers is imported by the functions that do it: `fab --list` loads none of it.


def sudoers_line(user, python):
    """swaphelper.sudoers_line (where tests and older callers find it)."""
    from .swaphelper import sudoers_line

    return sudoers_line(user, python)


def install_helper(r, admin_user, deploy_user):
    """Connect as the admin user and install the root-owned swap helper for this host's site; an
    admin who is not root becomes root with `sudo -n` (no password prompt can be answered here)."""
    from . import agent, ssh, swaphelper

    admin = dataclasses.replace(r.host, user=admin_user)
    with ssh.connect(admin) as conn:
        sudo = admin_user != "root"
        if sudo:
            became = ssh.run(conn, "install helper", ["sudo", "-n", "true"], check=False)
            if became.exited != 0:
                said = (became.stderr or became.stdout).strip().removeprefix("sudo: ") or f"exit {became.exited}"
                raise CutoverError(
                    f"{admin_user} cannot become root with sudo -n ({said}): give it passwordless sudo, connect "
                    "as root (--admin-user root), or install the helper by hand (--helper-files, README)"
                )
        return agent.call(conn, r.name, r.host.python, "install helper", "install_helper", {
            "path": agent.HELPER, "program": agent.helper_program(), "deploy_to": r.host.deploy_to,
            "site": swaphelper.registration(r.host, deploy_user),
        }, 60, sudo=sudo)  # fmt: skip


def write_helper_files(directory, registered):
    """The helper and the registration (deploy_to -> site) as root installs them by hand."""
    from . import agent

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "swap-helper").write_text(agent.helper_program())
    (directory / "helper.json").write_text(json.dumps(registered, indent=2, sort_keys=True) + "\n")


def by_hand(directory):
    """What root runs on the server to install the files --helper-files wrote."""
    from . import agent
    from .remote.helper import HELPER_CONFIG

    return (
        f"as root on the server, with the files of {directory} copied there:\n"
        f"    install -D -m 0755 -o root -g root swap-helper {agent.HELPER}\n"
        f"    install -D -m 0644 -o root -g root helper.json {HELPER_CONFIG}"
        "   (where it exists already: add this file's sites to it)"
    )


@task(
    help={
        "admin-user": "the user (root, or one that becomes root with passwordless sudo) that installs the swap "
        "helper (default root)",
        "helper-files": "install no helper: write it and its registration into this local directory, for root to "
        "install by hand (README)",
    }
)
@boundary
def setup(c, admin_user="root", helper_files=None):
    """Create the layout on each host; for a non-root deploy user install the swap helper."""
    from . import apache, swaphelper
    from .fleet import in_parallel, on_group

    if not admin_user or not all(ch.isalnum() or ch in "._-" for ch in admin_user):
        raise ConfigError(f"--admin-user {admin_user!r} is not a user name")
    files = _helper_files(helper_files)
    rows = [["host", "deploy_to", "created", "live release", "swap helper"]]
    lines, registered, unsafe = [], {}, []

    def one(r):
        answer = r.call(
            "setup", "setup", rules=apache.snippet(r.host), serve=r.host.serve, pidfile=r.host.httpd.pidfile
        )
        helper = "not needed (root)" if not r.uses_helper else "installed"
        if r.uses_helper and files is not None:
            helper = f"written to {files}"
            site = swaphelper.registration(r.host, answer["user"])
            if registered.setdefault(r.host.deploy_to, site) != site:
                raise ConfigError(
                    f"two hosts register {r.host.deploy_to} with different settings for one helper.json",
                    hint="write the files for one host at a time (-H HOST --helper-files DIR)",
                )
        elif r.uses_helper:
            try:
                install_helper(r, admin_user, answer["user"])
            except CutoverError as exc:
                helper = "NOT installed"
                lines.append(f"{r.name}: the swap helper could not be installed as {admin_user}: {exc.message}")
        if r.uses_helper:
            said, refused = _sudo_lines(r, answer)
            lines.extend(said)
            if refused:
                unsafe.append(r.name)
        rows.append([r.name, r.host.deploy_to, str(len(answer["created"])), answer["current"] or "-", helper])
        say(r.host, "setup", 0, f"Cutover's Apache rules: Include {answer['rules']}")
        say(r.host, "setup", 0, apache.site_blocks_line(r.host, answer))

    on_group("setup", target(c), lambda run: in_parallel(run.hosts, one))
    if files is not None and registered:
        write_helper_files(files, registered)
        lines.insert(0, by_hand(files))
    print(table(rows))
    for line in lines:
        print(line)
    if any(row[-1] == "NOT installed" for row in rows[1:]):
        raise CutoverError("the swap helper is missing on some hosts; see above")
    if unsafe:
        raise CutoverError(f"no sudoers line may name the Python of {', '.join(sorted(unsafe))}; see above")


def _helper_files(given):
    """--helper-files: a local directory that is, or can be made (its parent exists), and that this
    user may write; refused before any server is touched. None without the option."""
    if given is None:
        return None
    if not given:
        raise ConfigError("--helper-files: give the local directory to write the swap helper and its registration into")
    path = Path(given).expanduser().resolve()
    problem = None
    if path.exists() and not path.is_dir():
        problem = "is a file, not a directory"
    elif not path.exists() and not path.parent.is_dir():
        problem = f"{path.parent} does not exist"
    elif not os.access(path if path.exists() else path.parent, os.W_OK | os.X_OK):
        problem = f"{path if path.exists() else path.parent} is not writable by this user"
    if problem:
        raise ConfigError(f"--helper-files {given}: {problem}; nothing was changed")
    return path


def _sudo_lines(r, answer):
    """The sudoers line to add, unless sudo already lets the deploy user run the helper; never one
    naming a Python the deploy user could replace (the second value: whether that refused it)."""
    from . import swaphelper

    found = r.call("sudo", "preflight", helper=swaphelper.probe_args(r.host))
    refused = swaphelper.python_refusal(found, setup=True)
    if refused:
        return [f"{r.name}: {refused}"], True
    if found["sudo"]["allowed"]:
        return [f"{r.name}: sudo lets {answer['user']} run the swap helper already"], False
    return [
        f"{r.name}: add this line to {swaphelper.SUDOERS_FILE} on the server (visudo -f {swaphelper.SUDOERS_FILE}):\n"
        f"    {sudoers_line(answer['user'], answer['executable'])}"
    ], False
