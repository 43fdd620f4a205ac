"""The lab's configuration files: each server's httpd.conf and sshd_config, its site's first
layout (what `fab setup` makes, run locally), and the lab's hosts.yaml."""

from pathlib import Path

import yaml

from tasks import apache, hostsfile
from tasks.agent import LocalAgent
from tasks.config import Maintenance
from tasks.errors import CutoverError
from tasks.schema import BUILTIN

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def render(template, path, **values):
    """Write templates/lab/<template> to path with @@key@@ replaced by values."""
    text = (TEMPLATES / "lab" / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", str(value))
    Path(path).write_text(text)


# The lab's maintenance settings: the defaults, plus a health path for the tests.
LAB_MAINTENANCE = Maintenance(
    **{**BUILTIN["maintenance"], "allow": tuple(BUILTIN["maintenance"]["allow"]), "health_path": "/health.txt"}
)
PHP_MODES = (None, "mod_php", "fpm")


def program(pattern):
    """The newest installed program or module matching a glob (php-fpm8.2, libphp8.2.so ...)."""
    found = sorted(Path("/").glob(pattern.lstrip("/")))
    if not found:
        raise CutoverError(f"lab: nothing matches {pattern}; apt-get install libapache2-mod-php php-fpm")
    return str(found[-1])


def php_conf(server):
    """The Apache lines that hand .php files to PHP: mod_php in the prefork MPM, or php-fpm over FastCGI."""
    if server.php == "mod_php":
        return (
            f"LoadModule php_module {program('/usr/lib/apache2/modules/libphp*.so')}\n"
            '<FilesMatch ".+\\.ph(?:ar|p|tml)$">\n    SetHandler application/x-httpd-php\n</FilesMatch>'
        )
    if server.php == "fpm":
        return (
            "LoadModule proxy_module /usr/lib/apache2/modules/mod_proxy.so\n"
            "LoadModule proxy_fcgi_module /usr/lib/apache2/modules/mod_proxy_fcgi.so\n"
            '<FilesMatch ".+\\.ph(?:ar|p|tml)$">\n'
            f'    SetHandler "proxy:unix:{server.root}/php/fpm.sock|fcgi://localhost"\n</FilesMatch>'
        )
    return ""


APACHE_LISTEN_BACKLOG = 511  # Apache's own default


def prefork_conf(workers):
    """The prefork MPM's pool: 4 to 16 children, or a fixed pool of `workers` (the pause bench)."""
    if not workers:
        pool = {
            "StartServers": 4,
            "MinSpareServers": 2,
            "MaxSpareServers": 8,
            "ServerLimit": 16,
            "MaxRequestWorkers": 16,
        }
    else:
        pool = dict.fromkeys(("StartServers", "MinSpareServers", "MaxSpareServers", "ServerLimit", "MaxRequestWorkers"),
                             workers)  # fmt: skip
    return "\n".join(f"    {key} {value}" for key, value in pool.items())


def render_apache(lab, server):
    """Write the server's httpd.conf and its site's VirtualHost (site.conf), then Cutover's rules as
    `fab setup` does (its layout, placeholder release, .cutover/apache.conf and the site's blocks in
    .cutover/apache-site.conf, made by the same server-side code run locally, which reads the site's
    configuration); True if any of these files changed."""
    host = hostsfile.load(lab.hosts_file).resolve(server.name)[0]
    rules = Path(server.deploy_to, ".cutover", "apache.conf")
    conf, site = Path(server.httpd_conf), Path(server.site_conf_file)
    written = (rules, rules.with_name("apache-site.conf"), conf, site)
    before = [p.read_text() if p.exists() else None for p in written]
    render(
        "httpd.conf",
        conf,
        root=Path(server.root, "apache"),
        name=server.name,
        address=server.address,
        http_port=server.http_port,
        pidfile=server.pidfile,
        mpm=server.mpm,
        php=php_conf(server),
        prefork=prefork_conf(server.workers),
        listen_backlog=server.listen_backlog or APACHE_LISTEN_BACKLOG,
    )
    site.write_text(site_text(server, host))
    LocalAgent().call("setup", {"deploy_to": server.deploy_to, "rules": apache.snippet(host), "serve": host.serve,
                                "apache_config": str(conf)})  # fmt: skip
    return before != [p.read_text() for p in written]


CUTOVER_RULES = """    # Cutover's rules, written by `fab setup` (the lab runs the same code) from this host's settings.
    Include "{rules}"
"""
ORACLE = """
# The same site without Cutover's rules: plain Apache, what tests/test_apache_differential.py
# compares with.
Listen {address}:{port}
"""


def site_text(server, host):
    """The site's VirtualHost (templates/lab/site.conf) with Cutover's rules; and with an oracle
    port, the same VirtualHost again there, without them."""
    own = server.site_conf.replace("@@deploy_to@@", server.deploy_to)
    template = (TEMPLATES / "lab" / "site.conf").read_text()

    def vhost(port, rules):
        values = {
            "name": server.name,
            "http_port": port,
            "deploy_to": server.deploy_to,
            "document_root": apache.document_root(host),
            "allow_override": server.allow_override,
            "merge_slashes": server.merge_slashes,
            "site_conf": "\n".join("    " + line if line.strip() else "" for line in own.splitlines()),
            "cutover_rules": rules,
        }
        text = template
        for key, value in values.items():
            text = text.replace(f"@@{key}@@", str(value))
        return text

    text = vhost(server.http_port, CUTOVER_RULES.format(rules=f"{server.deploy_to}/.cutover/apache.conf"))
    if server.oracle_port:
        text += ORACLE.format(address=server.address, port=server.oracle_port)
        text += vhost(server.oracle_port, "    # (no Cutover rules)\n")
    return text


def write_hosts_file(lab, build=None, build_compare="checksum", required=("index.html",), **overrides):
    """Write the lab's hosts.yaml: group `sandbox` with every server, settings per host."""
    build = build or str(TEMPLATES.parent / "example" / "site")
    hosts = []
    for s in lab.servers:
        hosts.append(
            {
                "name": s.name,
                "host": s.address,
                "port": s.ssh_port,
                "deploy_to": s.deploy_to,
                "httpd": {"pidfile": s.pidfile},
                "health": {"url": s.url},
            }
        )
    data = {
        "defaults": {
            "user": "root",
            "python": "/usr/bin/python3",  # the server's own python, as on a fresh Debian server
            "key": str(lab.key),
            "known_hosts": str(lab.known_hosts),
            "ssh_config": "none",  # the lab's settings alone, whatever ~/.ssh/config says
            "build": {"path": build, "required": list(required), "compare": build_compare},
            "keep_releases": 5,
            "shared": ["media"],
            "smoke": {"commands": ["test -s index.html"]},
            "health": {"expect_status": 200, "expect_text": 'name="release"'},
            "maintenance": {"health_path": LAB_MAINTENANCE.health_path},
            **overrides,
        },
        "groups": {"sandbox": hosts},
        "default_group": "sandbox",
    }
    lab.hosts_file.write_text(
        "# Written by the Cutover lab for its own servers.\n" + yaml.safe_dump(data, sort_keys=False)
    )
    return lab.hosts_file
