"""`fab sandbox-up` / `sandbox-down`: two lab servers on this machine to deploy the example site to.

The sandbox uses fixed ports and paths so that the `sandbox` group of the shipped hosts.yaml
reaches it with no further setup.
"""

import os
import shlex

from invoke import task

from . import cli, hostsfile
from .cli import boundary
from .errors import ConfigError, CutoverError

SANDBOX_DIR = "/tmp/cutover-sandbox"
SANDBOX_PORTS = [(2201, 8081), (2202, 8082)]


@task(help={"mpm": "Apache MPM of the sandbox servers: event (default) or prefork"})
@boundary
def sandbox_up(c, mpm="event"):
    """Start two local lab servers (sshd + Apache on 127.0.0.1) as group `sandbox`."""
    if mpm not in ("event", "prefork"):
        raise ConfigError(f"--mpm must be event or prefork, got {mpm!r}")
    import lab  # the lab (and what it imports) only for the sandbox's own tasks: every fab starts quicker

    if os.path.exists(SANDBOX_DIR):
        # a sandbox left up, half made by a failed start, or with an Apache restarted by hand
        lab.stop(SANDBOX_DIR)
        print(f"sandbox: stopped and removed the one left in {SANDBOX_DIR}")
    try:
        sandbox = lab.start(SANDBOX_DIR, count=len(SANDBOX_PORTS), mpm=mpm, ports=SANDBOX_PORTS)
    except CutoverError:
        lab.stop(SANDBOX_DIR)  # nothing half made stays behind to block the next sandbox-up
        raise
    for s in sandbox.servers:
        print(f"{s.name}: ssh 127.0.0.1:{s.ssh_port}, site {s.url}, deploy_to {s.deploy_to}")
    print(f"sandbox up: try `{_command()} -H sandbox check`, then `{_command()} -H sandbox deploy`")


def _command():
    """The command that reaches the sandbox: the installed command names Cutover's own hosts.yaml,
    which holds the sandbox group (from any directory); fab is run in Cutover's checkout."""
    if not cli.PROGRAM:
        return "fab"
    from .init import fab_command

    own = hostsfile.PROJECT_DIR / "hosts.yaml"
    return f"{hostsfile.HOSTS_FILE_ENV}={shlex.quote(str(own))} {fab_command()}"


@task
@boundary
def sandbox_down(c):
    """Stop the sandbox servers (by the PIDs it recorded or its pidfiles name) and remove its directory."""
    import lab

    if lab.stop(SANDBOX_DIR):
        print(f"sandbox down: {SANDBOX_DIR} removed")
    else:
        print(f"sandbox down: no sandbox in {SANDBOX_DIR}; nothing to stop")
