"""Shared, writable and readable entries, and every removal, never followed through a symlink in data
the app (the web server's user) or an older config controls: in process against a deploy_to the
web server's user can reach (the symlinks planted as www-data), and end to end through fab."""

import errno
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tasks.remote import finish, grants, shared
from tasks.remote.paths import Layout
from tasks.remote.protocol import Refused

from .conftest import current, make_build, releases, start_lab, stop_lab

RELEASE = "20261101T000000.000Z-aaaaaaa"
OTHER = "20261102T000000.000Z-bbbbbbb"
WEB_USER = "www-data"


@pytest.fixture
def root():
    """A directory the web server's user can traverse (pytest's tmp_path cannot: /tmp/pytest-of-root is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="cutover-paths-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def site(root):
    """A deploy_to with shared/ and one release holding index.html."""
    layout = Layout(str(root / "site"))
    for d in (layout.releases, layout.shared):
        os.makedirs(d)
    os.chmod(layout.deploy_to, 0o755)
    release = Path(layout.release(RELEASE))
    release.mkdir()
    (release / "index.html").write_text("page")
    return layout


@pytest.fixture
def victim(root):
    """A directory of the deploy user's that the web server's user must never get: it stands for ~/.ssh."""
    path = root / "home" / ".ssh"
    path.mkdir(parents=True)
    (path / "authorized_keys").write_text("ssh-ed25519 AAAA deploy\n")
    (path / "config").mkdir()
    return path


def as_web_user(script, cwd):
    """Run a shell script as the web server's user, as code of the app would."""
    run = subprocess.run(["sh", "-c", script], cwd=cwd, user=WEB_USER, group=WEB_USER, extra_groups=[],
                         capture_output=True, text=True)  # fmt: skip
    return run.returncode, run.stdout + run.stderr


def snapshot(top):
    """Every path under top (itself too): its type, content or target, mode, owner and extended attributes."""
    out = {}
    top = Path(top)
    for path in [top, *sorted(top.rglob("*"))]:
        st = path.lstat()
        rel = str(path.relative_to(top))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path))
            continue
        attrs = {
            name: os.getxattr(path, name, follow_symlinks=False) for name in os.listxattr(path, follow_symlinks=False)
        }
        body = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        out[rel] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, body, attrs)
    return out


def refusal(call, *args, **kwargs):
    """The Refused a call raised, or None: tests check what changed first, then what was said."""
    try:
        call(*args, **kwargs)
    except Refused as exc:
        return exc
    return None


def acl(path):
    return subprocess.run(["getfacl", "-p", str(path)], capture_output=True, text=True, check=True).stdout


def needs_acls(site):
    probe = Path(site.deploy_to, "acl-probe")
    probe.write_text("")
    try:
        os.setxattr(probe, grants.ACCESS, grants.build_acl(grants.acl_with_user([], 0o644, 33, 4)))
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            pytest.skip("this file system has no POSIX ACLs")
        raise
    finally:
        probe.unlink()


# --- item: linking never removes shared data ---------------------------------------------------------


def test_overlapping_shared_entries_are_refused_before_anything_changes(site):
    """storage, then storage/logs: the second resolves through the first's symlink to shared/storage/logs
    itself; removing "the release's copy" there would delete the shared data."""
    logs = Path(site.shared, "storage", "logs")
    logs.mkdir(parents=True)
    (logs / "app.log").write_text("what the app logged\n")
    before = snapshot(site.shared)
    err = refusal(shared.link, site, site.release(RELEASE), ["storage", "storage/logs"])
    assert snapshot(site.shared) == before
    assert "'storage/logs' lies inside shared entry 'storage'" in str(err)
    assert "remove 'storage/logs' from shared:" in err.hint
    assert sorted(os.listdir(site.release(RELEASE))) == ["index.html"]


