"""A PHP application on real Apache: mod_php under the prefork MPM, and php-fpm through proxy_fcgi
under the event MPM. The app (tests/phpapp) has front controllers with .htaccess rewrites, without
RewriteBase and with it (blog/), a public/ document root, a private directory denied both by the site's <Directory>
and by its own .htaccess, shared data PHP writes to, and a cache an after_switch hook clears."""

import http.client
import pwd
import shutil
import urllib.parse
from pathlib import Path

import pytest

from .conftest import Background, configure, current, history, start_lab, stop_lab

APP = Path(__file__).resolve().parent / "phpapp"

# The site's own Apache config, as an operator writes it for the path they know.
SITE_CONF = """
<Directory "@@deploy_to@@/current/public">
    AllowOverride All
</Directory>
<Directory "@@deploy_to@@/current/public/private">
    Require all denied
</Directory>
"""

SETTINGS = {
    "serve": "public",
    "shared": ["public/uploads", "storage"],
    "writable": ["public/uploads", "storage"],
    "protected": ["/private/orders.csv"],
    "smoke": {"commands": ["php -l src/App.php", "test -s public/index.php"]},
    "health": {"expect_text": "shop {label}"},
    "hooks": {"after_switch": ["rm -f storage/cache/page.txt"], "after_rollback": ["rm -f storage/cache/page.txt"]},
}
# paths that must never answer 2xx: denied by <Directory>, by .htaccess, outside public/, never_serve
DENIED = [
    "/private/orders.csv",
    "/private/",
    "/.env",
    "/public/index.php",
    "/src/App.php",
    "/composer.json",
    "/.htaccess",
]
SERVED = ["/", "/products/7", "/assets/app.css", "/index.php", "/legacy.php", "/blog/posts/3"]


def build(parent, label):
    """The app with `label` as its release name in the code and the stylesheet."""
    path = Path(parent) / f"app-{label}"
    shutil.copytree(APP, path)
    for rel in ("src/App.php", "public/assets/app.css"):
        (path / rel).write_text((path / rel).read_text().replace("example-1", label))
    return path


def configure_app(handle, path, label, **extra):
    """The lab's hosts.yaml for the app build at path, whose front page says `shop <label>`."""
    configure(
        handle, path, required=["public/index.php"], **dict(SETTINGS, health={"expect_text": f"shop {label}"}, **extra)
    )


def request(server, path, method="GET", form=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        body = urllib.parse.urlencode(form) if form else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


class Visitors(Background):
    """Threads requesting the served and the denied paths until stopped; every answer kept."""

    def __init__(self, server, threads=3, seconds=120):
        super().__init__([(self.run, (i,)) for i in range(threads)], seconds)
        self.server, self.seen = server, []

    def run(self, offset):
        paths = SERVED + DENIED
        i = offset
        while self.running():
            path = paths[i % len(paths)]
            i += 1
            try:
                status, body = request(self.server, path)
            except (OSError, http.client.HTTPException) as exc:
                status, body = 0, repr(exc)
            self.seen.append((path, status, body))


@pytest.fixture(scope="module", params=["mod_php", "fpm"])
def php_lab(request):
    handle, root = start_lab(1, php=request.param, site_conf=SITE_CONF, serve="public")
    yield handle
    stop_lab(handle, root)


def test_a_php_app_deploys_and_rolls_back_under_load(php_lab, tmp_path):
    server = php_lab.servers[0]
    deploy_to = Path(server.deploy_to)
    labels = ["v1", "v2", "v3"]
    builds = {label: build(tmp_path, label) for label in labels}
    configure_app(php_lab, builds["v1"], "v1")
    first = php_lab.fab("deploy")
    assert first.returncode == 0, first.stderr
    # the first deploy seeded shared/ from the build and made it writable by the web server
    assert (deploy_to / "shared/public/uploads/README.txt").read_text() == "Uploads land here.\n"
    assert (deploy_to / "shared/storage/cache/.keep").exists()
    assert "shared/public/uploads seeded from the build" in first.stdout
    assert request(server, "/upload", "POST", {"name": "photo.txt", "data": "one"}) == (200, "stored photo.txt\n")
    photo = deploy_to / "shared/public/uploads/photo.txt"
    assert photo.stat().st_uid == pwd.getpwnam("www-data").pw_uid
    assert request(server, "/page")[1] == "page v1\n"  # cached by the app in storage/
    with Visitors(server) as visitors:
        for label, command in (("v2", ["deploy"]), ("v1", ["rollback"]), ("v3", ["deploy"])):
            configure_app(php_lab, builds[label], label)
            result = php_lab.fab(*command)
            assert result.returncode == 0, result.stderr
            # the new code answers right after the switch, the app's cache cleared by the hook
            assert request(server, "/") == (200, f"shop {label}\n")
            assert request(server, "/products/42") == (200, f"product 42 {label}\n")
            assert request(server, "/blog/posts/1") == (200, f"blog {label}\n")  # with RewriteBase
            assert request(server, "/page") == (200, f"page {label}\n")
    served = [(p, s, b) for p, s, b in visitors.seen if p in SERVED]
    denied = [(p, s, b) for p, s, b in visitors.seen if p in DENIED]
    assert len(served) > 100 and len(denied) > 100
    assert [x for x in served if x[1] != 200] == []
    bodies = {f"shop {v}\n" for v in labels} | {f"product 7 {v}\n" for v in labels} | {f"blog {v}\n" for v in labels}
    bodies |= {(builds[v] / "public/assets/app.css").read_text() for v in labels}
    assert [x for x in served if x[2] not in bodies] == []  # every answer one whole release
    assert [x for x in denied if x[1] not in (403, 404)] == []
    assert not any("hunter2" in b or "4111" in b or "RELEASE" in b for _, _, b in denied)
    # shared data intact, and what PHP wrote is still writable by it
    assert photo.read_text() == "one"
    assert request(server, "/upload", "POST", {"name": "photo.txt", "data": "two"}) == (200, "stored photo.txt\n")
    assert photo.read_text() == "onetwo"
    entry = history(server)[-1]
    assert entry["event"] == "deploy" and entry["hooks"][0]["command"] == "rm -f storage/cache/page.txt"
    assert php_lab.fab("check").returncode == 0


def test_files_a_migration_writes_stay_writable_by_the_app(php_lab, tmp_path):
    server = php_lab.servers[0]
    # the migration runs as the web server's user, so the app can change what it created
    migration = {"command": "mkdir -p storage/db && echo created > storage/db/schema.txt", "user": "www-data"}
    configure_app(php_lab, build(tmp_path, "m1"), "m1", migrate=migration)
    result = php_lab.fab("deploy", "--migrate")
    assert result.returncode == 0, result.stderr
    schema = Path(server.deploy_to, "shared/storage/db/schema.txt")
    assert schema.stat().st_uid == pwd.getpwnam("www-data").pw_uid
    assert request(server, "/") == (200, "shop m1\n")
    assert history(server)[-1]["release"] == current(server)
