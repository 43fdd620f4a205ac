"""Load and validate hosts.yaml into frozen dataclasses, layered defaults -> group -> host.

Every error names the file, the line and the key path. Nothing here touches the network: a
mistake found here costs nothing.
"""

import os
import re
from pathlib import Path, PurePosixPath

import yaml

from .config import Apache, Build, Health, Hooks, Host, Httpd, Inventory, Maintenance, Migrate, Smoke
from .errors import ConfigError
from .remote import limits

HOSTS_FILE_ENV = "CUTOVER_HOSTS_FILE"
# Bounds of the settings only the client uses; those the server checks too are in remote/limits.py.
SMOKE_TIMEOUT = (1, 3600)
MIGRATE_TIMEOUT = (1, 86400)
PORTS = (1, 65535)
KEEP_RELEASES = (2, 1000)
VALUE_MAX = 4096  # characters of one string value
PROJECT_DIR = Path(__file__).resolve().parent.parent

# Characters allowed in server-side paths (deploy_to, shared entries, pidfile). Everything is
# quoted anyway; the narrow set keeps paths readable in Apache config and error messages.
SAFE_PATH = re.compile(r"^[A-Za-z0-9._/@+-]+$")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
SAFE_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")
SAFE_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
URL = re.compile(r"^https?://[^\s\x00-\x1f\x7f]+$")
ADDRESS = re.compile(r"^[0-9a-fA-F.:]+(/[0-9]{1,3})?$")
URL_PATH = re.compile(r"^/[A-Za-z0-9._~/-]*$")
# A name never served from any release: one path component, `*` for any characters.
NEVER_SERVE = re.compile(r"^[A-Za-z0-9._+@*-]+$")
# Apache's AllowOverride and Options for the release directories (see templates/apache.conf).
ALLOW_OVERRIDE = re.compile(
    r"^(All|None|(AuthConfig|FileInfo|Indexes|Limit|Options(=[A-Za-z,]+)?)( (AuthConfig|FileInfo|Indexes|Limit|Options(=[A-Za-z,]+)?))*)$"
)
OPTIONS = re.compile(
    r"^[+-]?(None|All|FollowSymLinks|SymLinksIfOwnerMatch|ExecCGI|Includes|IncludesNOEXEC|Indexes|MultiViews)( [+-]?(FollowSymLinks|SymLinksIfOwnerMatch|ExecCGI|Includes|IncludesNOEXEC|Indexes|MultiViews))*$"
)


# --- the schema -----------------------------------------------------------------------------

BUILTIN = {
    "port": 22,
    "user": None,
    "key": None,
    "known_hosts": "~/.ssh/known_hosts",
    "python": "python3",
    "keep_releases": 5,
    "shared": [],
    "serve": None,
    "never_serve": [".git", ".hg", ".svn", ".env", ".env.*", ".ht*"],
    "build": {"path": "build/", "required": ["index.html"], "compare": "checksum"},
    "httpd": {"pidfile": "/run/apache2/apache2.pid", "pause": "sigstop", "pause_timeout": limits.PAUSE_TIMEOUT_DEFAULT},
    "smoke": {"commands": [], "url": None, "timeout": 60},
    "health": {"url": [], "expect_status": 200, "expect_text": None, "retries": 5, "timeout": 5},
    "maintenance": {
        "allow": ["127.0.0.1", "::1"],
        "health_path": None,
        "retry_after": 600,
        "message": "We are updating the site and will be back shortly.",
    },
    "migrate": {"command": None, "host": None, "timeout": 600, "always": False, "user": None},
    "hooks": {"before_switch": [], "after_switch": [], "after_rollback": [], "timeout": 60},
    "writable": [],
    "web_user": "www-data",
    "protected": [],
    "apache": {"allow_override": "All", "options": "FollowSymLinks"},
}
TOP_KEYS = ("defaults", "groups", "default_group")
HOST_ONLY_KEYS = ("host", "name")


