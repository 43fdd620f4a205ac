"""The sudo swap helper as the client knows it: the registration `fab setup` writes for a site, the
one sudoers line that lets the deploy user run it, and what `fab check` and the deploy's first
step find wrong with it on a server (tasks/remote/preflight.py gathers the facts there)."""

import json

from . import agent
from .remote.helper import HELPER_CONFIG
from .steps import health_args, protected_urls

SUDOERS_FILE = "/etc/sudoers.d/cutover"
# the registration's fields, as hosts.yaml names them
FIELDS = (
    ("user", "user"),
    ("pidfile", "httpd.pidfile"),
    ("pause", "httpd.pause"),
    ("pause_timeout", "httpd.pause_timeout"),
    ("previous_depth", "assets.releases"),
)
VERIFY_FIELDS = (
    ("urls", "health.url"),
    ("expect_status", "health.expect_status"),
    ("expect_text", "health.expect_text"),
    ("retries", "health.retries"),
    ("timeout", "health.timeout"),
    ("protected", "protected"),
)
SHOWN = 80  # characters of a registered or configured value in a message


def registration(host, deploy_user):
    """What the helper allows for this site: everything but the release id comes from here."""
    return {
        "user": deploy_user,
        "pidfile": host.httpd.pidfile,
        "pause_timeout": host.httpd.pause_timeout,
        "pause": host.httpd.pause,
        "verify": health_args(host.health, protected=protected_urls(host)) if host.health.urls else None,
        "previous_depth": host.assets.releases,
    }


def sudoers_line(user, executable):
    """The one sudoers line that lets `user` run the swap helper as root, and nothing else.

    executable: the server's Python as an absolute path (sudoers accepts no other).
    """
    return f"{user} ALL=(root) NOPASSWD: {' '.join(agent.helper_argv(executable)[2:])} swap *"


def probe_args(host):
    """What the server needs to answer for the helper: `sudo -n -l` of the very command the swap
    runs (sudo lists it if allowed, and runs nothing), and where the helper is."""
    argv = agent.helper_argv(host.python)
    return {"sudo": [*argv[:2], "-l", *argv[2:], "swap", json.dumps({"deploy_to": host.deploy_to})],
            "path": agent.HELPER}  # fmt: skip


def _shown(value):
    text = "none" if value is None else repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def differences(registered, expected):
    """The settings in which the registration differs from hosts.yaml, as "name (registered X,
    hosts.yaml Y)"."""
    out = [
        f"{name} (registered {_shown(registered.get(key))}, hosts.yaml {_shown(expected[key])})"
        for key, name in FIELDS
        if registered.get(key) != expected[key]
    ]
    old, new = registered.get("verify"), expected["verify"]
    if (old is None) != (new is None):
        out.append(
            f"health.url (registered {_shown(old and old.get('urls'))}, hosts.yaml {_shown(new and new['urls'])})"
        )
    elif old is not None:
        out += [
            f"{name} (registered {_shown(old.get(key))}, hosts.yaml {_shown(new[key])})"
            for key, name in VERIFY_FIELDS
            if old.get(key) != new[key]
        ]
    return out


ROOT_PYTHON = "set python: in hosts.yaml to a Python only root can change (e.g. /usr/bin/python3), then rerun setup"


def python_refusal(found, setup=False):
    """Why no sudoers line may name the Python the swap helper runs under (the server's
    preflight.helper_state says which, and who else can change it), or None when only root can."""
    why = found.get("executable_problem")
    if why is None:
        return None
    unsafe = f"{found['executable']}, which {found['user']} can replace ({why}), and so run anything as root"
    if found["sudo"]["allowed"]:
        return f"sudo lets {found['user']} run the swap helper as root under {unsafe}: remove that line from sudoers, {ROOT_PYTHON}"
    lead = "no sudoers line for the swap helper: it" if setup else "the swap helper"
    return f"{lead} would run as root under {unsafe}: {ROOT_PYTHON}"


def problems(host, found):
    """What would make the swap through the helper fail (or run with settings hosts.yaml no
    longer has), each with what to do; `found` is the server's preflight.helper_state."""
    out = []
    if found["helper_sha256"] is None:
        out.append(f"the swap helper {agent.HELPER} is not installed: run `fab setup`")
    elif found["helper_sha256"] != agent.helper_hash():
        out.append(f"the swap helper {agent.HELPER} is from another version of Cutover: run `fab setup`")
    elif found["registration_error"]:
        out.append(
            f"cannot read {HELPER_CONFIG} to compare the helper's registration with hosts.yaml "
            f"({found['registration_error']}): make it readable (mode 0644; it holds no secret), or rerun `fab setup`"
        )
    elif found["registration"] is None:
        out.append(f"{host.deploy_to} is not registered for the swap helper in {HELPER_CONFIG}: run `fab setup`")
    else:
        differ = differences(found["registration"], registration(host, found["user"]))
        if differ:
            out.append(
                f"the swap helper's registration in {HELPER_CONFIG} differs from hosts.yaml in {', '.join(differ)}: "
                "rerun `fab setup`"
            )
    sudo = found["sudo"]
    refused = python_refusal(found)
    if refused:
        out.append(refused)
    elif not sudo["allowed"]:
        out.append(
            f"sudo does not let {found['user']} run the swap helper (sudo -n -l: {sudo['said']}): add this line to "
            f"{SUDOERS_FILE} on the server (visudo -f {SUDOERS_FILE}):\n"
            f"    {sudoers_line(found['user'], found['executable'])}"
        )
    return out
