"""Backups copied off the servers of a group (backups.to): two lab servers deployed to by a deploy
user who is not root (the sudo swap helper), a third lab server as the backup host. Each host's
copy is its own, compared after the copy, and restores that host as it was."""

import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tasks import agent
from tasks.remote import helper as sudo_helper

from .conftest import configure, current, history, make_build, start_lab, stop_lab

SAME_TIME = 1_700_000_000  # every photo's mtime: same name, same size, same time, other content


@pytest.fixture
def fleet():
    """lab1 and lab2 serve the site; lab3 stands for the backup host."""
    handle, root = start_lab(3)
    yield handle
    stop_lab(handle, root)


@pytest.fixture
def deploy_user(fleet):
    """A throwaway user who owns lab1's and lab2's deploy_to and logs in to all three; its sudoers
    line and the helper's registrations of these sites removed afterwards."""
    if shutil.which("sudo") is None or shutil.which("useradd") is None:
        pytest.skip("sudo or useradd is not installed (make install adds sudo)")
    name = f"cutover-o{os.getpid() % 100000}"
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", "-p", "*", name], check=True)
    uid = pwd.getpwnam(name).pw_uid
    for server in fleet.servers[:2]:
        for path in [server.deploy_to, *(str(p) for p in Path(server.deploy_to).rglob("*"))]:
            os.lchown(path, uid, uid)
    sudoers = Path(f"/etc/sudoers.d/{name}")
    helper, config = Path(agent.HELPER), Path(sudo_helper.HELPER_CONFIG)
    created = [p for p in (helper, config, helper.parent, config.parent) if not p.exists()]
    run_dir_created = not Path(sudo_helper.RUN_DIR).exists()
    yield name, uid, sudoers
    sudoers.unlink(missing_ok=True)
    if config.exists() and config not in created:  # another site's registrations stay
        sites = json.loads(config.read_text())
        for server in fleet.servers[:2]:
            sites.pop(server.deploy_to, None)
        config.write_text(json.dumps(sites, indent=2, sort_keys=True) + "\n")
    for path in created:  # files first, then their directories
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)
    if run_dir_created:
        shutil.rmtree(sudo_helper.RUN_DIR, ignore_errors=True)
    subprocess.run(["userdel", "-f", name], check=True)


def two_host_group(fleet, build, **settings):
    """hosts.yaml with group sandbox of lab1 and lab2 only (lab3 is the backup host)."""
    configure(fleet, build, **settings)
    data = yaml.safe_load(fleet.hosts_file.read_text())
    data["groups"]["sandbox"] = [h for h in data["groups"]["sandbox"] if h["name"] != "lab3"]
    fleet.hosts_file.write_text(yaml.safe_dump(data, sort_keys=False))


def copies(output):
    """{host: where fab said it copied the backup}."""
    return dict(re.findall(r"^\[(lab\d)\] backup .* copied to \S+@127\.0\.0\.1:(\S+?)/?(?:,|$)", output, re.M))


def shared_files(server):
    media = Path(server.deploy_to, "shared", "media")
    return {str(p.relative_to(media)): p.read_bytes() for p in sorted(media.rglob("*")) if p.is_file()}