class _At:
    """A place in the file: key path and line, for error messages."""

    def __init__(self, file, path, node):
        self.file, self.path, self.node = file, path, node

    def child(self, key, node):
        sep = "" if isinstance(key, int) or not self.path else "."
        part = f"[{key}]" if isinstance(key, int) else key
        return _At(self.file, f"{self.path}{sep}{part}", node)

    def error(self, message, hint=None):
        line = self.node.start_mark.line + 1
        where = f"{self.path}: " if self.path else ""
        return ConfigError(f"{self.file}:{line}: {where}{message}", hint=hint)


_constructor = yaml.constructor.SafeConstructor()


def _scalar(at):
    if not isinstance(at.node, yaml.ScalarNode):
        raise at.error(f"must be a single value, got a {_kind(at.node)}")
    return _constructor.construct_object(at.node, deep=True)


def _kind(node):
    return {yaml.MappingNode: "mapping", yaml.SequenceNode: "list"}.get(type(node), "value")


def _items(at):
    """The (key, _At) pairs of a mapping node, refusing duplicate and non-string keys."""
    if not isinstance(at.node, yaml.MappingNode):
        raise at.error(f"must be a mapping (key: value), got a {_kind(at.node)}")
    seen = set()
    out = []
    for knode, vnode in at.node.value:
        key = _constructor.construct_object(knode, deep=True)
        if not isinstance(key, str):
            raise _At(at.file, at.path, knode).error(f"keys must be names, got {key!r}")
        if key in seen:
            raise at.child(key, knode).error("is given twice")
        seen.add(key)
        out.append((key, at.child(key, vnode)))
    return out


def _list(at):
    if isinstance(at.node, yaml.ScalarNode) and _scalar(at) is None:
        return []
    if not isinstance(at.node, yaml.SequenceNode):
        raise at.error(f"must be a list, got a {_kind(at.node)}")
    return [at.child(i, n) for i, n in enumerate(at.node.value)]


def _string(at, pattern=None, what="", allow_none=False):
    value = _scalar(at)
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or value == "":
        raise at.error(f"must be a non-empty string, got {value!r}")
    if "\x00" in value or "\n" in value or len(value) > VALUE_MAX:
        raise at.error(f"must be one line of at most {VALUE_MAX} characters without NUL")
    if pattern is not None and not pattern.fullmatch(value):
        raise at.error(f"{value!r} is not {what}")
    return value


