"""Stopping a lab server: its sshd, Apache, php-fpm and MariaDB, by the PIDs the lab recorded and
those its pidfiles name now (only processes of the lab's own programs and configs), httpd resumed
first if paused."""

import os
import signal
import subprocess
import time
from pathlib import Path

from .backends import MARIADB
from .cgroups import remove_cgroup
from .link import down as link_down
from .render import program

SSHD = "/usr/sbin/sshd"
APACHE = "/usr/sbin/apache2"
STOP_TIMEOUT = 10  # seconds a stopped process gets to exit before SIGKILL


def _is_ours(pid, program):
    """Whether pid still runs `program` (sshd rewrites its cmdline, so look at the executable)."""
    try:
        return os.readlink(f"/proc/{pid}/exe") == program
    except OSError:
        return False


def _stop_pid(pid, program, timeout=STOP_TIMEOUT):
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


def _from_pidfile(path, program, config):
    """The PID in a pidfile of this lab's, if it runs `program` with our `config` on its command line
    (an Apache restarted by hand has a new PID, but writes the same pidfile)."""
    try:
        pid = int(Path(path).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if _is_ours(pid, program) and str(config).encode() in cmdline else None


def stop_server(server):
    """Stop one lab server's httpd, php-fpm and sshd: the PIDs recorded at start, and those their
    pidfiles name now; resumes httpd's children first if they were paused."""
    base = Path(server.root)
    httpds = {server.httpd_pid, _from_pidfile(server.pidfile, APACHE, server.httpd_conf)} - {None, 0}
    if server.cgroup and os.path.isdir(server.cgroup):
        Path(server.cgroup, "cgroup.freeze").write_text("0")  # a frozen process cannot act on SIGTERM
    for httpd in httpds:
        for pid in children(httpd):
            os.kill(pid, signal.SIGCONT)
        _stop_pid(httpd, APACHE)
    fpm = os.path.realpath(program("/usr/sbin/php-fpm*")) if server.php == "fpm" else None
    for pid in {server.fpm_pid, fpm and _from_pidfile(base / "php" / "fpm.pid", fpm, base / "php")} - {None, 0}:
        _stop_pid(pid, fpm)
    if server.mariadb_pid:
        real = os.path.realpath(MARIADB)
        for pid in {server.mariadb_pid, _from_pidfile(base / "mariadb" / "mysqld.pid", real, base / "mariadb")} - {
            None,
            0,
            -1,
        }:
            _stop_pid(pid, real, timeout=30)
    sshd = _from_pidfile(base / "ssh" / "sshd.pid", SSHD, base / "ssh" / "sshd_config")
    if sshd and sshd != server.sshd_pid:
        _stop_pid(sshd, SSHD)
    if _is_ours(server.sshd_pid, SSHD):
        for pid in children(server.sshd_pid):  # sessions left open, e.g. by a failed test
            try:
                if os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith("sshd"):
                    os.kill(pid, signal.SIGTERM)
            except OSError:
                pass  # the session ended since the listing: nothing to stop
    _stop_pid(server.sshd_pid, SSHD)
    remove_cgroup(server.cgroup)
    if server.mounted:
        subprocess.run(["umount", server.deploy_to], check=False)
    if server.netns:
        link_down(server.netns, server.wire_pid)


def children(pid):
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
