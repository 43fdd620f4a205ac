"""Pinning changes which file is read, never which configuration applies. Plain Apache is the
oracle: one lab Apache (mod_php, prefork) serves the same site and release twice, on its port with
Cutover's rules and on an oracle port without them (lab/render.py), and every answer must be the
same: status, Content-Type, body and the site's headers. Only Cutover's documented differences
are allowed: its own headers, a never_serve name answered 404, and an asset the live release
lacks served from the release before it (then it must be what plain Apache answered while that
release was live, and a 404 now).

The corpus is generated: RULES (one line per kind of site rule: the rule, the files it is about)
times every file and directory of the release times VARIANTS (one line per way to write a URL),
with MergeSlashes On and Off, with and without `serve: public`. Plain Apache keeps PHP's realpath
cache of the release it saw first, so Apache is restarted after every deploy."""

import hashlib
import http.client
import os
import posixpath
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import lab
from lab.render import render_apache
from tasks.apache import never_serve_pattern
from tasks.schema import BUILTIN

from .conftest import configure, current, start_lab, stop_lab

TXT = "text of {label}\n"
HTML = '<meta name="release" content="{label}"><p>{label}</p>\n'
CSS = "/* {label} */ body {{ color: black; }}\n"
PNG = "PNG of {label}\n"
PHP = '<?php echo "PHP ran in {label}: ", basename(__FILE__), " path-info=", $_SERVER["PATH_INFO"] ?? "-", " charset=", ini_get("default_charset"), "\\n";\n'
FRONT = "RewriteEngine On\nRewriteCond %{{REQUEST_FILENAME}} !-f\nRewriteRule ^ index.php [L]\n"
FRONT_BASE = (
    "RewriteEngine On\nRewriteBase /blog/\nRewriteCond %{{REQUEST_FILENAME}} !-f\nRewriteRule ^ index.php [L]\n"
)
ROUTER = '<?php echo "front controller of {label}: ", $_SERVER["REQUEST_URI"], "\\n";\n'
JS = "// {label}\nconsole.log(1);\n"
CGI = '#!/bin/sh\nprintf "Content-Type: text/plain\\n\\nCGI ran in {label}: %s path-info=%s\\n" "$SCRIPT_NAME" "$PATH_INFO"\n'


def directory(path, *lines, match=False):
    """A <Directory> (or <DirectoryMatch>) block of the site for a path under its document root."""
    section = "DirectoryMatch" if match else "Directory"
    where = f"^@@docroot_re@@/{path}" if match else f"@@docroot@@/{path}"
    body = "".join(f"    {line}\n" for line in lines)
    return f'<{section} "{where}">\n{body}</{section}>'


@dataclass
class Rule:
    """One kind of site rule: its Apache config, the files of the release it is about (path under
    the document root: text with {label}), those only the release before has, and shared files."""

    conf: str
    files: dict
    previous: dict = field(default_factory=dict)
    shared: dict = field(default_factory=dict)


