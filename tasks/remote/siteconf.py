"""The site's own Apache configuration, as far as release pinning needs it.

Apache matches <Directory> against the path a request is mapped to. The site's blocks for
<deploy_to>/current/... hold for the requests mapped through `current`; a request pinned to
releases/<id>/... would lose every directive in them (handlers, php_admin_*, ForceType, Header,
Options, AllowOverride, Require ...). So `fab setup` writes each such block again for
<deploy_to>/releases/*/... (a wildcard matches one path component), and for <deploy_to>/next/...
(the release the smoke URL's preview serves), inside the same conditional sections, into
.cutover/apache-site.conf, which Cutover's rules include; `fab check` renders it
again and names any block that changed since.

The blocks come from the files the running httpd was started with (apacheconf.py reads them as
httpd does); only the server config and the VirtualHosts of this site (DocumentRoot under
<deploy_to>/current, or an Include of Cutover's rules) count, and Cutover's own files not. A
block is about current whatever its spelling: Apache's wildcards, ${NAME}, a regex that names
`current` without deploy_to. A block for <deploy_to>/releases/... is refused: it would hold for
pinned requests only. A ScriptAlias into current gets a <Location> of its own (_script_alias).
Standard library only; this file runs on the server.
"""

import fnmatch
import posixpath
import re

from .apacheconf import WELL_KNOWN, Reader, httpd_environ, root_config, unquote  # noqa: F401 (WELL_KNOWN: its users')
from .protocol import Refused

CONDITIONAL = ("ifmodule", "ifdefine", "ifversion", "iffile", "ifdirective", "ifsection")
MARK = "# mirrors "  # the line before each mirrored block: where the site's own block is


def _current_regex(deploy_to):
    """A regex matching <deploy_to>/current as written in a regular expression (`/` and `.` escaped or not)."""
    return "".join("\\\\?" + re.escape(c) if c in "/.-" else re.escape(c) for c in deploy_to + "/current")


RELEASES = ("releases/*", "releases/[^/]+")  # what takes `current`'s place: in a path, in a regex
NEXT = ("next", "next")  # the release a deploy tests, which the smoke URL's preview serves


def _mirrored_path(section, args, reader, deploy_to, into=RELEASES):
    """The argument of a mirror of this <Directory>/<DirectoryMatch> for releases/*/... (or next/...), or None
    when the block is not about <deploy_to>/current."""
    current = deploy_to + "/current"
    regex = section == "directorymatch" or args.startswith("~")
    arg = unquote(args[1:] if section == "directory" and regex else args)
    expanded = reader.expand(arg)
    if not regex:
        rest = _below(expanded, current)
        return None if rest is None else '"%s"' % (deploy_to + "/" + into[0] + rest)
    found = re.search(_current_regex(deploy_to), expanded)
    if found:
        mirrored = expanded[: found.start()] + re.escape(deploy_to) + "/" + into[1] + expanded[found.end():]
    else:  # a regex naming no deploy_to (/current/uploads/, ^/var/www/[^/]+/current/): its `current` component
        found = CURRENT_COMPONENT.search(expanded)
        if not found:
            return None
        mirrored = expanded[: found.start(1)] + into[1] + expanded[found.end(1):]
    return ('~ "%s"' if section == "directory" else '"%s"') % mirrored


CURRENT_COMPONENT = re.compile(r"(?:/|\\/)(current)(?=/|\\/|\$|\)|\||$)")


def _about_releases(section, args, reader, deploy_to):
    """Whether a <Directory> path names <deploy_to>/releases or below (and not current the same way)."""
    if section == "directorymatch" or args.startswith("~"):
        arg = reader.expand(unquote(args[1:] if section == "directory" else args))
        return bool(re.search(_current_regex(deploy_to)[: -len("current")] + "releases", arg))
    parts, top = _components(reader.expand(unquote(args))), _components(deploy_to)
    return (len(parts) > len(top) and all(fnmatch.fnmatchcase(w, p) for w, p in zip(top, parts))
            and fnmatch.fnmatchcase("releases", parts[len(top)]) and not fnmatch.fnmatchcase("current", parts[len(top)]))


def _components(path):
    """A <Directory> path's components as Apache makes it canonical (doubled slashes and dot segments gone)."""
    return [c for c in posixpath.normpath("/" + path.lstrip("/")).split("/") if c]