def test_link_never_follows_a_symlink_in_the_release_into_shared(site):
    """A hand-made release (or an older Cutover's) whose storage is already a symlink into shared/:
    linking storage/logs stops at that symlink; shared/ is not touched."""
    logs = Path(site.shared, "storage", "logs")
    logs.mkdir(parents=True)
    (logs / "app.log").write_text("what the app logged\n")
    os.symlink("../../shared/storage", Path(site.release(RELEASE), "storage"))
    before = snapshot(site.shared)
    err = refusal(shared.link, site, site.release(RELEASE), ["storage/logs"])
    assert snapshot(site.shared) == before
    assert "shared entry 'storage/logs': storage is a symlink in the release" in str(err)


def test_nested_entries_are_seeded_linked_and_created_through_descriptors(site):
    release = Path(site.release(RELEASE))
    (release / "public" / "uploads").mkdir(parents=True)
    (release / "public" / "uploads" / "README.txt").write_text("uploads land here")
    (release / ".env").write_text("DB=1")
    done = shared.link(site, str(release), ["public/uploads", ".env", "media"])
    assert done == {"public/uploads": "seeded", ".env": "seeded", "media": "created"}
    assert os.readlink(release / "public" / "uploads") == "../../../shared/public/uploads"
    assert os.readlink(release / ".env") == "../../shared/.env" and Path(site.shared, ".env").read_text() == "DB=1"
    assert Path(site.shared, "public/uploads/README.txt").read_text() == "uploads land here"
    assert Path(site.shared, "media").is_dir() and not Path(site.shared, "media").is_symlink()
    # the next release: its copies are replaced by the links, the shared data kept
    again = Path(site.release(OTHER))
    (again / "public" / "uploads").mkdir(parents=True)
    (again / "public" / "uploads" / "README.txt").write_text("a later build's copy")
    assert shared.link(site, str(again), ["public/uploads", ".env", "media"]) == dict.fromkeys(done, "linked")
    assert (again / "public" / "uploads" / "README.txt").read_text() == "uploads land here"


@pytest.mark.parametrize("entry", ["../../../outside", "media/../../../../outside", "/outside", "./media", "a//b"])
def test_an_entry_that_is_no_plain_path_is_refused_by_the_server_too(site, root, entry):
    """hosts.yaml refuses these; the server holds any request to the same grammar, before any change."""
    (root / "outside").mkdir()
    before = snapshot(root)
    for call, kind in ((shared.link, "shared"), (shared.make_writable, "writable"), (shared.make_readable, "readable")):
        args = (
            (site, site.release(RELEASE), [entry])
            if call is shared.link
            else (site.release(RELEASE), [entry], WEB_USER, [entry])
        )
        err = refusal(call, *args)
        assert snapshot(root) == before
        assert (
            str(err) == f"{kind} entry {entry!r} is not a plain relative path inside the release; nothing was changed"
        )


# --- item: a file entry that nothing seeds -------------------------------------------------------------


def test_a_file_entry_nothing_seeds_is_refused_never_made_a_directory(site):
    err = refusal(shared.link, site, site.release(RELEASE), ["media", "LocalSettings.php"])
    assert sorted(os.listdir(site.shared)) == []  # refused before anything changed, media included
    assert sorted(os.listdir(site.release(RELEASE))) == ["index.html"]
    assert "shared entry 'LocalSettings.php' is neither in shared/ nor in the build" in str(err)
    assert f"put the file at {site.shared}/LocalSettings.php" in err.hint
    assert f"mkdir {site.shared}/LocalSettings.php" in err.hint  # a directory whose name has a dot


def test_a_file_entry_put_in_shared_by_hand_is_linked(site):
    Path(site.shared, "LocalSettings.php").write_text("<?php $wgSitename = 'wiki';\n")
    assert shared.link(site, site.release(RELEASE), ["LocalSettings.php"]) == {"LocalSettings.php": "linked"}
    assert Path(site.release(RELEASE), "LocalSettings.php").read_text() == "<?php $wgSitename = 'wiki';\n"


