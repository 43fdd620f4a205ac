"""The site's own Apache configuration, as far as release pinning needs it.

Apache matches <Directory> against the path a request is mapped to. The site's blocks for
<deploy_to>/current/... hold for the requests mapped through `current`; a request pinned to
releases/<id>/... would lose every directive in them (handlers, php_admin_*, ForceType, Header,
Options, AllowOverride, Require ...). So `fab setup` writes each such block again for
<deploy_to>/releases/*/... (a wildcard matches one path component), inside the same conditional
sections, into .cutover/apache-site.conf, which Cutover's rules include; `fab check` renders it
again and names any block that changed since.

The blocks come from the files the running httpd was started with (its -f and -d, else the
binary's compiled defaults), following Include and IncludeOptional; only the server config
and the VirtualHosts of this site (DocumentRoot under <deploy_to>/current, or an Include of
Cutover's rules) count. Standard library only; this file runs on the server.
"""

import glob
import os
import posixpath
import re
import subprocess

from . import httpd
from .protocol import Refused

CONDITIONAL = ("ifmodule", "ifdefine", "ifversion", "iffile", "ifdirective", "ifsection")
WELL_KNOWN = ("/etc/apache2/apache2.conf", "/etc/httpd/conf/httpd.conf", "/usr/local/etc/apache24/httpd.conf")
MARK = "# mirrors "  # the line before each mirrored block: where the site's own block is
VARIABLE = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


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


def _unquote(arg):
    arg = arg.strip()
    return arg[1:-1] if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "\"'" else arg


