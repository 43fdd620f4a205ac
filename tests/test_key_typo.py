"""A typo in the path of the SSH key hosts.yaml names: said as what it is, a hosts.yaml error
(exit 2) naming the setting and the file, before any server is asked anything."""

import pytest

from .conftest import configure, current, history, make_build


@pytest.mark.parametrize("task", [("deploy",), ("check",), ("rollback",)])
def test_a_key_file_that_does_not_exist_is_a_hosts_yaml_error_not_a_server_out_of_reach(lab2, tmp_path, task):
    server = lab2.servers[0]
    good = make_build(tmp_path, "k1")
    configure(lab2, good)
    assert lab2.fab("deploy").returncode == 0
    live, entries = current(server), len(history(server))
    typo = str(lab2.lab.key) + "x"
    configure(lab2, make_build(tmp_path, "k2"), key=typo)
    try:
        done = lab2.fab(*task)
    finally:
        configure(lab2, good)
    assert done.returncode == 2, done.stderr
    assert f"lab1, lab2: key: {typo} does not exist; nothing was changed" in done.stderr, done.stderr
    assert "what to do: fix key: in hosts.yaml (or IdentityFile in ssh_config)" in done.stderr, done.stderr
    assert "cannot reach" not in done.stderr and "sshd runs there" not in done.stderr, done.stderr
    assert current(server) == live and len(history(server)) == entries
