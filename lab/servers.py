"""Lab servers on loopback: a real OpenSSH sshd and a real Apache httpd per server.

Backs `fab sandbox-up` / `sandbox-down` and the test suite. Each server gets throwaway keys,
free ports on 127.0.0.1, its own deploy_to, and is stopped by the PIDs the lab recorded.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.errors import CutoverError

from .backends import start_fpm, start_mariadb, wait_for
from .cgroups import make_cgroup
from .link import entering, profile
from .link import up as link_up
from .render import PHP_MODES, render, render_apache, write_hosts_file
from .stopping import APACHE, SSHD, stop_server

# A server's login shell is lean; a developer machine's root ~/.bashrc may not be (pyenv init costs
# 0.2 s of CPU per SSH command here). bash sources ~/.bashrc for a command from sshd only while
# SHLVL < 2: starting it at 1 skips it, as a server's shell without such a ~/.bashrc would be.
LEAN_SHELL = "SetEnv SHLVL=1"
STATE_FILE = "lab.json"


@dataclass
class LabServer:
    """One lab server as recorded in lab.json."""

    name: str
    root: str
    ssh_port: int
    http_port: int
    deploy_to: str
    pidfile: str
    sshd_pid: int
    httpd_pid: int
    mounted: bool = False  # deploy_to is a file system of its own, unmounted at stop
    mpm: str = "event"
    php: str | None = None  # None, "mod_php" (prefork) or "fpm" (php-fpm through proxy_fcgi)
    fpm_pid: int = 0
    mariadb_pid: int = 0  # a MariaDB server of this lab server's own (database shop), or 0
    site_conf: str = ""  # the site's own Apache config (as an operator writes it), @@deploy_to@@ filled in
    allow_override: str = "None"  # AllowOverride of the site's directory (All: the app's .htaccess files)
    workers: int = 0  # prefork: a fixed pool of this many children (0: the template's 4 to 16)
    cgroup: str = ""  # the cgroup v2 directory Apache runs in (as under systemd), or "" (none made)
    listen_backlog: int = 0  # Apache's ListenBacklog (0: Apache's default, 511)
    lean_shell: bool = True  # sshd skips the login user's ~/.bashrc, as on a server (LEAN_SHELL)
    link: str = "loopback"  # the link profile (lab/link.py)
    address: str = "127.0.0.1"  # where sshd and Apache listen: loopback, or the far end of the link
    netns: str = ""  # the network namespace of a link profile's server
    wire_pid: int = 0  # its link's delay element
    oracle_port: int = 0  # the same site without Cutover's rules on this port (render.py), or 0
    merge_slashes: str = "On"  # Apache's MergeSlashes for the site

    @property
    def url(self):
        return f"http://{self.address}:{self.http_port}/"

    @property
    def httpd_conf(self):
        return f"{self.root}/apache/httpd.conf"

    @property
    def site_conf_file(self):
        """The site's VirtualHost, included by httpd_conf."""
        return f"{self.root}/apache/site.conf"


@dataclass
class Lab:
    root: Path
    servers: list
    key: Path
    known_hosts: Path

    @property
    def hosts_file(self):
        return self.root / "hosts.yaml"


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count):
    """`count` different TCP ports on 127.0.0.1 that nothing listens on right now (each socket is
    held until all are chosen: one port closed and asked for again may come back)."""
    held = [socket.socket() for _ in range(count)]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def _keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cutover-lab", "-f", str(path)], check=True)


def _listening(port, address="127.0.0.1"):
    with socket.socket() as s:
        s.settimeout(0.2)
        if s.connect_ex((address, port)) != 0:
            return False
        # a connect from the same ephemeral port to itself succeeds with nothing listening
        return s.getsockname() != s.getpeername()


def _http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status < 500
    except OSError:
        return False


def apply_rules(lab):
    """Re-render every server's Apache config from hosts.yaml; gracefully restart those that changed."""
    for server in lab.servers:
        if render_apache(lab, server):
            graceful_restart(server)


def graceful_restart(server):
    """`apachectl graceful` by PID, and wait until the new generation of children serves."""
    log = Path(server.root, "apache", "error.log")
    mark = log.stat().st_size if log.exists() else 0
    os.kill(server.httpd_pid, signal.SIGUSR1)

    def restarted():
        with open(log, "rb") as f:
            f.seek(mark)
            return b"resuming normal operations" in f.read() and _http_ok(server.url)

    wait_for(restarted, f"the graceful restart of Apache of {server.name} (see {log})")


