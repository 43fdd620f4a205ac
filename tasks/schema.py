"""Every hosts.yaml setting: its built-in default (BUILTIN) and the check that turns a YAML node
into a value or an error naming the key (SETTINGS for top-level keys, SECTIONS for each section's
sub-keys). tasks/hostsfile.py layers and resolves them.
"""

import re

from . import buildfiles
from . import yamlcheck as y
from .config import Database, OffSite
from .remote import limits
from .remote.shared import overlap, overlap_hint

SMOKE_TIMEOUT = (1, 3600)
BUILD_TIMEOUT = (1, 86400)
STALL_TIMEOUT = (1, 86400)  # seconds an upload may move nothing before it is stopped
MIGRATE_TIMEOUT = (1, 86400)
PORTS = (1, 65535)
KEEP_RELEASES = (2, 1000)
KEEP_BACKUPS = (1, 1000)
PARALLEL = (1, 1000)  # hosts preparing at the same time
HOLD = (0, 60)  # seconds requests in flight get to end before a backup's second pass
DRAIN_TIMEOUT = (1, 3600)  # seconds a drained server's connections get to end
NOTIFY_TIMEOUT = (1, 300)  # seconds a notifier gets after a deploy or rollback (tasks/notify.py)

BUILTIN = {
    "port": 22,
    "user": None,
    "key": None,
    "known_hosts": "~/.ssh/known_hosts",
    "ssh_config": "~/.ssh/config",
    "parallel": None,
    "python": "python3",
    "keep_releases": 5,
    "shared": [],
    "serve": None,
    "never_serve": [".git", ".hg", ".svn", ".env", ".env.*", ".ht*"],
    "build": {
        "path": "build/",
        "required": ["index.html"],
        "compare": "checksum",
        "git": None,
        "command": None,
        "output": ".",
        "timeout": 1800,
        "stall_timeout": 120,
        "exclude": [],
    },
    "httpd": {"pidfile": "/run/apache2/apache2.pid", "pause": "auto", "pause_timeout": limits.PAUSE_TIMEOUT_DEFAULT},
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
    "assets": {
        "fallback": [
            "css",
            "js",
            "mjs",
            "map",
            "woff2",
            "woff",
            "png",
            "jpg",
            "jpeg",
            "gif",
            "svg",
            "webp",
            "avif",
            "ico",
        ],
        "releases": 1,
    },
    "writable": [],
    "readable": [],
    "keep_backups": 5,
    "backups": {"databases": [], "host": None, "hold": 1, "to": None},
    "balancer": {"via": None, "socket": None, "backend": None, "server": None, "drain_timeout": 30},
    "web_user": "www-data",
    "protected": [],
    "notify": {"command": None, "url": None, "timeout": 10},
}


# Never served from an earlier release: pages and scripts must come from the live one.
EXTENSION = re.compile(r"^[a-z0-9]{1,10}$")
NOT_ASSETS = {
    "html",
    "htm",
    "xhtml",
    "shtml",
    "php",
    "phtml",
    "phar",
    "cgi",
    "pl",
    "py",
    "rb",
    "sh",
    "asp",
    "aspx",
    "jsp",
}


def _asset_extension(at):
    value = y.string(at, EXTENSION, "a file extension without the dot, e.g. css")
    if value in NOT_ASSETS or value.startswith("php"):
        raise at.error(f"{value!r} is a page or a script, which only the live release may serve")
    return value


DATABASE_KEYS = {"sqlite": ("name", "kind", "path"), "mariadb": ("name", "kind", "database", "credentials")}


def _exclude(at):
    """One rule of build.exclude: a name, or a path from the build's top (tasks/buildfiles.py)."""
    value = y.string(at)
    problem = buildfiles.problem(value)
    if problem:
        raise at.error(problem, hint="e.g. *.psd (any file of that name) or /drafts (from the build's top)")
    return value


