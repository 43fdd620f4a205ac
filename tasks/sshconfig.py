"""OpenSSH client configuration (~/.ssh/config, or the file `ssh_config` names) as Cutover reads it:
a host's HostName, Port, User, IdentityFile and ProxyJump, for its own connections and rsync's alike.

hosts.yaml keys win where given (port, user, key); the file fills in the rest, as `ssh HOST`
would. Each ProxyJump hop is itself looked up in the same file (its HostName, Port, User,
IdentityFile); a hop's own ProxyJump is not followed: list every hop, in order, in the host's.
Host keys are checked strictly for every hop, against the same known_hosts as the host's.
"""

from dataclasses import dataclass
from pathlib import Path

import paramiko

from . import yamlcheck as y
from .errors import ConfigError

NONE = "none"  # ssh_config: none, or ProxyJump none: nothing to read, no jump
MAX_HOPS = 8


@dataclass(frozen=True)
class Jump:
    """One ProxyJump hop, resolved (user None: the local user)."""

    host: str
    port: int
    user: str | None
    key: Path | None


def load(path, explicit):
    """The parsed file, or None (ssh_config: none, or the default file is absent)."""
    if path is None:
        return None
    if not path.exists():
        if explicit:
            raise ConfigError(f"ssh_config: {path} does not exist", hint="fix the path, or set ssh_config: none")
        return None
    try:
        return paramiko.SSHConfig.from_path(str(path))
    except (OSError, ValueError, paramiko.ConfigParseError) as exc:
        raise ConfigError(
            f"ssh_config: cannot read {path}: {exc}", hint="fix the file, or set ssh_config: none"
        ) from None


def _checked(path, alias, option, value, pattern, what):
    if not pattern.match(value):
        raise ConfigError(
            f"{path}: {option} {value!r} of Host {alias} is not {what}",
            hint=f"fix it there, or give the value in hosts.yaml (ssh_config: none ignores {path})",
        )
    return value


def _port(path, alias, value):
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ConfigError(f"{path}: Port {value!r} of Host {alias} is not a port (1-65535)", hint="fix it there")
    return port


def resolve(config, path, alias, port=None, user=None, key=None):
    """(hostname, port, user, key, jumps) of `alias`: hosts.yaml's port/user/key where given
    (not None), else the file's, else OpenSSH's defaults (port 22, the local user, no key)."""
    found = config.lookup(alias) if config is not None else {}
    hostname = _checked(path, alias, "HostName", found.get("hostname", alias), y.SAFE_HOST, "a host name or address")
    if port is None:
        port = _port(path, alias, found["port"]) if "port" in found else 22
    if user is None and "user" in found:
        user = _checked(path, alias, "User", found["user"], y.SAFE_USER, "a user name")
    if key is None and found.get("identityfile"):
        key = Path(found["identityfile"][0]).expanduser()
    jumps = tuple(_hops(config, path, alias, found.get("proxyjump", NONE), user, key))
    return hostname, port, user, key, jumps


def _hops(config, path, alias, spec, user_of_host, key):
    """The hops of a ProxyJump value; a hop without a User or IdentityFile of its own logs in with
    the host's (the deploy user's, even when `fab setup` connects to the host as --admin-user)."""
    if spec.strip().lower() == NONE:
        return
    hops = [h.strip() for h in spec.split(",") if h.strip()]
    if len(hops) > MAX_HOPS:
        raise ConfigError(f"{path}: ProxyJump of Host {alias} has {len(hops)} hops (at most {MAX_HOPS})")
    for hop in hops:
        if hop.startswith("ssh://"):
            hop = hop[len("ssh://") :]
        user, _, rest = hop.rpartition("@")
        if user:
            _checked(path, alias, "ProxyJump user", user, y.SAFE_USER, "a user name")
        name, port = rest, None
        if rest.startswith("["):  # [IPv6]:port
            name, _, tail = rest[1:].partition("]")
            port = tail[1:] or None
        elif rest.count(":") == 1:
            name, port = rest.split(":")
        hostname, hop_port, hop_user, hop_key, _ = resolve(
            config, path, name, _port(path, alias, port) if port else None, user or None, None
        )
        yield Jump(hostname, hop_port, hop_user or user_of_host, hop_key or key)
