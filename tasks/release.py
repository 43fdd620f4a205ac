"""Release ids and the local build: decided and checked before anything remote happens."""

import os
import re
import stat
import subprocess
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from . import buildfiles
from .errors import ConfigError

GIT_TIMEOUT = 10  # seconds for `git rev-parse`


def new_release_id(build_path, now=None, commit=None):
    """A new release id: UTC timestamp (ms) plus the build's short git commit, e.g.
    20261124T101500.123Z-1a2b3c4, with -dirty when the work tree has uncommitted changes (the
    build is then not what that commit holds). commit: given (a build from a git ref), or looked up."""
    now = now or datetime.now(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%S") + f".{now.microsecond // 1000:03d}Z"
    if commit is None:
        commit = git_commit(build_path)
        if commit and git_dirty(build_path):
            commit += "-dirty"
    return f"{stamp}-{commit}" if commit else stamp


def _git(path, *args):
    try:
        result = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def git_commit(path):
    """The short commit of the git work tree holding path, or None."""
    commit = (_git(path, "rev-parse", "--short=7", "HEAD") or "").strip()
    return commit if re.fullmatch(r"[0-9a-f]{7,40}", commit) else None


def git_dirty(path):
    """Whether the work tree holding path has changes not committed (ignored files aside)."""
    return bool((_git(path, "status", "--porcelain") or "").strip())


@dataclass(frozen=True)
class BuildInfo:
    path: str
    files: int
    bytes: int
    modes: dict  # {"default": the commonest file mode, "modes": {relative path: mode} for the others}
    stats: dict  # {relative path: (size, mtime_ns, ctime_ns, inode)} of every regular file (tasks/manifest.py)


def _leads_outside(directory, prefix, name):
    """'name -> target' for a symlink whose target is absolute or climbs out of the build, else None."""
    try:
        target = os.readlink(os.path.join(directory, name))
    except OSError:  # gone since it was listed
        return None
    inside = os.path.normpath(os.path.join(prefix, target))
    if os.path.isabs(target) or inside == ".." or inside.startswith("../"):
        return f"{prefix}{name} -> {target}"
    return None


def _walk(top, exclusions):
    """({relative path: (size, mtime_ns, ctime_ns, inode)}, {relative path: mode}) of the regular
    files the rules leave in, in os.walk's order, and the links among what they leave in that
    lead outside the build. One listing per directory, one lstat per file, a readlink per link
    only: this walk is the build check's whole cost per file (100,000 files in a big shop)."""
    stats, modes, outside = {}, {}, []
    name_left_out = exclusions.names
    pending = [(str(top), "", ())]
    while pending:
        directory, prefix, parts = pending.pop()
        anchored = exclusions.anchored(len(parts) + 1)
        below = []
        with os.scandir(directory) as entries:
            for entry in entries:
                name = entry.name
                if name_left_out(name) or (anchored and any(r.matches((*parts, name)) for r in anchored)):
                    continue  # never uploaded: not read
                if entry.is_dir(follow_symlinks=False):
                    below.append((entry.path, f"{prefix}{name}/", (*parts, name)))
                    continue
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    rel = prefix + name
                    stats[rel] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                    modes[rel] = stat.S_IMODE(st.st_mode)
                elif stat.S_ISLNK(st.st_mode):  # uploaded as a link, followed on the server
                    link = _leads_outside(directory, prefix, name)
                    if link:
                        outside.append(link)
        pending += reversed(below)
    return stats, modes, outside


def check_build(build):
    """The local build exists, is not empty and holds build.required; refused otherwise."""
    path = build.path
    try:
        is_dir = path.is_dir()
    except OSError as exc:  # e.g. a name too long for the file system
        raise ConfigError(f"the build path {str(path)[:80]}... cannot be used: {exc.strerror}") from None
    if not is_dir:
        raise ConfigError(
            f"the build {path} does not exist or is not a directory",
            hint="build the site first, or set build.path in hosts.yaml (or pass --build)",
        )
    rules = buildfiles.rules(build)
    try:
        stats, modes, outside = _walk(path, buildfiles.Exclusions(rules))
    except OSError as exc:
        raise ConfigError(f"cannot read the build {path}: {exc.filename}: {exc.strerror}") from None
    if outside:
        raise ConfigError(
            f"the build {path} holds links that lead outside it: {', '.join(sorted(outside))}; a release would hold "
            "the links, which Apache follows on the server to whatever that path holds there",
            hint="copy what they lead to into the build, make it a shared: entry, or leave the link out (build.exclude)",
        )
    if not modes:
        raise ConfigError(f"the build {path} is empty: refusing to deploy an empty site", hint="build the site first")
    for required in build.required:
        rule = buildfiles.excluded(rules, required)
        if rule is not None:
            raise ConfigError(
                f"build.required names {required}, which the build leaves out ({rule.text})",
                hint="remove it from build.exclude, or from build.required",
            )
    missing = [r for r in build.required if not (path / r).is_file()]
    if missing:
        raise ConfigError(
            f"the build {path} lacks {', '.join(missing)} (build.required)",
            hint="check the build, or change build.required in hosts.yaml",
        )
    default = Counter(modes.values()).most_common(1)[0][0]
    others = {rel: mode for rel, mode in modes.items() if mode != default}
    return BuildInfo(
        str(path), len(modes), sum(size for size, *_ in stats.values()), {"default": default, "modes": others}, stats
    )


def changed_since(build, info, shown=3):
    """Whether the build is still what the build check saw (info): None, or the error that says it
    is not. A build tool or a copy still writing it as the uploads read it leaves each server with
    other files under one release id, none of them the build."""
    try:
        stats, modes, _ = _walk(build.path, buildfiles.Exclusions(buildfiles.rules(build)))
    except OSError as exc:
        changed = [f"{exc.filename}: {exc.strerror}"]
    else:
        seen = {rel: (size, mtime, ino) for rel, (size, mtime, _, ino) in info.stats.items()}
        now = {rel: (size, mtime, ino) for rel, (size, mtime, _, ino) in stats.items()}
        before = {rel: info.modes["modes"].get(rel, info.modes["default"]) for rel in seen}
        changed = sorted(rel for rel in seen.keys() | now.keys() if seen.get(rel) != now.get(rel))
        changed += sorted(rel for rel in now.keys() & before.keys() if modes[rel] != before[rel] and rel not in changed)
    if not changed:
        return None
    more = f" and {len(changed) - shown} more" if len(changed) > shown else ""
    return ConfigError(
        f"the build changed while it was uploaded ({', '.join(changed[:shown])}{more}): each server may hold "
        "another part of it",
        hint="deploy again once the build is complete; nothing was switched",
    )
