"""Cutover's configuration as frozen dataclasses, built once by hostsfile.load after validation;
the rest of the code trusts them and never looks at raw YAML."""

from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class Build:
    path: Path
    required: tuple[str, ...]
    compare: str = "checksum"  # how rsync finds unchanged files: "checksum" or "mtime"
    git: Path | None = None  # `deploy --ref`: the repository (default: the one holding hosts.yaml)
    command: str | None = None  # `deploy --ref`: run in the exported tree, on this machine
    output: str = "."  # `deploy --ref`: what of the built tree is uploaded
    timeout: float = 1800
    stall_timeout: float = 120  # an upload that moves no byte either way this long is stopped
    exclude: tuple[str, ...] = ()  # left out of every release besides buildfiles.ALWAYS (build.exclude)
    # local files never uploaded where they lie inside the build (hosts.yaml, the SSH key): each
    # host names its own, so they do not make two hosts' builds differ
    private: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Httpd:
    pidfile: str
    pause: str  # "auto" (freeze httpd's own cgroup, else signals), "freeze", "sigstop" or "none"
    pause_timeout: float


@dataclass(frozen=True)
class Smoke:
    commands: tuple[str, ...]
    url: str | None
    timeout: float


@dataclass(frozen=True)
class Health:
    urls: tuple[str, ...]
    expect_status: int
    expect_text: str | None
    retries: int
    timeout: float


@dataclass(frozen=True)
class Maintenance:
    allow: tuple[str, ...]
    health_path: str | None
    retry_after: int
    message: str


@dataclass(frozen=True)
class Migrate:
    command: str | None
    host: str | None
    timeout: float
    always: bool
    user: str | None = None  # run the migration as this user (e.g. the web server's), not the deploy user


@dataclass(frozen=True)
class Database:
    """A database to back up: SQLite (a file under deploy_to) or MariaDB/MySQL (credentials in an
    option file on the server, never on a command line)."""

    name: str
    kind: str  # "sqlite" or "mariadb"
    path: str | None = None  # sqlite: relative to deploy_to
    database: str | None = None  # mariadb
    credentials: str | None = None  # mariadb: an option file on the server ([client] user, password, socket)

    def as_args(self):
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class OffSite:
    """Where each backup is copied to over SSH, from the server (its key and known_hosts are files there)."""

    host: str
    port: int
    user: str
    path: str
    key: str
    known_hosts: str


@dataclass(frozen=True)
class Backups:
    databases: tuple[Database, ...]
    host: str | None  # where the databases are dumped (default: migrate.host, else the first host)
    hold: float  # seconds to let requests in flight end once maintenance is on
    to: OffSite | None = None


@dataclass(frozen=True)
class Balancer:
    """The load balancer in front of the group, for a rolling deploy (--batch): HAProxy's runtime
    API socket, reached on the host `via` (any host of hosts.yaml) through its SSH connection."""

    via: str | None
    socket: str | None
    backend: str | None
    server: str | None  # this host's server name in the backend (default: its name in hosts.yaml)
    drain_timeout: float

    @property
    def configured(self):
        return any((self.via, self.socket, self.backend))


@dataclass(frozen=True)
class Assets:
    """Static assets a page still in flight asks for after a switch, served from earlier releases."""

    fallback: tuple[str, ...]  # file extensions; empty: no fallback
    releases: int  # how many earlier releases (previous, previous2 ...)


@dataclass(frozen=True)
class Hooks:
    """Commands run on each server inside the new release at named points of a deploy or rollback."""

    before_switch: tuple[str, ...]
    after_switch: tuple[str, ...]
    after_rollback: tuple[str, ...]
    timeout: float


@dataclass(frozen=True)
class Notify:
    """Told the outcome of each deploy and rollback on the operator's side (tasks/notify.py)."""

    command: str | None = None  # run with /bin/sh, the outcome as JSON on stdin
    url: str | None = None  # POSTed the outcome as JSON
    timeout: float = 10


