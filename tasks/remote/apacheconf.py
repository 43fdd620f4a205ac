"""Apache's configuration as httpd reads it: which file it starts from, every directive in order
with Include and IncludeOptional followed, ${NAME} expanded from Define and httpd's environment.
Standard library only; this file runs on the server.
"""

import glob
import os
import re
import subprocess

from . import httpd
from .protocol import Refused

WELL_KNOWN = ("/etc/apache2/apache2.conf", "/etc/httpd/conf/httpd.conf", "/usr/local/etc/apache24/httpd.conf")
VARIABLE = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
ENVVAR = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(\S.*|)$")  # a line of Debian's envvars
SHELL_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def root_config(pidfile=None, config=None):
    """(the main config file, ServerRoot): `config` if given, else the running httpd's -f and -d,
    else its binary's compiled defaults, else a well-known path. (None, None) if none exists."""
    argv, server_root = [], None
    if not config and pidfile:
        try:
            with open("/proc/%d/cmdline" % httpd.parent(pidfile), "rb") as f:
                argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
        except (Refused, OSError):
            argv = []
        for flag, value in zip(argv, argv[1:]):
            if flag == "-f":
                config = value
            elif flag == "-d":
                server_root = value
    if argv and not server_root and not (config and os.path.isabs(config)):
        root, name = _compiled_defaults(argv[0])  # where a relative or missing -f is looked for
        server_root, config = root, config or name
    if config and not os.path.isabs(config) and server_root:
        config = os.path.join(server_root, config)
    if not config or not os.path.isfile(config):
        config = next((p for p in WELL_KNOWN if os.path.isfile(p)), None)
    return config, server_root or (os.path.dirname(config) if config else None)


def _compiled_defaults(binary):
    """HTTPD_ROOT and SERVER_CONFIG_FILE of an httpd binary (`httpd -V`), or (None, None)."""
    try:
        out = subprocess.run([binary, "-V"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=10).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.SubprocessError):
        return None, None
    found = dict(re.findall(r'-D (HTTPD_ROOT|SERVER_CONFIG_FILE)="([^"]*)"', out))
    return found.get("HTTPD_ROOT"), found.get("SERVER_CONFIG_FILE")


def _lines(path):
    """(line number, text) of each directive of a config file: continued lines joined, comments
    and blank lines left out."""
    with open(path, encoding="utf-8", errors="replace") as f:
        raw = f.read().split("\n")
    out, held, start = [], "", 0
    for number, line in enumerate(raw, 1):
        if not held:
            start = number
        if line.rstrip().endswith("\\"):
            held += line.rstrip()[:-1]
            continue
        text = (held + line).strip()
        held = ""
        if text and not text.startswith("#"):
            out.append((start, text))
    return out


def unquote(arg):
    arg = arg.strip()
    return arg[1:-1] if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "\"'" else arg


class Reader:
    """Every directive of the configuration in the order Apache reads it, (file, line, text); an
    Include is followed by the directives of the files it names."""

    def __init__(self, server_root, environ=None, skip=None):
        self.server_root, self.defines, self.seen = server_root, {}, 0
        self.environ = os.environ if environ is None else environ
        self.skip = skip  # a directory whose files are not read: Cutover's own (.cutover/)

    def expand(self, text):
        """text with ${NAME} replaced as Apache does (Define, then httpd's environment)."""
        return VARIABLE.sub(lambda m: self.defines.get(m.group(1), self.environ.get(m.group(1), m.group(0))), text)

    def read(self, path, depth=0):
        if depth > 32:
            raise Refused("Apache configuration: Include nested deeper than 32 files at %s" % path)
        for number, text in _lines(path):
            self.seen += 1
            words = text.split(None, 1)
            name, args = words[0].lower(), (words[1] if len(words) > 1 else "")
            if name == "serverroot":
                self.server_root = unquote(self.expand(args))
            elif name == "define":
                parts = args.split(None, 1)
                self.defines[parts[0]] = unquote(self.expand(parts[1])) if len(parts) > 1 else ""
            yield path, number, text
            if name in ("include", "includeoptional"):
                for included in self.included(unquote(self.expand(args))):
                    if self.skip and included.startswith(self.skip + "/"):
                        continue
                    for item in self.read(included, depth + 1):
                        yield item

    def included(self, pattern):
        """The files an Include names: a file, a wildcard's, a directory's and its subdirectories',
        in Apache's order (each directory's entries sorted, a subdirectory read in its place)."""
        if not os.path.isabs(pattern) and self.server_root:
            pattern = os.path.join(self.server_root, pattern)
        found = []
        for path in sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]:
            found += _files_in(path, 0)
        return found


def _files_in(path, depth):
    """path if a file, or the files of a directory and of its subdirectories, each level sorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path) or depth > 32:
        return []
    out = []
    for name in sorted(os.listdir(path)):
        out += _files_in(os.path.join(path, name), depth + 1)
    return out


def httpd_environ(pidfile, config):
    """The environment httpd read its configuration with (its ${NAME}s): its own, where this user
    may read it; else the variables Debian's apachectl sets from `envvars` beside the config, over
    this process's environment; else this process's environment."""
    try:
        with open("/proc/%d/environ" % httpd.parent(pidfile), "rb") as f:
            pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
        return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in pairs}
    except (Refused, OSError, TypeError):
        pass  # no pidfile, httpd not running, or another user's process
    environ = dict(os.environ)
    try:
        with open(os.path.join(os.path.dirname(config or ""), "envvars"), encoding="utf-8", errors="replace") as f:
            for line in f:
                found = ENVVAR.match(line)
                if found:
                    value = unquote(found.group(2).strip())
                    environ[found.group(1)] = SHELL_VARIABLE.sub(lambda m: environ.get(m.group(1) or m.group(2), ""), value)
    except OSError:
        pass  # no envvars: a server that is not Debian's
    return environ