# fmt: off
RULES = [
    Rule(directory("deny", "Require all denied"), {"deny/a.txt": TXT, "deny/a.php": PHP}),
    Rule(directory("static", "php_admin_flag engine off"), {"static/t.php": PHP, "static/s.css": CSS}),
    Rule(directory("dl", "ForceType application/octet-stream", "Header set Content-Disposition attachment"), {"dl/report.html": HTML}),
    Rule(directory("css", "Header set Content-Security-Policy \"default-src 'self'\""), {"css/app.css": CSS}, previous={"css/old.css": CSS, "css/v1/old.css": CSS}),
    Rule(directory("img", '<Files "internal.png">', "    Require all denied", "</Files>"), {"img/ok.png": PNG}, previous={"img/internal.png": PNG, "img/old.png": PNG}),
    Rule('<FilesMatch "\\.(bak|sql)$">\n    Require all denied\n</FilesMatch>', {"dump.sql": TXT, "conf/app.php.bak": TXT}),
    Rule(directory("conf", '<FilesMatch "\\.ini$">', "    Require all denied", "</FilesMatch>"), {"conf/app.ini": TXT, "conf/ok.txt": TXT}),
    Rule('Alias /docs "@@other@@"\n<Directory "@@other@@">\n    Require all granted\n</Directory>', {"docs/x.txt": TXT, "docs/only-release.txt": TXT}, previous={"docs/v2/old.css": CSS, "docs/old.css": CSS}),
    Rule("Redirect /old.html /new.html", {"old.html": HTML, "new.html": HTML}),
    Rule("<Location /loc>\n    Require all denied\n</Location>", {"loc/a.txt": TXT}),
    Rule(directory("txtphp", '<FilesMatch "\\.txt$">', "    SetHandler application/x-httpd-php", "</FilesMatch>"), {"txtphp/run.txt": PHP}),
    Rule(directory("latin", "php_admin_value default_charset ISO-8859-1"), {"latin/p.php": PHP}),
    Rule(directory("idx", "DirectoryIndex start.html"), {"idx/start.html": HTML, "idx/index.html": HTML}),
    Rule(directory("links", "Options None"), {"links/a.txt": TXT, "links/to-deny": "->../deny"}),
    Rule(directory("app", "AllowOverride All"), {"app/.htaccess": FRONT, "app/index.php": ROUTER, "app/real.txt": TXT},
         previous={"app/old.css": CSS}),  # the front controller routes what the live release lacks
    Rule(directory("blog", "AllowOverride All"), {"blog/.htaccess": FRONT_BASE, "blog/index.php": ROUTER}),
    Rule(directory("vendor", "AllowOverride All"), {"vendor/.htaccess": "Require all denied\n", "vendor/lib.php": PHP}),
    Rule(directory("(gen|build)", "Header set X-Generated yes", match=True), {"gen/g.txt": TXT, "gen/g.php": PHP}),
    Rule(directory("uploads", "php_admin_flag engine off"), {}, shared={"uploads/evil.php": PHP, "uploads/photo.png": PNG}),
    Rule('ScriptAlias /cgi-bin/ "@@docroot@@/cgi-bin/"', {"cgi-bin/hello.cgi": CGI}),
    Rule('ScriptAliasMatch "^/jobs/(.+\\.sh)$" "@@docroot@@/jobs/$1"', {"jobs/run.sh": CGI}),
    Rule('<Location "/tools/">\n    ScriptAlias "@@docroot@@/tools/"\n</Location>', {"tools/t.cgi": CGI}),
    Rule('<Location "/one.cgi">\n    ScriptAlias "@@docroot@@/one.cgi"\n</Location>', {"one.cgi": CGI}),
    # the same kind of block spelled in other ways Apache reads: a wildcard for one component (one
    # block for every site of a server), a Define made of another, a regex not naming deploy_to, a
    # doubled slash, an Include of a directory whose files lie in a subdirectory
    Rule(directory("wild", "Header set X-Wild yes").replace("@@docroot@@", "@@docroot_glob@@"), {"wild/a.txt": TXT}),
    Rule('Define CUTOVER_TEST_ROOT "@@docroot@@"\nDefine CUTOVER_TEST_DEFD "${CUTOVER_TEST_ROOT}/defd"\n'
         '<Directory "${CUTOVER_TEST_DEFD}">\n    Header set X-Defined yes\n</Directory>', {"defd/a.txt": TXT}),
    Rule('<DirectoryMatch "/current/(public/)?dm/">\n    Header set X-Unanchored yes\n</DirectoryMatch>', {"dm/a.txt": TXT}),
    Rule(directory("dbl", "Header set X-Doubled yes").replace('"@@docroot@@', '"/@@docroot@@'), {"dbl/a.txt": TXT}),
    Rule('Include "@@included@@/"', {"inc/a.txt": TXT, "inc/sub/b.txt": TXT}),
    # rules by URL, and the site's own rewriting before Cutover's rules
    Rule('<Location "/loctype">\n    ForceType text/plain\n    Header set X-Location yes\n</Location>', {"loctype/page.html": HTML}),
    Rule('<LocationMatch "^/lm/.+\\.css$">\n    Header set X-Location-Match yes\n</LocationMatch>', {"lm/a.css": CSS, "lm/a.txt": TXT}),
    Rule('<If "%{REQUEST_URI} =~ m#^/ifuri/#">\n    Header set X-If yes\n</If>', {"ifuri/a.txt": TXT}),
    Rule('SetEnvIf Request_URI "\\.json$" IS_JSON\nHeader set X-Json yes env=IS_JSON', {"data/x.json": TXT}),
    Rule("RewriteEngine On\nRewriteRule ^/rwl/(.*)$ /rwt/$1 [L]\nRewriteRule ^/rwp/(.*)$ /rwt/$1 [PT]\n"
         "RewriteRule ^/rwe/(.*)$ /rwt/$1 [END]\nRewriteRule ^/rwn/(.*)$ /rwt/$1\n"
         "RewriteRule ^/rwf/(.*)$ @@docroot@@/rwt/$1 [L]\nRewriteRule ^/rwv/ - [E=SITE_VAR:yes]\n"
         'Header set X-Site-Var "%{SITE_VAR}e" env=SITE_VAR',
         {"rwt/a.txt": TXT, "rwl/a.txt": TXT, "rwp/a.txt": TXT, "rwe/a.txt": TXT, "rwn/a.txt": TXT, "rwf/a.txt": TXT,
          "rwv/a.txt": TXT}),
    # handlers, types, indexes, negotiation, authentication per directory
    Rule(directory("types", "AddType text/plain .html", "AddHandler application/x-httpd-php .inc", "AddCharset UTF-8 .txt"),
         {"types/p.html": HTML, "types/i.inc": PHP, "types/t.txt": TXT}),
    Rule(directory("listing", "Options +Indexes"), {"listing/a.txt": TXT}),
    Rule(directory("mv", "Options +MultiViews"), {"mv/page.html": HTML, "mv/page.txt": TXT}),
    Rule(directory("auth", "AuthType Basic", 'AuthName "staff"', 'AuthUserFile "@@other@@/htpasswd"', "Require valid-user"),
         {"auth/a.txt": TXT}),
    Rule(directory("ips", "Require ip 10.9.9.9"), {"ips/a.txt": TXT}),
    Rule(directory("notfound", "ErrorDocument 404 /errors/404.html"), {"notfound/a.txt": TXT, "errors/404.html": HTML}),
    Rule(directory("htphp", "AllowOverride All"), {"htphp/.htaccess": "php_value default_charset ISO-8859-15\nRewriteEngine On\n"
         "RewriteCond %{{REQUEST_FILENAME}} !-f\nRewriteRule ^ index.php [END]\nHeader set X-Htaccess yes\n", "htphp/index.php": PHP}),
    Rule('Alias /into "@@docroot@@/target"\nAliasMatch "^/am/(.+)\\.jpg$" "@@docroot@@/am/$1.png"',
         {"target/a.txt": TXT, "into/a.txt": TXT, "am/x.png": PNG, "am/x.jpg": PNG}),
    # the site's own answer for 503 (Cutover's maintenance page only while maintenance is on)
    Rule("ErrorDocument 503 /errors/503.html\nRedirect 503 /down\n"
         "Header always set Cache-Control max-age=5 \"expr=%{REQUEST_URI} == '/down'\"", {"errors/503.html": HTML}),
    Rule("", {"_next/static/chunks/app.js": JS, "_next/data/page.json": TXT}),
    # names a URL must encode (one with a % in it is never pinned: see the rules)
    Rule("", {"q?mark.txt": TXT, "semi;colon.txt": TXT, "\u00fcml.txt": TXT, "plus+sign.css": CSS, "hash#.txt": TXT,
              "pct%41.txt": TXT, "sp ace/\u00e9.php": PHP}),
    Rule("", {"index.html": HTML, "index.php": PHP, "a b.txt": TXT, "x.php": PHP, ".env": TXT, ".git/config": TXT, "sub/.env.local": TXT, "sub/.htaccess": TXT}),
]
# What lies beside `public/` when the document root is the release's public/ (serve: public).
OUTSIDE = {".env": TXT, "composer.json": TXT, "src/App.php": PHP}
# Ways to write a URL for a path of the release (p starts with "/"): (name, method, URL), and
# requests with headers of their own (name: headers).
VARIANTS = [
    ("as is", "GET", lambda p: p),
    ("POST", "POST", lambda p: p),
    ("HEAD", "HEAD", lambda p: p),
    ("OPTIONS", "OPTIONS", lambda p: p),
    ("range", "GET", lambda p: p),
    ("authorized", "GET", lambda p: p),
    ("HTTP/1.0 without Host", "GET", lambda p: p),
    ("query", "GET", lambda p: p + "?x=1"),
    ("dot segment", "GET", lambda p: "/x/.." + p),
    ("encoded dot segment", "GET", lambda p: "/x/%2e%2e" + p),
    ("double-encoded dot segment", "GET", lambda p: "/css/%252e%252e" + p),
    ("self segment", "GET", lambda p: "/." + p),
    ("doubled slash", "GET", lambda p: "/" + p),
    ("doubled slash after a dot segment", "GET", lambda p: "/x/../" + p),
    ("doubled inner slash", "GET", lambda p: p[:1] + p[1:].replace("/", "//", 1)),
    ("first letter encoded", "GET", lambda p: f"/%{ord(p[1]):02x}{p[2:]}" if len(p) > 1 else p),
    ("first letter double-encoded", "GET", lambda p: f"/%25{ord(p[1]):02x}{p[2:]}" if len(p) > 1 else p),
    ("slash encoded", "GET", lambda p: p[:1] + p[1:].replace("/", "%2f")),
    ("path-info", "GET", lambda p: p + "/extra/info"),
    ("upper case", "GET", lambda p: p.upper()),
    ("%00", "GET", lambda p: p + "%00"),
    ("%00 and an extension", "GET", lambda p: p + "%00.txt"),
    ("trailing slash", "GET", lambda p: p + "/"),
    ("trailing dot segment", "GET", lambda p: p + "/."),
    ("overlong UTF-8 dot segment", "GET", lambda p: "/x/%c0%ae%c0%ae" + p),
    ("slashes encoded around a dot segment", "GET", lambda p: "/x%2f..%2f" + p[1:]),
    (";params", "GET", lambda p: p + ";jsessionid=1"),
    ("trailing dot", "GET", lambda p: p + "."),
    ("dot segments in the query", "GET", lambda p: p + "?../../etc/passwd"),
    ("long path", "GET", lambda p: "/x/.." * 400 + p),
    ("non-ASCII", "GET", lambda p: p + "%C3%A9"),
]
HEADERS = {
    "range": {"Range": "bytes=2-5"},
    "authorized": {"Authorization": "Basic c3RhZmY6cGFzc3dvcmQ="},  # staff:password, the auth/ rule's user
    "HTTP/1.0 without Host": {"HTTP/1.0": ""},  # crawl() sends it so
}
# fmt: on
EXTRA = [
    "/",
    "/nothing.txt",
    "/docs/only-other.txt",
    "/app/some/route",
    "/blog/posts/3",
    "/%2egit/config",
    "/.GIT/config",
    "/_cutover_next/index.html",
    "/down",
]
# Hours old (Apache gives a file changed within the last second a weak ETag), and each release's
# own, as its upload keeps them (build.compare mtime)
MTIME = {"A": time.time() - 7200, "B": time.time() - 3600}
# Among the answers with Cutover's rules: pinned ones, and never pinned (elsewhere, denied, shared)
PINNED = {"/", "/index.html", "/static/t.php", "/dl/report.html", "/css/app.css", "/txtphp/run.txt", "/latin/p.php",
          "/gen/g.txt", "/x.php/extra/info", "/app/some/route", "/blog/posts/3", "/links/a.txt", "/idx/",
          "/cgi-bin/hello.cgi", "/jobs/run.sh", "/one.cgi", "/cgi-bin/hello.cgi/extra/info", "/index.php/extra/info"}  # fmt: skip
