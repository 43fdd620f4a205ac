"""The sudoers line for the swap helper names a Python only root can change: a `python:` the
deploy user could replace (a virtualenv's, one under its home) would let that user run anything
as root through the line. setup prints no such line, and check and the deploy's first step refuse
one that sudo already allows."""

import os
import pwd
from pathlib import Path

from tasks import agent
from tasks.remote import install

from .conftest import configure, make_build
from .test_preflight import allow, state, untouched
from .test_setup import deploy_user  # noqa: F401 (a fixture)


def own_python(server, name):
    """<lab>/venv/bin/python3 -> /usr/bin/python3, as `python3 -m venv` makes it, owned by `name`."""
    uid = pwd.getpwnam(name).pw_uid
    bin_dir = Path(server.root, "venv", "bin")
    bin_dir.mkdir(parents=True)
    (bin_dir / "python3").symlink_to("/usr/bin/python3")
    for path in (bin_dir.parent, bin_dir, bin_dir / "python3"):
        os.lchown(path, uid, uid)
    return str(bin_dir / "python3")


def test_setup_prints_no_sudoers_line_for_a_python_the_deploy_user_can_replace(lab1, deploy_user, tmp_path):  # noqa: F811
    name, sudoers = deploy_user
    server = lab1.servers[0]
    python = own_python(server, name)
    configure(lab1, make_build(tmp_path, "venv"), user=name, python=python)
    why = f"{Path(python).parent.parent} is owned by {name}"
    result = lab1.fab("setup")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"NOPASSWD: {python}" not in result.stdout + result.stderr
    said = (
        f"lab1: no sudoers line for the swap helper: it would run as root under {python}, which {name} can "
        f"replace ({why}), and so run anything as root: set python: in hosts.yaml to a Python only root can "
        "change (e.g. /usr/bin/python3), then rerun setup"
    )
    assert said in result.stdout, result.stdout
    checked = lab1.fab("check")
    assert checked.returncode == 1
    assert said.replace("no sudoers line for the swap helper: it", "the swap helper") in checked.stdout

    # a line an admin added all the same: check and the deploy refuse it, and say to remove it
    allow(sudoers, f"{name} ALL=(root) NOPASSWD: {python} -I -S {agent.HELPER} swap *\n")
    before = state(server)
    refused = lab1.fab("deploy")
    assert refused.returncode == 1
    first = refused.stderr.splitlines()[0]
    assert first == (
        f"cutover: error: nothing was uploaded or switched: lab1: sudo lets {name} run the swap helper as root "
        f"under {python}, which {name} can replace ({why}), and so run anything as root: remove that line from "
        "sudoers, set python: in hosts.yaml to a Python only root can change (e.g. /usr/bin/python3), then rerun setup"
    ), first
    untouched(server, before)
    assert lab1.fab("check").returncode == 1

    # a Python only root can change: the line, and the deploy
    configure(lab1, make_build(tmp_path, "usr"), user=name, python="/usr/bin/python3")
    allow(sudoers, f"{name} ALL=(root) NOPASSWD: /usr/bin/python3 -I -S {agent.HELPER} swap *\n")
    assert lab1.fab("setup").returncode == 0
    deployed = lab1.fab("deploy")
    assert deployed.returncode == 0, deployed.stderr


def test_what_only_root_can_change_is_found_along_every_symlink(tmp_path):
    """The server's look, in this process (as root): every directory on the way and the file,
    symlinks followed, owned by root and writable by no one else (a sticky /tmp aside)."""
    assert install.replaceable("/usr/bin/python3") is None
    nobody = pwd.getpwnam("nobody").pw_uid
    root_dir = tmp_path / "root-owned"
    root_dir.mkdir(mode=0o755)
    os.chmod(root_dir, 0o755)
    (root_dir / "python3").symlink_to("/usr/bin/python3")
    assert install.replaceable(str(root_dir / "python3")) is None
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, nobody, nobody)
    (root_dir / "via").symlink_to(theirs)  # a root-owned symlink into a directory another user owns
    (theirs / "python3").symlink_to("/usr/bin/python3")
    assert install.replaceable(str(root_dir / "via" / "python3")) == f"{theirs} is owned by nobody"
    os.chown(theirs, 0, 0)
    os.chmod(theirs, 0o775)
    os.chown(theirs, 0, pwd.getpwnam("nobody").pw_gid)
    assert install.replaceable(str(root_dir / "via" / "python3")) == f"{theirs} is writable by its group"
    os.chmod(theirs, 0o757)
    assert install.replaceable(str(root_dir / "via" / "python3")) == f"{theirs} is writable by everyone"
    os.chmod(theirs, 0o755)
    assert install.replaceable(str(root_dir / "via" / "python3")) is None
    assert install.replaceable(str(root_dir / "nothing")) == f"{root_dir / 'nothing'}: No such file or directory"
    loop = root_dir / "loop"
    loop.symlink_to(loop)
    assert install.replaceable(str(loop)) == f"{loop}: too many levels of symbolic links"
    assert install.replaceable("python3") == "python3 is not an absolute path"