# --- item: writable grants never go through a symlink the web server's user planted ------------------------


def laravel(site):
    """shared: [storage], writable: [storage, storage/logs] after a first deploy."""
    release = site.release(RELEASE)
    assert shared.link(site, release, ["storage"]) == {"storage": "created"}
    done = shared.make_writable(release, ["storage", "storage/logs"], WEB_USER, fresh=["storage"])
    if done["storage"] != "acl":
        pytest.skip("this file system has no POSIX ACLs")
    assert done == {"storage": "acl", "storage/logs": "acl"}
    return release


def test_a_writable_entry_nested_in_a_writable_shared_entry_is_walked_from_its_parent(site):
    needs_acls(site)
    laravel(site)
    logs = Path(site.shared, "storage", "logs")
    assert logs.is_dir() and not logs.is_symlink()  # created inside shared/storage, through the release's link
    assert f"user:{WEB_USER}:rwx" in acl(logs) and f"default:user:{WEB_USER}:rwx" in acl(logs)
    code, out = as_web_user("echo line >> storage/logs/app.log", site.shared)
    assert code == 0, out


def test_a_symlink_the_web_user_planted_gets_no_grant_and_is_named(site, victim):
    needs_acls(site)
    release = laravel(site)
    code, out = as_web_user(
        f"mv logs logs.moved && ln -s {shlex.quote(str(victim))} logs", Path(site.shared, "storage")
    )
    assert code == 0, out
    before = snapshot(victim)
    err = refusal(shared.make_writable, release, ["storage", "storage/logs"], WEB_USER, ["storage", "storage/logs"])
    assert snapshot(victim) == before
    assert f"user:{WEB_USER}" not in acl(victim) and f"user:{WEB_USER}" not in acl(victim / "authorized_keys")
    assert str(err) == (
        f"writable entry 'storage/logs': shared/storage/logs is a symlink (to {victim}); Cutover never grants "
        "through a symlink; nothing was granted"
    )
    assert "remove the symlink" in err.hint


def test_a_symlink_the_web_user_planted_at_the_top_of_an_entry_gets_no_grant(site, victim):
    """writable: [storage/logs] alone, storage shared and writable by the web user's own doing."""
    needs_acls(site)
    release = laravel(site)
    as_web_user(f"rm -r logs && ln -s {shlex.quote(str(victim))} logs", Path(site.shared, "storage"))
    before = snapshot(victim)
    err = refusal(shared.make_writable, release, ["storage/logs"], WEB_USER, [])
    assert snapshot(victim) == before
    assert str(err).startswith("writable entry 'storage/logs': shared/storage/logs is a symlink")


def test_a_symlink_inside_a_writable_tree_is_left_alone(site, victim):
    needs_acls(site)
    release = laravel(site)
    as_web_user(f"ln -s {shlex.quote(str(victim))} keys && ln -s {shlex.quote(str(victim))}/authorized_keys k",
                Path(site.shared, "storage", "logs"))  # fmt: skip
    before = snapshot(victim)
    assert shared.make_writable(release, ["storage"], WEB_USER, fresh=["storage"]) == {"storage": "acl"}
    assert snapshot(victim) == before


class SwapDuringWalk:
    """os.scandir that, once the listing of `directory` is made, swaps `directory` for a symlink to
    victim: the web user's rename racing the grant, at the worst moment (its children listed, not
    yet granted), deterministically."""

    def __init__(self, monkeypatch, directory, victim):
        self.directory, self.victim, self.swapped = str(directory), str(victim), False
        self.real = os.scandir
        monkeypatch.setattr(os, "scandir", self)

    def __call__(self, target="."):
        listed = self.real(target)
        where = os.readlink(f"/proc/self/fd/{target}") if isinstance(target, int) else os.path.abspath(target)
        if where == self.directory and not self.swapped:
            entries = list(listed)
            listed.close()
            os.rename(self.directory, self.directory + ".moved")
            os.symlink(self.victim, self.directory)
            self.swapped = True
            return Listing(entries)
        return listed