NOT_PINNED = {"/one.cgi/extra/info", "/docs/x.txt", "/old.html", "/uploads/evil.php", "/x/..//uploads/evil.php", "//uploads/evil.php",
              "/deny/a.txt", "/img/internal.png", "/conf/app.ini", "/vendor/lib.php", "/loc/a.txt", "/.env"}  # fmt: skip
# Not compared: the time, the connection's, Cutover's own, and the framing (a CGI script's output is
# sent with a length or chunked as its pipe happens to deliver it; the bodies are compared)
HIDDEN_HEADERS = {"date", "connection", "keep-alive", "x-cutover-release", "x-cutover-fallback", "content-length",
                  "transfer-encoding"}  # fmt: skip
NEVER_SERVE = re.compile(never_serve_pattern(BUILTIN["never_serve"]), re.I)


# Files of the directory that a rule Includes (@@included@@)
INCLUDED = {
    "inc.conf": directory("inc", "Header set X-Included yes"),
    "more/sub.conf": directory("inc/sub", "Header set X-Included-Below yes"),
}


def site_conf(deploy_to, serve, other, included):
    """The site's own Apache config: every rule of RULES, for the document root of `serve`; an
    Alias's target is the directory other; the directory included holds INCLUDED."""
    docroot = f"{deploy_to}/current" + (f"/{serve}" if serve else "")
    site = Path(deploy_to)
    values = {"@@docroot_re@@": re.escape(docroot), "@@docroot_glob@@": docroot.replace(f"/{site.parent.name}/", "/lab*/", 1),
              "@@docroot@@": docroot, "@@other@@": str(other), "@@included@@": str(included)}  # fmt: skip

    def fill(text):
        for key, value in values.items():
            text = text.replace(key, value)
        return text

    for rel, text in INCLUDED.items():
        (included / rel).parent.mkdir(parents=True, exist_ok=True)
        (included / rel).write_text(fill(text) + "\n")
    return fill("\n".join(rule.conf for rule in RULES if rule.conf))


