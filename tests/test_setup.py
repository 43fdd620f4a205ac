"""`fab setup` on lab servers: the layout, and the sudo swap helper for a deploy user who is not root."""

import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks import agent, ssh
from tasks.errors import RemoteError

from .conftest import configure, current, history, make_build, skip_without_cgroup


def test_setup_creates_the_layout_on_a_fresh_server(lab1, tmp_path):
    server = lab1.servers[0]
    fresh = server.deploy_to + "-fresh"
    hosts_file = tmp_path / "hosts.yaml"
    # Apache serves the lab's own deploy_to, not this one: no health check after the switch
    text = lab1.hosts_file.read_text().replace(server.deploy_to, fresh).replace(f"url: {server.url}", "url: null")
    hosts_file.write_text(text)
    result = lab1.fab("setup", hosts_file=hosts_file)
    assert result.returncode == 0, result.stderr
    for sub in ("releases", "shared", ".cutover", "maintenance"):
        assert Path(fresh, sub).is_dir(), sub
    assert not Path(fresh, "shared", "media").exists()  # the first deploy seeds it from the build
    assert os.readlink(Path(fresh, "current")) == "releases/19700101T000000Z-placeholder"
    snippet = Path(fresh, ".cutover", "apache.conf").read_text()
    assert f'RewriteCond "{fresh}/maintenance/index.html" -f' in snippet
    assert "not needed (root)" in result.stdout
    again = lab1.fab("setup", hosts_file=hosts_file)  # idempotent
    assert again.returncode == 0 and "  0  " in again.stdout.splitlines()[-1]
    deployed = lab1.fab("deploy", hosts_file=hosts_file)
    assert deployed.returncode == 0, deployed.stderr
    assert Path(fresh, "shared", "media").is_dir()


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
    helper, config = Path(agent.HELPER), Path("/etc/cutover/helper.json")
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
    # python: a bare name, as in the default hosts.yaml; sudoers needs the absolute path
    configure(lab1, make_build(tmp_path, "helper"), user=name, python="python3")
    # without setup the swap cannot pause root's httpd: refused before the upload, the site untouched
    before = current(server)
    refused = lab1.fab("deploy")
    assert refused.returncode == 1
    assert f"nothing was uploaded or switched: lab1: the swap helper {agent.HELPER} is not installed" in refused.stderr
    assert current(server) == before
    result = lab1.fab("setup")
    assert result.returncode == 0, result.stderr
    line = f"{name} ALL=(root) NOPASSWD: /usr/bin/python3 -I -S {agent.HELPER} swap *"
    assert line in result.stdout
    helper = Path(agent.HELPER)
    assert helper.stat().st_uid == 0 and oct(helper.stat().st_mode & 0o777) == "0o755"
    sudoers.write_text(line + "\n")
    sudoers.chmod(0o440)
    assert subprocess.run(["visudo", "-c", "-f", str(sudoers)], capture_output=True).returncode == 0
    deployed = lab1.fab("deploy")
    assert deployed.returncode == 0, deployed.stderr
    assert current(server) != before
    assert history(server)[-1]["pause_ms"] > 0
    assert Path(server.deploy_to, "releases", current(server)).stat().st_uid == pwd.getpwnam(name).pw_uid
    assert lab1.fab("check").returncode == 0
    # the helper runs nothing but the swap, and only for the registered site
    with ssh.connect(lab1.host()) as conn:
        sudo = agent.helper_argv("python3")
        out = ssh.run(conn, "probe", [*sudo, "check", "{}"], check=False)
        assert out.exited != 0  # sudoers allows only "swap ..."
        hostile = '{"deploy_to": "/etc", "release_id": "20300101T000000Z"}'
        out = ssh.run(conn, "probe", [*sudo, "swap", hostile], check=False)
        assert "/etc is not registered for user" in out.stdout
        # a health check of a root-only file: the helper takes its checks from its registration,
        # so the answer is the same whether the text is in the file or not, and names no file
        answers = []
        for text in ("root:", "no such text in the file"):
            probe = {"deploy_to": server.deploy_to, "release_id": current(server), "verify": {
                "urls": ["file:///etc/shadow"], "expect_status": None, "expect_text": text, "retries": 0, "timeout": 1,
            }, "swap_back": False}  # fmt: skip
            out = ssh.run(conn, "probe", [*sudo, "swap", json.dumps(probe)], check=False)
            answer = json.loads(out.stdout)
            assert "shadow" not in out.stdout and answer["health"] == "ok", out.stdout
            answers.append({k: answer[k] for k in ("health", "old", "new")})
        assert answers[0] == answers[1]
    # an upgraded Cutover meets an old helper: check says so, setup installs the new one
    helper.write_text(helper.read_text() + "# an older version\n")
    stale = lab1.fab("check")
    assert stale.returncode == 1
    assert f"the swap helper {agent.HELPER} is from another version of Cutover: run `fab setup`" in stale.stdout
    assert lab1.fab("setup").returncode == 0 and lab1.fab("check").returncode == 0


