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

SITE = """{site_conf}

# Cutover's rules, written by `fab setup` (the lab runs the same code) from this host's settings.
Include "{rules}"
"""
# With an oracle port: the same site twice, with Cutover's rules on the server's port and without
# them on the oracle's (plain Apache, what tests/test_apache_differential.py compares with).
SITE_AND_ORACLE = """Listen {address}:{oracle_port}
<VirtualHost {address}:{http_port}>
{site_conf}

# Cutover's rules, written by `fab setup` (the lab runs the same code) from this host's settings.
Include "{rules}"
</VirtualHost>
# The same site without Cutover's rules.
<VirtualHost {address}:{oracle_port}>
{site_conf}
</VirtualHost>
"""


def site(server, rules):
    """The site's part of httpd.conf: its own rules and Cutover's, and the oracle's VirtualHost if asked for."""
    site_conf = server.site_conf.replace("@@deploy_to@@", server.deploy_to)
    template = SITE_AND_ORACLE if server.oracle_port else SITE
    return template.format(site_conf=site_conf, rules=rules, address=server.address, http_port=server.http_port,
                           oracle_port=server.oracle_port)  # fmt: skip


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
    """Write the server's httpd.conf, then Cutover's rules as `fab setup` does (its layout,
    placeholder release, .cutover/apache.conf and the site's blocks in .cutover/apache-site.conf,
    made by the same server-side code run locally); True if any of the files changed."""
    host = hostsfile.load(lab.hosts_file).resolve(server.name)[0]
    rules = Path(server.deploy_to, ".cutover", "apache.conf")
    conf = Path(server.httpd_conf)
    written = (rules, rules.with_name("apache-site.conf"), conf)
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
        deploy_to=server.deploy_to,
        document_root=apache.document_root(host),
        php=php_conf(server),
        merge_slashes=server.merge_slashes,
        site=site(server, rules),
        prefork=prefork_conf(server.workers),
        listen_backlog=server.listen_backlog or APACHE_LISTEN_BACKLOG,
    )
    LocalAgent().call("setup", {"deploy_to": server.deploy_to, "rules": apache.snippet(host), "serve": host.serve,
                                "apache_config": str(conf)})  # fmt: skip
    return before != [p.read_text() for p in written]


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
