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
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from . import apache, hostsfile
from .errors import CutoverError
from .hostsfile import BUILTIN, Maintenance
from .layout import Layout

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SSHD = "/usr/sbin/sshd"
APACHE = "/usr/sbin/apache2"
STATE_FILE = "lab.json"
PLACEHOLDER_RELEASE = "19700101T000000Z-placeholder"


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
    site_conf: str = ""  # the site's own Apache config (as an operator writes it), @@deploy_to@@ filled in

    @property
    def url(self):
        return f"http://127.0.0.1:{self.http_port}/"

    @property
    def httpd_conf(self):
        return f"{self.root}/apache/httpd.conf"


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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _render(template, path, **values):
    text = (TEMPLATES / "lab" / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", str(value))
    Path(path).write_text(text)


def _keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cutover-lab", "-f", str(path)], check=True)


def _wait_for(check, what, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise CutoverError(f"lab: {what} did not come up within {timeout} s")


def _listening(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status < 500
    except OSError:
        return False


def _placeholder_release(deploy_to, serve=""):
    """Apache will not start without its DocumentRoot: give current a first release."""
    layout = Layout(deploy_to)
    release = Path(layout.release(PLACEHOLDER_RELEASE))
    (release / serve).mkdir(parents=True)
    (release / serve / "index.html").write_text(
        '<!doctype html><meta name="release" content="placeholder"><title>Cutover sandbox</title>'
        "<p>Nothing deployed yet.</p>\n"
    )
    for d in (layout.shared, layout.meta):
        Path(d).mkdir(parents=True, exist_ok=True)
    os.symlink(f"releases/{PLACEHOLDER_RELEASE}", layout.current)
    # Apache's RewriteMap (templates/apache.conf) must exist before Apache starts
    Path(layout.meta, "maps").mkdir()
    Path(layout.meta, "maps", f"{PLACEHOLDER_RELEASE}.map").write_text(f"current {PLACEHOLDER_RELEASE}\n")
    os.symlink(f"maps/{PLACEHOLDER_RELEASE}.map", Path(layout.meta, "release.map"))


# The lab's maintenance settings: the defaults, plus a health path for the tests.
LAB_MAINTENANCE = Maintenance(
    **{**BUILTIN["maintenance"], "allow": tuple(BUILTIN["maintenance"]["allow"]), "health_path": "/health.txt"}
)
PHP_MODES = (None, "mod_php", "fpm")


def _program(pattern):
    """The newest installed program or module matching a glob (php-fpm8.2, libphp8.2.so ...)."""
    found = sorted(Path("/").glob(pattern.lstrip("/")))
    if not found:
        raise CutoverError(f"lab: nothing matches {pattern}; apt-get install libapache2-mod-php php-fpm")
    return str(found[-1])


def _php_conf(server):
    """The Apache lines that hand .php files to PHP: mod_php in the prefork MPM, or php-fpm over FastCGI."""
    if server.php == "mod_php":
        return (
            f"LoadModule php_module {_program('/usr/lib/apache2/modules/libphp*.so')}\n"
            '<FilesMatch ".+\\.ph(?:ar|p|tml)$">\n    SetHandler application/x-httpd-php\n</FilesMatch>'
        )
    if server.php == "fpm":
        return (
            "LoadModule proxy_module /usr/lib/apache2/modules/mod_proxy.so\n"
            "LoadModule proxy_fcgi_module /usr/lib/apache2/modules/mod_proxy_fcgi.so\n"
            '<FilesMatch ".+\\.ph(?:ar|p|tml)$">\n'
            f'    SetHandler "proxy:unix:{server.root}/php/fpm.sock|fcgi://localhost"\n</FilesMatch>'
        )
    return ""


def render_apache(lab, server):
    """Write the server's httpd.conf and Cutover's rules from the lab's hosts.yaml; True if either changed.

    The rules are what `fab setup` writes for that host (tasks/apache.py), so the lab serves
    through exactly the rules a production server would.
    """
    host = hostsfile.load(lab.hosts_file).resolve(server.name).hosts[0]
    base = Path(server.root, "apache")
    rules = base / "conf.d" / "cutover.conf"
    conf = Path(server.httpd_conf)
    before = [p.read_text() if p.exists() else None for p in (rules, conf)]
    rules.write_text(apache.snippet(host))
    _render(
        "httpd.conf",
        conf,
        root=base,
        name=server.name,
        http_port=server.http_port,
        pidfile=server.pidfile,
        mpm=server.mpm,
        deploy_to=server.deploy_to,
        document_root=apache.document_root(host),
        php=_php_conf(server),
        site_conf=server.site_conf.replace("@@deploy_to@@", server.deploy_to),
    )
    return before != [rules.read_text(), conf.read_text()]


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

    _wait_for(restarted, f"the graceful restart of Apache of {server.name} (see {log})")


def _start_fpm(server):
    """php-fpm with one pool of the lab's own (www-data, a socket under the server's root)."""
    run = Path(server.root, "php")
    run.mkdir()
    (run / "fpm.conf").write_text(
        f"[global]\npid = {run}/fpm.pid\nerror_log = {run}/fpm.log\ndaemonize = no\n\n"
        f"[www]\nuser = www-data\ngroup = www-data\nlisten = {run}/fpm.sock\n"
        "listen.owner = www-data\nlisten.group = www-data\nlisten.mode = 0660\n"
        "pm = static\npm.max_children = 4\ncatch_workers_output = yes\n"
    )
    with open(run / "stdout.log", "ab") as log:
        fpm = subprocess.Popen(
            [_program("/usr/sbin/php-fpm*"), "--nodaemonize", "--fpm-config", str(run / "fpm.conf")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    server.fpm_pid = fpm.pid
    _wait_for(lambda: fpm.poll() is None and (run / "fpm.sock").exists(), f"php-fpm of {server.name} (see {run})")


def start_server(lab, server, client_pub, tmpfs_mb=None, ext4_mb=None, serve=""):
    """Start one server's sshd, php-fpm (if asked) and Apache under its root, on its ports.

    tmpfs_mb: put deploy_to on a tmpfs of that size, to fill the disk in fault tests.
    ext4_mb: put deploy_to on a new ext4 file system of that size (a sparse image file, loop
    mounted), so that benchmarks do not measure what earlier runs left on the shared disk:
    creating a file on an ext4 where many files were deleted moments ago costs several times
    more (the inode allocator checks recently deleted inodes).
    """
    base = Path(server.root)
    for sub in ("ssh", "apache/run", "apache/conf.d", "site"):
        (base / sub).mkdir(parents=True)
    for d in (base, base / "apache", base / "site"):
        d.chmod(0o755)  # Apache's children (www-data) must reach the site
    # sshd reads authorized_keys as the user logging in: the directory must let every user in.
    # The host key itself stays 0600.
    (base / "ssh").chmod(0o755)
    for port in (server.ssh_port, server.http_port):
        if _listening(port):
            raise CutoverError(f"lab: port {port} on 127.0.0.1 is already in use")
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
    _placeholder_release(deploy_to, serve)

    _keygen(base / "ssh" / "host_ed25519")
    shutil.copy(client_pub, base / "ssh" / "authorized_keys")
    _render("sshd_config", base / "ssh" / "sshd_config", root=base, ssh_port=server.ssh_port)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    with open(base / "ssh" / "sshd.log", "ab") as log:
        sshd = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(base / "ssh" / "sshd_config")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    server.sshd_pid = sshd.pid
    if server.php == "fpm":
        _start_fpm(server)
    render_apache(lab, server)
    with open(base / "apache" / "stdout.log", "ab") as log:
        httpd = subprocess.Popen(
            [APACHE, "-f", server.httpd_conf, "-DFOREGROUND"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    server.httpd_pid = httpd.pid
    _wait_for(
        lambda: sshd.poll() is None and _listening(server.ssh_port), f"sshd of {server.name} (see {base}/ssh/sshd.log)"
    )
    _wait_for(
        lambda: httpd.poll() is None and Path(server.pidfile).exists() and _http_ok(server.url),
        f"Apache of {server.name} (see {base}/apache/error.log)",
    )


def start(root, count=1, mpm="event", ports=None, tmpfs_mb=None, ext4_mb=None, php=None, site_conf="", **settings):
    """Start `count` lab servers under root (a new directory); writes lab.json and hosts.yaml.

    ports: optional list of (ssh_port, http_port), one pair per server; default free ports.
    php: None, "mod_php" (Apache's prefork MPM with mod_php) or "fpm" (php-fpm through proxy_fcgi).
    site_conf: Apache config of the site itself, as an operator writes it (@@deploy_to@@ is filled in).
    settings: hosts.yaml defaults for the lab's group (see write_hosts_file).
    """
    if os.geteuid() != 0:
        raise CutoverError("lab: lab servers run their own sshd, which needs root; run as root")
    for program in (SSHD, APACHE, "/usr/bin/rsync"):
        if not os.path.exists(program):
            raise CutoverError(f"lab: {program} is missing; apt-get install openssh-server apache2 rsync")
    if php not in PHP_MODES:
        raise CutoverError(f"lab: php must be one of {PHP_MODES}, not {php!r}")
    if php == "mod_php":
        mpm = "prefork"  # mod_php is not thread-safe
    root = Path(root)
    if root.exists():
        raise CutoverError(f"lab: {root} already exists (a lab still up?); stop it first or remove it")
    root.mkdir(parents=True)
    root.chmod(0o755)
    client_key = root / "client_ed25519"
    _keygen(client_key)
    lab = Lab(root, [], client_key, root / "known_hosts")
    for i in range(1, count + 1):
        ssh_port, http_port = ports[i - 1] if ports else (free_port(), free_port())
        base = root / f"lab{i}"
        lab.servers.append(
            LabServer(
                f"lab{i}", str(base), ssh_port, http_port, str(base / "site"), str(base / "apache" / "run" / "httpd.pid"),
                0, 0, mpm=mpm, php=php, site_conf=site_conf,
            )
        )  # fmt: skip
    write_hosts_file(lab, **settings)
    try:
        for server in lab.servers:
            try:
                start_server(lab, server, f"{client_key}.pub", tmpfs_mb, ext4_mb, settings.get("serve") or "")
            finally:
                _save(lab)  # whatever started is recorded, so that stop() finds it
            host_pub = Path(server.root, "ssh", "host_ed25519.pub").read_text().split()
            with open(lab.known_hosts, "a") as f:
                f.write(f"[127.0.0.1]:{server.ssh_port} {host_pub[0]} {host_pub[1]}\n")
    except BaseException:
        stop(root, remove=False)  # keep the logs the error points at
        raise
    return lab


def write_hosts_file(lab, build=None, build_compare="checksum", **overrides):
    """Write the lab's hosts.yaml: group `sandbox` with every server, settings per host."""
    build = build or str(TEMPLATES.parent / "example" / "site")
    hosts = []
    for s in lab.servers:
        hosts.append(
            {
                "name": s.name,
                "host": "127.0.0.1",
                "port": s.ssh_port,
                "deploy_to": s.deploy_to,
                "httpd": {"pidfile": s.pidfile},
                "health": {"url": s.url},
            }
        )
    data = {
        "defaults": {
            "user": "root",
            "python": "/usr/bin/python3",  # the server's own python, as on a fresh Debian server
            "key": str(lab.key),
            "known_hosts": str(lab.known_hosts),
            "build": {"path": build, "required": ["index.html"], "compare": build_compare},
            "keep_releases": 5,
            "shared": ["media"],
            "smoke": {"commands": ["test -s index.html"]},
            "health": {"expect_status": 200, "expect_text": 'name="release"'},
            "maintenance": {"health_path": LAB_MAINTENANCE.health_path},
            **overrides,
        },
        "groups": {"sandbox": hosts},
        "default_group": "sandbox",
    }
    lab.hosts_file.write_text(
        "# Written by the Cutover lab for its own servers.\n" + yaml.safe_dump(data, sort_keys=False)
    )
    return lab.hosts_file


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


def _is_ours(pid, program):
    """Whether pid still runs `program` (sshd rewrites its cmdline, so look at the executable)."""
    try:
        return os.readlink(f"/proc/{pid}/exe") == program
    except OSError:
        return False


def _stop_pid(pid, program, timeout=10):
    """Stop a process we started, by PID, after checking it is still that program."""
    if not _is_ours(pid, program):
        return
    os.kill(pid, signal.SIGCONT)  # a paused httpd cannot act on SIGTERM
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = 0 if _is_ours(pid, program) else pid
        if done == pid or not _is_ours(pid, program):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def stop_server(server):
    """Stop one lab server's httpd and sshd; resumes httpd's children first if they were paused."""
    for pid in _children(server.httpd_pid):
        os.kill(pid, signal.SIGCONT)
    _stop_pid(server.httpd_pid, APACHE)
    if server.fpm_pid:
        _stop_pid(server.fpm_pid, os.path.realpath(_program("/usr/sbin/php-fpm*")))
    if _is_ours(server.sshd_pid, SSHD):
        for pid in _children(server.sshd_pid):  # sessions left open, e.g. by a failed test
            try:
                if os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith("sshd"):
                    os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
    _stop_pid(server.sshd_pid, SSHD)
    if server.mounted:
        subprocess.run(["umount", server.deploy_to], check=False)


def _children(pid):
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def stop(root, remove=True):
    """Stop every server of the lab under root by PID, then remove the directory."""
    root = Path(root)
    if (root / STATE_FILE).exists():
        for server in load(root).servers:
            stop_server(server)
    if remove:
        shutil.rmtree(root, ignore_errors=True)


def pids(lab):
    """Every PID the lab started (httpd parents, sshd listeners, php-fpm masters)."""
    return [p for s in lab.servers for p in (s.httpd_pid, s.sshd_pid, s.fpm_pid) if p]