def test_the_server_refuses_a_health_check_of_anything_but_http(lab1):
    host = lab1.host()
    release_id = current(lab1.servers[0])
    with ssh.connect(host) as conn:
        for url in ("file:///etc/shadow", "ftp://127.0.0.1/", "data:,root"):
            verify = {"urls": [url], "expect_status": 200, "expect_text": None, "retries": 0, "timeout": 1}
            with pytest.raises(RemoteError) as refused:
                agent.call(conn, host.name, host.python, "swap", "swap", {
                    "deploy_to": host.deploy_to, "release_id": release_id, "pidfile": host.httpd.pidfile,
                    "pause": "sigstop", "pause_timeout": 1, "verify": verify,
                }, 30)  # fmt: skip
            assert f"health url {url!r} is not an http:// or https:// URL" in str(refused.value)
        for bad in (0, -1, float("nan"), 61, "5"):
            with pytest.raises(RemoteError) as refused:
                agent.call(conn, host.name, host.python, "swap", "swap", {
                    "deploy_to": host.deploy_to, "release_id": release_id, "pidfile": host.httpd.pidfile,
                    "pause": "sigstop", "pause_timeout": bad,
                }, 30)  # fmt: skip
            assert "pause_timeout must be from 0.5 to 60 seconds" in str(refused.value)
    assert current(lab1.servers[0]) == release_id


def test_the_helper_freezes_httpd_cgroup_for_a_non_root_deploy_user(lab1, deploy_user, tmp_path):
    """httpd.pause freeze through the helper: root writes httpd's cgroup.freeze, the method taken
    from the helper's root-owned registration."""
    name, sudoers = deploy_user
    server = lab1.servers[0]
    skip_without_cgroup(server, "freeze")
    httpd = {"pidfile": server.pidfile, "pause": "freeze"}
    configure(lab1, make_build(tmp_path, "helper-freeze"), user=name, python="python3", httpd=httpd)
    result = lab1.fab("setup")
    assert result.returncode == 0, result.stderr
    sudoers.write_text(f"{name} ALL=(root) NOPASSWD: /usr/bin/python3 -I -S {agent.HELPER} swap *\n")
    sudoers.chmod(0o440)
    frozen = lab1.fab("deploy")
    assert frozen.returncode == 0, frozen.stderr
    assert "httpd frozen" in frozen.stdout and history(server)[-1]["pause_method"] == "freeze"
    assert lab1.fab("check").returncode == 0


@pytest.mark.parametrize("given", ["a-file", "missing-parent/dir", ""])
def test_helper_files_that_cannot_be_written_are_refused_before_any_server_is_touched(
    lab1, deploy_user, tmp_path, given
):
    """A file, or a directory whose parent is missing: refused with a traceback after setup had
    changed every server; an empty value installed the helper as root instead."""
    name, _ = deploy_user
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "hf"), user=name, python="python3")
    rules = Path(server.deploy_to, ".cutover", "apache.conf")
    before = rules.stat().st_mtime_ns
    (tmp_path / "a-file").write_text("not a directory\n")
    directory = str(tmp_path / given) if given else ""
    result = lab1.fab("setup", "--helper-files", directory)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    said = {
        "a-file": f"--helper-files {directory}: is a file, not a directory; nothing was changed",
        "missing-parent/dir": f"--helper-files {directory}: {tmp_path / 'missing-parent'} does not exist; nothing was "
        "changed",
        "": "--helper-files: give the local directory to write the swap helper and its registration into",
    }[given]
    assert f"cutover: error: {said}" in result.stderr, result.stderr
    assert rules.stat().st_mtime_ns == before and not Path(agent.HELPER).exists()
    assert not (tmp_path / "missing-parent").exists()


def test_sites_registered_for_the_helper_at_once_are_all_kept(tmp_path, monkeypatch):
    """Two sites of one server set up at the same moment (two groups, or a group whose hosts share
    a machine) each read the helper's registrations, add their own and write them back: without a
    lock one registration was lost, and that site's deploy was refused ("not registered")."""
    import json
    import multiprocessing

    from tasks.remote import install

    monkeypatch.setattr(install, "HELPER_CONFIG", str(tmp_path / "etc" / "helper.json"))
    sites = [str(tmp_path / f"site{i}") for i in range(12)]

    def register(deploy_to):
        install.op_install_helper(
            {"path": str(tmp_path / "lib" / "swap-helper"), "program": "# helper\n", "deploy_to": deploy_to,
             "site": {"user": "deploy"}}
        )  # fmt: skip

    forked = multiprocessing.get_context("fork")
    processes = [forked.Process(target=register, args=(site,)) for site in sites]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    assert [process.exitcode for process in processes] == [0] * len(sites)
    assert sorted(json.loads((tmp_path / "etc" / "helper.json").read_text())) == sorted(sites)
