"""Cutover's Apache rules for one host: maintenance mode, never-served paths, release pinning.

Rendered from templates/apache.conf and the host's settings; `fab setup` writes the result to
<deploy_to>/.cutover/apache.conf and the lab servers include the same text. Every value put
into the rules was held to a narrow pattern by hostsfile.py, and is regex-escaped where Apache
reads it as a regular expression.
"""

import re
from pathlib import Path

from .remote.paths import RELEASE_ID

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "apache.conf"
# Where the incoming release answers smoke.url while a deploy tests it; never /_next, which
# Next.js sites use for their own scripts and data.
PREVIEW = "/_cutover_next"


def _glob(name):
    """A never_serve name as a regex for one URL path component (`*` = any characters)."""
    return "[^/]*".join(re.escape(part) for part in name.split("*"))


def never_serve_pattern(names):
    """The regex matching any URL path with a component named in never_serve."""
    return f"(^|/)({'|'.join(_glob(n) for n in names)})(/|$)"


def document_root(host):
    """The DocumentRoot the site's VirtualHost must name: current, or its `serve` folder."""
    return f"{host.deploy_to}/current/{host.serve}" if host.serve else f"{host.deploy_to}/current"


FALLBACK = """#    (d) a static asset the live release lacks, from the release live before it ({key}): a page
#        served just before the switch still gets its own stylesheets, scripts and images.
#        Only these extensions (assets.fallback), never a page or a script; and only when the
#        normal mapping allows the asset's own URL and maps it to current/ as in (b) (to its
#        name, or to a directory of that name the live release lacks: the rest is path info).
RewriteCond %{{REQUEST_URI}} !^/_cutover_(maintenance|next)(/|$)
RewriteCond $1 !%
{shared}
RewriteCond ${{cutover_release:current|-}} ^({release_id})$
RewriteCond "{deploy_to}/releases/%1{serve}/$1" !-f
RewriteCond ${{cutover_release:{key}|-}} ^({release_id})$
RewriteCond "{deploy_to}/releases/%1{serve}/$1" -f
RewriteCond ${{cutover_escape:/$1}} -U
RewriteCond "%1|$1|%{{LA-U:REQUEST_FILENAME}}" "^([^|]+)\\|(([^|]*?)(/[^|]*)?)\\|{current_pattern}/\\3$"
RewriteRule "^/?((.*/)?[^/]+\\.({extensions}))$" "{deploy_to}/releases/%1{serve}/$1" [L,NC,E=CUTOVER_RELEASE:%1,E=CUTOVER_FALLBACK:{key}]"""


def current_pattern(host):
    """The document root through `current` as a regex: what the normal mapping of a pinnable URL gives."""
    return re.escape(document_root(host))


def fallback_rules(host, shared, serve):
    """The asset fallback rules, one block per earlier release kept reachable; "" when off."""
    if not host.assets.fallback:
        return ""
    keys = ["previous"] + [f"previous{i}" for i in range(2, host.assets.releases + 1)]
    extensions = "|".join(re.escape(e) for e in host.assets.fallback)
    release_id = RELEASE_ID.pattern.removeprefix("^").removesuffix("$")
    values = {"shared": shared, "release_id": release_id, "deploy_to": host.deploy_to, "serve": serve,
              "extensions": extensions, "current_pattern": current_pattern(host)}  # fmt: skip
    return "\n".join(FALLBACK.format(key=key, **values) for key in keys)


def snippet(host):
    """Cutover's Apache rules for `host` (a hostsfile.Host)."""
    m = host.maintenance
    exceptions = []
    if m.health_path:
        exceptions.append(f"RewriteCond %{{REQUEST_URI}} !^{re.escape(m.health_path)}$")
    for address in m.allow:
        exceptions.append(f"RewriteCond expr \"! -R '{address}'\"")
    served = host.served_shared
    shared = f"RewriteCond $1 !^({'|'.join(re.escape(e) for e in served)})(/|$)" if served else ""
    serve = f"/{host.serve}" if host.serve else ""
    values = {
        "exceptions": "\n".join(exceptions),
        "next_allow": f"        Require ip {' '.join(m.allow)}" if m.allow else "",
        "maintenance": f"{host.deploy_to}/maintenance",
        "never_serve": f'RewriteRule "{never_serve_pattern(host.never_serve)}" - [NC,R=404]'
        if host.never_serve
        else "",
        "releases_pattern": re.escape(f"{host.deploy_to}/releases"),
        "serve_pattern": re.escape(serve),
        "shared_exceptions": shared,
        "fallback": fallback_rules(host, shared, serve),
        "release_id": RELEASE_ID.pattern.removeprefix("^").removesuffix("$"),
        "serve": serve,
        "current": document_root(host),
        "current_pattern": current_pattern(host),
        "document_root": document_root(host),
        "deploy_to": host.deploy_to,
        "preview": PREVIEW,
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    return text


def site_blocks_line(host, answer):
    """What setup says of the site's <Directory current/...> blocks it wrote for the pinned paths."""
    current = f"{host.deploy_to}/current"
    if answer.get("site_config") is None:
        return (f"no Apache configuration found: the site's <Directory {current}/...> blocks are not written "
                "for pinned requests; start Apache and rerun setup")  # fmt: skip
    return f"the site's <Directory {current}/...> blocks: {answer['mirrored']} written for pinned requests, from {answer['site_config']}"
