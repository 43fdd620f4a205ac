"""OpenSSH client configuration: a host alias with HostName, Port, User, IdentityFile and
ProxyJump, for Cutover's connection (rsync runs on a channel of it); host keys checked for the jump
host too.

One lab server is the jump host (bastion) of the other; its sshd's log counts the logins."""

from pathlib import Path

import pytest
import yaml

from tasks import hostsfile
from tasks.errors import ConfigError

from .conftest import accepted, current, history, make_build


def through_bastion(lab2, tmp_path, build, known_hosts=None):
    """A hosts.yaml whose one host, `web1`, is lab1 reached through lab2 as ProxyJump, with
    HostName, Port, User and IdentityFile from an ssh_config file, not from hosts.yaml."""
    target, bastion = lab2.servers
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host web1\n    HostName 127.0.0.1\n    Port {target.ssh_port}\n    User root\n"
        f"    IdentityFile {lab2.lab.key}\n    ProxyJump bastion\n"
        f"Host bastion\n    HostName 127.0.0.1\n    Port {bastion.ssh_port}\n"
    )
    data = yaml.safe_load(Path(lab2.hosts_file).read_text())
    defaults = data["defaults"]
    del defaults["user"], defaults["key"]
    defaults.update(ssh_config=str(config), build=dict(defaults["build"], path=str(build)))
    if known_hosts:
        defaults["known_hosts"] = str(known_hosts)
    one = dict(data["groups"]["sandbox"][0], name="web1", host="web1")
    del one["port"]
    data["groups"] = {"sandbox": [one]}
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(yaml.safe_dump(data))
    return hosts


def test_a_host_behind_a_jump_host_deploys_with_its_ssh_config(lab2, tmp_path):
    target, bastion = lab2.servers
    hosts = through_bastion(lab2, tmp_path, make_build(tmp_path, "jumped"))
    host = hostsfile.load(hosts).resolve("web1")[0]
    assert (host.host, host.port, host.user, host.key) == ("127.0.0.1", target.ssh_port, "root", lab2.lab.key)
    assert [(j.host, j.port) for j in host.jump] == [("127.0.0.1", bastion.ssh_port)]
    logins, target_logins = accepted(bastion), accepted(target)
    result = lab2.fab("deploy", hosts_file=hosts)
    assert result.returncode == 0, result.stderr
    assert current(target) == history(target)[-1]["release"] and history(target)[-1]["result"] == "ok"
    assert history(target)[-1]["bytes_sent"] > 0  # rsync uploaded, through the jump host too
    # one connection through the bastion, one login on each: rsync ran on a channel of it
    assert accepted(bastion) - logins == 1 and accepted(target) - target_logins == 1
    check = lab2.fab("check", hosts_file=hosts)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_jump_host_with_a_wrong_host_key_is_refused(lab2, tmp_path):
    target, bastion = lab2.servers
    lines = Path(lab2.lab.known_hosts).read_text().splitlines()
    target_key = next(line for line in lines if line.startswith(f"[127.0.0.1]:{target.ssh_port} "))
    forged = [line for line in lines if not line.startswith(f"[127.0.0.1]:{bastion.ssh_port} ")]
    forged.append(target_key.replace(f":{target.ssh_port} ", f":{bastion.ssh_port} "))  # another server's key
    known = tmp_path / "known_hosts"
    known.write_text("\n".join(forged) + "\n")
    hosts = through_bastion(lab2, tmp_path, make_build(tmp_path, "forged"), known_hosts=known)
    before, logins = current(target), accepted(bastion)
    result = lab2.fab("deploy", hosts_file=hosts)
    assert result.returncode == 3, result.stderr
    assert f"web1: the host key of jump host 127.0.0.1 port {bastion.ssh_port} does not match {known}" in result.stderr
    assert "otherwise someone may be in between: do not deploy" in result.stderr
    assert current(target) == before and accepted(bastion) == logins  # nothing authenticated, nothing changed


def write_hosts(tmp_path, config_text, host_keys=""):
    config = tmp_path / "ssh_config"
    config.write_text(config_text)
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(
        f"defaults:\n  deploy_to: /var/www/site\n  ssh_config: {config}\n"
        f"groups:\n  prod:\n    - host: web1\n{host_keys}"
    )
    return hosts


def test_hosts_yaml_keys_win_over_the_ssh_config(tmp_path):
    text = "Host web1\n  HostName 10.0.0.5\n  Port 2222\n  User alice\n  IdentityFile /keys/alice\n  ProxyJump bob@gw:2022\n"
    host = hostsfile.load(write_hosts(tmp_path, text)).resolve("web1")[0]
    assert (host.name, host.host, host.port, host.user, str(host.key)) == (
        "web1",
        "10.0.0.5",
        2222,
        "alice",
        "/keys/alice",
    )
    assert [(j.host, j.port, j.user) for j in host.jump] == [("gw", 2022, "bob")]
    keys = "      port: 22\n      user: deploy\n      key: /keys/deploy\n"
    host = hostsfile.load(write_hosts(tmp_path, text, keys)).resolve("web1")[0]
    assert (host.host, host.port, host.user, str(host.key)) == ("10.0.0.5", 22, "deploy", "/keys/deploy")


@pytest.mark.parametrize(
    "text, message",
    [
        ("Host web1\n  Port 70000\n", "ssh_config: Port '70000' of Host web1 is not a port (1-65535)"),
        ("Host web1\n  HostName a;b\n", "HostName 'a;b' of Host web1 is not a host name or address"),
        ("Host web1\n  ProxyJump x;y@gw\n", "ProxyJump user 'x;y' of Host web1 is not a user name"),
    ],
)
def test_bad_values_in_the_ssh_config_are_refused_naming_the_file(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        hostsfile.load(write_hosts(tmp_path, text)).resolve("web1")
    assert str(tmp_path / "ssh_config") in str(caught.value) and message.split(": ", 1)[-1] in str(caught.value)


def test_a_named_ssh_config_that_does_not_exist_is_refused(tmp_path):
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(
        f"defaults:\n  deploy_to: /var/www/site\n  ssh_config: {tmp_path}/missing\ngroups:\n  prod:\n    - host: web1\n"
    )
    with pytest.raises(ConfigError) as caught:
        hostsfile.load(hosts).resolve("web1")
    assert f"ssh_config: {tmp_path}/missing does not exist" in str(caught.value)
    assert "set ssh_config: none" in caught.value.hint
