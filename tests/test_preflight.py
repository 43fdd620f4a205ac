"""What would fail at the switch is found by `fab check` and by the deploy's first step, before
anything is uploaded: a sudoers line missing for the swap helper (asked with `sudo -n -l`, which
runs nothing), a helper registration that no longer matches hosts.yaml, a live release already
failing its health check. `setup --admin-user` with a user who becomes root through sudo."""

import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tasks import agent
from tasks.agent import LocalAgent
from tasks.remote import preflight as remote_preflight
from tasks.remote.paths import PLACEHOLDER
from tasks.remote.protocol import Refused

from .conftest import configure, current, history, make_build, releases, start_lab, stop_lab
from .test_apache_rules import get
from .test_deploy import _rsync_processes
from .test_php import SITE_CONF, configure_app
from .test_php import build as php_app
from .test_setup import deploy_user  # noqa: F401 (a fixture)

REGISTRATION = Path("/etc/cutover/helper.json")


def sudoers_line(name):
    return f"{name} ALL=(root) NOPASSWD: /usr/bin/python3 -I -S {agent.HELPER} swap *"


def allow(sudoers, text):
    sudoers.write_text(text)
    sudoers.chmod(0o440)
    assert subprocess.run(["visudo", "-c", "-f", str(sudoers)], capture_output=True).returncode == 0


def untouched(server, before):
    """Nothing of a refused deploy is on the server: no incoming dir, no new release, no lock, no history line."""
    assert releases(server) == before["releases"]
    assert current(server) == before["current"]
    assert not Path(server.deploy_to, ".cutover", "lock").exists()
    assert len(history(server)) == before["history"]


def state(server):
    return {"releases": releases(server), "current": current(server), "history": len(history(server))}


def test_check_and_the_deploy_find_the_missing_sudoers_line_before_any_upload(lab1, deploy_user, tmp_path):  # noqa: F811
    name, sudoers = deploy_user
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "sudo"), user=name, python="python3")
    setup = lab1.fab("setup")
    assert setup.returncode == 0, setup.stderr
    assert sudoers_line(name) in setup.stdout  # printed: sudo does not allow it yet
    checked = lab1.fab("check")
    assert checked.returncode == 1
    said = (
        f"lab1: sudo does not let {name} run the swap helper (sudo -n -l: a password is required): add this line "
        f"to /etc/sudoers.d/cutover on the server (visudo -f /etc/sudoers.d/cutover):\n    {sudoers_line(name)}"
    )
    assert said in checked.stdout, checked.stdout
    before = state(server)
    refused = lab1.fab("deploy")
    assert refused.returncode == 1
    first = refused.stderr.splitlines()[0]
    assert first == f"cutover: error: nothing was uploaded or switched: lab1: sudo does not let {name} run the swap helper (sudo -n -l: a password is required): add this line to /etc/sudoers.d/cutover on the server (visudo -f /etc/sudoers.d/cutover):"  # fmt: skip
    assert "upload" not in refused.stdout
    untouched(server, before)
    rollback = lab1.fab("rollback")  # the same preflight, before the lock
    assert rollback.returncode == 1
    assert rollback.stderr.startswith(f"cutover: error: nothing was switched: lab1: sudo does not let {name} run")
    untouched(server, before)
    allow(sudoers, sudoers_line(name) + "\n")
    again = lab1.fab("setup")
    assert again.returncode == 0, again.stderr
    assert sudoers_line(name) not in again.stdout  # sudo allows it: nothing to add
    assert f"lab1: sudo lets {name} run the swap helper already" in again.stdout
    assert lab1.fab("check").returncode == 0
    deployed = lab1.fab("deploy")
    assert deployed.returncode == 0, deployed.stderr
    assert "[lab1] preflight" in deployed.stdout