def write_release(parent, label, serve, previous):
    """A build of every rule's files (and, for the release before, those only it has)."""
    build = Path(parent) / f"build-{label}"
    root = build / serve if serve else build
    files = {}
    for rule in RULES:
        files.update(rule.files)
        files.update(rule.shared)
        if previous:
            files.update(rule.previous)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if text.startswith("->"):
            path.symlink_to(text[2:])
        else:
            path.write_text(text.format(label=label))
            if text.startswith("#!"):
                path.chmod(0o755)  # a CGI script
            os.utime(path, (MTIME[label],) * 2)
    for rel, text in OUTSIDE.items() if serve else ():
        (build / rel).parent.mkdir(parents=True, exist_ok=True)
        (build / rel).write_text(text.format(label=label))
    return build


def paths_of(build, serve):
    """Every file and directory of the build as a URL path, those beside the document root too."""
    root = build / serve if serve else build
    found = {"/" + str(p.relative_to(root)) for p in root.rglob("*")}
    if serve:
        found |= {"/" + str(p.relative_to(build)) for p in build.rglob("*") if not p.is_relative_to(root)}
    for rule in RULES:
        found |= {"/" + rel for rel in rule.previous}
    return sorted(found)


def urls_of(paths):
    """(variant, method, URL) for every path and every variant, and the extra URLs."""
    out = [(name, method, make(urllib.parse.quote(p))) for p in paths for name, method, make in VARIANTS]
    return out + [("extra", "GET", url) for url in EXTRA]