def _below(pattern, path):
    """What a <Directory> path (Apache's wildcards * ? [..] within a component) has below `path`
    ("" or "/..."), when it names path or a directory in it; None otherwise, and for a wildcard
    that names path's parent's every entry (releases/ too: it applies to pinned requests already)."""
    parts, wanted = _components(pattern), _components(path)
    if len(parts) < len(wanted) or not all(fnmatch.fnmatchcase(w, p) for w, p in zip(wanted, parts)):
        return None
    if len(parts) == len(wanted) and fnmatch.fnmatchcase("releases", parts[-1]):
        return None
    return "".join("/" + p for p in parts[len(wanted):])


def site_blocks(config, server_root, deploy_to, rules_path, environ=None):
    """The site's blocks for <deploy_to>/current/...: [(where, the block's first line, its
    mirror)], those of the server config first, then those of the site's VirtualHosts (which
    must all have the same)."""
    reader = Reader(server_root, environ, skip=deploy_to + "/.cutover")
    stack, main, vhosts, capture = [], [], [], None
    current = deploy_to + "/current"
    releases = {None: []}  # blocks for releases/... (those of the server config, of each VirtualHost)
    server = {"root": None}  # the server config's DocumentRoot, which a VirtualHost without one has
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
                vhosts.append({"where": "%s:%d" % (path, number), "blocks": [], "ours": False, "releases": [],
                               "rules": False, "root": None})
            elif capture is None and section in ("directory", "directorymatch"):
                if _about_releases(section, args, reader, deploy_to):
                    (vhosts[-1]["releases"] if _in_vhost(stack) else releases[None]).append("%s:%d %s" % (path, number, text))
                mirrored = _mirrored_path(section, args, reader, deploy_to)
                if mirrored:
                    wrappers = [t for s, t in stack[:-1] if s in CONDITIONAL]
                    indent = "    " * len(wrappers)
                    preview = _mirrored_path(section, args, reader, deploy_to, NEXT)
                    capture = {"depth": len(stack), "where": "%s:%d" % (path, number), "first": text,
                               "wrappers": wrappers, "lines": [indent + "<%s %s>" % (opening.group(1), mirrored)],
                               "preview": indent + "<%s %s>" % (opening.group(1), preview)}
        elif closing:
            if capture is not None and len(stack) == capture["depth"]:
                wrappers = capture["wrappers"]
                lines = ["    " * i + w for i, w in enumerate(wrappers)] + capture["lines"]
                lines += ["    " * i + "</%s>" % w[1:].split()[0].rstrip(">") for i, w in reversed(list(enumerate(wrappers)))]
                preview = list(lines)  # the same for next/...: the smoke URL's preview
                preview[len(wrappers)] = capture["preview"]
                block = (capture["where"], capture["first"], "\n".join(lines + preview))
                (vhosts[-1]["blocks"] if _in_vhost(stack) else main).append(block)
                capture = None
            if stack:
                stack.pop()
        elif capture is None:
            words = text.split(None, 1)
            name, args = words[0].lower(), unquote(reader.expand(words[1])) if len(words) > 1 else ""
            if name in ("scriptalias", "scriptaliasmatch"):
                block = _script_alias(name, words[1] if len(words) > 1 else "", stack, reader, current)
                if block:
                    block = ("%s:%d" % (path, number), text, block)
                    (vhosts[-1]["blocks"] if _in_vhost(stack) else main).append(block)
            elif name == "documentroot":
                (vhosts[-1] if _in_vhost(stack) else server)["root"] = args.rstrip("/") or "/"
            elif _in_vhost(stack) and name in ("include", "includeoptional") and args == rules_path:
                vhosts[-1]["rules"] = True
    if reader.seen == 0:
        raise Refused("Apache configuration %s holds no directive" % config)
    for v in vhosts:
        root = v["root"] or server["root"] or ""
        v["ours"] = v["rules"] or root == current or root.startswith(current + "/")
        if v["rules"] and not (root == current or root.startswith(current + "/")):
            raise Refused("the VirtualHost at %s includes Cutover's rules, but its DocumentRoot %s is not %s or a "
                          "folder in it: none of its requests would be pinned" % (v["where"], root or "(none)", current),
                          hint="write DocumentRoot %s[/<serve>] as deploy_to spells it (not through a symlink)" % current)
    ours = [v for v in vhosts if v["ours"]]
    found = releases[None] + [b for v in ours for b in v["releases"]]
    if found:
        raise Refused("the site's configuration has blocks for %s/releases/..., which apply to every pinned request "
                      "and to none through current: %s" % (deploy_to, "; ".join(found)),
                      hint="write them for %s (or for %s, both)" % (current, deploy_to))
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
    blocks = site_blocks(config, server_root, deploy_to, rules_path, httpd_environ(pidfile, config))
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