def test_a_health_or_httpd_setting_changed_without_setup_is_named_before_the_deploy(lab1, deploy_user, tmp_path):  # noqa: F811
    name, sudoers = deploy_user
    server = lab1.servers[0]
    build = make_build(tmp_path, "registered")
    configure(lab1, build, user=name, python="python3")
    assert lab1.fab("setup").returncode == 0
    allow(sudoers, sudoers_line(name) + "\n")
    assert lab1.fab("deploy").returncode == 0
    # the site's new health text and a shorter pause_timeout, in hosts.yaml only
    configure(lab1, build, user=name, python="python3", health={"expect_status": 200, "expect_text": "Everything"},
              httpd={"pidfile": server.pidfile, "pause_timeout": 3})  # fmt: skip
    differs = (
        "the swap helper's registration in /etc/cutover/helper.json differs from hosts.yaml in httpd.pause_timeout "
        "(registered 5, hosts.yaml 3), health.expect_text (registered 'name=\"release\"', hosts.yaml 'Everything'): "
        "rerun `fab setup`"
    )
    checked = lab1.fab("check")
    assert checked.returncode == 1
    assert f"lab1: {differs}" in checked.stdout, checked.stdout
    before = state(server)
    refused = lab1.fab("deploy")
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[0] == f"cutover: error: nothing was uploaded or switched: lab1: {differs}"
    untouched(server, before)
    assert lab1.fab("setup").returncode == 0
    site = json.loads(REGISTRATION.read_text())[server.deploy_to]
    assert site["pause_timeout"] == 3 and site["verify"]["expect_text"] == "Everything"
    assert lab1.fab("check").returncode == 0
    # a registration the deploy user cannot read cannot be compared: said, with the fix
    REGISTRATION.chmod(0o600)
    try:
        unread = lab1.fab("check")
    finally:
        REGISTRATION.chmod(0o644)
    assert unread.returncode == 1
    assert (
        "lab1: cannot read /etc/cutover/helper.json to compare the helper's registration with hosts.yaml "
        "(PermissionError: Permission denied): make it readable (mode 0644; it holds no secret), or rerun `fab setup`"
    ) in unread.stdout
    assert lab1.fab("deploy").returncode == 0


def test_a_sudo_that_asks_a_password_at_the_switch_says_nothing_was_switched(lab1, deploy_user, tmp_path):  # noqa: F811
    """A rule without NOPASSWD beside one with it: `sudo -n -l` lists the helper as allowed, and
    only running it finds the password prompt."""
    name, sudoers = deploy_user
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "password"), user=name, python="python3")
    assert lab1.fab("setup").returncode == 0
    allow(sudoers, f"{name} ALL=(root) NOPASSWD: /bin/true\n" + sudoers_line(name).replace("NOPASSWD: ", "") + "\n")
    before = current(server)
    failed = lab1.fab("deploy")
    assert failed.returncode == 4
    first = failed.stderr.splitlines()[0]
    assert first.startswith("cutover: error: nothing was switched: lab1: swap: sudo asks a password to run the swap helper"), first  # fmt: skip
    assert "switching the others back failed too" not in failed.stderr
    assert f"the site now: lab1 serves {before}" in failed.stderr
    assert current(server) == before
    assert not Path(server.deploy_to, ".cutover", "lock").exists()


def test_a_live_release_failing_while_another_run_holds_the_lock_is_left_to_the_lock_step(lab1, tmp_path):
    """Another run holds the lock (its swap may pause httpd or switch the live release under the
    check): a failing live health check is not blamed on the site; the lock step refuses, exit 5,
    naming who holds the lock."""
    from tasks.remote import lock
    from tasks.remote.paths import Layout

    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "a"))
    assert lab1.fab("deploy").returncode == 0
    Path(server.deploy_to, "releases", current(server), "index.html").unlink()
    configure(lab1, make_build(tmp_path, "b"))
    site = Layout(server.deploy_to)
    lock.take(site, {"user": "alice", "local_host": "laptop", "pid": 1, "command": "rollback", "token": "other"})
    try:  # the lock's session is this test's process: alive
        refused = lab1.fab("deploy")
    finally:
        lock.release(site, "other")
    assert refused.returncode == 5, refused.stderr
    assert "alice@laptop" in refused.stderr and "health check" not in refused.stderr, refused.stderr
    assert "not checked yet: another run holds the lock" in refused.stdout