class Listing:
    """What os.scandir returns, from a list made before the swap."""

    def __init__(self, entries):
        self.entries = iter(entries)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.entries)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass


def test_a_directory_swapped_for_a_symlink_during_the_walk_redirects_nothing(site, victim, monkeypatch):
    needs_acls(site)
    release = laravel(site)
    logs = Path(site.shared, "storage", "logs")
    (logs / "authorized_keys").write_text("the app's own file of that name\n")  # a name the victim has
    (logs / "config").mkdir()
    before = snapshot(victim)
    swap = SwapDuringWalk(monkeypatch, logs, victim)
    shared.make_writable(release, ["storage"], WEB_USER, fresh=["storage"])
    assert swap.swapped
    monkeypatch.undo()
    assert snapshot(victim) == before
    moved = Path(str(logs) + ".moved")
    assert f"user:{WEB_USER}:rw-" in acl(moved / "authorized_keys")  # the grant went where the walk was


def test_without_acls_the_group_is_given_on_opened_inodes_and_a_symlink_left_alone(site, victim):
    """The fallback where the file system has no ACLs: group and mode, set through descriptors too."""
    import pwd

    from tasks.remote import grants, nofollow

    top = Path(site.shared, "uploads")
    (top / "a").mkdir(parents=True)
    (top / "a" / "photo.jpg").write_bytes(b"jpeg")
    (top / "a" / "photo.jpg").chmod(0o600)
    os.symlink(victim, top / "a" / "keys")
    os.symlink(victim / "authorized_keys", top / "k")
    before = snapshot(victim)
    user = pwd.getpwnam(WEB_USER)
    fd = os.open(top, nofollow.DIR_FLAGS)
    try:
        assert grants._grant_group("writable", fd, os.fstat(fd), user, True, "uploads") == "group"
    finally:
        os.close(fd)
    assert snapshot(victim) == before
    for path, mode in ((top, 0o2775), (top / "a", 0o2775), (top / "a" / "photo.jpg", 0o660)):
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (mode, user.pw_gid), path
    assert as_web_user("echo more >> a/photo.jpg && mkdir a/new", top) == (0, "")


# --- item: readable (a hardened config the web server reads, never writes) ------------------------------


def test_a_readable_entry_is_read_not_written_by_the_web_user(site):
    needs_acls(site)
    config = Path(site.shared, "wp-config.php")
    config.write_text("<?php define('DB_PASSWORD', 'hunter2');\n")
    config.chmod(0o640)
    release = site.release(RELEASE)
    shared.link(site, release, ["wp-config.php"])
    code, out = as_web_user("cat wp-config.php", site.shared)
    assert code != 0 and "Permission denied" in out  # hardened: the first deploy's problem
    assert shared.make_readable(release, ["wp-config.php"], WEB_USER, fresh=[]) == {"wp-config.php": "acl"}
    assert as_web_user("cat wp-config.php", site.shared) == (0, "<?php define('DB_PASSWORD', 'hunter2');\n")
    code, out = as_web_user("echo '// changed' >> wp-config.php", site.shared)
    assert code != 0 and "Permission denied" in out
    assert stat.S_IMODE(config.stat().st_mode) == 0o640  # the mode as hardened: group r, others nothing
    assert f"user:{WEB_USER}:r--" in acl(config)


def test_readable_never_takes_back_what_writable_gave(site):
    needs_acls(site)
    release = laravel(site)
    shared.make_readable(release, ["storage"], WEB_USER, fresh=["storage"])
    assert f"user:{WEB_USER}:rwx" in acl(Path(site.shared, "storage"))
    code, out = as_web_user("echo x > storage/new.txt", site.shared)
    assert code == 0, out