def key_of(variant, method, url):
    """Where an answer is kept: the request's method, URL and headers."""
    return method, url, tuple(sorted(HEADERS.get(variant, {}).items()))


def request(conn, variant, method, url):
    """Send one request of the corpus on conn; its answer."""
    headers = dict(HEADERS.get(variant, {}))
    if headers.pop("HTTP/1.0", None) is not None:  # no Host header: the port's first VirtualHost answers
        conn._http_vsn_str = "HTTP/1.0"  # http.client speaks HTTP/1.1 only: its request line, just this once
        try:
            conn.putrequest(method, url, skip_host=True, skip_accept_encoding=True)
            conn.endheaders()
        finally:
            conn._http_vsn_str = "HTTP/1.1"
    else:
        conn.request(method, url, body=b"x=1" if method == "POST" else None, headers=headers)
    return conn.getresponse()


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: tuple
    fallback: bool
    pinned: bool = False

    def __str__(self):
        digest = hashlib.sha256(self.body).hexdigest()[:8]
        shown = self.body[:70].decode("utf-8", "replace").replace("\n", "\\n")
        return f"{self.status} {self.content_type or '-'} {dict(self.headers)} body {digest} {shown!r}"

    def same(self, other):
        return (self.status, self.content_type, self.body, self.headers) == (
            other.status,
            other.content_type,
            other.body,
            other.headers,
        )


