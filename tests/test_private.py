"""Nothing from the build that is not the site is uploaded or served: a site kept in its own git
repository with its hosts.yaml (`build.path: .`) is deployed without them, `build.exclude` leaves
out more, and `fab check` fails on a private-looking file the site serves, naming its URL."""

import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tasks import buildfiles, hostsfile, release
from tasks.errors import ConfigError
from tasks.remote import private

from .conftest import current, make_build


def status(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def write_hosts(handle, hosts_file, defaults=None, **build):
    """The lab's hosts.yaml written to `hosts_file`, its build settings changed by `build`, its defaults by `defaults`."""
    data = yaml.safe_load(handle.hosts_file.read_text())
    data["defaults"]["build"].update(build)
    data["defaults"].update(defaults or {})
    hosts_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return hosts_file


def release_files(server):
    root = Path(server.deploy_to, "releases", current(server))
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_site_in_its_own_repository_is_deployed_without_its_hosts_file_and_git(lab1, tmp_path):
    server = lab1.servers[0]
    site = make_build(tmp_path, "repo")
    shutil.copy(lab1.lab.key, site / "deploy_key")  # the SSH key beside hosts.yaml, named relative to it
    hosts_file = write_hosts(lab1, site / "hosts.yaml", {"key": "deploy_key"}, path=".")
    (site / "index.html~").write_text("an editor's backup\n")
    (site / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (site / "assets" / ".app.js.swp").write_bytes(b"b0VIM 9.0")
    subprocess.run(["git", "init", "-q", str(site)], check=True)
    subprocess.run(["git", "-C", str(site), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(site), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "site"],
                   check=True)  # fmt: skip
    result = lab1.fab("deploy", hosts_file=hosts_file)
    assert result.returncode == 0, result.stderr
    files = release_files(server)
    assert "index.html" in files and "assets/app.js" in files
    for left_out in ("hosts.yaml", "deploy_key", ".git", ".DS_Store", "index.html~", "assets/.app.js.swp"):
        assert left_out not in files, left_out
    assert not any(f.startswith(".git/") for f in files)
    assert status(server.url + "hosts.yaml") == 404
    # a release an older Cutover made holds .git: the next deploy, prelinked from it, does not
    first = current(server)
    Path(server.deploy_to, "releases", first, ".git").mkdir()
    Path(server.deploy_to, "releases", first, ".git", "config").write_text("[core]\n")
    (site / "index.html").write_text((site / "index.html").read_text().replace("repo", "repo-2"))
    again = lab1.fab("deploy", hosts_file=hosts_file)
    assert again.returncode == 0, again.stderr
    assert current(server) != first
    assert ".git" not in release_files(server)


def test_build_exclude_leaves_out_more(lab1, tmp_path):
    server = lab1.servers[0]
    extra = {"drafts/next.html": b"draft", "assets/logo.psd": b"psd", "assets/drafts/kept.html": b"kept"}
    build = make_build(tmp_path, "exclude", extra)
    hosts_file = write_hosts(lab1, tmp_path / "hosts.yaml", path=str(build), exclude=["*.psd", "/drafts"])
    dry = lab1.fab("deploy", "--dry-run", hosts_file=hosts_file)
    assert dry.returncode == 0, dry.stderr
    assert "assets/drafts/kept.html" in dry.stdout
    assert "logo.psd" not in dry.stdout and "drafts/next.html" not in dry.stdout
    result = lab1.fab("deploy", hosts_file=hosts_file)
    assert result.returncode == 0, result.stderr
    files = release_files(server)
    assert "assets/drafts/kept.html" in files  # /drafts is anchored at the build's top
    for left_out in ("drafts", "drafts/next.html", "assets/logo.psd"):
        assert left_out not in files, left_out


def load_build(tmp_path, **build):
    """The Build hosts.yaml with these build settings gives."""
    site = make_build(tmp_path, "unit")
    text = {
        "defaults": {"deploy_to": "/var/www/site", "build": {"path": str(site), **build}},
        "groups": {"prod": [{"host": "web1"}]},
    }
    path = tmp_path / "hosts.yaml"
    path.write_text(yaml.safe_dump(text))
    return hostsfile.load(path).resolve("prod")[0].build


def test_the_build_check_counts_only_what_is_uploaded(tmp_path):
    build = load_build(tmp_path, exclude=["*.psd"])
    site = build.path
    (site / ".git").mkdir()
    (site / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (site / "logo.psd").write_bytes(b"x" * 1000)
    info = release.check_build(build)
    assert not any(name.startswith(".git/") or name.endswith(".psd") for name in info.stats)
    assert "index.html" in info.stats


def test_a_required_file_that_is_excluded_is_refused(tmp_path):
    build = load_build(tmp_path, exclude=["/index.html"])
    with pytest.raises(ConfigError) as refused:
        release.check_build(build)
    assert "build.required names index.html, which the build leaves out (/index.html)" in str(refused.value)


@pytest.mark.parametrize(
    "value, said",
    [
        ("../up", "'../up' holds '..' or '.'"),
        ("/a//b", "'/a//b' has an empty part"),
        ("[ab]*.txt", "'[ab]*.txt' may hold only letters, digits"),
        ("**", "'**' would leave out every file"),
        ("a\\b", repr("a\\b") + " may hold only letters, digits"),
    ],
)
def test_a_build_exclude_that_is_no_pattern_is_refused_naming_it(tmp_path, value, said):
    with pytest.raises(ConfigError) as refused:
        load_build(tmp_path, exclude=[value])
    assert "build.exclude[0]: " + said in str(refused.value)


def test_check_fails_on_a_private_looking_file_the_site_serves(lab1, tmp_path):
    server = lab1.servers[0]
    extra = {
        "backup.sql": b"INSERT INTO users VALUES ('admin', 'hash');\n",
        "keys/id_rsa": b"-----BEGIN OPENSSH PRIVATE KEY-----\n",
        "wp-config.php.bak": b"<?php define('DB_PASSWORD', 'x');\n",
        ".env.local": b"SECRET=1\n",  # never_serve: 404
        "assets/site.css": b"body{}\n",
    }
    build = make_build(tmp_path, "private", extra)
    hosts_file = write_hosts(lab1, tmp_path / "hosts.yaml", path=str(build))
    assert lab1.fab("deploy", hosts_file=hosts_file).returncode == 0
    result = lab1.fab("check", hosts_file=hosts_file)
    assert result.returncode == 1
    for name in ("backup.sql", "keys/id_rsa", "wp-config.php.bak"):
        said = f"lab1: {server.url}{name} answered 200, and its name looks private"
        assert said in result.stdout, result.stdout
    assert ".env.local answered" not in result.stdout and "site.css" not in result.stdout
    assert "3 problem(s) found" in result.stderr
    # the advice followed: left out of the build, the next deploy serves none of them
    hosts_file = write_hosts(lab1, hosts_file, path=str(build), exclude=["*.sql", "/keys", "*.bak"])
    assert lab1.fab("deploy", hosts_file=hosts_file).returncode == 0
    fixed = lab1.fab("check", hosts_file=hosts_file)
    assert fixed.returncode == 0, fixed.stdout


def test_the_hosts_file_and_its_key_are_left_out_wherever_their_symlinks_lead(tmp_path):
    """The build reached through a symlink; hosts.yaml inside it a symlink to a file elsewhere; the
    key named through a symlink outside the build that leads into it: none of them is uploaded
    (rsync itself run with the rules, locally)."""
    real = make_build(tmp_path, "linked")
    site = tmp_path / "site"
    site.symlink_to(real)
    (tmp_path / "secrets").mkdir()
    settings = {"deploy_to": "/var/www/site", "build": {"path": "../site"}, "key": "../keylink"}
    (tmp_path / "secrets" / "hosts.yaml").write_text(
        yaml.safe_dump({"defaults": settings, "groups": {"prod": [{"host": "w"}]}})
    )
    (real / "hosts.yaml").symlink_to(tmp_path / "secrets" / "hosts.yaml")
    (real / "deploy_key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (tmp_path / "keylink").symlink_to(real / "deploy_key")
    build = hostsfile.load(site / "hosts.yaml").resolve("prod")[0].build
    assert Path(build.path).resolve() == real  # relative to where hosts.yaml really is
    texts = [r.text for r in buildfiles.rules(build)]
    assert "/hosts.yaml" in texts and "/deploy_key" in texts
    dest = tmp_path / "dest"
    argv = ["rsync", "--archive", "--delete", *(r.rsync_filter() for r in buildfiles.rules(build))]
    subprocess.run([*argv, f"{site}/", f"{dest}/"], check=True)
    assert sorted(p.name for p in dest.iterdir()) == ["assets", "health.txt", "index.html", "migrations"]


def test_private_looking_files_are_found_by_name_symlinks_included_and_no_directory_link_is_walked(tmp_path):
    root = tmp_path / "release"
    (root / "assets").mkdir(parents=True)
    (root / "assets" / "site.css").write_text("body{}")
    (root / "assets" / "Backup-2026.TAR.GZ").write_bytes(b"\x1f\x8b")
    (root / "dump.sql").symlink_to("/etc/hostname")  # Apache with FollowSymLinks serves it
    (root / "id_ed25519.pub").write_text("ssh-ed25519 AAAA")  # a public key: not private
    (root / "media").symlink_to("/usr")  # a shared entry's link: never walked into
    (root / ".git").mkdir()
    (root / ".git" / "secrets.sql").write_text("x")
    files, vcs, stopped = private.find(str(root))
    assert files == ["dump.sql", "assets/Backup-2026.TAR.GZ"]
    (root / "schema.sql").write_text("CREATE TABLE page (id int);\n")  # an app's schema, as MediaWiki ships hundreds
    assert private.find(str(root))[0] == files
    assert vcs == [".git"] and stopped is False


def test_a_build_that_links_outside_itself_is_refused_naming_each_link(tmp_path):
    """rsync uploads a link as a link: on the server it leads to whatever that path holds there
    (an absolute /etc/passwd, or ../../shared/.env from releases/<id>/), and Apache follows it."""
    build = load_build(tmp_path, exclude=["/local-only"])
    site = build.path
    (site / "assets" / "logo.svg").unlink()
    (site / "assets" / "logo.svg").symlink_to("../index.html")  # inside the build: fine
    (site / "passwd.txt").symlink_to("/etc/passwd")
    (site / "assets" / "env.txt").symlink_to("../../../shared/.env")
    (site / "vendor").symlink_to(tmp_path / "elsewhere")  # a directory, dangling here
    (site / "local-only").symlink_to("/home")  # left out of the build: never uploaded
    with pytest.raises(ConfigError) as refused:
        release.check_build(build)
    assert str(refused.value).split("\n") == [
        f"the build {site} holds links that lead outside it: assets/env.txt -> ../../../shared/.env, "
        f"passwd.txt -> /etc/passwd, vendor -> {tmp_path}/elsewhere; a release would hold the links, which "
        "Apache follows on the server to whatever that path holds there",
        "  what to do: copy what they lead to into the build, make it a shared: entry, or leave the link out "
        "(build.exclude)",
    ]


@pytest.mark.parametrize(
    "name, private_",
    [(".bash_history", True), (".mysql_history", True), (".viminfo", True), ("auth.json", True), (".pypirc", True),
     ("terraform.tfstate", True), ("terraform.tfstate.backup", True), ("debug.log", True), ("error_log", True),
     (".s3cfg", True), ("composer.lock", False), ("composer.json", False), ("history.html", False),
     ("catalog.json", False), ("changelog.txt", False)],
)  # fmt: skip
def test_names_that_look_private(name, private_):
    assert private.looks_private(name) is private_


def test_files_in_a_home_directorys_secret_folders_look_private(tmp_path):
    root = tmp_path / "release"
    for rel in (".ssh/config", ".aws/credentials", ".gnupg/pubring.kbx", ".docker/config.json", "css/site.css"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    files, _, _ = private.find(str(root))
    assert files == [".aws/credentials", ".docker/config.json", ".gnupg/pubring.kbx", ".ssh/config"]


def test_a_home_directorys_leftovers_are_never_uploaded(tmp_path):
    build = load_build(tmp_path)
    site = build.path
    for rel in (".bash_history", ".ssh/id_ecdsa", ".aws/credentials", ".gnupg/trustdb.gpg", ".viminfo", "css/.lesshst"):
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text("x")
    info = release.check_build(build)
    assert sorted(info.stats) == ["assets/app.js", "assets/logo.svg", "assets/style.css", "assets/theme.3483b4f0.css",
                                  "health.txt", "index.html", "migrations/migrate.py"]  # fmt: skip