def _number(at, low, high, integer=False):
    value = _scalar(at)
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        kind = "a whole number" if integer else "a number"
        raise at.error(f"must be {kind} from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise at.error(f"must be from {low} to {high}, got {value!r}")
    return value


def _relpath(at, local=False):
    """A path inside a release: relative, no '..', no empty parts."""
    value = _string(at)
    parts = PurePosixPath(value).parts
    if value.startswith("/"):
        raise at.error(f"{value!r} is absolute; give a path relative to the release, e.g. media")
    if ".." in parts or not parts:
        raise at.error(f"{value!r} climbs out of the release with '..'; give a path inside it")
    if not local and not SAFE_PATH.fullmatch(value):
        raise at.error(f"{value!r} may hold only letters, digits and . _ - + @ /")
    return str(PurePosixPath(value))


def _deploy_to(at):
    value = _string(at)
    if not value.startswith("/"):
        raise at.error(f"{value!r} is relative; give an absolute path such as /var/www/site")
    if ".." in PurePosixPath(value).parts:
        raise at.error(f"{value!r} holds '..'; give the plain absolute path")
    if not SAFE_PATH.fullmatch(value):
        raise at.error(f"{value!r} may hold only letters, digits and . _ - + @ /")
    clean = str(PurePosixPath(value))
    if len(PurePosixPath(clean).parts) < 3:
        raise at.error(
            f"{value!r} is too close to / for a directory Cutover manages",
            hint="give a directory of its own, at least two levels deep, e.g. /var/www/site",
        )
    return clean


def _never_serve(at):
    value = _string(at, NEVER_SERVE, "a file or directory name (letters, digits, . _ - + @, * for any)")
    if value.strip("*.") == "":
        raise at.error(f"{value!r} would hide every path; name files or directories such as .git or .env")
    return value


def _abspath(at):
    value = _string(at)
    if not value.startswith("/") or ".." in PurePosixPath(value).parts:
        raise at.error(f"{value!r} must be an absolute path without '..'")
    if not SAFE_PATH.fullmatch(value):
        raise at.error(f"{value!r} may hold only letters, digits and . _ - + @ /")
    return value


def _program(at):
    """A program on the server: a bare name found on PATH, or an absolute path."""
    value = _string(at)
    if re.fullmatch(r"[A-Za-z0-9._+-]+", value) and not value.startswith((".", "-")):
        return value
    return _abspath(at)


def _url(at):
    return _string(at, URL, "an http:// or https:// URL")


def _urls(at):
    if isinstance(at.node, yaml.SequenceNode):
        return [_url(item) for item in _list(at)]
    if _scalar(at) is None:
        return []
    return [_url(at)]


def _choice(*choices):
    def check(at):
        value = _scalar(at)
        if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
            names = ", ".join(str(c).lower() if isinstance(c, bool) else c for c in choices)
            raise at.error(f"must be one of {names}, got {value!r}")
        return value

    return check


def _strings(check):
    return lambda at: [check(item) for item in _list(at)]


SECTIONS = {
    "build": {
        "path": lambda at: _string(at),
        "required": _strings(lambda at: _relpath(at, local=True)),
        "compare": _choice("checksum", "mtime"),
    },
    "httpd": {
        "pidfile": _abspath,
        "pause": _choice("sigstop", "none"),
        "pause_timeout": lambda at: _number(at, *limits.PAUSE_TIMEOUT),
    },
    "smoke": {
        "commands": _strings(lambda at: _string(at)),
        "url": lambda at: _string(at, URL, "an http:// or https:// URL", allow_none=True),
        "timeout": lambda at: _number(at, *SMOKE_TIMEOUT),
    },
    "health": {
        "url": _urls,
        "expect_status": lambda at: _number(at, *limits.EXPECT_STATUS, integer=True),
        "expect_text": lambda at: _string(at, allow_none=True),
        "retries": lambda at: _number(at, *limits.HEALTH_RETRIES, integer=True),
        "timeout": lambda at: _number(at, *limits.HEALTH_TIMEOUT),
    },
    "maintenance": {
        "allow": _strings(lambda at: _string(at, ADDRESS, "an IP address or network (127.0.0.1, 10.0.0.0/8)")),
        "health_path": lambda at: _string(at, URL_PATH, "a URL path such as /health", allow_none=True),
        "retry_after": lambda at: _number(at, *limits.RETRY_AFTER, integer=True),
        "message": lambda at: _string(at),
    },
    "migrate": {
        "command": lambda at: _string(at, allow_none=True),
        "host": lambda at: _string(at, SAFE_NAME, "a host name of the group", allow_none=True),
        "timeout": lambda at: _number(at, *MIGRATE_TIMEOUT),
        "always": _choice(True, False),
        "user": lambda at: _string(at, SAFE_USER, "a user name (letters, digits, _ . -)", allow_none=True),
    },
    "hooks": {
        "before_switch": _strings(lambda at: _string(at)),
        "after_switch": _strings(lambda at: _string(at)),
        "after_rollback": _strings(lambda at: _string(at)),
        "timeout": lambda at: _number(at, *SMOKE_TIMEOUT),
    },
    "apache": {
        "allow_override": lambda at: _string(at, ALLOW_OVERRIDE, "an AllowOverride value (All, None, FileInfo ...)"),
        "options": lambda at: _string(at, OPTIONS, "an Options value (FollowSymLinks ...)"),
    },
}
SETTINGS = {
    "deploy_to": _deploy_to,
    "port": lambda at: _number(at, *PORTS, integer=True),
    "user": lambda at: _string(at, SAFE_USER, "a user name (letters, digits, _ . -)"),
    "key": lambda at: _string(at),
    "known_hosts": lambda at: _string(at),
    "keep_releases": lambda at: _number(at, *KEEP_RELEASES, integer=True),
    "python": lambda at: _program(at),
    "shared": _strings(_relpath),
    "writable": _strings(_relpath),
    "web_user": lambda at: _string(at, SAFE_USER, "a user name (letters, digits, _ . -)"),
    "protected": _strings(lambda at: _string(at, URL_PATH, "a URL path such as /private/")),
    "serve": lambda at: None if _scalar(at) is None else _relpath(at),
    "never_serve": _strings(_never_serve),
}


def _settings(at, extra=()):
    """Validate one layer (defaults, a group or a host) into a partial dict of settings."""
    out, seen = {}, {}
    for key, sub in _items(at):
        if key in extra:
            seen[key] = sub
        elif key in SETTINGS:
            out[key] = SETTINGS[key](sub)
        elif key in SECTIONS:
            out[key] = {}
            for subkey, subat in _items(sub):
                if subkey not in SECTIONS[key]:
                    known = ", ".join(SECTIONS[key])
                    raise subat.error("is not a known key", hint=f"{key} takes: {known}")
                out[key][subkey] = SECTIONS[key][subkey](subat)
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


def _host(at, layers, base):
    own, extra = _settings(at, extra=HOST_ONLY_KEYS)
    if "host" not in extra:
        raise at.error("has no 'host' key", hint="add host: NAME_OR_ADDRESS")
    address = _string(extra["host"], SAFE_HOST, "a host name or address")
    name = _string(extra["name"], SAFE_NAME, "a name") if "name" in extra else address
    s = _merge(BUILTIN, *layers, own)
    if "deploy_to" not in s:
        raise at.error(
            "deploy_to is not set in defaults, the group or the host",
            hint="add deploy_to: /var/www/site",
        )
    return Host(
        name=name,
        host=address,
        port=s["port"],
        user=s["user"],
        key=_local_path(s["key"], base) if s["key"] else None,
        known_hosts=_local_path(s["known_hosts"], base),
        python=s["python"],
        deploy_to=s["deploy_to"],
        build=Build(_local_path(s["build"]["path"], base), tuple(s["build"]["required"]), s["build"]["compare"]),
        keep_releases=s["keep_releases"],
        shared=tuple(s["shared"]),
        writable=tuple(s["writable"]),
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
        apache=Apache(**s["apache"]),
        hooks=Hooks(**{k: tuple(v) if isinstance(v, list) else v for k, v in s["hooks"].items()}),
    )


def _group(at, defaults, base):
    if isinstance(at.node, yaml.MappingNode):
        group_settings, extra = _settings(at, extra=("hosts",))
        if "hosts" not in extra:
            raise at.error("has no 'hosts' list", hint="give the group a list under hosts:")
        host_nodes = _list(extra["hosts"])
    else:
        group_settings, host_nodes = {}, _list(at)
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
    return tuple(hosts)


def load(path=None):
    """Load hosts.yaml (CUTOVER_HOSTS_FILE, else hosts.yaml beside the fabfile) into an Inventory."""
    path = Path(path or os.environ.get(HOSTS_FILE_ENV) or PROJECT_DIR / "hosts.yaml")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}",
            hint=f"create it (see the README) or name another file with {HOSTS_FILE_ENV}",
        ) from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if root is None:
        raise ConfigError(f"{path}: is empty", hint="see the README for an example hosts.yaml")
    top = _At(path, "", root)
    sections = dict(_items(top))
    for key, at in sections.items():
        if key not in TOP_KEYS:
            raise at.error("is not a known key", hint=f"the top level takes: {', '.join(TOP_KEYS)}")
    base = path.resolve().parent
    defaults = _settings(sections["defaults"])[0] if "defaults" in sections else {}
    if "groups" not in sections:
        raise top.error("has no groups", hint="add groups: with at least one group of hosts")
    groups = {}
    for name, at in _items(sections["groups"]):
        if not SAFE_NAME.fullmatch(name):
            raise at.error("is not a usable group name (letters, digits, . _ -)")
        groups[name] = _group(at, defaults, base)
    if not groups:
        raise sections["groups"].error("is empty", hint="add at least one group of hosts")
    default_group = None
    if "default_group" in sections:
        at = sections["default_group"]
        default_group = _string(at)
        if default_group not in groups:
            raise at.error(f"{default_group!r} is not a group", hint=f"use one of: {', '.join(groups)}")
    return Inventory(path=path, groups=groups, default_group=default_group)