def test_each_host_of_a_group_keeps_its_own_copy_off_the_server_and_is_restored_from_it(fleet, deploy_user, tmp_path):
    name, uid, sudoers = deploy_user
    one, two, vault = fleet.servers
    offsite = Path(vault.root, "offsite")
    offsite.mkdir()
    os.chown(offsite, uid, uid)
    key = Path(fleet.lab.root, "backup_ed25519")  # the key each server copies with: a file of the deploy user's
    shutil.copy(fleet.lab.key, key)
    os.chown(key, uid, uid)
    key.chmod(0o600)
    to = {"host": "127.0.0.1", "port": vault.ssh_port, "user": name, "path": str(offsite), "key": str(key),
          "known_hosts": str(fleet.lab.known_hosts)}  # fmt: skip
    settings = {"user": name, "backups": {"to": to, "hold": 0}}
    two_host_group(fleet, make_build(tmp_path, "o1"), **settings)
    installed = fleet.fab("setup")
    assert installed.returncode == 0, installed.stderr
    sudoers.write_text(f"{name} ALL=(root) NOPASSWD: /usr/bin/python3 -I -S {agent.HELPER} swap *\n")
    sudoers.chmod(0o440)
    assert fleet.fab("deploy").returncode == 0
    first = current(one)
    assert current(two) == first
    photos = {server.name: Path(server.deploy_to, "shared", "media", "photo.txt") for server in (one, two)}
    for server, text in ((one, "lab1's photo\n"), (two, "lab2's photo\n")):
        photos[server.name].write_text(text)
        os.chown(photos[server.name], uid, uid)
        os.utime(photos[server.name], (SAME_TIME, SAME_TIME))
        Path(server.deploy_to, "shared", "media", f"{server.name}-only.txt").write_text(f"{server.name}\n")
    taken = fleet.fab("backup")
    assert taken.returncode == 0, taken.stderr
    # a file of the same name, size and time, changed on lab1 only: its next copy must carry the change
    photos["lab1"].write_text("LAB1'S PHOTO\n")
    os.utime(photos["lab1"], (SAME_TIME, SAME_TIME))
    taken = fleet.fab("backup")
    assert taken.returncode == 0, taken.stderr
    bid = [e for e in history(one) if e["event"] == "backup"][-1]["backup"]
    at_backup = {server.name: shared_files(server) for server in (one, two)}
    where = copies(taken.stdout)
    for server in (one, two):
        copy = Path(where[server.name])
        held = {str(p.relative_to(copy / "shared" / "media")): p.read_bytes()
                for p in sorted((copy / "shared" / "media").rglob("*")) if p.is_file()}  # fmt: skip
        assert held == at_backup[server.name], server.name
        listed = json.loads((copy / "manifest.json").read_text())["files"]
        found = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file())
        assert sorted([*listed, "manifest.json", "backup.json"]) == found
    assert where == {"lab1": f"{offsite}/lab1/{bid}", "lab2": f"{offsite}/lab2/{bid}"}
    listing = fleet.fab("backups")
    for server in (one, two):
        section = listing.stdout.split(f"{server.name}: ")[1]
        row = next(line for line in section.splitlines() if line.startswith(bid))
        assert f"{name}@127.0.0.1:{offsite}/{server.name}/{bid}/" in row
    two_host_group(fleet, make_build(tmp_path, "o2"), **settings)
    assert fleet.fab("deploy").returncode == 0
    # the servers lose their backups; each gets its own copy back, as the README says
    for server in (one, two):
        shutil.rmtree(Path(server.deploy_to, "backups"))
        back = Path(server.deploy_to, "backups", bid)
        back.parent.mkdir(mode=0o700)
        subprocess.run(["rsync", "-a", f"{offsite}/{server.name}/{bid}/", f"{back}/"], check=True)
        for path in [back.parent, *back.parent.rglob("*")]:
            os.lchown(path, uid, uid)
        photos[server.name].write_text("written since\n")
    restored = fleet.fab("restore", "--backup", bid)
    assert restored.returncode == 0, restored.stderr
    assert "WARNING" not in restored.stdout
    # lab<n>-only.txt is root's: the deploy user restores its content, and may not change its group
    assert restored.stdout.count("1 file of other users kept their owner and mode") == 2
    for server in (one, two):
        assert shared_files(server) == at_backup[server.name], server.name
        assert current(server) == first
    # the backup the restore took of the data it replaced went off the servers too, each its own
    before = restored.stdout.split("the data as it was before the restore: backup ")[1].split()[0]
    assert copies(restored.stdout) == {"lab1": f"{offsite}/lab1/{before}", "lab2": f"{offsite}/lab2/{before}"}
    for server in (one, two):
        assert (offsite / server.name / before / "shared" / "media" / "photo.txt").read_text() == "written since\n"


def test_a_silent_backup_host_ends_the_copy_in_bounded_time_and_the_backup_stays(lab1, tmp_path):
    # a backup host that takes the connection and never answers: ssh's connect timeout ends it
    server = lab1.servers[0]
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    to = {"host": "127.0.0.1", "port": silent.getsockname()[1], "user": "root", "path": "/srv/offsite",
          "key": str(lab1.lab.key), "known_hosts": str(lab1.lab.known_hosts)}  # fmt: skip
    configure(lab1, make_build(tmp_path, "s1"), backups={"to": to, "hold": 0})
    try:
        assert lab1.fab("deploy").returncode == 0
        started = time.monotonic()
        result = lab1.fab("backup", timeout=120)
        seconds = time.monotonic() - started
    finally:
        silent.close()
    assert result.returncode == 4, result.stderr
    assert (
        "timed out during banner exchange" in result.stderr and "the backup is complete on this server" in result.stderr
    )
    assert seconds < 15 + 30  # CONNECT_TIMEOUT, and the rest of the backup on a loaded machine
    bid = [e for e in history(server) if e["event"] == "backup"][-1]["backup"]
    assert json.loads(Path(server.deploy_to, "backups", bid, "backup.json").read_text()).get("copied_to") is None
    assert not Path(server.deploy_to, ".cutover", "lock").exists()


