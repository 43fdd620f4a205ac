"""`fab sandbox-up --php mod_php|fpm`: a sandbox whose Apache runs a PHP application's .htaccess files
as a server configured as README.md says would, its VirtualHost in a file it names; and the restart
README.md gives for a module added by hand."""

import gzip
import http.client
import os
import subprocess
from pathlib import Path

import pytest
import yaml

import lab
from lab.render import program
from lab.servers import free_ports
from tasks import sandbox

from .conftest import LabHandle, configure, new_lab_dir, process_gone
from .test_murphy import poll

# What real applications' .htaccess files use: Allow/Deny/Satisfy (mod_access_compat, MediaWiki's
# includes/), a front controller (mod_rewrite), headers, expiry and compression of their assets.
APP = {
    "index.php": b"<?php echo 'front controller: ', $_SERVER['REQUEST_URI'], ' on PHP ', PHP_MAJOR_VERSION, \"\\n\";\n",
    ".htaccess": b"RewriteEngine On\nRewriteCond %{REQUEST_FILENAME} !-f\nRewriteRule . index.php [L]\n"
    b"Header set X-App sandboxed\n<IfModule mod_expires.c>\nExpiresActive On\nExpiresByType text/css A3600\n</IfModule>\n"
    b"AddOutputFilterByType DEFLATE text/css\n",
    "includes/.htaccess": b"Deny from all\nSatisfy All\n",
    "includes/secret.php": b"<?php echo 'included code ran';\n",
    "assets/site.css": b"body { color: #123456; }\n" * 200,
}


def php_build(parent):
    build = Path(parent) / "app"
    for rel, data in APP.items():
        (build / rel).parent.mkdir(parents=True, exist_ok=True)
        (build / rel).write_bytes(data)
    return build


def get(server, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


@pytest.fixture(params=["mod_php", "fpm"])
def php_sandbox(request):
    """A sandbox as `fab sandbox-up --php` starts it, under a directory and ports of the test's own."""
    root = new_lab_dir()
    ports = free_ports(2)
    try:
        lines = sandbox.start_sandbox(root, [tuple(ports)], sandbox.check_options(None, request.param), request.param)
        handle = LabHandle(lab.load(root))
        yield handle, lines, request.param
        pids = lab.pids(handle.lab)
    finally:
        lab.stop(root)
        os.rmdir(root.parent)
    assert [p for p in pids if not process_gone(p)] == []


def test_a_php_sandbox_runs_an_apps_htaccess_files(php_sandbox, tmp_path):
    handle, lines, php = php_sandbox
    server = handle.servers[0]
    site = Path(server.site_conf_file)
    assert lines[1] == (
        f"  Apache {'prefork' if php == 'mod_php' else 'event'} with {php}: {server.httpd_conf}; "
        f"the site's VirtualHost: {site}"
    )
    assert lines[2] == f"  after changing them: /usr/sbin/apache2 -f {server.httpd_conf} -k graceful"
    vhost = site.read_text()
    assert f"<VirtualHost *:{server.http_port}>" in vhost and f'DocumentRoot "{server.deploy_to}/current"' in vhost
    assert "AllowOverride All" in vhost and f'Include "{server.deploy_to}/.cutover/apache.conf"' in vhost
    configure(handle, php_build(tmp_path), required=["index.php"], smoke={"commands": ["php -l index.php"]},
              health={"expect_text": "front controller"})  # fmt: skip
    result = handle.fab("deploy")
    assert result.returncode == 0, result.stderr
    status, headers, body = get(server, "/some/page")
    assert (status, body) == (200, b"front controller: /some/page on PHP 8\n")
    assert headers["X-App"] == "sandboxed"
    assert get(server, "/includes/secret.php")[0] == 403  # Deny from all, Satisfy All
    status, headers, body = get(server, "/assets/site.css", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == APP["assets/site.css"]
    assert headers["Cache-Control"] == "max-age=3600" and "Expires" in headers


def test_a_module_added_by_hand_is_active_after_the_restart_the_readme_gives(lab1, tmp_path):
    """PHP starts only on Apache's second reading of its configuration, which a restart or graceful
    restart does not make: mod_php added to a running Apache's config serves PHP source until the
    next one. README.md says: stop, then start."""
    server = lab1.servers[0]
    configure(lab1, php_build(tmp_path), required=["index.php"], smoke={"commands": []}, health={"expect_status": 200})
    # PHP does not run yet, and the health check fails a page served as PHP's source: a static one
    settings = yaml.safe_load(lab1.hosts_file.read_text())
    settings["groups"]["sandbox"][0]["health"]["url"] = server.url + "assets/site.css"
    lab1.hosts_file.write_text(yaml.safe_dump(settings))
    assert lab1.fab("deploy").returncode == 0
    conf = Path(server.httpd_conf)
    event = "LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so"
    text = conf.read_text().replace(event, event.replace("event", "prefork"))  # mod_php needs prefork
    handler = '<FilesMatch "\\.php$">\n    SetHandler application/x-httpd-php\n</FilesMatch>\n'
    conf.write_text(text + f"LoadModule php_module {program('/usr/lib/apache2/modules/libphp*.so')}\n{handler}")
    apache = ["/usr/sbin/apache2", "-f", str(conf)]
    stopped = subprocess.run([*apache, "-k", "stop"], capture_output=True, text=True, timeout=30)
    assert stopped.returncode == 0, stopped.stderr
    assert poll(lambda: process_gone(server.httpd_pid), seconds=15)
    started = subprocess.run([*apache, "-k", "start"], capture_output=True, text=True, timeout=30)
    assert started.returncode == 0, started.stderr
    assert poll(lambda: Path(server.pidfile).exists(), seconds=15)
    assert poll(lambda: get(server, "/index.php")[2] == b"front controller: /index.php on PHP 8\n", seconds=15)
    # sandbox-down stops the Apache started by hand too (by its pidfile): the fixture checks it is gone
    lab1.lab.servers[0].httpd_pid = int(Path(server.pidfile).read_text())


@pytest.mark.parametrize(
    "args,message",
    [
        (["--php", "apache"], "--php 'apache': give mod_php (Apache's prefork MPM) or fpm (php-fpm, any MPM)"),
        (["--php", "mod_php", "--mpm", "event"], "--php mod_php needs the prefork MPM"),
        (["--mpm", "worker"], "--mpm 'worker': give event or prefork"),
    ],
)
def test_sandbox_up_refuses_bad_options_and_starts_nothing(lab1, args, message):
    before = os.path.exists(sandbox.SANDBOX_DIR)
    result = lab1.fab("sandbox-up", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert os.path.exists(sandbox.SANDBOX_DIR) == before