def deploy_while_another_run_holds_the_lock_at_the_preflight(handle, server, tmp_path):
    """`fab deploy` while another run holds server's lock, held (CUTOVER_TEST_HOLD_AT) before its
    own lock step until that run has gone: (the ended process, its stdout, its stderr)."""
    from tasks.remote import lock
    from tasks.remote.paths import Layout

    site = Layout(server.deploy_to)
    lock.take(site, {"user": "alice", "local_host": "laptop", "pid": 1, "command": "rollback", "token": "other"})
    hold = tmp_path / "hold"
    try:
        fab = handle.held("lock", hold, "deploy", env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    finally:
        lock.release(site, "other")  # the other run ends
    hold.unlink()
    out, err = fab.communicate(timeout=120)
    return fab, out, err


def test_a_live_check_left_for_the_lock_runs_under_it_once_the_other_run_has_gone(lab1, tmp_path):
    """The other run holds the lock at the preflight and is gone by this run's lock step: the live
    release's health check, left for later, runs under this run's lock and refuses, nothing
    switched, the lock free."""

    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "a"))
    assert lab1.fab("deploy").returncode == 0
    live = current(server)
    Path(server.deploy_to, "releases", live, "index.html").unlink()
    broken = get(server, "/")[0]
    configure(lab1, make_build(tmp_path, "b"))
    fab, out, err = deploy_while_another_run_holds_the_lock_at_the_preflight(lab1, server, tmp_path)
    assert fab.returncode == 1, err
    said = f"cutover: error: nothing was switched: lab1: the live release {live} fails its health check: "
    assert err.splitlines()[0] == said + f"{server.url} answered {broken}, expected 200", err
    assert "deploy anyway with --ignore-live-health" in err
    assert "not checked yet: another run holds the lock" in out
    assert current(server) == live
    assert not Path(server.deploy_to, ".cutover", "lock").exists()


def test_a_live_release_failing_its_health_check_is_not_deployed_to(lab_pair, tmp_path):
    one, two = lab_pair.servers
    configure(lab_pair, make_build(tmp_path, "a"))
    assert lab_pair.fab("deploy").returncode == 0
    live = current(one)
    # lab1's live site breaks: its front page is gone
    Path(one.deploy_to, "releases", live, "index.html").unlink()
    broken = get(one, "/")[0]  # what Apache answers for it (403 or 404, as the site's Options say)
    assert broken in (403, 404)
    configure(lab_pair, make_build(tmp_path, "b"))
    before = [state(one), state(two)]
    refused = lab_pair.fab("deploy")
    assert refused.returncode == 1
    said = (
        f"cutover: error: nothing was uploaded or switched: lab1: the live release {live} fails its health check: "
        f"{one.url} answered {broken}, expected 200"
    )
    assert refused.stderr.splitlines()[0] == said
    assert "deploy anyway with --ignore-live-health" in refused.stderr
    untouched(one, before[0])
    untouched(two, before[1])
    # the uploads started beside the preflight waited for the lock step, and ended with the run
    for server in (one, two):
        deadline = time.monotonic() + 10
        while _rsync_processes(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _rsync_processes(server) == []
    fixed = lab_pair.fab("deploy", "--ignore-live-health")
    assert fixed.returncode == 0, fixed.stderr
    assert current(one) == current(two) != live


def test_a_php_site_whose_php_fpm_does_not_answer_is_found_before_the_deploy(tmp_path):
    handle, root = start_lab(1, php="fpm", site_conf=SITE_CONF, serve="public")
    try:
        server = handle.servers[0]
        configure_app(handle, php_app(tmp_path, "one"), "one")
        assert handle.fab("deploy").returncode == 0
        socket = Path(server.root, "php", "fpm.sock")
        socket.rename(socket.with_name("fpm.sock.moved"))  # php-fpm's socket is not where SetHandler says
        try:
            hint = (
                f"{server.url} answered 503, expected 200 (Apache's own 503: with PHP behind proxy_fcgi, php-fpm "
                "does not answer; is it running, and is its socket the one the SetHandler names?)"
            )
            checked = handle.fab("check")
            assert checked.returncode == 1
            assert hint in checked.stdout, checked.stdout
            configure_app(handle, php_app(tmp_path, "two"), "two")
            refused = handle.fab("deploy")
            assert refused.returncode == 1
            assert hint in refused.stderr.splitlines()[0]
        finally:
            socket.with_name("fpm.sock.moved").rename(socket)
        deployed = handle.fab("deploy")
        assert deployed.returncode == 0, deployed.stderr
    finally:
        stop_lab(handle, root)


@pytest.fixture
def admin_user(lab1):
    """A throwaway user who may log in with the lab's key and become root with `sudo -n` once the
    test writes its sudoers file (returned); removed afterwards."""
    name = f"cutover-a{os.getpid() % 100000}"
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", "-p", "*", name], check=True)
    sudoers = Path(f"/etc/sudoers.d/{name}")
    yield name, sudoers
    sudoers.unlink(missing_ok=True)
    subprocess.run(["userdel", "-f", name], check=True)


def test_setup_installs_the_helper_through_an_admin_who_becomes_root_with_sudo(
    lab1,
    deploy_user,  # noqa: F811
    admin_user,
    tmp_path,
):
    name, sudoers = deploy_user
    admin, admin_sudoers = admin_user
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "admin"), user=name, python="python3")
    refused = lab1.fab("setup", "--admin-user", admin)
    assert refused.returncode == 1
    said = f"lab1: the swap helper could not be installed as {admin}: {admin} cannot become root with sudo -n"
    assert said in refused.stdout, refused.stdout
    assert not Path(agent.HELPER).exists()
    allow(admin_sudoers, f"{admin} ALL=(ALL) NOPASSWD: ALL\n")
    result = lab1.fab("setup", "--admin-user", admin)
    assert result.returncode == 0, result.stdout + result.stderr
    helper = Path(agent.HELPER)
    assert helper.stat().st_uid == 0 and oct(helper.stat().st_mode & 0o777) == "0o755"
    assert json.loads(REGISTRATION.read_text())[server.deploy_to]["user"] == name
    allow(sudoers, sudoers_line(name) + "\n")
    deployed = lab1.fab("deploy")
    assert deployed.returncode == 0, deployed.stderr
    assert Path(server.deploy_to, "releases", current(server)).stat().st_uid == pwd.getpwnam(name).pw_uid


