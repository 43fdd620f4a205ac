"""`fab check` against lab servers: a healthy table, and clear failures."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from lab import graceful_restart

from .conftest import process_gone


def test_check_passes_on_healthy_servers(lab2):
    result = lab2.fab("-H", "sandbox", "check")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = ["host", "ssh", "rsync", "deploy_to", "httpd", "disk", "free", "current", "maintenance", "http", "assets"]
    assert lines[0].split() == header
    for line, server in zip(lines[1:3], lab2.servers):
        assert line.split()[:5] == [server.name, "ok", "ok", "ok", "ok"]
        assert line.split()[-2:] == ["ok", "on"]  # front page, rules active, nothing protected served; fallback
        # the event MPM has many threads per process: httpd.pause auto signals it
        assert re.search(rf"\(pid {server.httpd_pid}, sigstop, \d+ processes\)", line), line
    for server in lab2.servers:
        line = f"{server.name}: listen queue on 127.0.0.1:{server.http_port}: backlog 511 of net.core.somaxconn "
        assert line in result.stdout
    assert "warning" not in result.stdout  # no load: nothing arriving that the queue could not hold
    assert "all 2 host(s) ready" in result.stdout


def test_check_one_host_of_the_group(lab2):
    result = lab2.fab("-H", "lab2", "check")
    assert result.returncode == 0, result.stderr
    assert "lab2" in result.stdout and "lab1" not in result.stdout


def test_check_fails_when_apache_is_stopped(lab1):
    server = lab1.servers[0]
    os.kill(server.httpd_pid, signal.SIGTERM)
    os.waitpid(server.httpd_pid, 0)
    result = lab1.fab("check")
    assert result.returncode == 1
    assert f"lab1: httpd pidfile {server.pidfile} " in result.stdout
    assert f"lab1: the front page does not answer as the health check expects: {server.url}: no answer" in result.stdout
    assert "2 problem(s) found on 1 host(s)" in result.stderr  # one for the pidfile, one for HTTP, not one per probe


def test_check_fails_on_a_changed_host_key(lab1, tmp_path):
    server = lab1.servers[0]
    fake = tmp_path / "fake"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(fake)], check=True)
    kind, key = fake.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.ssh_port} {kind} {key}\n")
    hosts_file = tmp_path / "hosts.yaml"
    hosts_file.write_text(lab1.hosts_file.read_text().replace(str(lab1.lab.known_hosts), str(known)))
    result = lab1.fab("check", hosts_file=hosts_file)
    assert result.returncode == 1
    assert f"the host key of 127.0.0.1 port {server.ssh_port} does not match {known}" in result.stdout
    assert "ssh-keygen -R" in result.stdout
    assert known.read_text().count("\n") == 1  # never rewritten


def test_check_fails_on_an_unknown_host_key(lab1, tmp_path):
    server = lab1.servers[0]
    known = tmp_path / "empty_known_hosts"
    known.write_text("")
    hosts_file = tmp_path / "hosts.yaml"
    hosts_file.write_text(lab1.hosts_file.read_text().replace(str(lab1.lab.known_hosts), str(known)))
    result = lab1.fab("check", hosts_file=hosts_file)
    assert result.returncode == 1
    assert f"is not in {known}" in result.stdout
    assert f"ssh-keyscan -p {server.ssh_port} 127.0.0.1 >> {known}" in result.stdout
    assert known.read_text() == ""  # not silently accepted


def test_check_fails_when_sshd_is_gone(lab1):
    server = lab1.servers[0]
    os.kill(server.sshd_pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while not process_gone(server.sshd_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    result = lab1.fab("check")
    assert result.returncode == 1
    assert f"cannot reach 127.0.0.1 port {server.ssh_port}" in result.stdout


def test_check_flags_a_split_group(lab_pair, tmp_path):
    from .conftest import configure, current, make_build

    configure(lab_pair, make_build(tmp_path, "a"))
    assert lab_pair.fab("deploy").returncode == 0
    one, two = lab_pair.servers
    # what a deploy killed between the two hosts' swaps leaves: lab1 back on the placeholder
    link = f"{one.deploy_to}/current.split"
    os.symlink("releases/19700101T000000Z-placeholder", link)
    os.replace(link, f"{one.deploy_to}/current")
    result = lab_pair.fab("check")
    assert result.returncode == 1
    assert f"the group is split: lab1 serves 19700101T000000Z-placeholder, lab2 serves {current(two)}" in result.stdout
    advice = f"`fab rollback --to {current(two)}` (kept on every host) or a new `fab deploy`"
    assert advice in result.stdout
    fixed = lab_pair.fab("rollback", "--to", current(two))  # the advice, followed
    assert fixed.returncode == 0, fixed.stderr
    assert lab_pair.fab("check").returncode == 0


def test_check_advice_for_a_split_group_names_a_release_every_host_keeps(lab_pair, tmp_path):
    # a deploy to one host of the group: only lab1 has the newest release
    from .conftest import configure, current, make_build

    configure(lab_pair, make_build(tmp_path, "a"))
    assert lab_pair.fab("deploy").returncode == 0
    both = current(lab_pair.servers[0])
    refused = lab_pair.fab("-H", "lab1", "deploy")
    assert refused.returncode == 2
    assert "-H lab1 takes lab1 but not all of group sandbox (lab1, lab2): the group would serve two" in refused.stderr
    assert "name the whole group (-H sandbox), or add --split to do it anyway" in refused.stderr
    assert current(lab_pair.servers[0]) == both
    assert lab_pair.fab("-H", "lab1", "deploy", "--split").returncode == 0
    result = lab_pair.fab("check")
    assert result.returncode == 1
    assert f"`fab rollback --to {both}` (kept on every host)" in result.stdout
    fixed = lab_pair.fab("rollback", "--to", both)
    assert fixed.returncode == 0, fixed.stderr
    assert lab_pair.fab("check").returncode == 0


def test_check_names_a_wrong_deploy_to_and_creates_nothing(lab1, tmp_path):
    server = lab1.servers[0]
    typo = server.deploy_to + "-typo"
    plain = f"{server.root}/html"  # an existing folder without Cutover's layout: a site's old DocumentRoot
    os.mkdir(plain)
    with open(f"{plain}/index.html", "w") as f:
        f.write("<p>the old site</p>\n")
    text = lab1.hosts_file.read_text()
    for deploy_to, expected in (
        (typo, f"lab1: deploy_to {typo} does not exist on the server: if the site lives elsewhere, correct "
               "deploy_to in hosts.yaml; for a new site, `fab setup` creates it"),
        (plain, f"lab1: deploy_to {plain} has no Cutover layout (no .cutover/apache.conf): if the site lives "
                "elsewhere, correct deploy_to in hosts.yaml; else run `fab setup`, which makes it"),
    ):  # fmt: skip
        hosts_file = tmp_path / "hosts.yaml"
        hosts_file.write_text(text.replace(f"deploy_to: {server.deploy_to}", f"deploy_to: {deploy_to}"))
        result = lab1.fab("check", hosts_file=hosts_file)
        assert result.returncode == 1, result.stdout
        assert expected in result.stdout, result.stdout
        assert "Error" not in result.stdout + result.stderr  # no Python exception's name
        assert "1 problem(s) found on 1 host(s)" in result.stderr
    assert not os.path.lexists(typo) and os.listdir(plain) == ["index.html"]


def test_check_before_the_first_deploy_says_nothing_is_deployed_yet(lab1, tmp_path):
    server = lab1.servers[0]
    url = server.url + "index.php"  # the site's own page: setup's placeholder release has only index.html
    hosts_file = tmp_path / "hosts.yaml"
    hosts_file.write_text(lab1.hosts_file.read_text().replace(f"url: {server.url}", f"url: {url}"))
    result = lab1.fab("check", hosts_file=hosts_file)
    assert result.returncode == 0, result.stdout
    note = (
        f"lab1: nothing deployed yet: {url} answered 404 from setup's placeholder release (it holds only "
        "index.html); the health check applies from the first deploy"
    )
    assert note in result.stdout
    assert "Include" not in result.stdout and "all 1 host(s) ready" in result.stdout
    # the same, with Cutover's rules really missing from Apache's config: still said
    conf = Path(server.site_conf_file)
    rules_include = f'Include "{server.deploy_to}/.cutover/apache.conf"'
    assert rules_include in conf.read_text()
    conf.write_text(conf.read_text().replace(rules_include, "# " + rules_include))
    graceful_restart(server)
    result = lab1.fab("check", hosts_file=hosts_file)
    assert result.returncode == 1
    rules = f"{server.deploy_to}/.cutover/apache.conf"
    missing = f"lab1: Cutover's Apache rules are not active at {url}: Include {rules} in the site's VirtualHost"
    assert missing in result.stdout, result.stdout