def _database(at):
    """One entry of backups.databases."""
    fields = dict(y.items(at))
    kind = y.choice("sqlite", "mariadb")(fields["kind"]) if "kind" in fields else None
    if kind is None:
        raise at.error("needs kind: sqlite or mariadb")
    for key, sub in fields.items():
        if key not in DATABASE_KEYS[kind]:
            raise sub.error(
                "is not a key of a " + kind + " database", hint="it takes: " + ", ".join(DATABASE_KEYS[kind])
            )
    missing = [k for k in DATABASE_KEYS[kind] if k not in fields]
    if missing:
        raise at.error(f"a {kind} database needs {', '.join(missing)}")
    name = y.string(fields["name"], y.SAFE_NAME, "a name (letters, digits, . _ -)")
    if kind == "sqlite":
        return Database(name, kind, path=y.relpath(fields["path"]))
    database = y.string(fields["database"], y.SAFE_NAME, "a database name (letters, digits, . _ -)")
    return Database(name, kind, database=database, credentials=y.abspath(fields["credentials"]))


OFFSITE_KEYS = ("host", "port", "user", "path", "key", "known_hosts")


def _offsite(at):
    """backups.to: an SSH destination for copies of the backups, as this server reaches it."""
    fields = dict(y.items(at))
    for key, sub in fields.items():
        if key not in OFFSITE_KEYS:
            raise sub.error("is not a key of backups.to", hint="it takes: " + ", ".join(OFFSITE_KEYS))
    missing = [k for k in OFFSITE_KEYS if k not in fields and k != "port"]
    if missing:
        raise at.error(f"needs {', '.join(missing)}")
    return OffSite(
        host=y.string(fields["host"], y.SAFE_HOST, "a host name or address"),
        port=y.number(fields["port"], *PORTS, integer=True) if "port" in fields else 22,
        user=y.string(fields["user"], y.SAFE_USER, "a user name"),
        path=y.abspath(fields["path"]),
        key=y.abspath(fields["key"]),
        known_hosts=y.abspath(fields["known_hosts"]),
    )


def _shared(at):
    """The shared entries, none inside another: linking the outer one first, the inner one would
    resolve through its symlink to the shared data itself, which a deploy would then delete."""
    items = y.listed(at)
    entries = [y.relpath(item) for item in items]
    found = overlap(entries)
    if found:
        inner, outer = found
        where = items[inner]
        if entries[inner] == entries[outer]:
            raise where.error(f"{entries[inner]!r} is given twice (shared[{outer}])", hint="give each entry once")
        raise where.error(
            f"{entries[inner]!r} lies inside shared entry {entries[outer]!r} (shared[{outer}])",
            hint=overlap_hint(entries[inner], entries[outer]),
        )
    return entries