def test_readable_refuses_what_does_not_exist(site):
    with pytest.raises(Refused) as err:
        shared.make_readable(site.release(RELEASE), ["wp-config.php"], WEB_USER, fresh=[])
    assert str(err.value) == "readable entry 'wp-config.php' does not exist in the release or shared/"


# --- item: removals ---------------------------------------------------------------------------------


def test_cleanup_never_removes_through_a_symlinked_releases_dir(site, root):
    """releases/ replaced by a symlink: the release-named directory it leads to is not Cutover's."""
    elsewhere = root / "elsewhere"
    os.rename(site.releases, elsewhere)
    os.symlink(elsewhere, site.releases)
    before = snapshot(elsewhere)
    err = refusal(finish.remove_release_dir, site, RELEASE)
    assert snapshot(elsewhere) == before
    assert "releases is not a plain directory" in str(err)


def test_removing_a_release_never_follows_a_symlink_inside_it(site, victim):
    release = Path(site.release(RELEASE))
    (release / "cache").mkdir()
    (release / "cache").chmod(0o777)  # a writable entry of the release, the web user's to fill
    code, out = as_web_user(f"ln -s {shlex.quote(str(victim))} cache/keys && mkdir cache/d && "
                            f"ln -s {shlex.quote(str(victim))}/authorized_keys cache/d/k", release)  # fmt: skip
    assert code == 0, out
    before = snapshot(victim)
    finish.remove_release_dir(site, RELEASE)
    assert not os.path.lexists(release)
    assert snapshot(victim) == before


def test_abort_removes_the_incoming_release_and_never_its_shared_entries(site):
    from tasks.agent import LocalAgent

    agent = LocalAgent()
    who = {"user": "t", "local_host": "here", "pid": os.getpid(), "command": "deploy", "token": "tok"}
    Path(site.meta).mkdir()
    agent.call("lock", {"deploy_to": site.deploy_to, "who": who, "release_id": OTHER})
    incoming = site.incoming(OTHER)
    Path(site.shared, "media").mkdir()
    Path(site.shared, "media", "photo.jpg").write_bytes(b"user upload")
    shared.link(site, incoming, ["media"])
    before = snapshot(site.shared)
    answer = agent.call("abort", {"deploy_to": site.deploy_to, "token": "tok", "release_id": OTHER, "remove": True})
    assert answer["removed"] == [".incoming-" + OTHER]
    assert not os.path.lexists(incoming)
    assert snapshot(site.shared) == before


def test_cleanup_removes_stale_leftovers_by_descriptor(site):
    """A dead run's .incoming dir holding symlinks into shared/: removed, shared/ intact."""
    Path(site.meta).mkdir()
    Path(site.shared, "media").mkdir()
    Path(site.shared, "media", "photo.jpg").write_bytes(b"user upload")
    dead = Path(site.incoming(OTHER))
    dead.mkdir()
    os.symlink("../../shared/media", dead / "media")
    os.symlink(site.shared, dead / "all")
    before = snapshot(site.shared)
    assert finish.cleanup(site, keep=5, protect=[]) == [".incoming-" + OTHER]
    assert snapshot(site.shared) == before and not os.path.lexists(dead)


# --- end to end: a lab server, through fab ---------------------------------------------------------


@pytest.fixture(scope="module")
def lab():
    handle, lab_root = start_lab(1)
    yield handle
    stop_lab(handle, lab_root)


def deploy(lab, build, **settings):
    from .conftest import configure

    configure(lab, build, **settings)
    return lab.fab("deploy")


