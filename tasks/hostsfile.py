"""Load and validate hosts.yaml into frozen dataclasses, layered defaults -> group -> host.

Every error names the file, the line and the key path. Nothing here touches the network: a
mistake found here costs nothing.
"""

import os
from pathlib import Path

import yaml

from . import sshconfig
from . import yamlcheck as y
from .config import (
    Assets,
    Backups,
    Balancer,
    Build,
    Health,
    Hooks,
    Host,
    Httpd,
    Inventory,
    Maintenance,
    Migrate,
    Notify,
    Smoke,
    differences,
)
from .errors import ConfigError
from .schema import BUILTIN, SECTIONS, SETTINGS

HOSTS_FILE_ENV = "CUTOVER_HOSTS_FILE"
# Bounds of the settings only the client uses; those the server checks too are in remote/limits.py.
TOP_KEYS = ("defaults", "groups", "default_group")
HOST_ONLY_KEYS = ("host", "name")
PROJECT_DIR = Path(__file__).resolve().parent.parent


# Keys an earlier Cutover took, and why they are gone.
RETIRED = {
    "apache": (
        "is no longer a setting: pinned requests now get the site's own <Directory> settings (Options, "
        "AllowOverride and the rest), written for releases/*/ by `fab setup`",
        "remove the apache: section, then rerun `fab setup` and reload Apache",
    ),
}


def _settings(at, extra=()):
    """Validate one layer (defaults, a group or a host) into a partial dict of settings."""
    out, seen = {}, {}
    for key, sub in y.items(at):
        if key in extra:
            seen[key] = sub
        elif key in SETTINGS:
            out[key] = SETTINGS[key](sub)
        elif key in SECTIONS:
            out[key] = {}
            for subkey, subat in y.items(sub):
                if subkey not in SECTIONS[key]:
                    known = ", ".join(SECTIONS[key])
                    raise subat.error("is not a known key", hint=f"{key} takes: {known}")
                out[key][subkey] = SECTIONS[key][subkey](subat)
        elif key in RETIRED:
            raise sub.error(RETIRED[key][0], hint=RETIRED[key][1])
        else:
            known = ", ".join([*extra, *SETTINGS, *SECTIONS])
            raise sub.error("is not a known key", hint=f"use one of: {known}")
    return out, seen


def _merge(*layers):
    merged = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict):
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
    return merged


def _local_path(value, base):
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


_SSH_CONFIGS = {}


def _ssh_config(path, explicit):
    """Each OpenSSH client config file parsed once per run."""
    if (path, explicit) not in _SSH_CONFIGS:
        _SSH_CONFIGS[(path, explicit)] = sshconfig.load(path, explicit)
    return _SSH_CONFIGS[(path, explicit)]


