"""A site of your own: its repository holds its hosts.yaml (`fab init` writes a starter) and runs
Cutover's tasks from its own directory with Fabric's --search-root (`fab -r CUTOVER_DIR`)."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tasks import hostsfile

from .conftest import PROJECT, current, history, make_build


def fab_in(directory, *args, env=None):
    env = dict({k: v for k, v in os.environ.items() if k != "CUTOVER_HOSTS_FILE"}, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "fabric", "-r", str(PROJECT), *args], cwd=directory, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


def test_init_writes_a_starter_hosts_file_once(tmp_path):
    result = fab_in(tmp_path, "init")
    assert result.returncode == 0, result.stderr
    written = tmp_path / "hosts.yaml"
    inventory = hostsfile.load(written)  # valid as written
    [host] = inventory.resolve("prod")
    assert host.deploy_to == "/var/www/site" and host.build.path == tmp_path / "build"
    again = fab_in(tmp_path, "init")
    assert again.returncode == 2 and f"{written} exists already; nothing was written" in again.stderr


def test_every_setting_the_starter_and_the_shipped_hosts_file_leave_commented_is_valid_uncommented(tmp_path):
    """A new user uncomments an example line: it must load (backups.to lacked user, key, known_hosts)."""
    for source in (PROJECT / "templates" / "hosts.yaml", PROJECT / "hosts.yaml"):
        lines = []
        for text in source.read_text().splitlines():
            example = re.match(r"^(  +)# ( *(?:[a-z_]+:|- \{).*)$", text)
            if example and example.group(2).startswith("ssh_config:"):  # names a file this machine may not have
                example = None
            lines.append(example.group(1) + example.group(2) if example else text)
        uncommented = tmp_path / "hosts.yaml"
        uncommented.write_text("\n".join(lines) + "\n")
        assert sum(a != b for a, b in zip(lines, source.read_text().splitlines())) >= 8, source
        inventory = hostsfile.load(uncommented)  # raises, naming the key, if an example is wrong
        host = next(iter(inventory.groups.values()))[0]
        assert host.backups.to is not None and host.backups.databases, source


def test_init_never_writes_through_a_symlink_at_hosts_yaml(tmp_path):
    """A dangling hosts.yaml symlink counted as no file: init wrote the starter where it pointed."""
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    site.mkdir()
    elsewhere.mkdir()
    (site / "hosts.yaml").symlink_to(elsewhere / "planted")
    result = fab_in(site, "init")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{site / 'hosts.yaml'} exists already (a symlink); nothing was written" in result.stderr
    assert list(elsewhere.iterdir()) == []


def test_a_site_deploys_from_its_own_directory(lab1, tmp_path):
    site = tmp_path / "my-site"
    site.mkdir()
    build = make_build(site, "mine")
    # the site's own hosts.yaml: the lab's, with the build path relative to the site
    text = lab1.hosts_file.read_text().replace(f"path: {PROJECT}/example/site", f"path: {build.name}")
    (site / "hosts.yaml").write_text(text)
    assert f"path: {build.name}" in text
    result = fab_in(site, "-H", "sandbox", "deploy")
    assert result.returncode == 0, result.stderr
    served = Path(lab1.servers[0].deploy_to, "current", "index.html").read_bytes()
    assert served == (build / "index.html").read_bytes() and current(lab1.servers[0]) in result.stdout


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def site_repository(parent):
    """A site's git repository: two tagged commits of src/page.html, a build command that writes
    dist/ and notes whether the build cache had what it needs."""
    repo = parent / "shop"
    (repo / "src").mkdir(parents=True)
    git(repo, "init", "-q")
    for key, value in (("user.email", "dev@example.com"), ("user.name", "dev")):
        git(repo, "config", key, value)
    for tag in ("v1", "v2"):
        (repo / "src" / "page.html").write_text(f'<meta name="release" content="{tag}"><p>shop {tag}</p>\n')
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", tag)
        git(repo, "tag", tag)
    return repo


BUILD = (
    "mkdir -p dist && cp src/page.html dist/index.html && "
    'if [ -f "$CUTOVER_CACHE/deps" ]; then echo cached; else echo fetched; touch "$CUTOVER_CACHE/deps"; fi > dist/deps.txt'
)


def site_hosts_file(lab1, repo, command=BUILD):
    import yaml

    data = yaml.safe_load(lab1.hosts_file.read_text())
    data["defaults"]["build"] = {"path": "dist", "required": ["index.html"], "command": command, "output": "dist"}
    (repo / "hosts.yaml").write_text(yaml.safe_dump(data))


def test_deploys_built_from_git_tags_roll_back_and_reuse_the_build_cache(lab1, tmp_path):
    server = lab1.servers[0]
    repo = site_repository(tmp_path)
    site_hosts_file(lab1, repo)
    (repo / "src" / "page.html").write_text("uncommitted work: never deployed by --ref\n")
    (repo / "stray.txt").write_text("untracked\n")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    commits = {}
    for tag in ("v1", "v2"):
        result = fab_in(repo, "-H", "sandbox", "deploy", "--ref", tag, env=env)
        assert result.returncode == 0, result.stderr
        commits[tag] = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=7", tag], capture_output=True,
                                      text=True).stdout.strip()  # fmt: skip
        live = Path(server.deploy_to, "current")
        assert (live / "index.html").read_text() == f'<meta name="release" content="{tag}"><p>shop {tag}</p>\n'
        assert (live / "deps.txt").read_text() == ("fetched\n" if tag == "v1" else "cached\n")
        assert not (live / "stray.txt").exists() and not (live / "src").exists()
        assert current(server).endswith("-" + commits[tag]) and f"building {tag} ({commits[tag]})" in result.stdout
    back = fab_in(repo, "-H", "sandbox", "rollback")
    assert back.returncode == 0, back.stderr
    assert current(server).endswith("-" + commits["v1"])
    listed = fab_in(repo, "-H", "sandbox", "releases").stdout
    assert re.search(rf"\sv2\s+{commits['v2']}\s+rolled back\n", listed), listed
    assert re.search(rf"\*\s+\S+\s+\S+\s+root\s+v1\s+{commits['v1']}\n", listed), listed
    assert [e.get("ref") for e in history(server) if e["event"] == "deploy"] == ["v1", "v2"]


def test_a_failing_build_touches_no_server(lab1, tmp_path):
    server = lab1.servers[0]
    repo = site_repository(tmp_path)
    site_hosts_file(lab1, repo, command="echo 'npm ERR! missing script: build' >&2; exit 3")
    before = current(server)
    result = fab_in(repo, "-H", "sandbox", "deploy", "--ref", "v2")
    assert result.returncode == 10
    assert "the build of v2" in result.stderr and "exited 3" in result.stderr
    assert "npm ERR! missing script: build" in result.stderr and "nothing was sent to any server" in result.stderr
    assert current(server) == before and history(server) == []
    missing = fab_in(repo, "-H", "sandbox", "deploy", "--ref", "v9")
    assert missing.returncode == 2 and "--ref v9: no such branch, tag or commit" in missing.stderr


def test_a_work_tree_with_uncommitted_changes_makes_a_dirty_release(lab1, tmp_path):
    server = lab1.servers[0]
    repo = site_repository(tmp_path)
    (repo / "dist").mkdir()
    (repo / "dist" / "index.html").write_text('<meta name="release" content="local"><p>local</p>\n')
    (repo / ".gitignore").write_text("dist/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore the build")
    site_hosts_file(lab1, repo, command=None)
    git(repo, "add", "hosts.yaml")
    git(repo, "commit", "-q", "-m", "hosts")  # a site's repository holds its hosts.yaml
    assert fab_in(repo, "-H", "sandbox", "deploy").returncode == 0
    clean = current(server)
    assert clean.endswith("-" + subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=7", "HEAD"],
                                               capture_output=True, text=True).stdout.strip())  # fmt: skip
    (repo / "src" / "page.html").write_text("changed, not committed\n")
    result = fab_in(repo, "-H", "sandbox", "deploy")
    assert result.returncode == 0, result.stderr
    assert current(server).endswith("Z-" + clean.split("Z-", 1)[1] + "-dirty")
    assert "(dirty)" in fab_in(repo, "-H", "sandbox", "releases").stdout


def test_init_prints_the_command_that_runs_from_the_site_directory(tmp_path):
    site = tmp_path / "my site"  # a space: the printed command quotes what needs it
    site.mkdir()
    # (how fab is started, how the hint says to start it)
    ways = [([sys.executable, "-m", "fabric"], [sys.executable, "-m", "fabric"])]
    if shutil.which("fab"):
        ways.append(([shutil.which("fab")], ["fab"]))
    for program, shown in ways:
        (site / "hosts.yaml").unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "CUTOVER_HOSTS_FILE"}
        wrote = subprocess.run([*program, "-r", str(PROJECT), "init"], cwd=site, env=env, capture_output=True,
                               text=True, timeout=60)  # fmt: skip
        assert wrote.returncode == 0, wrote.stderr
        hint = shlex.split(wrote.stdout.splitlines()[-1])
        assert hint == [*shown, "-r", str(PROJECT), "-H", "prod", "check"], wrote.stdout
        # the starter's host, pointed at a closed port of this machine: the command reaches the task
        hosts = site / "hosts.yaml"
        hosts.write_text(hosts.read_text().replace("{host: www.example.com}", "{host: 127.0.0.1, port: 1}"))
        ran = subprocess.run(hint, cwd=site, env=env, capture_output=True, text=True, timeout=60)
        assert ran.returncode == 1 and "cannot reach 127.0.0.1 port 1" in ran.stdout, ran.stdout + ran.stderr
