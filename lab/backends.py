"""What runs beside a lab server's Apache when a test asks: its own php-fpm, its own MariaDB on a
private socket; and wait_for, which every lab process start uses."""

import os
import subprocess
import time
from pathlib import Path

from tasks.errors import CutoverError

from .render import program

START_TIMEOUT = 15  # seconds a lab server's sshd, Apache or php-fpm gets to come up


def wait_for(check, what, timeout=START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise CutoverError(f"lab: {what} did not come up within {timeout} s")


MARIADB = "/usr/sbin/mariadbd"
MARIADB_PASSWORD = "lab-only-password"  # a throwaway server on a private socket, no network


def mariadb_credentials(server):
    """The option file with the lab database's credentials ([client]): what backups.databases names."""
    return str(Path(server.root, "mariadb", "client.cnf"))


def start_mariadb(server):
    """A MariaDB server with its own data directory and socket (no TCP), database `shop` and its user."""
    base = Path(server.root, "mariadb")
    (base / "data").mkdir(parents=True)
    subprocess.run(["chown", "-R", "mysql:mysql", str(base)], check=True)
    subprocess.run(
        ["mariadb-install-db", "--user=mysql", f"--datadir={base / 'data'}", "--auth-root-authentication-method=socket",
         "--skip-test-db"], check=True, capture_output=True,
    )  # fmt: skip
    socket_path = base / "mysqld.sock"
    with open(base / "stdout.log", "ab") as log:
        proc = subprocess.Popen(
            [MARIADB, "--no-defaults", "--user=mysql", f"--datadir={base / 'data'}", f"--socket={socket_path}",
             f"--pid-file={base / 'mysqld.pid'}", "--skip-networking", f"--log-error={base / 'error.log'}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    server.mariadb_pid = proc.pid
    wait_for(lambda: proc.poll() is None and socket_path.exists(), f"MariaDB of {server.name} (see {base}/error.log)")
    sql = (
        "CREATE DATABASE shop; "
        f"CREATE USER 'shop'@'localhost' IDENTIFIED BY '{MARIADB_PASSWORD}'; "
        "GRANT ALL ON shop.* TO 'shop'@'localhost'; GRANT RELOAD, PROCESS ON *.* TO 'shop'@'localhost';"
    )
    subprocess.run(["mariadb", f"--socket={socket_path}", "-e", sql], check=True, capture_output=True)
    Path(mariadb_credentials(server)).write_text(
        f"[client]\nuser=shop\npassword={MARIADB_PASSWORD}\nsocket={socket_path}\n"
    )
    os.chmod(mariadb_credentials(server), 0o600)


def start_fpm(server):
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
            [program("/usr/sbin/php-fpm*"), "--nodaemonize", "--fpm-config", str(run / "fpm.conf")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    server.fpm_pid = fpm.pid
    wait_for(lambda: fpm.poll() is None and (run / "fpm.sock").exists(), f"php-fpm of {server.name} (see {run})")
