"""What of a build is the site: every deploy leaves out version control, editor and OS leftovers,
the hosts file and the local files it names (an SSH key beside hosts.yaml in a site's own
repository), and whatever `build.exclude` adds. One list of rules serves the build check (what
is counted and compared) and rsync (what is sent), so the two never disagree.

A rule is a name (any file or directory of that name, at any depth; `*` and `?` as wildcards)
or a path from the build's top (`/drafts`: that file or directory only). A directory left out
takes everything in it along.
"""

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

# Never part of a site: version control, editors' swap and backup files (an `index.php~` is
# served as text, source and secrets included), OS and IDE leftovers, Python's bytecode cache,
# a home directory's secrets.
ALWAYS = (
    ".git",
    ".hg",
    ".svn",
    ".bzr",
    "_darcs",
    "*~",
    "*.swp",
    "*.swo",
    ".#*",
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    ".idea",
    ".vscode",
    "__pycache__",
    # a home directory's: keys, cloud credentials, shell and editor histories (a build made in $HOME,
    # or a site whose repository took them in by mistake)
    ".ssh",
    ".gnupg",
    ".aws",
    ".*_history",
    ".viminfo",
    ".lesshst",
)
PART = re.compile(r"^[A-Za-z0-9._+@*? -]+$")  # one part of a build.exclude rule


@dataclass(frozen=True)
class Rule:
    text: str  # as hosts.yaml or ALWAYS gives it, for messages
    parts: tuple  # a name rule: one part; a path rule: each part from the top
    anchored: bool
    literal: bool = False  # a local file's path: no wildcards

    def matches(self, parts):
        """Whether a path of the build (its parts from the top) is this rule's, or lies inside it."""
        if not self.anchored:
            return any(fnmatch.fnmatchcase(p, self.parts[0]) for p in parts)
        if len(parts) < len(self.parts):
            return False
        if self.literal:
            return tuple(parts[: len(self.parts)]) == self.parts
        return all(fnmatch.fnmatchcase(p, rule) for p, rule in zip(parts, self.parts))

    def rsync_filter(self):
        """This rule as rsync's: hidden from the sender only, so that a file the prelinked incoming
        release has (linked from a live release that holds it) is deleted there."""
        text = "/".join(self.parts)
        if self.literal and re.search(r"[*?\[]", text):  # rsync reads a backslash as an escape only then
            text = re.sub(r"([*?\[\\])", r"\\\1", text)
        return f"--filter=H {'/' if self.anchored else ''}{text}"


def problem(text):
    """What is wrong with a build.exclude rule, or None."""
    parts = text.strip("/").split("/") if text.strip("/") else [""]
    if any(p == "" for p in parts) or "//" in text:
        return f"{text!r} has an empty part"
    if any(p in (".", "..") for p in parts):
        return f"{text!r} holds '..' or '.'; name files and directories inside the build"
    if not all(PART.fullmatch(p) for p in parts):
        return f"{text!r} may hold only letters, digits, . _ + @ - and spaces, with * and ? as wildcards"
    if len(parts) == 1 and parts[0].strip("*?") == "":
        return f"{text!r} would leave out every file"
    return None


def rule(text):
    """A rule of build.exclude (checked by problem())."""
    stripped = text.strip("/")
    parts = tuple(stripped.split("/"))
    return Rule(text, parts, anchored=text.startswith("/") or len(parts) > 1)


def rules(build):
    """Every rule of this build: ALWAYS, build.exclude, and the local files in `build.private`
    (hosts.yaml, the SSH key ...) that lie inside the build."""
    out = [rule(text) for text in ALWAYS + tuple(build.exclude)]
    top = Path(build.path).resolve()
    for private in build.private:
        for where in _places(Path(private)):
            try:
                inside = where.relative_to(top)
            except ValueError:
                continue  # outside the build: never uploaded anyway
            if inside.parts:
                out.append(Rule(f"/{inside}", inside.parts, anchored=True, literal=True))
    return out


def _places(path):
    """Where a local file is: where its name is (a symlink included, which rsync would upload as
    one) and where it leads to."""
    places = set()
    for where in (lambda: path.parent.resolve() / path.name, path.resolve):
        try:
            places.add(where())
        except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
            continue
    return sorted(places)


class Exclusions:
    """The rules as a walk of the build applies them, name by name. A path whose parent is in is
    left out when its own name matches a name rule (`names`: all of them one regular expression),
    or when an anchored rule of exactly its depth matches it (a shorter one would have left the
    parent out)."""

    def __init__(self, rules_):
        patterns = [r.parts[0] for r in rules_ if not r.anchored]
        self.names = re.compile("|".join(fnmatch.translate(p) for p in patterns)).match if patterns else _nothing
        self._anchored = {}
        for r in rules_:
            if r.anchored:
                self._anchored.setdefault(len(r.parts), []).append(r)

    def anchored(self, depth):
        """The anchored rules that may leave out a path of this many parts (None: no rule can)."""
        return self._anchored.get(depth)

    def leaves_out(self, parts):
        """Whether the path (its parts from the build's top) is left out, its parent being in."""
        anchored = self._anchored.get(len(parts))
        return bool(self.names(parts[-1])) or (anchored is not None and any(r.matches(parts) for r in anchored))


def _nothing(_name):
    return None


def excluded(rules_, relative):
    """The rule that leaves this build path (relative, with /) out, or None."""
    parts = tuple(relative.strip("/").split("/"))
    return next((r for r in rules_ if r.matches(parts)), None)