def start_server(lab, server, client_pub, tmpfs_mb=None, ext4_mb=None):
    """Start one server's sshd, php-fpm (if asked) and Apache under its root, on its ports.

    tmpfs_mb: put deploy_to on a tmpfs of that size, to fill the disk in fault tests.
    ext4_mb: put deploy_to on a new ext4 file system of that size (a sparse image file, loop
    mounted), so that benchmarks do not measure what earlier runs left on the shared disk:
    creating a file on an ext4 where many files were deleted moments ago costs several times
    more (the inode allocator checks recently deleted inodes).
    """
    base = Path(server.root)
    for sub in ("ssh", "apache/run", "site"):
        (base / sub).mkdir(parents=True)
    for d in (base, base / "apache", base / "site"):
        d.chmod(0o755)  # Apache's children (www-data) must reach the site
    # sshd reads authorized_keys as the user logging in: the directory must let every user in.
    # The host key itself stays 0600.
    (base / "ssh").chmod(0o755)
    for port in (server.ssh_port, server.http_port, server.oracle_port):
        if port and _listening(port, server.address):
            raise CutoverError(f"lab: port {port} on {server.address} is already in use")
    deploy_to = server.deploy_to
    if tmpfs_mb:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_mb}m,mode=0755", "tmpfs", deploy_to], check=True)
    elif ext4_mb:
        image = base / "site.img"
        with open(image, "wb") as f:
            f.truncate(ext4_mb * 2**20)
        init = "lazy_itable_init=0,lazy_journal_init=0"  # no initialisation left running in the background
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", init, str(image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), deploy_to], check=True)
        Path(deploy_to).chmod(0o755)
    server.mounted = bool(tmpfs_mb or ext4_mb)

    _keygen(base / "ssh" / "host_ed25519")
    shutil.copy(client_pub, base / "ssh" / "authorized_keys")
    render("sshd_config", base / "ssh" / "sshd_config", root=base, address=server.address, ssh_port=server.ssh_port,
           login_shell=LEAN_SHELL
           if server.lean_shell else "# the login shell as this machine's users have it")  # fmt: skip
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    with open(base / "ssh" / "sshd.log", "ab") as log:
        sshd = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(base / "ssh" / "sshd_config")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=entering(server.netns),
        )
    server.sshd_pid = sshd.pid
    if server.php == "fpm":
        start_fpm(server)
    if server.mariadb_pid == -1:  # asked for at start
        start_mariadb(server)
    render_apache(lab, server)
    procs = os.path.join(server.cgroup, "cgroup.procs") if server.cgroup else None
    enter = entering(server.netns)

    def placed():  # in the child, before Apache runs: its cgroup and network namespace
        if procs:
            Path(procs).write_text(str(os.getpid()))
        if enter:
            enter()

    with open(base / "apache" / "stdout.log", "ab") as log:
        httpd = subprocess.Popen(
            [APACHE, "-f", server.httpd_conf, "-DFOREGROUND"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=placed if procs or enter else None,
        )
    server.httpd_pid = httpd.pid
    wait_for(
        lambda: sshd.poll() is None and _listening(server.ssh_port, server.address),
        f"sshd of {server.name} (see {base}/ssh/sshd.log)",
    )
    wait_for(
        lambda: httpd.poll() is None and Path(server.pidfile).exists() and _http_ok(server.url),
        f"Apache of {server.name} (see {base}/apache/error.log)",
    )


def start(
    root,
    count=1,
    mpm="event",
    ports=None,
    tmpfs_mb=None,
    ext4_mb=None,
    php=None,
    site_conf="",
    allow_override="None",
    mariadb=False,
    workers=0,
    cgroup=True,
    listen_backlog=0,
    lean_shell=True,
    link="loopback",
    oracle=False,
    merge_slashes="On",
    **settings,
):
    """Start `count` lab servers under root (a new directory); writes lab.json and hosts.yaml.

    ports: optional list of (ssh_port, http_port), one pair per server; default free ports.
    php: None, "mod_php" (Apache's prefork MPM with mod_php) or "fpm" (php-fpm through proxy_fcgi).
    site_conf: Apache config of the site itself, as an operator writes it (@@deploy_to@@ is filled in),
    inside its VirtualHost.
    allow_override: AllowOverride of the site's directory: None, or All for an app's .htaccess files.
    workers: prefork only, a fixed pool of this many children.
    listen_backlog: Apache's ListenBacklog (0: its default, 511).
    lean_shell: sshd starts commands without the login user's ~/.bashrc (LEAN_SHELL); False: as
    this machine's users get them.
    link: the link profile between this machine and each server (lab/link.py): loopback, lan, wan.
    cgroup: run each Apache in a cgroup v2 of its own, as systemd runs a service (where cgroup v2
    is mounted and writable), so the swap can freeze it; False: in the caller's cgroup.
    oracle: each Apache also serves the same site without Cutover's rules, on a port of its own
    (LabServer.oracle_port); merge_slashes: Apache's MergeSlashes (On, its default, or Off).
    settings: hosts.yaml defaults for the lab's group (see write_hosts_file).
    """
    if os.geteuid() != 0:
        raise CutoverError("lab: lab servers run their own sshd, which needs root; run as root")
    for needed in (SSHD, APACHE, "/usr/bin/rsync"):
        if not os.path.exists(needed):
            raise CutoverError(f"lab: {needed} is missing; apt-get install openssh-server apache2 rsync")
    if php not in PHP_MODES:
        raise CutoverError(f"lab: php must be one of {PHP_MODES}, not {php!r}")
    if php == "mod_php":
        mpm = "prefork"  # mod_php is not thread-safe
    linked = profile(link) is not None
    root = Path(root)
    if root.exists():
        raise CutoverError(f"lab: {root} already exists (a lab still up?); stop it first or remove it")
    root.mkdir(parents=True)
    root.chmod(0o755)
    client_key = root / "client_ed25519"
    _keygen(client_key)
    lab = Lab(root, [], client_key, root / "known_hosts")
    chosen = free_ports(3 * count)  # all different, ssh, http and the oracle's for each server
    for i in range(1, count + 1):
        ssh_port, http_port = ports[i - 1] if ports else chosen[2 * i - 2 : 2 * i]
        oracle_port = chosen[2 * count + i - 1] if oracle else 0
        base = root / f"lab{i}"
        lab.servers.append(
            LabServer(
                f"lab{i}", str(base), ssh_port, http_port, str(base / "site"), str(base / "apache" / "run" / "httpd.pid"),
                0, 0, mpm=mpm, php=php, site_conf=site_conf, allow_override=allow_override,
                mariadb_pid=-1 if mariadb else 0, workers=workers, cgroup=make_cgroup(f"lab{i}") if cgroup else "",
                listen_backlog=listen_backlog, lean_shell=lean_shell, oracle_port=oracle_port,
                merge_slashes=merge_slashes,
            )
        )  # fmt: skip
    try:
        for server in lab.servers:
            if linked:
                server.link = link
                server.netns, server.address, server.wire_pid = link_up(link)
                _save(lab)
        write_hosts_file(lab, **settings)
        for server in lab.servers:
            try:
                start_server(lab, server, f"{client_key}.pub", tmpfs_mb, ext4_mb)
            finally:
                _save(lab)  # whatever started is recorded, so that stop() finds it
            host_pub = Path(server.root, "ssh", "host_ed25519.pub").read_text().split()
            with open(lab.known_hosts, "a") as f:
                f.write(f"[{server.address}]:{server.ssh_port} {host_pub[0]} {host_pub[1]}\n")
    except BaseException:
        stop(root, remove=False)  # keep the logs the error points at
        raise
    return lab


def _save(lab):
    state = {
        "key": str(lab.key),
        "known_hosts": str(lab.known_hosts),
        "servers": [asdict(s) for s in lab.servers],
    }
    (lab.root / STATE_FILE).write_text(json.dumps(state, indent=2))


def load(root):
    """The Lab recorded under root."""
    root = Path(root)
    state = json.loads((root / STATE_FILE).read_text())
    servers = [LabServer(**s) for s in state["servers"]]
    return Lab(root, servers, Path(state["key"]), Path(state["known_hosts"]))


def stop(root, remove=True):
    """Stop every server of the lab under root by PID, then remove the directory; returns whether
    a lab was there."""
    root = Path(root)
    found = (root / STATE_FILE).exists()
    if found:
        for server in load(root).servers:
            stop_server(server)
    if remove:
        shutil.rmtree(root, ignore_errors=True)
    return found


def pids(lab):
    """Every PID the lab started (httpd parents, sshd listeners, php-fpm masters, MariaDB servers)."""
    return [p for s in lab.servers for p in (s.httpd_pid, s.sshd_pid, s.fpm_pid, s.mariadb_pid) if p > 0]