def _host(at, layers, base):
    own, extra = _settings(at, extra=HOST_ONLY_KEYS)
    if "host" not in extra:
        raise at.error("has no 'host' key", hint="add host: NAME_OR_ADDRESS")
    address = y.string(extra["host"], y.SAFE_HOST, "a host name or address")
    name = y.string(extra["name"], y.SAFE_NAME, "a name") if "name" in extra else address
    s = _merge(BUILTIN, *layers, own)
    given = {key for layer in (*layers, own) for key in layer}  # what hosts.yaml says, not BUILTIN
    config_path = None if s["ssh_config"] == sshconfig.NONE else _local_path(s["ssh_config"], base)
    hostname, port, user, key, jumps = sshconfig.resolve(
        _ssh_config(config_path, "ssh_config" in given), config_path, address,
        port=s["port"] if "port" in given else None, user=s["user"],
        key=_local_path(s["key"], base) if s["key"] else None,
    )  # fmt: skip
    if "deploy_to" not in s:
        raise at.error(
            "deploy_to is not set in defaults, the group or the host",
            hint="add deploy_to: /var/www/site",
        )
    return Host(
        name=name,
        host=hostname,
        port=port,
        user=user,
        key=key,
        jump=jumps,
        parallel=s["parallel"],
        known_hosts=_local_path(s["known_hosts"], base),
        python=s["python"],
        deploy_to=s["deploy_to"],
        build=Build(
            _local_path(s["build"]["path"], base),
            tuple(s["build"]["required"]),
            s["build"]["compare"],
            git=_local_path(s["build"]["git"], base) if s["build"]["git"] else base,  # the repo holding hosts.yaml
            command=s["build"]["command"],
            output=s["build"]["output"],
            timeout=s["build"]["timeout"],
            stall_timeout=s["build"]["stall_timeout"],
            exclude=tuple(s["build"]["exclude"]),
            private=_private_files(at, s, base, config_path, key),
        ),
        keep_releases=s["keep_releases"],
        shared=tuple(s["shared"]),
        writable=tuple(s["writable"]),
        readable=tuple(s["readable"]),
        web_user=s["web_user"],
        protected=tuple(s["protected"]),
        serve=s["serve"] or "",
        never_serve=tuple(s["never_serve"]),
        httpd=Httpd(**s["httpd"]),
        smoke=Smoke(tuple(s["smoke"]["commands"]), s["smoke"]["url"], s["smoke"]["timeout"]),
        health=Health(
            urls=tuple(s["health"]["url"]),
            expect_status=s["health"]["expect_status"],
            expect_text=s["health"]["expect_text"],
            retries=s["health"]["retries"],
            timeout=s["health"]["timeout"],
        ),
        maintenance=Maintenance(
            allow=tuple(s["maintenance"]["allow"]),
            health_path=s["maintenance"]["health_path"],
            retry_after=s["maintenance"]["retry_after"],
            message=s["maintenance"]["message"],
        ),
        migrate=Migrate(**s["migrate"]),
        assets=Assets(tuple(s["assets"]["fallback"]), s["assets"]["releases"]),
        backups=Backups(
            tuple(s["backups"]["databases"]), s["backups"]["host"], s["backups"]["hold"], s["backups"]["to"]
        ),
        keep_backups=s["keep_backups"],
        balancer=Balancer(**s["balancer"]),
        hooks=Hooks(**{k: tuple(v) if isinstance(v, list) else v for k, v in s["hooks"].items()}),
        notify=Notify(**s["notify"]),
    )


def _private_files(at, s, base, config_path, key):
    """The local files this host's settings name (hosts.yaml itself, the SSH key, known_hosts,
    the OpenSSH config): never uploaded, should the build hold them."""
    files = [Path(at.file), _local_path(s["known_hosts"], base)]
    return tuple(str(p) for p in (*files, key, config_path) if p is not None)


def _group(at, defaults, base):
    if isinstance(at.node, yaml.MappingNode):
        group_settings, extra = _settings(at, extra=("hosts",))
        if "hosts" not in extra:
            raise at.error("has no 'hosts' list", hint="give the group a list under hosts:")
        host_nodes = y.listed(extra["hosts"])
    else:
        group_settings, host_nodes = {}, y.listed(at)
    if not host_nodes:
        raise at.error("has no hosts", hint="list at least one {host: ...} or remove the group")
    hosts = []
    for host_at in host_nodes:
        host = _host(host_at, (defaults, group_settings), base)
        for other in hosts:
            if other.name == host.name or (other.host, other.port) == (host.host, host.port):
                raise host_at.error(
                    f"duplicates host {other.name!r} of this group",
                    hint="give each host once; use name: to tell apart hosts on one address",
                )
        hosts.append(host)
    return tuple(hosts), host_nodes


