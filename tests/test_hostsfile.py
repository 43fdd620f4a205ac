"""hosts.yaml validation and -H resolution: pure, no servers."""

import os
import subprocess
import sys
import textwrap

import pytest
import yaml

import lab
from tasks import hostsfile
from tasks.errors import ConfigError

from .conftest import PROJECT, current, make_build

GOOD = """\
defaults:
  deploy_to: /var/www/site
  user: deploy
groups:
  prod:
    - {host: web1.example.com}
    - {host: web2.example.com, port: 2222, keep_releases: 3}
  staging:
    deploy_to: /var/www/staging
    hosts:
      - {host: stage.example.com, name: stage}
default_group: prod
"""


def write(tmp_path, text):
    path = tmp_path / "hosts.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_layers_defaults_group_host(tmp_path):
    inv = hostsfile.load(write(tmp_path, GOOD))
    web1, web2 = inv.resolve("prod")
    stage = inv.resolve("staging")[0]
    assert (web1.port, web1.keep_releases, web1.deploy_to) == (22, 5, "/var/www/site")
    assert (web2.port, web2.keep_releases) == (2222, 3)
    assert (stage.name, stage.deploy_to, stage.user) == ("stage", "/var/www/staging", "deploy")
    assert web1.build.path == tmp_path / "build"


def test_resolve_names_and_default_group(tmp_path):
    inv = hostsfile.load(write(tmp_path, GOOD))
    assert [h.name for h in inv.resolve(None)] == ["web1.example.com", "web2.example.com"]
    assert [h.name for h in inv.resolve("stage")] == ["stage"]
    assert [h.name for h in inv.resolve("stage,web1.example.com")] == ["stage", "web1.example.com"]
    with pytest.raises(ConfigError) as err:
        inv.resolve("prdo")
    assert "-H 'prdo' is neither a group nor a host" in str(err.value)
    assert "groups prod, staging; hosts stage, web1.example.com, web2.example.com" in str(err.value)


def test_no_default_group_without_h(tmp_path):
    inv = hostsfile.load(write(tmp_path, GOOD.replace("default_group: prod\n", "")))
    with pytest.raises(ConfigError, match="no -H given and .* sets no default_group"):
        inv.resolve(None)


