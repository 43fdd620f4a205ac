"""YAML nodes checked into plain values: every error names the file, the line and the key path.

The checks hosts.yaml's schema (tasks/hostsfile.py) is made of; each takes an `At` (a node and
where it is) and returns the value, or raises ConfigError with a fix.
"""

import re
from pathlib import PurePosixPath

import yaml

from .errors import ConfigError
from .remote.paths import SAFE_PATH, relpath_fault

VALUE_MAX = 4096  # characters of one string value

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
SAFE_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")
SAFE_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
URL = re.compile(r"^https?://[^\s\x00-\x1f\x7f]+$")
ADDRESS = re.compile(r"^[0-9a-fA-F.:]+(/[0-9]{1,3})?$")
URL_PATH = re.compile(r"^(?!.*/\.\.?(?:/|$))/[A-Za-z0-9._~/-]*$")  # no . or .. segment: Apache never matches one
# A name never served from any release: one path component, `*` for any characters.
NEVER_SERVE = re.compile(r"^[A-Za-z0-9._+@*-]+$")


# --- the schema -----------------------------------------------------------------------------


class At:
    """A place in the file: key path and line, for error messages."""

    def __init__(self, file, path, node):
        self.file, self.path, self.node = file, path, node

    def child(self, key, node):
        sep = "" if isinstance(key, int) or not self.path else "."
        part = f"[{key}]" if isinstance(key, int) else key
        return At(self.file, f"{self.path}{sep}{part}", node)

    def error(self, message, hint=None):
        line = self.node.start_mark.line + 1
        where = f"{self.path}: " if self.path else ""
        return ConfigError(f"{self.file}:{line}: {where}{message}", hint=hint)


_constructor = yaml.constructor.SafeConstructor()


def scalar(at):
    if not isinstance(at.node, yaml.ScalarNode):
        raise at.error(f"must be a single value, got a {kind(at.node)}")
    try:
        return _constructor.construct_object(at.node, deep=True)
    except yaml.YAMLError as exc:  # a tag safe_load does not take (!!python/...), a bad !!timestamp ...
        raise at.error(f"not valid YAML: {getattr(exc, 'problem', exc)}") from None


def scalar_or_none(at):
    """True when the node is an empty value (null, ~ or nothing)."""
    return isinstance(at.node, yaml.ScalarNode) and scalar(at) is None


def kind(node):
    return {yaml.MappingNode: "mapping", yaml.SequenceNode: "list"}.get(type(node), "value")


def items(at):
    """The (key, At) pairs of a mapping node, refusing duplicate and non-string keys."""
    if not isinstance(at.node, yaml.MappingNode):
        raise at.error(f"must be a mapping (key: value), got a {kind(at.node)}")
    seen = set()
    out = []
    for knode, vnode in at.node.value:
        key = _constructor.construct_object(knode, deep=True)
        if not isinstance(key, str):
            raise At(at.file, at.path, knode).error(f"keys must be names, got {key!r}")
        if key in seen:
            raise at.child(key, knode).error("is given twice")
        seen.add(key)
        out.append((key, at.child(key, vnode)))
    return out


def listed(at):
    if isinstance(at.node, yaml.ScalarNode) and scalar(at) is None:
        return []
    if not isinstance(at.node, yaml.SequenceNode):
        raise at.error(f"must be a list, got a {kind(at.node)}")
    return [at.child(i, n) for i, n in enumerate(at.node.value)]


def string(at, pattern=None, what="", allow_none=False):
    value = scalar(at)
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or value == "":
        raise at.error(f"must be a non-empty string, got {value!r}")
    if "\x00" in value or "\n" in value or len(value) > VALUE_MAX:
        raise at.error(f"must be one line of at most {VALUE_MAX} characters without NUL")
    if pattern is not None and not pattern.fullmatch(value):
        raise at.error(f"{value!r} is not {what}")
    return value


def number(at, low, high, integer=False):
    value = scalar(at)
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        kind = "a whole number" if integer else "a number"
        raise at.error(f"must be {kind} from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise at.error(f"must be from {low} to {high}, got {value!r}")
    return value


def relpath(at, local=False):
    """A path inside a release: relative, no '..', no empty parts."""
    value = string(at)
    fault = relpath_fault(value, local)
    if fault == "absolute":
        raise at.error(f"{value!r} is absolute; give a path relative to the release, e.g. media")
    if fault in ("climbs", "empty"):
        raise at.error(f"{value!r} climbs out of the release with '..'; give a path inside it")
    if fault == "characters":
        raise at.error(f"{value!r} may hold only letters, digits and . _ - + @ /")
    return str(PurePosixPath(value))


def deploy_to(at):
    value = string(at)
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


def never_serve(at):
    value = string(at, NEVER_SERVE, "a file or directory name (letters, digits, . _ - + @, * for any)")
    if value.strip("*.") == "":
        raise at.error(f"{value!r} would hide every path; name files or directories such as .git or .env")
    return value


def abspath(at):
    value = string(at)
    if not value.startswith("/") or ".." in PurePosixPath(value).parts:
        raise at.error(f"{value!r} must be an absolute path without '..'")
    if not SAFE_PATH.fullmatch(value):
        raise at.error(f"{value!r} may hold only letters, digits and . _ - + @ /")
    return value


def program(at):
    """A program on the server: a bare name found on PATH, or an absolute path."""
    value = string(at)
    if re.fullmatch(r"[A-Za-z0-9._+-]+", value) and not value.startswith((".", "-")):
        return value
    return abspath(at)


def url(at):
    return string(at, URL, "an http:// or https:// URL")


def urls(at):
    if isinstance(at.node, yaml.SequenceNode):
        return [url(item) for item in listed(at)]
    if scalar(at) is None:
        return []
    return [url(at)]


def choice(*choices):
    def check(at):
        value = scalar(at)
        if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
            names = ", ".join(str(c).lower() if isinstance(c, bool) else c for c in choices)
            raise at.error(f"must be one of {names}, got {value!r}")
        return value

    return check


def strings(check):
    return lambda at: [check(item) for item in listed(at)]