def test_the_helper_and_its_registration_installed_by_hand(lab1, deploy_user, tmp_path):  # noqa: F811
    """Where no admin can log in: setup writes the helper and the registration into a local
    directory, and root installs them as the README says."""
    name, sudoers = deploy_user
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "by-hand"), user=name, python="python3")
    files = tmp_path / "helper-files"
    result = lab1.fab("setup", "--helper-files", str(files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not Path(agent.HELPER).exists()  # nothing installed as root
    assert sorted(p.name for p in files.iterdir()) == ["helper.json", "swap-helper"]
    assert json.loads((files / "helper.json").read_text())[server.deploy_to]["user"] == name
    # as root on the server, as the README says
    for command in (
        ["install", "-D", "-m", "0755", "-o", "root", "-g", "root", str(files / "swap-helper"), agent.HELPER],
        ["install", "-D", "-m", "0644", "-o", "root", "-g", "root", str(files / "helper.json"), str(REGISTRATION)],
    ):
        assert command[-1] in result.stdout  # the command printed names the place
        subprocess.run(command, check=True)
    allow(sudoers, sudoers_line(name) + "\n")
    checked = lab1.fab("check")
    assert checked.returncode == 0, checked.stdout
    assert lab1.fab("deploy").returncode == 0
    shutil.rmtree(files)


# --- the server's side of the preflight, in this process -------------------------------------


def test_a_sudo_that_does_not_answer_is_given_up_after_its_timeout(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "sudo"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexec sleep 30\n")  # a sudo waiting on a directory service that is down
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(remote_preflight, "SUDO_TIMEOUT", 1)
    started = time.monotonic()
    assert remote_preflight.sudo_allows(["sudo", "-n", "-l", "/bin/true"]) == (False, "sudo gave no answer within 1 s")
    assert time.monotonic() - started < 5


def test_the_sudo_probe_runs_only_sudo_l():
    for argv in (["sudo", "-n", "/bin/true"], ["/bin/sh", "-c", "true"], ["sudo", "-l", "-n", "x"]):
        with pytest.raises(Refused) as refused:
            remote_preflight.sudo_allows(argv)
        assert "must be `sudo -n -l ...`, which runs nothing" in str(refused.value)


@pytest.fixture
def silent():
    """A TCP port on loopback that accepts connections (the kernel's backlog) and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    server.close()


def test_a_live_release_whose_health_url_is_silent_fails_within_its_timeout(tmp_path, silent):
    deploy_to = str(tmp_path / "site")
    agent = LocalAgent()
    agent.call("setup", {"deploy_to": deploy_to, "rules": "# rules\n", "serve": ""})
    verify = {"urls": [silent], "expect_status": 200, "expect_text": None, "retries": 1, "timeout": 0.5}
    # nothing deployed yet: setup's placeholder is not held to the site's health check
    answer = agent.call("preflight", {"deploy_to": deploy_to, "verify": verify})
    assert answer["live"] == {"release": PLACEHOLDER, "problem": None, "skipped": "nothing deployed yet"}
    release = "20261101T000000.000Z-aaaaaaa"
    Path(deploy_to, "releases", release).mkdir()
    agent.call("swap", {"deploy_to": deploy_to, "release_id": release, "pause": "none"})
    started = time.monotonic()
    answer = agent.call("preflight", {"deploy_to": deploy_to, "verify": verify})
    assert answer["live"] == {"release": release, "problem": f"{silent}: timed out"}
    assert time.monotonic() - started < 2 * (0.5 + 0.5) + 2  # two tries of 0.5 s, half a second apart


def test_a_live_release_switched_under_this_runs_own_lock_during_its_check_refuses_the_deploy(lab1, tmp_path):
    """Something other than Cutover switches `current` while the live health check runs, at the
    preflight and again under this run's lock, and the check fails both times: the check under the
    lock never passed, so the deploy is refused, nothing switched, the lock free."""
    import http.server
    import threading

    import yaml

    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "a"))
    assert lab1.fab("deploy").returncode == 0
    first = current(server)
    configure(lab1, make_build(tmp_path, "b"))
    assert lab1.fab("deploy").returncode == 0
    second = current(server)
    seen = []

    class Flipping(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server API)
            seen.append(current(server))
            status = 200
            if len(seen) <= 2:  # the preflight's check and the one under the lock: switched under it, failing
                other = first if seen[-1] == second else second
                link = Path(server.deploy_to, "current.flip")
                link.symlink_to(f"releases/{other}")
                os.replace(link, Path(server.deploy_to, "current"))
                status = 500
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flipping)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        configure(lab1, make_build(tmp_path, "c"), health={"expect_status": 200, "expect_text": None, "retries": 0})
        hosts = yaml.safe_load(lab1.hosts_file.read_text())
        hosts["groups"]["sandbox"][0]["health"]["url"] = f"http://127.0.0.1:{httpd.server_port}/"
        lab1.hosts_file.write_text(yaml.safe_dump(hosts, sort_keys=False))
        before = state(server)
        refused = lab1.fab("deploy")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert seen == [second, first]  # the preflight's check, the one under the lock; no verify: nothing switched
    said = (
        f"cutover: error: nothing was switched: lab1: the live release {first} was not checked under this run's "
        f"lock: the live release changed to {second} during the check; something other than Cutover switches it"
    )
    assert refused.stderr.splitlines()[0] == said, refused.stderr
    assert current(server) == second
    assert releases(server) == before["releases"]
    assert not Path(server.deploy_to, ".cutover", "lock").exists()


def test_a_group_whose_one_host_left_its_live_check_for_the_lock_is_refused_whole(lab_pair, tmp_path):
    """Of two hosts only lab2's lock was held at the preflight (lab1's live release checked and
    healthy then); lab2's live release fails the check under this run's lock: refused on both,
    nothing switched, no incoming release left, both locks free."""

    one, two = lab_pair.servers
    configure(lab_pair, make_build(tmp_path, "a"))
    assert lab_pair.fab("deploy").returncode == 0
    live = current(two)
    Path(two.deploy_to, "releases", live, "index.html").unlink()
    broken = get(two, "/")[0]
    configure(lab_pair, make_build(tmp_path, "b"))
    before = {s.name: state(s) for s in (one, two)}
    fab, out, err = deploy_while_another_run_holds_the_lock_at_the_preflight(lab_pair, two, tmp_path)
    assert fab.returncode == 1, out + err
    said = f"cutover: error: nothing was switched: lab2: the live release {live} fails its health check: "
    assert err.splitlines()[0] == said + f"{two.url} answered {broken}, expected 200", err
    assert "[lab1] preflight" in out and f"live release {current(one)} healthy" in out
    assert "not checked yet: another run holds the lock" in out
    for server in (one, two):
        assert releases(server) == before[server.name]["releases"]
        assert current(server) == before[server.name]["current"]
        assert not Path(server.deploy_to, ".cutover", "lock").exists()
        assert history(server)[-1]["result"] != "ok"  # the refused run's own line, nothing switched