def test_a_deploy_refuses_the_web_users_symlink_and_grants_nothing(lab, tmp_path, victim):
    server = lab.servers[0]
    site = Path(server.deploy_to)
    settings = {"shared": ["storage"], "writable": ["storage", "storage/logs"]}
    first = deploy(lab, make_build(tmp_path, "w1"), **settings)
    assert first.returncode == 0, first.stderr
    assert "storage/logs writable by www-data (ACL)" in first.stdout
    live = current(server)
    code, out = as_web_user(f"mv logs logs.moved && ln -s {shlex.quote(str(victim))} logs", site / "shared" / "storage")
    assert code == 0, out
    before = snapshot(victim)
    second = deploy(lab, make_build(tmp_path, "w2"), **settings)
    assert snapshot(victim) == before
    assert second.returncode == 4, second.stdout + second.stderr
    assert (
        f"writable entry 'storage/logs': shared/storage/logs is a symlink (to {victim}); Cutover never grants "
        "through a symlink; nothing was granted" in second.stderr
    )
    assert "remove the symlink" in second.stderr
    assert current(server) == live and not (site / ".cutover" / "lock").exists()
    assert [r for r in releases(server) if r.startswith(".")] == []


def test_a_deploy_refuses_a_file_entry_nothing_seeds_and_reads_a_hardened_one(lab, tmp_path):
    server = lab.servers[0]
    site = Path(server.deploy_to)
    build = make_build(tmp_path, "f1")
    live = current(server)
    refused = deploy(lab, build, shared=["media", "settings.txt"])
    assert not os.path.lexists(site / "shared" / "settings.txt")
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "shared entry 'settings.txt' is neither in shared/ nor in the build" in refused.stderr
    assert f"put the file at {site}/shared/settings.txt" in refused.stderr
    assert current(server) == live and [r for r in releases(server) if r.startswith(".")] == []
    # the operator puts the file there, hardened: without readable the web server cannot read it
    settings = site / "shared" / "settings.txt"
    settings.write_text("secret=hunter2\n")
    settings.chmod(0o640)
    unread = deploy(lab, build, shared=["media", "settings.txt"])
    assert unread.returncode == 0, unread.stderr
    assert fetch(server, "/settings.txt")[0] == 403
    done = deploy(lab, make_build(tmp_path, "f2"), shared=["media", "settings.txt"], readable=["settings.txt"])
    assert done.returncode == 0, done.stderr
    assert "settings.txt readable by www-data (ACL)" in done.stdout
    assert fetch(server, "/settings.txt") == (200, "secret=hunter2\n")
    code, out = as_web_user("echo x >> settings.txt", site / "shared")
    assert code != 0 and "Permission denied" in out
    assert stat.S_IMODE(settings.stat().st_mode) == 0o640


def fetch(server, path):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_check_names_what_shared_holds_that_no_entry_names(lab):
    server = lab.servers[0]
    shared_dir = Path(server.deploy_to, "shared")
    for child in shared_dir.iterdir():  # what the tests before left
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    for rel in ("media", "public/uploads", "uploads", "public/legacy"):
        (shared_dir / rel).mkdir(parents=True)
    (shared_dir / ".env").write_text("DB=1\n")
    from .conftest import configure

    configure(lab, make_build(Path(server.root), "c1"), shared=["media", "public/uploads"])
    result = lab.fab("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "lab1: shared/.env, shared/public/legacy, shared/uploads: named by no shared: entry, so no release links it "
        "(the app writes into each release instead, and cleanup deletes that); add it to shared: or remove it from "
        "the server" in result.stdout
    )
    configure(lab, make_build(Path(server.root), "c2"), shared=["media", "public/uploads", "uploads", ".env"])
    result = lab.fab("check")
    assert result.returncode == 0, result.stdout + result.stderr
    [line] = [x for x in result.stdout.splitlines() if "named by no shared: entry" in x]
    assert line.startswith("lab1: shared/public/legacy: named by")  # public/ itself is no entry: public/uploads is
    (shared_dir / "public" / "legacy").rmdir()
    result = lab.fab("check")
    assert result.returncode == 0 and "named by no shared: entry" not in result.stdout