BAD = [
    # (replace this, with this, expected message)
    ("  deploy_to: /var/www/site", "  deploy_to: /", "hosts.yaml:2: defaults.deploy_to: '/' is too close to /"),
    ("  deploy_to: /var/www/site", "  deploy_to: /var", "hosts.yaml:2: defaults.deploy_to: '/var' is too close to /"),
    ("  deploy_to: /var/www/site", "  deploy_to: www/site", "hosts.yaml:2: defaults.deploy_to: 'www/site' is relative"),
    (
        "  deploy_to: /var/www/site",
        "  deploy_to: /var/www/../etc",
        "hosts.yaml:2: defaults.deploy_to: '/var/www/../etc' holds '..'",
    ),
    (
        "  deploy_to: /var/www/site",
        "  deploy_to: '/var/www/$(reboot)'",
        "defaults.deploy_to: '/var/www/$(reboot)' may hold only",
    ),
    ("  user: deploy", "  user: deploy\n  colour: blue", "hosts.yaml:4: defaults.colour: is not a known key"),
    (
        "  user: deploy",
        "  user: 'deploy; rm -rf /'",
        "hosts.yaml:3: defaults.user: 'deploy; rm -rf /' is not a user name",
    ),
    ("  user: deploy", "  keep_releases: 1", "hosts.yaml:3: defaults.keep_releases: must be from 2 to 1000, got 1"),
    (
        "  user: deploy",
        "  keep_releases: 'five'",
        "defaults.keep_releases: must be a whole number from 2 to 1000, got 'five'",
    ),
    ("  user: deploy", "  keep_releases: true", "defaults.keep_releases: must be a whole number"),
    ("  user: deploy", "  shared: [/etc]", "hosts.yaml:3: defaults.shared[0]: '/etc' is absolute"),
    ("  user: deploy", "  shared: [../up]", "defaults.shared[0]: '../up' climbs out of the release"),
    ("  user: deploy", "  shared: media", "hosts.yaml:3: defaults.shared: must be a list, got a value"),
    (
        "  user: deploy",
        "  httpd: {pause: sleep}",
        "defaults.httpd.pause: must be one of auto, freeze, sigstop, none, got 'sleep'",
    ),
    ("  user: deploy", "  httpd: {pidfile: run/x.pid}", "defaults.httpd.pidfile: 'run/x.pid' must be an absolute path"),
    ("  user: deploy", "  httpd: {stop: yes}", "defaults.httpd.stop: is not a known key"),
    (
        "  user: deploy",
        "  assets: {fallback: [css, html]}",
        "defaults.assets.fallback[1]: 'html' is a page or a script",
    ),
    ("  user: deploy", "  assets: {fallback: [php7]}", "defaults.assets.fallback[0]: 'php7' is a page or a script"),
    ("  user: deploy", "  assets: {releases: 0}", "defaults.assets.releases: must be from 1 to 10, got 0"),
    ("  user: deploy", "  never_serve: ['*']", "defaults.never_serve[0]: '*' would hide every path"),
    ("  user: deploy", "  serve: /public", "defaults.serve: '/public' is absolute"),
    ("  user: deploy", "  writable: [../etc]", "defaults.writable[0]: '../etc' climbs out of the release"),
    ("  user: deploy", "  readable: [../etc]", "defaults.readable[0]: '../etc' climbs out of the release"),
    (
        "  user: deploy",
        "  shared: [storage, storage/logs]",
        "hosts.yaml:3: defaults.shared[1]: 'storage/logs' lies inside shared entry 'storage' (shared[0])",
    ),
    (
        "  user: deploy",
        "  shared:\n    - storage/logs\n    - media\n    - storage",
        "hosts.yaml:4: defaults.shared[0]: 'storage/logs' lies inside shared entry 'storage' (shared[2])",
    ),
    ("  user: deploy", "  shared: [media, ./media/]", "hosts.yaml:3: defaults.shared[1]: 'media' is given twice"),
    (
        "  user: deploy",
        "  maintenance: {health_path: health}",
        "defaults.maintenance.health_path: 'health' is not a URL path such as /health",
    ),
    (
        "  user: deploy",
        "  maintenance: {health_path: /up/../health}",
        "defaults.maintenance.health_path: '/up/../health' is not a URL path such as /health",
    ),
    ("  user: deploy", "  apache: {allow_override: All}", "defaults.apache: is no longer a setting: pinned requests"),
    ("  user: deploy", "  hooks: {after_deploy: [x]}", "defaults.hooks.after_deploy: is not a known key"),
    (
        "  user: deploy",
        "  health: {url: 'ftp://x'}",
        "defaults.health.url: 'ftp://x' is not an http:// or https:// URL",
    ),
    (
        "  user: deploy",
        "  smoke: {url: 'http://127.0.0.1/_next/'}",
        "defaults.smoke.url: 'http://127.0.0.1/_next/': /_next is the live site's own (Next.js keeps its scripts "
        "there); the incoming release answers at /_cutover_next/",
    ),
    (
        "{host: web1.example.com}",
        "{host: web1.example.com, port: 70000}",
        "hosts.yaml:6: groups.prod[0].port: must be from 1 to 65535",
    ),
    ("{host: web1.example.com}", "{port: 22}", "hosts.yaml:6: groups.prod[0]: has no 'host' key"),
    ("{host: web1.example.com}", "{host: 'web1;reboot'}", "groups.prod[0].host: 'web1;reboot' is not a host name"),
    (
        "{host: web2.example.com, port: 2222, keep_releases: 3}",
        "{host: web1.example.com}",
        "hosts.yaml:7: groups.prod[1]: duplicates host 'web1.example.com'",
    ),
    (
        "  prod:\n    - {host: web1.example.com}\n    - {host: web2.example.com, port: 2222, keep_releases: 3}\n",
        "  prod: []\n",
        "hosts.yaml:5: groups.prod: has no hosts",
    ),
    ("default_group: prod", "default_group: live", "hosts.yaml:12: default_group: 'live' is not a group"),
    ("default_group: prod", "default_grop: prod", "hosts.yaml:12: default_grop: is not a known key"),
    ("  deploy_to: /var/www/site\n", "", "hosts.yaml:5: groups.prod[0]: deploy_to is not set"),
    ("  user: deploy", "  user: deploy\n  user: root", "hosts.yaml:4: defaults.user: is given twice"),
    ("  user: deploy", "  user: [a", "not valid YAML"),
    # two databases of one name: their dumps were one file, and a restore gave each the other's content
    (
        "  user: deploy",
        "  backups:\n    databases:\n      - {name: app, kind: sqlite, path: shared/a.sqlite}\n"
        "      - {name: app, kind: sqlite, path: shared/b.sqlite}",
        "hosts.yaml:6: defaults.backups.databases[1].name: 'app' is given twice (databases[0]): each database's "
        "dump is a file named after it",
    ),
    (
        "  user: deploy",
        "  user: !!python/name:os.system x",
        "hosts.yaml:3: defaults.user: not valid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/name:os.system'",
    ),
    (
        "  user: deploy",
        "  protected: [private]",
        "defaults.protected[0]: 'private' is not a URL path such as /private/",
    ),
    (
        "  user: deploy",
        "  maintenance: {health_path: health}",
        "defaults.maintenance.health_path: 'health' is not a URL path such as /health",
    ),
]


