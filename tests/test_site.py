"""A site of your own: its repository holds its hosts.yaml (`fab init` writes a starter) and runs
Cutover's tasks from its own directory with Fabric's --search-root (`fab -r CUTOVER_DIR`)."""

import os
import subprocess
import sys
from pathlib import Path

from tasks import hostsfile

from .conftest import PROJECT, current, make_build


def fab_in(directory, *args):
    env = {k: v for k, v in os.environ.items() if k != "CUTOVER_HOSTS_FILE"}
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