def _check_offsite_folders(groups):
    """Two different hosts of one name (one server's two sites, in two groups) must not copy their
    backups into one backups.to folder (<path>/<name>/), where the two sites' copies would mix."""
    seen = {}  # name -> [(group, host)]
    for group, (hosts, nodes) in groups.items():
        for host, at in zip(hosts, nodes):
            to = host.backups.to
            for other_group, other in seen.get(host.name, []):
                there = other.backups.to
                if other == host or not (to and there) or (to.host, to.port, to.path.rstrip("/")) != (
                    there.host, there.port, there.path.rstrip("/")
                ):  # fmt: skip
                    continue
                differ = differences(other, host)
                raise at.error(
                    f"host {host.name!r} of groups {other_group} and {group} is two sites ({', '.join(differ[:3])} "
                    f"differ{'s' if len(differ) == 1 else ''}) whose backups.to copies would share one folder, "
                    f"{to.host}:{to.path.rstrip('/')}/{host.name}/",
                    hint=f"give one of them a name of its own (name: {host.name}-{group}), or a backups.to.path",
                )
            seen.setdefault(host.name, []).append((group, host))


def default_path():
    """Which hosts.yaml a task reads: CUTOVER_HOSTS_FILE, else hosts.yaml in the current directory
    (a site's own, with `fab -r CUTOVER_DIR` run from the site), else Cutover's own, but only from
    Cutover's directory (or one inside it): a task run from anywhere else would act on Cutover's
    sandbox (its default_group) instead of the site meant."""
    if os.environ.get(HOSTS_FILE_ENV):
        return Path(os.environ[HOSTS_FILE_ENV])
    how = f"run the task from your site's directory (where `fab init` wrote its hosts.yaml), or name the file: {HOSTS_FILE_ENV}=/path/to/hosts.yaml"
    try:
        cwd = Path.cwd()  # the directory itself, symlinks resolved (getcwd)
    except OSError as exc:
        raise ConfigError(
            f"the current directory cannot be read ({exc.strerror}): removed since the shell entered it?", hint=how
        ) from None
    here = cwd / "hosts.yaml"
    if os.path.lexists(here):  # a broken link too: the file meant, which load() says it cannot read
        return here
    if cwd.is_relative_to(PROJECT_DIR):
        return PROJECT_DIR / "hosts.yaml"
    raise ConfigError(
        f"no hosts.yaml in {cwd} (the current directory), and {HOSTS_FILE_ENV} is not set; Cutover's own "
        f"{PROJECT_DIR / 'hosts.yaml'} (its sandbox) is used only from Cutover's directory",
        hint=how,
    )


def load(path=None):
    """Load hosts.yaml (see default_path) into an Inventory."""
    path = Path(path) if path else default_path()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}",
            hint=f"create it (see the README) or name another file with {HOSTS_FILE_ENV}",
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: is not UTF-8 text (byte {data[exc.start]:#04x})",
            hint="save it as UTF-8 (iconv -f latin1 -t utf-8, or your editor's encoding setting)",
        ) from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if root is None:
        raise ConfigError(f"{path}: is empty", hint="see the README for an example hosts.yaml")
    top = y.At(path, "", root)
    sections = dict(y.items(top))
    for key, at in sections.items():
        if key not in TOP_KEYS:
            raise at.error("is not a known key", hint=f"the top level takes: {', '.join(TOP_KEYS)}")
    base = path.resolve().parent
    defaults = _settings(sections["defaults"])[0] if "defaults" in sections else {}
    if "groups" not in sections:
        raise top.error("has no groups", hint="add groups: with at least one group of hosts")
    groups = {}
    for name, at in y.items(sections["groups"]):
        if not y.SAFE_NAME.fullmatch(name):
            raise at.error("is not a usable group name (letters, digits, . _ -)")
        groups[name] = _group(at, defaults, base)
    if not groups:
        raise sections["groups"].error("is empty", hint="add at least one group of hosts")
    _check_offsite_folders(groups)
    groups = {name: hosts for name, (hosts, _) in groups.items()}
    default_group = None
    if "default_group" in sections:
        at = sections["default_group"]
        default_group = y.string(at)
        if default_group not in groups:
            raise at.error(f"{default_group!r} is not a group", hint=f"use one of: {', '.join(groups)}")
    return Inventory(path=path, groups=groups, default_group=default_group)