@pytest.mark.parametrize("old,new,message", BAD, ids=[b[2][:50] for b in BAD])
def test_bad_values_name_key_and_line(tmp_path, old, new, message):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        hostsfile.load(path)
    assert message in str(err.value)
    assert err.value.exit_code == 2


def test_overlap_hint_and_entries_that_only_share_a_prefix(tmp_path):
    path = write(tmp_path, GOOD.replace("  user: deploy", "  shared: [storage, storage/logs]", 1))
    with pytest.raises(ConfigError) as err:
        hostsfile.load(path)
    assert err.value.hint == (
        "remove 'storage/logs' from shared: shared/storage holds it already, and linking both would make every "
        "deploy delete shared/storage/logs"
    )
    ok = GOOD.replace("  user: deploy", "  shared: [media, media2, media-x/y, public/media]\n  readable: [.env]", 1)
    host = hostsfile.load(write(tmp_path, ok)).resolve("web1.example.com")[0]
    assert host.shared == ("media", "media2", "media-x/y", "public/media") and host.readable == (".env",)


def test_a_file_that_is_not_utf8_is_refused_naming_where(tmp_path):
    path = tmp_path / "hosts.yaml"
    path.write_bytes(GOOD.replace("/var/www/site", "/var/www/caf\xe9", 1).encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        hostsfile.load(path)
    assert str(err.value).startswith(f"{path}:2: is not UTF-8 text (byte 0xe9)"), str(err.value)
    assert err.value.exit_code == 2


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read .*nope.yaml: No such file"):
        hostsfile.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="hosts.yaml: is empty"):
        hostsfile.load(write(tmp_path, ""))


def test_env_variable_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CUTOVER_HOSTS_FILE", str(write(tmp_path, GOOD)))
    assert hostsfile.load().path == tmp_path / "hosts.yaml"


