"""`fab setup` on lab servers: the layout, and the sudo swap helper for a deploy user who is not root."""

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks import ssh

from .conftest import configure, current, history, make_build


def test_setup_creates_the_layout_on_a_fresh_server(lab1, tmp_path):
    server = lab1.servers[0]
    fresh = server.deploy_to + "-fresh"
    hosts_file = tmp_path / "hosts.yaml"
    hosts_file.write_text(lab1.hosts_file.read_text().replace(server.deploy_to, fresh))
    result = lab1.fab("setup", hosts_file=hosts_file)
    assert result.returncode == 0, result.stderr
    for sub in ("releases", "shared/media", ".cutover", "maintenance"):
        assert Path(fresh, sub).is_dir(), sub
    assert os.readlink(Path(fresh, "current")) == "releases/19700101T000000Z-placeholder"
    snippet = Path(fresh, ".cutover", "apache.conf").read_text()
    assert f'RewriteCond "{fresh}/maintenance/index.html" -f' in snippet
    assert "not needed (root)" in result.stdout
    again = lab1.fab("setup", hosts_file=hosts_file)  # idempotent
    assert again.returncode == 0 and "  0  " in again.stdout.splitlines()[-1]
    deployed = lab1.fab("deploy", hosts_file=hosts_file)
    assert deployed.returncode == 0, deployed.stderr


def test_setup_refuses_a_deploy_to_it_cannot_create(lab1, deploy_user, tmp_path):
    name, _ = deploy_user
    server = lab1.servers[0]
    parent = Path(server.root, "root-owned")
    parent.mkdir(mode=0o755)  # owned by root: the deploy user cannot create anything here
    hosts_file = tmp_path / "hosts.yaml"
    text = lab1.hosts_file.read_text().replace("user: root", f"user: {name}")
    hosts_file.write_text(text.replace(server.deploy_to, f"{parent}/site"))
    result = lab1.fab("setup", hosts_file=hosts_file)
    assert result.returncode == 4
    assert f"cannot create {parent}/site: {parent} is not writable by this user" in result.stderr
    assert f"install -d -o USER {parent}/site" in result.stderr
    assert not Path(parent, "site").exists()


@pytest.fixture
def deploy_user(lab1):
    """A throwaway system user who owns the lab's deploy_to; removed afterwards with its sudoers file."""
    if shutil.which("sudo") is None or shutil.which("useradd") is None:
        pytest.skip("sudo or useradd is not installed (make install adds sudo)")
    name = f"cutover-t{os.getpid() % 100000}"
    # "*": no password, yet not locked (sshd without PAM refuses locked accounts even with a key)
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", "-p", "*", name], check=True)
    server = lab1.servers[0]
    uid = pwd.getpwnam(name).pw_uid
    for path in [server.deploy_to, *(str(p) for p in Path(server.deploy_to).rglob("*"))]:
        os.lchown(path, uid, uid)
    sudoers = Path(f"/etc/sudoers.d/{name}")
    helper, config = Path(ssh.HELPER), Path("/etc/cutover/helper.json")
    created = [p for p in (helper, config, helper.parent, config.parent) if not p.exists()]
    run_dir = Path("/run/cutover")
    run_dir_created = not run_dir.exists()
    yield name, sudoers
    sudoers.unlink(missing_ok=True)
    for path in created:  # files first, then their directories
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)
    if run_dir_created:
        shutil.rmtree(run_dir, ignore_errors=True)
    subprocess.run(["userdel", "-f", name], check=True)  # -f: its last sshd session may still be closing


def test_non_root_deploy_user_swaps_through_the_sudo_helper(lab1, deploy_user, tmp_path):
    name, sudoers = deploy_user
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "helper"), user=name)
    # without setup the swap cannot pause root's httpd: refused, and the site is untouched
    before = current(server)
    refused = lab1.fab("deploy")
    assert refused.returncode == 4
    assert current(server) == before
    result = lab1.fab("setup")
    assert result.returncode == 0, result.stderr
    line = f"{name} ALL=(root) NOPASSWD: /usr/bin/python3 -I -S {ssh.HELPER} swap *"
    assert line in result.stdout
    helper = Path(ssh.HELPER)
    assert helper.stat().st_uid == 0 and oct(helper.stat().st_mode & 0o777) == "0o755"
    sudoers.write_text(line + "\n")
    sudoers.chmod(0o440)
    deployed = lab1.fab("deploy")
    assert deployed.returncode == 0, deployed.stderr
    assert current(server) != before
    assert history(server)[-1]["pause_ms"] > 0
    assert Path(server.deploy_to, "releases", current(server)).stat().st_uid == pwd.getpwnam(name).pw_uid
    # the helper runs nothing but the swap, and only for the registered site
    with ssh.connect(lab1.host()) as conn:
        out = ssh.run(conn, "probe", [*ssh.helper_argv("/usr/bin/python3"), "check", "{}"], check=False)
        assert out.exited != 0  # sudoers allows only "swap ..."
        hostile = '{"layout": {"deploy_to": "/etc"}, "release_id": "20300101T000000Z"}'
        out = ssh.run(conn, "probe", [*ssh.helper_argv("/usr/bin/python3"), "swap", hostile], check=False)
        assert "/etc is not registered for user" in out.stdout
