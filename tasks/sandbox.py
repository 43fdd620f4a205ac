"""`fab sandbox-up` / `sandbox-down`: two lab servers on this machine to deploy the example site to,
or a PHP application (`--php`).

The sandbox uses fixed ports and paths so that the `sandbox` group of the shipped hosts.yaml
reaches it with no further setup.
"""

import os
import shlex

from invoke import task

from . import cli
from .cli import boundary
from .errors import ConfigError, CutoverError
from .output import shown

SANDBOX_DIR = "/tmp/cutover-sandbox"
SANDBOX_PORTS = [(2201, 8081), (2202, 8082)]
MPMS = ("event", "prefork")
PHP = ("mod_php", "fpm")
APACHE = "/usr/sbin/apache2"


def check_options(mpm, php):
    """The MPM the sandbox's Apache runs: --mpm, else prefork for mod_php (which needs it), else event."""
    if php is not None and php not in PHP:
        raise ConfigError(f"--php {shown(php)}: give mod_php (Apache's prefork MPM) or fpm (php-fpm, any MPM)")
    if mpm is not None and mpm not in MPMS:
        raise ConfigError(f"--mpm {shown(mpm)}: give event or prefork")
    if php == "mod_php" and mpm == "event":
        raise ConfigError("--php mod_php needs the prefork MPM: leave --mpm out, or give --mpm prefork")
    return mpm or ("prefork" if php == "mod_php" else "event")


def start_sandbox(root, ports, mpm="event", php=None):
    """Start the lab servers of a sandbox under root; returns the lines that say where each is.

    With PHP, each site's directory has `AllowOverride All` (an app's .htaccess files), as
    README.md's VirtualHost for a PHP application has it."""
    import lab  # the lab (and what it imports) only for the sandbox's own tasks: every fab starts quicker

    sandbox = lab.start(root, count=len(ports), mpm=mpm, ports=ports, php=php, allow_override="All" if php else "None")
    lines = []
    for s in sandbox.servers:
        lines += [
            f"{s.name}: ssh 127.0.0.1:{s.ssh_port}, site {s.url}, deploy_to {s.deploy_to}",
            f"  Apache {mpm}{' with ' + php if php else ''}: {s.httpd_conf}; the site's VirtualHost: {s.site_conf_file}",
            f"  after changing them: {APACHE} -f {s.httpd_conf} -k graceful",
        ]
    return lines


@task(
    help={
        "mpm": "Apache MPM of the sandbox servers: event (default) or prefork (the default with --php mod_php)",
        "php": "PHP for the sandbox servers' Apache: mod_php (prefork MPM) or fpm (php-fpm); default none",
    }
)
@boundary
def sandbox_up(c, mpm=None, php=None):
    """Start two local lab servers (sshd + Apache on 127.0.0.1) as group `sandbox`."""
    mpm = check_options(mpm, php)
    import lab

    if os.path.exists(SANDBOX_DIR):
        # a sandbox left up, half made by a failed start, or with an Apache restarted by hand
        lab.stop(SANDBOX_DIR)
        print(f"sandbox: stopped and removed the one left in {SANDBOX_DIR}")
    try:
        lines = start_sandbox(SANDBOX_DIR, SANDBOX_PORTS, mpm, php)
    except CutoverError:
        lab.stop(SANDBOX_DIR)  # nothing half made stays behind to block the next sandbox-up
        raise
    print("\n".join(lines))
    print(f"sandbox up: try `{_command()} -H sandbox check`, then `{_command()} -H sandbox deploy`")


def _command():
    """The command that reaches the sandbox: the installed command names Cutover's own hosts.yaml,
    which holds the sandbox group (from any directory); fab is run in Cutover's checkout."""
    from . import hostsfile

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
