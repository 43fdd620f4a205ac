"""`deploy --ref` from a site's own repository: the repository is the one holding hosts.yaml
(build.path `.` too), and a release exported from git has the modes a checkout of it has, so
switching between work-tree deploys and `--ref` deploys sends only what changed."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import PROJECT, current, history

BIG = 2 * 2**20  # bytes of a file that must not travel again when nothing changed


def fab_in(directory, *args, umask=0o022):
    """`fab -r PROJECT ARGS` from a site's directory, under `umask` (as a shell of that user)."""
    env = {k: v for k, v in os.environ.items() if k != "CUTOVER_HOSTS_FILE"}
    return subprocess.run(
        [sys.executable, "-m", "fabric", "-r", str(PROJECT), *args], cwd=directory, capture_output=True,
        text=True, timeout=300, env=dict(env, XDG_CACHE_HOME=str(directory.parent / "cache")),
        preexec_fn=lambda: os.umask(umask),
    )  # fmt: skip


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def repository(path, files, tag):
    """A git repository at path holding files ({relative path: (text, mode)}), committed and tagged."""
    path.mkdir(parents=True, exist_ok=True)
    if not (path / ".git").exists():
        git(path, "init", "-q")
        git(path, "config", "user.email", "dev@example.com")
        git(path, "config", "user.name", "dev")
    for rel, (text, mode) in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(text if isinstance(text, bytes) else text.encode())
        os.chmod(path / rel, mode)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", tag)
    git(path, "tag", tag)
    return path


def hosts_file(lab1, build):
    """The lab's hosts.yaml with this build section, as text for a site's own hosts.yaml."""
    data = yaml.safe_load(lab1.hosts_file.read_text())
    data["defaults"]["build"] = build
    return yaml.safe_dump(data)


def page(label):
    return f'<meta name="release" content="{label}"><p>{label}</p>\n'


def test_ref_with_build_path_dot_takes_the_repository_holding_hosts_yaml(lab1, tmp_path):
    server = lab1.servers[0]
    # the site's repository sits inside another one (a home directory kept in git, a monorepo's
    # checkout) that has a v1 of its own: the folder above hosts.yaml is not the site's
    outer = repository(tmp_path / "home", {"index.html": (page("outer"), 0o644)}, "v1")
    site = outer / "shop"
    site.mkdir()
    (site / "hosts.yaml").write_text(hosts_file(lab1, {"path": ".", "required": ["index.html"]}))
    repository(site, {"index.html": (page("shop-v1"), 0o644)}, "v1")
    (site / "index.html").write_text(page("uncommitted"))
    result = fab_in(site, "-H", "sandbox", "deploy", "--ref", "v1")
    assert result.returncode == 0, result.stderr
    live = Path(server.deploy_to, "current")
    assert (live / "index.html").read_text() == page("shop-v1")
    assert current(server).endswith("-" + git(site, "rev-parse", "--short=7", "v1").strip())
    # the commit's tree (no .git), and the shared entry's link
    assert sorted(p.name for p in live.iterdir()) == ["hosts.yaml", "index.html", "media"]
    assert (live / "media").is_symlink()


@pytest.mark.parametrize("umask", [0o022, 0o002])  # Debian's, and a user-private group's (Ubuntu)
def test_a_ref_deploy_of_the_work_tree_commit_sends_nothing_and_back(lab1, tmp_path, umask):
    server = lab1.servers[0]
    site = tmp_path / "shop"
    # what `git checkout` makes under this umask: 666 less the umask, 777 less it for what git
    # records as executable
    plain, executable = 0o666 & ~umask, 0o777 & ~umask
    files = {
        "public/index.html": (page("v1"), plain),
        "public/assets/video.bin": (os.urandom(BIG), plain),
        "public/cgi/tool.sh": ("#!/bin/sh\necho tool\n", executable),
        "hosts.yaml": (hosts_file(lab1, {"path": "public", "output": "public", "required": ["index.html"]}), plain),
    }
    repository(site, files, "v1")
    commit = git(site, "rev-parse", "--short=7", "HEAD").strip()
    sent = []
    for args in ((), ("--ref", "v1"), ()):
        result = fab_in(site, "-H", "sandbox", "deploy", *args, umask=umask)
        assert result.returncode == 0, result.stderr
        assert current(server).endswith("Z-" + commit), current(server)  # the same commit, clean, each time
        sent.append(history(server)[-1]["bytes_sent"])
        live = Path(server.deploy_to, "current")
        modes = [oct(os.stat(live / rel.removeprefix("public/")).st_mode & 0o7777) for rel in files if "/" in rel]
        assert modes == [oct(plain), oct(plain), oct(executable)]
        assert (live / "assets" / "video.bin").read_bytes() == (site / "public/assets/video.bin").read_bytes()
        if sent[1:]:
            assert re.search(r"\[lab1\] upload +\d+ ms  0 files changed", result.stdout), result.stdout
    assert sent[0] > BIG  # the first deploy sent the whole site
    assert sent[1] < 20_000 and sent[2] < 20_000, sent  # rsync's file list and checksums, not the files


def test_a_build_past_its_timeout_is_stopped_with_what_it_started(tmp_path):
    """build.command runs locally; past build.timeout it is stopped with its children (a bundler's
    workers), not only the shell that started them, so that nothing of the build runs on."""
    from tasks import gitbuild, hostsfile
    from tasks.errors import BuildError

    repo = repository(tmp_path / "site", {"index.html": ("<p>x</p>\n", 0o644)}, "v1")
    pids = tmp_path / "pids"
    settings = {
        "defaults": {
            "deploy_to": "/var/www/site",
            "build": {
                "path": str(repo),
                "git": str(repo),
                "timeout": 1,
                "command": f"sleep 30 & echo $! > {pids}; sleep 30",
            },
        },  # fmt: skip
        "groups": {"g": [{"host": "web1.example.com"}]},
    }
    (tmp_path / "hosts.yaml").write_text(yaml.safe_dump(settings))
    host = hostsfile.load(tmp_path / "hosts.yaml").resolve("g")[0]
    with pytest.raises(BuildError) as failed:
        gitbuild.build(host, "v1", say=lambda text: None)
    assert "timed out after 1 s" in failed.value.message
    child = int(pids.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not Path(f"/proc/{child}").exists(), "the build's child still runs"
    finally:
        if Path(f"/proc/{child}").exists():
            os.kill(child, 9)