def crawl(port, urls):
    """Every URL's answer from the Apache on port, ports in answers written as PORT."""
    answers = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for variant, method, url in urls:
            for attempt in (1, 2):  # a kept-alive connection the server closed: once more on a new one
                try:
                    r = request(conn, variant, method, url)
                    body = r.read()
                    break
                except (http.client.HTTPException, ConnectionError):
                    conn.close()
                    if attempt == 2:
                        raise
            own = str(port).encode()
            body = body.replace(b":" + own, b":PORT")
            headers = tuple(
                sorted(
                    (
                        k.lower(),
                        ",".join(sorted(v.split(","))) if k.lower() == "allow" else v.replace(f":{port}", ":PORT"),
                    )
                    for k, v in r.getheaders()
                    if k.lower() not in HIDDEN_HEADERS
                )
            )  # (Apache lists the methods of Allow in no fixed order)
            answers[key_of(variant, method, url)] = Answer(r.status, r.getheader("Content-Type"), body, headers,
                                            bool(r.getheader("X-Cutover-Fallback")), bool(r.getheader("X-Cutover-Release")))  # fmt: skip
            if r.getheader("Connection", "").lower() == "close" or r.version == 10:
                conn.close()
    finally:
        conn.close()
    return answers


def never_served(url):
    """Whether Cutover's never_serve rule (a 404) covers the path Apache decodes from url."""
    path = posixpath.normpath(urllib.parse.unquote(url.split("?", 1)[0]))
    return bool(NEVER_SERVE.search(path))


def differences(urls, ours, plain, before):
    """One line per URL whose answer with Cutover's rules is not plain Apache's."""
    out = []
    for variant, method, url in urls:
        key = key_of(variant, method, url)
        o, p = ours[key], plain[key]
        if o.fallback:  # an asset the live release lacks, from the release before
            if o.same(p) or ((p.status == 404 or method == "OPTIONS") and o.same(before[key])):  # OPTIONS needs no file
                continue
            out.append(f"{method} {url} ({variant}): with Cutover's rules (fallback) {o}; plain Apache {p}; "
                       f"plain Apache with the release before live {before[key]}")  # fmt: skip
        elif o.same(p) or (o.status == 404 and never_served(url)):
            continue
        else:
            out.append(f"{method} {url} ({variant}): with Cutover's rules {o}; plain Apache {p}")
    return out


@pytest.fixture(scope="module", params=["", "public"])
def oracle_lab(request):
    """A lab Apache with mod_php serving the site on two ports, with and without Cutover's rules;
    the document root is the release (serve: none) or its public/ (serve: public)."""
    serve = request.param
    handle, root = start_lab(1, php="mod_php", oracle=True, **({"serve": serve} if serve else {}))
    handle.serve = serve
    yield handle
    stop_lab(handle, root)


def deploy(handle, build, serve):
    """Deploy build (its front page says its label) and restart Apache (plain Apache's PHP caches)."""
    root = f"{serve}/" if serve else ""
    settings = {"serve": serve} if serve else {}
    configure(
        handle,
        build,
        shared=[f"{root}uploads"],
        required=[f"{root}index.html"],
        smoke={"commands": []},
        build_compare="mtime",
        **settings,
    )  # fmt: skip  (mtime: the build's mtimes are kept, MTIME)
    result = handle.fab("deploy")
    assert result.returncode == 0, result.stdout + result.stderr
    return current(handle.servers[0])


# (MergeSlashes, AllowEncodedSlashes): Apache's defaults; slashes kept, as APIs want them; and each
# of the two ways a site lets %2F through (decoded after Apache removed the dot segments, or kept)
MODES = [("On", "Off"), ("Off", "Off"), ("Off", "On"), ("On", "NoDecode")]