SECTIONS = {
    "build": {
        "path": lambda at: y.string(at),
        "required": y.strings(lambda at: y.relpath(at, local=True)),
        "compare": y.choice("checksum", "mtime"),
        "git": lambda at: y.string(at, allow_none=True),
        "command": lambda at: y.string(at, allow_none=True),
        "output": lambda at: "." if y.scalar(at) == "." else y.relpath(at, local=True),
        "timeout": lambda at: y.number(at, *BUILD_TIMEOUT),
        "stall_timeout": lambda at: y.number(at, *STALL_TIMEOUT),
        "exclude": y.strings(_exclude),
    },
    "httpd": {
        "pidfile": y.abspath,
        "pause": y.choice("auto", "freeze", "sigstop", "none"),
        "pause_timeout": lambda at: y.number(at, *limits.PAUSE_TIMEOUT),
    },
    "smoke": {
        "commands": y.strings(lambda at: y.string(at)),
        "url": lambda at: y.string(at, y.URL, "an http:// or https:// URL", allow_none=True),
        "timeout": lambda at: y.number(at, *SMOKE_TIMEOUT),
    },
    "health": {
        "url": y.urls,
        "expect_status": lambda at: y.number(at, *limits.EXPECT_STATUS, integer=True),
        "expect_text": lambda at: y.string(at, allow_none=True),
        "retries": lambda at: y.number(at, *limits.HEALTH_RETRIES, integer=True),
        "timeout": lambda at: y.number(at, *limits.HEALTH_TIMEOUT),
    },
    "maintenance": {
        "allow": y.strings(lambda at: y.string(at, y.ADDRESS, "an IP address or network (127.0.0.1, 10.0.0.0/8)")),
        "health_path": lambda at: y.string(at, y.URL_PATH, "a URL path such as /health", allow_none=True),
        "retry_after": lambda at: y.number(at, *limits.RETRY_AFTER, integer=True),
        "message": lambda at: y.string(at),
    },
    "migrate": {
        "command": lambda at: y.string(at, allow_none=True),
        "host": lambda at: y.string(at, y.SAFE_NAME, "a host name of the group", allow_none=True),
        "timeout": lambda at: y.number(at, *MIGRATE_TIMEOUT),
        "always": y.choice(True, False),
        "user": lambda at: y.string(at, y.SAFE_USER, "a user name (letters, digits, _ . -)", allow_none=True),
    },
    "backups": {
        "databases": lambda at: [_database(item) for item in y.listed(at)],
        "host": lambda at: y.string(at, y.SAFE_NAME, "a host name of the group", allow_none=True),
        "hold": lambda at: y.number(at, *HOLD),
        "to": lambda at: None if y.scalar_or_none(at) else _offsite(at),
    },
    "assets": {
        "fallback": y.strings(_asset_extension),
        "releases": lambda at: y.number(at, *limits.PREVIOUS_DEPTH, integer=True),
    },
    "hooks": {
        "before_switch": y.strings(lambda at: y.string(at)),
        "after_switch": y.strings(lambda at: y.string(at)),
        "after_rollback": y.strings(lambda at: y.string(at)),
        "timeout": lambda at: y.number(at, *SMOKE_TIMEOUT),
    },
    "balancer": {
        "via": lambda at: y.string(at, y.SAFE_NAME, "a host name of hosts.yaml", allow_none=True),
        "socket": lambda at: None if y.scalar_or_none(at) else y.abspath(at),
        "backend": lambda at: y.string(at, y.SAFE_NAME, "an HAProxy backend name", allow_none=True),
        "server": lambda at: y.string(at, y.SAFE_NAME, "an HAProxy server name", allow_none=True),
        "drain_timeout": lambda at: y.number(at, *DRAIN_TIMEOUT),
    },
    "notify": {
        "command": lambda at: y.string(at, allow_none=True),
        "url": lambda at: y.string(at, y.URL, "an http:// or https:// URL", allow_none=True),
        "timeout": lambda at: y.number(at, *NOTIFY_TIMEOUT),
    },
}
SETTINGS = {
    "deploy_to": y.deploy_to,
    "port": lambda at: y.number(at, *PORTS, integer=True),
    "user": lambda at: y.string(at, y.SAFE_USER, "a user name (letters, digits, _ . -)"),
    "key": lambda at: y.string(at),
    "known_hosts": lambda at: y.string(at),
    "ssh_config": lambda at: y.string(at),
    "parallel": lambda at: y.number(at, *PARALLEL, integer=True),
    "keep_releases": lambda at: y.number(at, *KEEP_RELEASES, integer=True),
    "python": lambda at: y.program(at),
    "shared": _shared,
    "writable": y.strings(y.relpath),
    "readable": y.strings(y.relpath),
    "keep_backups": lambda at: y.number(at, *KEEP_BACKUPS, integer=True),
    "web_user": lambda at: y.string(at, y.SAFE_USER, "a user name (letters, digits, _ . -)"),
    "protected": y.strings(lambda at: y.string(at, y.URL_PATH, "a URL path such as /private/")),
    "serve": lambda at: None if y.scalar(at) is None else y.relpath(at),
    "never_serve": y.strings(y.never_serve),
}