class Reader:
    """Every directive of the configuration in the order Apache reads it, (file, line, text); an
    Include is followed by the directives of the files it names."""

    def __init__(self, server_root):
        self.server_root, self.defines, self.seen = server_root, {}, 0

    def expand(self, text):
        """text with ${NAME} replaced as Apache does (Define, then the environment)."""
        return VARIABLE.sub(lambda m: self.defines.get(m.group(1), os.environ.get(m.group(1), m.group(0))), text)

    def read(self, path, depth=0):
        if depth > 32:
            raise Refused("Apache configuration: Include nested deeper than 32 files at %s" % path)
        for number, text in _lines(path):
            self.seen += 1
            words = text.split(None, 1)
            name, args = words[0].lower(), (words[1] if len(words) > 1 else "")
            if name == "serverroot":
                self.server_root = _unquote(self.expand(args))
            elif name == "define":
                parts = args.split(None, 1)
                self.defines[parts[0]] = _unquote(parts[1]) if len(parts) > 1 else ""
            yield path, number, text
            if name in ("include", "includeoptional"):
                for included in self.included(_unquote(self.expand(args))):
                    for item in self.read(included, depth + 1):
                        yield item

    def included(self, pattern):
        """The files an Include names: a file, a directory's files, or a wildcard, sorted."""
        if not os.path.isabs(pattern) and self.server_root:
            pattern = os.path.join(self.server_root, pattern)
        found = []
        for path in sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]:
            if os.path.isdir(path):
                found += sorted(os.path.join(path, n) for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
            elif os.path.isfile(path):
                found.append(path)
        return found


def _current_regex(deploy_to):
    """A regex matching <deploy_to>/current as written in a regular expression (`/` and `.` escaped or not)."""
    return "".join("\\\\?" + re.escape(c) if c in "/.-" else re.escape(c) for c in deploy_to + "/current")


def _mirrored_path(section, args, reader, deploy_to):
    """The argument of a mirror of this <Directory>/<DirectoryMatch> for releases/*/..., or None
    when the block is not about <deploy_to>/current."""
    current = deploy_to + "/current"
    regex = section == "directorymatch" or args.startswith("~")
    arg = _unquote(args[1:] if section == "directory" and regex else args)
    expanded = reader.expand(arg)
    if not regex:
        expanded = posixpath.normpath(expanded)  # as Apache makes it canonical
        if expanded == current or expanded.startswith(current + "/"):
            return '"%s"' % (deploy_to + "/releases/*" + expanded[len(current):])
        return None
    found = re.search(_current_regex(deploy_to), expanded)
    if not found:
        return None
    mirrored = expanded[: found.start()] + re.escape(deploy_to) + "/releases/[^/]+" + expanded[found.end():]
    return ('~ "%s"' if section == "directory" else '"%s"') % mirrored


def site_blocks(config, server_root, deploy_to, rules_path):
    """The site's blocks for <deploy_to>/current/...: [(where, the block's first line, its
    mirror)], those of the server config first, then those of the site's VirtualHosts (which
    must all have the same)."""
    reader = Reader(server_root)
    stack, main, vhosts, capture = [], [], [], None
    current = deploy_to + "/current"
    for path, number, text in reader.read(config):
        opening = re.match(r"^<([A-Za-z]+)(\s+[^>]*)?>$", text)
        closing = re.match(r"^</([A-Za-z]+)\s*>$", text)
        if capture is not None:
            inner = len(stack) - capture["depth"] - (1 if closing else 0)
            capture["lines"].append("    " * (len(capture["wrappers"]) + 1 + inner) + text)
        if opening:
            section, args = opening.group(1).lower(), (opening.group(2) or "").strip()
            stack.append((section, text))
            if section == "virtualhost":
                vhosts.append({"where": "%s:%d" % (path, number), "blocks": [], "ours": False})
            elif capture is None and section in ("directory", "directorymatch"):
                mirrored = _mirrored_path(section, args, reader, deploy_to)
                if mirrored:
                    wrappers = [t for s, t in stack[:-1] if s in CONDITIONAL]
                    indent = "    " * len(wrappers)
                    capture = {"depth": len(stack), "where": "%s:%d" % (path, number), "first": text,
                               "wrappers": wrappers, "lines": [indent + "<%s %s>" % (opening.group(1), mirrored)]}
        elif closing:
            if capture is not None and len(stack) == capture["depth"]:
                wrappers = capture["wrappers"]
                lines = ["    " * i + w for i, w in enumerate(wrappers)] + capture["lines"]
                lines += ["    " * i + "</%s>" % w[1:].split()[0].rstrip(">") for i, w in reversed(list(enumerate(wrappers)))]
                block = (capture["where"], capture["first"], "\n".join(lines))
                (vhosts[-1]["blocks"] if _in_vhost(stack) else main).append(block)
                capture = None
            if stack:
                stack.pop()
        elif capture is None:
            words = text.split(None, 1)
            name, args = words[0].lower(), _unquote(reader.expand(words[1])) if len(words) > 1 else ""
            if name in ("scriptalias", "scriptaliasmatch"):
                block = _script_alias(name, words[1] if len(words) > 1 else "", stack, reader, current)
                if block:
                    block = ("%s:%d" % (path, number), text, block)
                    (vhosts[-1]["blocks"] if _in_vhost(stack) else main).append(block)
            elif _in_vhost(stack) and (
                (name == "documentroot" and (args == current or args.startswith(current + "/")))
                or (name in ("include", "includeoptional") and args == rules_path)
            ):
                vhosts[-1]["ours"] = True
    if reader.seen == 0:
        raise Refused("Apache configuration %s holds no directive" % config)
    ours = [v for v in vhosts if v["ours"]]
    if len({tuple(b[2] for b in v["blocks"]) for v in ours}) > 1:
        raise Refused("the VirtualHosts of this site (%s) have different <Directory %s/...> blocks; Cutover's rules "
                      "mirror one set for all of them" % (", ".join(v["where"] for v in ours), current),
                      hint="give them the same blocks (one file that each of them includes)")
    return main + (ours[0]["blocks"] if ours else [])


WORD = re.compile(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|(\S+)')
SCRIPT_ALIAS = """%(wrappers)s<%(section)s %(url)s>
    <If "-n reqenv('CUTOVER_RELEASE')">
        SetHandler cgi-script
        Options +ExecCGI
    </If>
</%(section)s>%(closing)s"""


def _script_alias(name, args, stack, reader, current):
    """For a ScriptAlias(Match) whose scripts lie in <deploy_to>/current: the same URLs' scripts run
    when pinned. mod_alias makes a file a CGI script while it maps the URL, which a pinned request
    skips; the mirror gives the pinned requests under those URLs (CUTOVER_RELEASE set) the handler,
    and nothing else. The one-argument form inside a <Location> is that Location's."""
    words = [a or b or c for a, b, c in WORD.findall(args)]
    if len(words) == 1 and stack and stack[-1][0] in ("location", "locationmatch"):
        section, opening = stack[-1]
        url, target = opening.split(None, 1)[1].rstrip(">").strip(), words[0]
    elif len(words) == 2:
        section, url, target = ("locationmatch" if name == "scriptaliasmatch" else "location"), '"%s"' % words[0], words[1]
    else:
        return None
    target = reader.expand(target).split("$", 1)[0]
    if not (posixpath.normpath(target) + "/").startswith(current + "/"):
        return None
    wrappers = [t for s, t in stack if s in CONDITIONAL]
    body = SCRIPT_ALIAS % {"wrappers": "".join(w + "\n" for w in wrappers), "url": url,
                           "section": "LocationMatch" if section == "locationmatch" else "Location",
                           "closing": "".join("\n</%s>" % w[1:].split()[0].rstrip(">") for w in reversed(wrappers))}
    return body


def _in_vhost(stack):
    return any(s == "virtualhost" for s, _ in stack)


HEADER = """# The site's own <Directory> blocks for %(current)s/..., written again for
# %(releases)s/*/..., where Cutover's rules map pinned requests: written by `fab setup` from
# %(config)s (rerun setup after changing them; `fab check` says when they differ).
"""


def render(deploy_to, pidfile=None, config=None, rules_path=None):
    """(the text of .cutover/apache-site.conf, the config file read or None)."""
    config, server_root = root_config(pidfile, config)
    head = {"current": deploy_to + "/current", "releases": deploy_to + "/releases", "config": config}
    if config is None:
        return HEADER % dict(head, config="(no Apache configuration found)"), None
    blocks = site_blocks(config, server_root, deploy_to, rules_path)
    body = "".join("%s%s %s\n%s\n" % (MARK, where, first, text) for where, first, text in blocks)
    return HEADER % head + body, config


def _blocks_of(text):
    """{block text: where it came from and its first line} of a rendered apache-site.conf."""
    out = {}
    for chunk in text.split("\n" + MARK)[1:]:
        where, _, block = chunk.partition("\n")
        out[block.strip("\n")] = where
    return out


def drift(installed, fresh):
    """What differs between the installed apache-site.conf and a fresh rendering: one line per block
    (where the site's block is, and its first line), changed, new or gone."""
    old, new = _blocks_of(installed), _blocks_of(fresh)
    added = [where for block, where in new.items() if block not in old]
    removed = [where for block, where in old.items() if block not in new]
    lines = ["block at %s %s since `fab setup`" % (w, "changed" if w in removed else "is new") for w in added]
    return lines + ["block that was at %s is gone since `fab setup`" % w for w in removed if w not in added]


def problems(layout, pidfile=None, config=None):
    """What `fab check` reports of the site's blocks written for pinned requests: [] when
    .cutover/apache-site.conf is what setup would write now."""
    try:
        with open(layout.apache_site) as f:
            installed = f.read()
    except FileNotFoundError:
        return ["%s is missing: rerun `fab setup` (and reload Apache)" % layout.apache_site]
    try:
        fresh, found = render(layout.deploy_to, pidfile, config, layout.apache_conf)
    except Refused as exc:
        return ["%s (%s)" % (exc, exc.hint) if exc.hint else str(exc)]
    if found is None:
        return ["no Apache configuration found (httpd not running?): cannot tell whether the site's "
                "<Directory %s/current/...> blocks changed since `fab setup`" % layout.deploy_to]
    return ["the site's %s; rerun `fab setup` and reload Apache" % line for line in drift(installed, fresh)]