def test_the_comparison_after_a_copy_finds_what_differs_there(tmp_path):
    from tasks.remote.offsite import differences

    src, copy = tmp_path / "backup", tmp_path / "copy"
    (src / "shared" / "media").mkdir(parents=True)
    (src / "shared" / "media" / "photo.txt").write_text("lab1's photo\n")
    (src / "shared" / "media" / "latest").symlink_to("photo.txt")
    subprocess.run(["rsync", "-a", f"{src}/", f"{copy}/"], check=True)
    assert differences(str(src), f"{copy}/") == []
    photo = copy / "shared" / "media" / "photo.txt"
    stamp = photo.stat().st_mtime_ns
    photo.write_text("lab2's photo\n")  # another host's file: same name, size and time
    os.utime(photo, ns=(stamp, stamp))
    (copy / "shared" / "media" / "lab2-only.txt").write_text("lab2\n")
    (copy / "shared" / "media" / "latest").unlink()
    (copy / "shared" / "media" / "latest").symlink_to("lab2-only.txt")
    found = differences(str(src), f"{copy}/")
    assert [(line.split()[0][:3], line.split()[1]) for line in found] == [
        ("*de", "shared/media/lab2-only.txt"),  # *deleting: a file the backup does not hold
        ("cLc", "shared/media/latest"),  # a symlink pointing elsewhere
        (">fc", "shared/media/photo.txt"),  # a file whose content (checksum) differs
    ]


def test_a_copy_that_fails_says_why_for_each_cause(lab_pair, tmp_path):
    """Each failure of the copy off the server says what to fix, not only "check that this server's
    key is authorized there": a backup host whose key is another, one that nothing answers for, a
    full disk there. The backup stays complete on the server each time."""
    server, vault = lab_pair.servers
    offsite = Path(vault.root, "offsite")
    offsite.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k,mode=0755", "tmpfs", str(offsite)], check=True)
    try:
        wrong = tmp_path / "wrong_known_hosts"  # the vault's port, another server's key
        keys = lab_pair.lab.known_hosts.read_text().splitlines()
        theirs = [line for line in keys if line.startswith(f"[127.0.0.1]:{server.ssh_port} ")]
        wrong.write_text(theirs[0].replace(f"]:{server.ssh_port} ", f"]:{vault.ssh_port} ") + "\n")
        to = {"host": "127.0.0.1", "port": vault.ssh_port, "user": "root", "path": str(offsite),
              "key": str(lab_pair.lab.key), "known_hosts": str(wrong)}  # fmt: skip
        cases = [
            (
                dict(to),
                f"the backup host 127.0.0.1 port {vault.ssh_port}: its host key is not one {wrong} holds for it",
                f"if the backup host is new or was really reinstalled, put its key into {wrong} on this server "
                f"(ssh-keyscan -p {vault.ssh_port} 127.0.0.1, checked); otherwise someone may be in between",
            ),
            (
                dict(to, port=1, known_hosts=str(lab_pair.lab.known_hosts)),
                "nothing answers at 127.0.0.1 port 1",
                "check backups.to.host and backups.to.port, and that sshd runs there",
            ),
            (
                dict(to, known_hosts=str(lab_pair.lab.known_hosts)),
                # rsync's words, or where ssh lost them, its exit status's
                ("No space left on device", "rsync could not write on the backup host (exit status 11"),
                (
                    f"the backup host's disk is full at {offsite}: free space there, or give backups.to.path on a disk "
                    "with room",
                    f"the backup host's disk may be full at {offsite}, or root may not write there: free space there "
                    f"(df -h {offsite}), or give backups.to.path on a disk with room",
                ),
            ),
        ]
        Path(offsite, "filler").write_bytes(os.urandom(12000))
        for n, (to_, said, hint) in enumerate(cases):
            configure(lab_pair, make_build(tmp_path, f"cause{n}"), backups={"to": to_, "hold": 0})
            data = yaml.safe_load(lab_pair.hosts_file.read_text())
            data["groups"]["sandbox"] = data["groups"]["sandbox"][:1]  # lab2 is the backup host only
            lab_pair.hosts_file.write_text(yaml.safe_dump(data, sort_keys=False))
            result = lab_pair.fab("backup")
            assert result.returncode == 4, result.stdout + result.stderr
            said, hint = ([s] if isinstance(s, str) else s for s in (said, hint))
            assert any(s in result.stderr for s in said), result.stderr
            assert any(f"what to do: {h}; the backup is complete on this server" in result.stderr for h in hint), (
                result.stderr
            )
            bid = [e for e in history(server) if e["event"] == "backup"][-1]["backup"]
            assert (
                json.loads(Path(server.deploy_to, "backups", bid, "backup.json").read_text()).get("copied_to") is None
            )
    finally:
        subprocess.run(["umount", "-l", str(offsite)], check=True)  # -l: the backup host's rsync may still be ending