def test_fab_refuses_bad_file_with_status_and_no_traceback(tmp_path):
    path = write(tmp_path, GOOD.replace("deploy_to: /var/www/site", "deploy_to: /", 1))
    env = {"CUTOVER_HOSTS_FILE": str(path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "fabric", "-H", "prod", "check"], cwd=PROJECT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert f"cutover: error: {path}:2: defaults.deploy_to: '/' is too close to /" in result.stderr
    assert "Traceback" not in result.stderr


def test_shipped_hosts_file_is_valid():
    inv = hostsfile.load(PROJECT / "hosts.yaml")
    assert inv.default_group == "sandbox"
    assert {"sandbox", "prod", "staging"} <= set(inv.groups)


def test_outside_cutover_a_directory_without_hosts_yaml_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("CUTOVER_HOSTS_FILE", raising=False)
    monkeypatch.chdir(tmp_path)  # e.g. the site's build folder, or home: no hosts.yaml here
    with pytest.raises(ConfigError) as err:
        hostsfile.load()
    assert str(err.value) == (
        f"no hosts.yaml in {tmp_path} (the current directory), and CUTOVER_HOSTS_FILE is not set; "
        f"Cutover's own {PROJECT}/hosts.yaml (its sandbox) is used only from Cutover's directory\n"
        "  what to do: run the task from your site's directory (where `fab init` wrote its hosts.yaml), "
        "or name the file: CUTOVER_HOSTS_FILE=/path/to/hosts.yaml"
    )
    assert err.value.exit_code == 2
    # a hosts.yaml here, even a dangling link, is the one meant: never Cutover's instead
    (tmp_path / "hosts.yaml").symlink_to(tmp_path / "moved-away.yaml")
    with pytest.raises(ConfigError, match=f"cannot read {tmp_path}/hosts.yaml: No such file"):
        hostsfile.load()


def test_inside_cutover_its_own_hosts_yaml_is_used(tmp_path, monkeypatch):
    monkeypatch.delenv("CUTOVER_HOSTS_FILE", raising=False)
    monkeypatch.chdir(PROJECT)  # make demo, the test suite
    assert hostsfile.load().path == PROJECT / "hosts.yaml"
    monkeypatch.chdir(PROJECT / "example" / "site")
    assert hostsfile.default_path() == PROJECT / "hosts.yaml"
    (tmp_path / "cutover").symlink_to(PROJECT)  # reached through a symlink: still Cutover's directory
    monkeypatch.chdir(tmp_path / "cutover" / "example")
    assert hostsfile.default_path() == PROJECT / "hosts.yaml"


def test_fab_from_a_directory_without_hosts_yaml_changes_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CUTOVER_HOSTS_FILE"}
    result = subprocess.run(
        [sys.executable, "-m", "fabric", "-r", str(PROJECT), "-H", "sandbox", "releases"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert f"cutover: error: no hosts.yaml in {tmp_path} (the current directory)" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_removed_current_directory_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("CUTOVER_HOSTS_FILE", raising=False)
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()  # another shell removed the folder this one is in
    with pytest.raises(ConfigError, match=r"^the current directory cannot be read \(No such file or directory\)"):
        hostsfile.load()


def test_a_backup_of_two_databases_of_one_name_is_refused_and_the_server_untouched(lab1, tmp_path):
    """Both dumps were databases/app.sqlite: the backup kept one, and a restore wrote it into both."""
    server = lab1.servers[0]
    databases = [
        {"name": "app", "kind": "sqlite", "path": "shared/media/a.sqlite"},
        {"name": "app", "kind": "sqlite", "path": "shared/media/b.sqlite"},
    ]
    lab.write_hosts_file(lab1.lab, build=str(make_build(tmp_path, "dbs")), backups={"databases": databases})
    result = lab1.fab("backup")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "backups.databases[1].name: 'app' is given twice (databases[0])" in result.stderr
    assert not os.path.exists(os.path.join(server.deploy_to, "backups"))


TWO_SITES = """\
defaults:
  deploy_to: /var/www/shop
  backups: {to: {host: vault.example.com, user: b, path: /srv/backups, key: /k, known_hosts: /kh}}
groups:
  prod:
    - {host: web1.example.com}
  staging:
    deploy_to: /var/www/staging
    hosts:
      - {host: web1.example.com}
"""


def test_one_host_name_for_two_sites_is_refused_where_it_would_mix_them(tmp_path):
    """One server, two sites (groups prod and staging), its name the default (host:): backups.to
    copied both sites' backups into <path>/web1.example.com/, and -H web1.example.com picked prod."""
    with pytest.raises(ConfigError) as err:
        hostsfile.load(write(tmp_path, TWO_SITES))
    assert err.value.message == (
        f"{tmp_path / 'hosts.yaml'}:10: groups.staging.hosts[0]: host 'web1.example.com' of groups prod and staging "
        "is two sites (deploy_to differs) whose backups.to copies would share one folder, "
        "vault.example.com:/srv/backups/web1.example.com/"
    )
    assert err.value.hint == "give one of them a name of its own (name: web1.example.com-staging), or a backups.to.path"
    inventory = hostsfile.load(write(tmp_path, TWO_SITES.replace("  backups:", "  # backups:")))
    assert [h.deploy_to for h in inventory.resolve("staging")] == ["/var/www/staging"]
    with pytest.raises(ConfigError) as err:
        inventory.resolve("web1.example.com")
    assert err.value.message == (
        "-H 'web1.example.com' names a host of groups prod and staging, which differ in deploy_to: it could be "
        "either; nothing was changed"
    )
    assert err.value.hint == "name the group (-H prod or -H staging), or give the hosts names of their own (name:)"
    named = TWO_SITES.replace(
        "      - {host: web1.example.com}", "      - {host: web1.example.com, name: web1-staging}"
    )
    inventory = hostsfile.load(write(tmp_path, named))
    assert [h.deploy_to for h in inventory.resolve("web1.example.com,web1-staging")] == [
        "/var/www/shop",
        "/var/www/staging",
    ]
    # one host in two groups, the same settings: one host
    same = "defaults: {deploy_to: /var/www/shop}\ngroups:\n  all: [{host: a.example.com}]\n  web: [{host: a.example.com}]\n"
    assert [h.name for h in hostsfile.load(write(tmp_path, same)).resolve("a.example.com")] == ["a.example.com"]


def test_a_host_name_of_two_sites_deploys_to_neither(lab1, tmp_path):
    server = lab1.servers[0]
    lab.write_hosts_file(lab1.lab, build=str(make_build(tmp_path, "which")))
    data = yaml.safe_load(lab1.hosts_file.read_text())
    staging = dict(data["groups"]["sandbox"][0], deploy_to=server.deploy_to + "-staging")
    data["groups"]["staging"] = [staging]
    lab1.hosts_file.write_text(yaml.safe_dump(data, sort_keys=False))
    before = current(server)
    result = lab1.fab("-H", "lab1", "deploy")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "-H 'lab1' names a host of groups sandbox and staging, which differ in deploy_to" in result.stderr
    assert current(server) == before and not os.path.exists(server.deploy_to + "-staging")