def restart(handle, mode, site):
    """Apache with the site's config and MergeSlashes and AllowEncodedSlashes as mode says, restarted."""
    server = handle.servers[0]
    server.merge_slashes, encoded_slashes = mode
    server.site_conf = f"AllowEncodedSlashes {encoded_slashes}\n{site}"
    render_apache(handle.lab, server)
    lab.graceful_restart(server)


def test_cutovers_rules_answer_as_plain_apache(oracle_lab, tmp_path):
    server, serve = oracle_lab.servers[0], oracle_lab.serve
    other = Path(server.deploy_to).parent / "other"
    other.mkdir(exist_ok=True)
    for name in ("x.txt", "only-other.txt"):
        (other / name).write_text(f"the alias target's {name}\n")
    (other / "htpasswd").write_text("staff:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")  # staff:password
    site = site_conf(server.deploy_to, serve, other, Path(server.deploy_to).parent / "included")
    server.site_conf = site
    before_build = write_release(tmp_path, "A", serve, previous=True)
    live_build = write_release(tmp_path, "B", serve, previous=False)
    urls = urls_of(paths_of(before_build, serve))
    deploy(oracle_lab, before_build, serve)
    before = {}
    for mode in MODES:
        restart(oracle_lab, mode, site)
        before[mode] = crawl(server.oracle_port, urls)
    release_id = deploy(oracle_lab, live_build, serve)
    found = []
    for mode in MODES:
        restart(oracle_lab, mode, site)
        ours, plain = crawl(server.http_port, urls), crawl(server.oracle_port, urls)
        assert plain[("GET", "/", ())].body.count(b"B") and ours[("GET", "/", ())].status == 200
        # the variants with headers of their own ask what they mean to
        sent = {name: key_of(name, "GET", "/auth/a.txt")[2] for name in HEADERS}
        assert [ours[("GET", "/auth/a.txt", sent[n])].status for n in ("authorized", "range", "HTTP/1.0 without Host")] == [
            200, 401, 401]  # fmt: skip
        assert [ours[("GET", "/index.html", sent[n])].status for n in ("range", "HTTP/1.0 without Host")] == [206, 200]
        said = f"MergeSlashes {mode[0]}, AllowEncodedSlashes {mode[1]}"
        found += [f"{said}: {line}" for line in differences(urls, ours, plain, before[mode])]
        # the rules pin what they can (or this test would prove nothing), never what they must not
        pinned = {
            url for (method, url, sent), answer in ours.items() if answer.pinned and (method, sent) == ("GET", ())
        }
        fallback = {
            url for (method, url, sent), answer in ours.items() if answer.fallback and (method, sent) == ("GET", ())
        }
        assert PINNED <= pinned, (mode, PINNED - pinned)
        assert NOT_PINNED & pinned == set(), mode
        assert {"/css/old.css", "/img/old.png", "/css/v1/old.css"} <= fallback, mode
        assert {urllib.parse.unquote(url.split("?")[0]).rsplit("/", 1)[-1] for url in fallback} == {
            "old.css",
            "old.png",
        }, (mode, sorted(fallback))
    assert current(server) == release_id
    assert found == [], f"{len(found)} of {len(urls) * len(MODES)} answers differ:\n" + "\n".join(found)
    # in maintenance mode a visitor gets Cutover's page, also where the site answers 503 itself
    on = oracle_lab.fab("maintenance-on", "--message", "back soon", "--retry-after", "30")
    assert on.returncode == 0, on.stderr
    try:
        for path in ("/", "/down"):
            status, headers, body = visit(server.http_port, path, "127.0.0.2")
            assert (status, headers.get("Retry-After"), headers.get("Cache-Control")) == (503, "30", "no-store")
            assert b"back soon" in body
        assert visit(server.http_port, "/", "127.0.0.1")[0] == 200  # maintenance.allow
    finally:
        assert oracle_lab.fab("maintenance-off").returncode == 0


def visit(port, path, source):
    """(status, headers, body) of GET path from the source address."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()