@dataclass(frozen=True)
class Host:
    """One server as a deploy sees it, every setting resolved."""

    name: str
    host: str
    port: int
    user: str | None
    key: Path | None
    known_hosts: Path
    python: str
    deploy_to: str
    build: Build
    keep_releases: int
    shared: tuple[str, ...]
    writable: tuple[str, ...]  # made writable by web_user (ACL, else group and mode)
    web_user: str
    protected: tuple[str, ...]  # URL paths that must answer 401, 403 or 404 (check and verify probe them)
    serve: str  # the document root inside a release ("" for the release itself), e.g. "public"
    never_serve: tuple[str, ...]
    httpd: Httpd
    smoke: Smoke
    health: Health
    maintenance: Maintenance
    migrate: Migrate
    hooks: Hooks
    assets: Assets
    backups: Backups
    keep_backups: int
    balancer: Balancer | None = None
    jump: tuple = ()  # ProxyJump hops from the OpenSSH client config (sshconfig.Jump), first first
    parallel: int | None = None  # hosts of a run that connect, lock, upload and stage at the same time
    readable: tuple[str, ...] = ()  # made readable, never writable, by web_user (a hardened config)
    notify: Notify = Notify()

    @property
    def served_shared(self):
        """The shared entries inside `serve`, as URL paths relative to the site root."""
        prefix = f"{self.serve}/" if self.serve else ""
        return tuple(e[len(prefix) :] for e in self.shared if e.startswith(prefix))


@dataclass(frozen=True)
class Inventory:
    path: Path
    groups: dict = field(hash=False)  # group name -> tuple[Host, ...]
    default_group: str | None

    def resolve(self, target):
        """The hosts named by `-H` (a group, a host name, or a comma list of them); None means default_group."""
        if target is None or target == "":
            if self.default_group is None:
                raise ConfigError(
                    f"no -H given and {self.path} sets no default_group",
                    hint=f"name a group with -H ({self.known_names()}) or set default_group",
                )
            return self.groups[self.default_group]
        hosts = []
        for name in target.split(","):
            name = name.strip()
            if name in self.groups:
                found = list(self.groups[name])
            else:
                found = self._one_host(name)
            if not found:
                raise ConfigError(
                    f"-H {name!r} is neither a group nor a host in {self.path}",
                    hint=f"use one of: {self.known_names()}",
                )
            hosts.extend(h for h in found if h.name not in {x.name for x in hosts})
        return tuple(hosts)

    def _one_host(self, name):
        """[the host of that name], [] for none; refused when groups hold different hosts of that
        name (one server's two sites, its name the default): -H could mean either."""
        found = []
        for h in (h for hosts_ in self.groups.values() for h in hosts_ if h.name == name):
            if h not in found:
                found.append(h)
        if len(found) > 1:
            groups = [g for g, hosts_ in self.groups.items() if any(h.name == name for h in hosts_)]
            raise ConfigError(
                f"-H {name!r} names a host of groups {both(groups)}, which differ in "
                f"{', '.join(differences(found[0], found[1]))}: it could be either; nothing was changed",
                hint=f"name the group ({' or '.join('-H ' + g for g in groups)}), or give the hosts names of their own "
                "(name:)",
            )
        return found

    def split_groups(self, hosts):
        """The groups of which `hosts` hold some hosts but not all: a deploy to them splits those groups."""
        chosen = {h.name for h in hosts}
        out = []
        for name, members in self.groups.items():
            names = {h.name for h in members}
            if names & chosen and not names <= chosen:
                out.append((name, sorted(names)))
        return out

    def known_names(self):
        groups = ", ".join(sorted(self.groups))
        hosts = ", ".join(sorted({h.name for hs in self.groups.values() for h in hs}))
        return f"groups {groups}; hosts {hosts}"


def differences(a, b):
    """The settings in which two hosts differ (their names aside)."""
    return [f.name for f in fields(a) if f.name != "name" and getattr(a, f.name) != getattr(b, f.name)]


def both(names):
    """'a and b', 'a, b and c'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
