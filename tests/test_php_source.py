"""An answer that is PHP's source (PHP not running: mod_php not enabled, no handler for .php)
fails the health check after a switch and `fab check`, whatever its status and text: with mod_php
off Apache serves index.php as it is, secrets included, with a 200."""

import pytest
import yaml

from tasks.remote import health

from .conftest import current, make_build

MARKER = '<?php echo "marker-", 6 * 7; ?>\n'  # PHP prints marker-42; its source holds "marker-" too


def hosts(handle, build, path, expect_text):
    """The lab's hosts.yaml for `build`, with each host's health URL at `path` and this expect_text."""
    data = yaml.safe_load(handle.hosts_file.read_text())
    data["defaults"]["build"]["path"] = str(build)
    data["defaults"]["health"]["expect_text"] = expect_text
    for host, server in zip(data["groups"]["sandbox"], handle.servers):
        host["health"] = {"url": server.url + path}
    handle.hosts_file.write_text(yaml.safe_dump(data, sort_keys=False))


def test_a_release_whose_php_is_served_as_source_fails_the_health_check_and_check(lab1, tmp_path):
    server = lab1.servers[0]  # the default lab: Apache without PHP
    build = make_build(tmp_path, "php-off", {"index.php": MARKER.encode()})
    hosts(lab1, build, "index.php", "marker-")
    before = current(server)
    said = f"{server.url}index.php answered PHP source (the answer starts with <?php): PHP is not running for it"
    result = lab1.fab("deploy")
    assert result.returncode == 7, result.stderr
    assert said in result.stderr
    assert f"switched back to {before} at once" in result.stderr
    assert current(server) == before
    # live, verified by a front page PHP has no part in: check finds index.php served as source
    hosts(lab1, build, "", 'name="release"')
    assert lab1.fab("deploy").returncode == 0
    hosts(lab1, build, "index.php", "marker-")
    checked = lab1.fab("check")
    assert checked.returncode == 1
    assert f"lab1: the front page does not answer as the health check expects: {said}" in checked.stdout


class Headers(dict):
    def get(self, key, default=None):
        return super().get(key.lower(), default)


@pytest.mark.parametrize(
    "url, content_type, body, found",
    [
        ("http://h/", "text/html", "<?php\necho 1;", "the answer starts with <?php"),
        ("http://h/", "text/html", "\ufeff  \n<?PHP echo 1;", "the answer starts with <?PHP"),
        ("http://h/x", "", "<?= $title ?>", "the answer starts with <?="),
        ("http://h/", "text/html", "<!doctype html>\n<title>x</title>\n<?php echo $x; ?>", "<?php near its start"),
        ("http://h/i.php", "application/x-httpd-php", "echo 1;", "served as application/x-httpd-php"),
        ("http://h/i.php", "text/plain; charset=utf-8", "<html><? echo 1; ?>", "a .php URL answered as text/plain"),
        ("http://h/", "text/html", "<!doctype html><p>ok</p>", None),
        ("http://h/", "text/html", "<p>" + "x" * 2000 + "&lt;?php in a tutorial <?php", None),
        ("http://h/feed.xml", "application/xml", '<?xml version="1.0"?><rss/>', None),
        ("http://h/i.php", "text/html", "<p>PHP ran</p>", None),
        # a short open tag; Apache without PHP, whose mime.types names no type for .php (Debian's);
        # the other extensions a handler takes; a type a mime.types gives PHP's source
        ("http://h/", "text/html", "<? include 'config.php'; ?>\n<html>", "the answer starts with <?"),
        ("http://h/", "text/html", "\ufeff<?\nrequire 'x.php';", "the answer starts with <?"),
        (
            "http://h/",
            "",
            "<!doctype html>\n<style>" + "p{}" * 600 + "</style>\n<?php echo $x; ?>",
            "<?php with no content type",
        ),
        ("http://h/shop/", "", "<html>" + "x" * 2000 + "<?= $title ?>", "<?= with no content type"),
        ("http://h/index.php5", "text/plain", "<html><? echo 1; ?>", "a .php5 URL answered as text/plain"),
        ("http://h/page.phtml", "", "<ul>\n<? foreach ($a as $b): ?>", "<? with no content type"),
        ("http://h/", "text/x-php", "echo 1;", "served as text/x-php"),
        ("http://h/", "application/x-php", "echo 1;", "served as application/x-php"),
        ("http://h/", "", '<?xml version="1.0"?><rss/>', None),
        ("http://h/", "text/html", '<?xml version="1.0"?>\n<html>', None),
        ("http://h/phpinfo", "text/html", "<title>PHP 8.2 - phpinfo()</title>", None),
    ],
    ids=lambda value: value[:40] if isinstance(value, str) else None,
)
def test_php_source_is_told_from_php_output(url, content_type, body, found):
    headers = Headers({"content-type": content_type} if content_type else {})
    assert health.php_source(url, headers, body) == found


TEMPLATE = (
    "<!doctype html>\n<title>Shop</title>\n<style>" + "p { margin: 0 }\n" * 80 + "</style>\n<?php echo 'Shop'; ?>\n"
)


def test_a_template_whose_php_comes_after_its_head_is_found_served_as_source(lab1, tmp_path):
    """Debian's mime.types names no type for .php: without PHP, Apache serves a page's template as
    it is, with no Content-Type, and its <?php more than a kilobyte in."""
    server = lab1.servers[0]  # the default lab: Apache without PHP
    build = make_build(tmp_path, "template", {"shop/index.php": TEMPLATE.encode()})
    hosts(lab1, build, "shop/", "Shop")
    before = current(server)
    result = lab1.fab("deploy")
    assert result.returncode == 7, result.stderr
    assert f"{server.url}shop/ answered PHP source (<?php with no content type): PHP is not running" in result.stderr
    assert current(server) == before


def test_check_asks_index_php_where_the_health_url_is_static(lab1, tmp_path):
    server = lab1.servers[0]  # the default lab: Apache without PHP
    build = make_build(tmp_path, "static-health", {"index.php": MARKER.encode()})
    hosts(lab1, build, "health.txt", None)  # the example site's static health file: passes
    assert lab1.fab("deploy").returncode == 0
    checked = lab1.fab("check")
    assert checked.returncode == 1
    said = f"{server.url}index.php answered PHP source (the answer starts with <?php): PHP is not running for it"
    assert said in checked.stdout, checked.stdout
