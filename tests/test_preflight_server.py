"""What the server lacks for a deploy, found by `fab check` and by the deploy's first step before
anything is uploaded: a web_user or migrate.user that does not exist there, a deploy_to whose
releases/, shared/, .cutover/ or maintenance/ the deploy user may not write. Before, check said
"all ready", and the deploy failed after the upload (the web user, at the link step), after
maintenance went on (the migration's user), or with a raw PermissionError (the lock)."""

import os
import pwd
from pathlib import Path

from .conftest import configure, make_build
from .test_preflight import state, untouched
from .test_setup import deploy_user  # noqa: F401 (a fixture)


def test_a_web_user_that_does_not_exist_is_found_before_the_upload(lab1, tmp_path):
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "one"))
    assert lab1.fab("deploy").returncode == 0
    configure(lab1, make_build(tmp_path, "two"), web_user="no-such-web", writable=["media"])
    said = (
        "lab1: web_user 'no-such-web' does not exist on this server (writable: and readable: are granted to it): set "
        "web_user in hosts.yaml to the user Apache or php-fpm runs PHP as"
    )
    checked = lab1.fab("check")
    assert checked.returncode == 1
    assert said in checked.stdout, checked.stdout
    before = state(server)
    refused = lab1.fab("deploy")
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[0] == f"cutover: error: nothing was uploaded or switched: {said}"
    assert "upload" not in refused.stdout
    untouched(server, before)


def test_a_migrate_user_that_does_not_exist_is_found_before_maintenance_goes_on(lab1, tmp_path):
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "one"))
    assert lab1.fab("deploy").returncode == 0
    configure(lab1, make_build(tmp_path, "two"), migrate={"command": "true", "user": "no-such-migrator"})
    said = (
        "lab1: migrate.user 'no-such-migrator' does not exist on this server: set migrate.user in hosts.yaml to the "
        "user the migration must run as (or leave it out: the deploy user)"
    )
    checked = lab1.fab("check")
    assert checked.returncode == 1
    assert said in checked.stdout, checked.stdout
    before = state(server)
    refused = lab1.fab("deploy", "--migrate")
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.splitlines()[0] == f"cutover: error: nothing was uploaded or switched: {said}"
    untouched(server, before)
    assert not Path(server.deploy_to, "maintenance", "index.html").exists()
    assert not Path(server.deploy_to, "backups").exists() or list(Path(server.deploy_to, "backups").iterdir()) == []


def test_a_deploy_to_whose_layout_belongs_to_another_user_is_found_before_the_lock(lab1, deploy_user, tmp_path):  # noqa: F811
    """deploy_to handed to a new deploy user (chown of deploy_to alone, or an old setup as root):
    the deploy user may write deploy_to but not what Cutover keeps in it."""
    name, _ = deploy_user
    server = lab1.servers[0]
    site = Path(server.deploy_to)
    for sub in (".cutover", "releases", "maintenance"):
        os.chown(site / sub, 0, 0)
    configure(lab1, make_build(tmp_path, "theirs"), user=name, httpd={"pidfile": server.pidfile, "pause": "none"})
    said = (
        f"lab1: the deploy user {name} may not write {site}/.cutover, {site}/maintenance, {site}/releases (owned by "
        f"root): as root on the server, chown {name} {site}/.cutover {site}/maintenance {site}/releases"
    )
    checked = lab1.fab("check")
    assert checked.returncode == 1
    assert said in checked.stdout, checked.stdout
    before = state(server)
    refused = lab1.fab("deploy")
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.splitlines()[0] == f"cutover: error: nothing was uploaded or switched: {said}"
    untouched(server, before)
    # a task without the preflight meets it on the server: said as such, not as a raw PermissionError
    on = lab1.fab("maintenance-on")
    assert on.returncode == 4
    assert on.stderr.splitlines()[0].startswith(f"cutover: error: lab1: maintenance: {name} may not change {site}/"), (
        on.stderr
    )
    assert "(Permission denied)" in on.stderr and "PermissionError" not in on.stderr
    assert "what to do: the deploy user must own deploy_to and what Cutover keeps in it" in on.stderr
    uid = pwd.getpwnam(name).pw_uid
    for sub in (".cutover", "releases", "maintenance"):
        os.chown(site / sub, uid, uid)
    deployed = lab1.fab("deploy")
    assert deployed.returncode == 0, deployed.stderr


def test_check_finds_rules_that_setup_has_not_written_since_hosts_yaml_changed(lab1, tmp_path):
    """maintenance.allow, never_serve, serve, assets: Cutover's Apache rules are made from them by
    setup. Changed in hosts.yaml alone, the server kept the old rules (loopback still let through
    maintenance, a new never_serve name still served), and check said all ready."""
    import lab

    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "rules"))
    assert lab1.fab("check").returncode == 0
    lab.write_hosts_file(lab1.lab, build=str(make_build(tmp_path, "rules2")), maintenance={"allow": ["10.0.0.5"]})
    said = (
        f"lab1: Cutover's Apache rules in {server.deploy_to}/.cutover/apache.conf are not what hosts.yaml makes now "
        "(serve, never_serve, maintenance or assets changed since setup): rerun `fab setup`, then reload Apache"
    )
    checked = lab1.fab("check")
    assert checked.returncode == 1
    assert said in checked.stdout, checked.stdout
    assert lab1.fab("setup").returncode == 0
    assert lab1.fab("check").returncode == 0


def test_a_restore_for_a_web_user_that_does_not_exist_is_refused_before_maintenance(lab1, tmp_path):
    """The restore put the data back with maintenance on, then failed giving the grants, and left
    maintenance on: its checks, made before anything changes, did not look at web_user."""
    import re

    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "one"), writable=["media"], backups={"hold": 0})
    assert lab1.fab("deploy").returncode == 0
    taken = lab1.fab("backup")
    assert taken.returncode == 0, taken.stderr
    bid = re.search(r"^backup (\S+) of", taken.stdout, re.M).group(1)
    configure(lab1, make_build(tmp_path, "two"), writable=["media"], web_user="no-such-web", backups={"hold": 0})
    backups = sorted(os.listdir(Path(server.deploy_to, "backups")))
    refused = lab1.fab("restore", "--backup", bid)
    assert refused.returncode == 4, refused.stderr
    assert (
        "restore: the web server's user 'no-such-web' does not exist on this server (writable: is granted to it); "
        "nothing was restored"
    ) in refused.stderr, refused.stderr
    assert not Path(server.deploy_to, "maintenance", "index.html").exists()
    assert sorted(os.listdir(Path(server.deploy_to, "backups"))) == backups  # no backup taken before it
