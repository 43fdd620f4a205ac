"""Real applications from Debian's packages, deployed as their users would: MediaWiki on SQLite
(mod_php) and WordPress on MariaDB (php-fpm). Each: the app's files as a build, a first deploy, its
installer, an edit and an upload through HTTP, a migration with a second deploy and a rollback under
load (no failed request, every answer one whole release), a backup and a restore (the data as it
was). Slow (tens of seconds each): marked `app`, run by `make test` and CI all the same."""

import re
import secrets
import shlex
import sqlite3
import subprocess
from pathlib import Path

import pytest

import lab
from lab import apps
from lab.backends import MARIADB_PASSWORD
from lab.loadgen import LoadGen
from lab.visitor import Visitor, png

from .conftest import configure, current, history, start_lab, stop_lab
from .test_run import run_lines

pytestmark = pytest.mark.app
PASSWORD = "correct-horse-battery-staple"
VISITOR = "127.0.0.2"  # not on maintenance.allow: held off during a migration, as visitors are
MAINTENANCE = b"<title>Down for maintenance</title>"
PAGE_GONE = b"error was encountered while trying to use an ErrorDocument to handle the request"
MARK = re.compile(rb'<meta name="site-release" content="(v\d)"/?>')


def whole(sample, labels, known):
    """An answer of one whole release: a page with exactly one release mark and its end, or a file
    exactly as one release (or the shared data) has it."""
    if sample.path in known:
        return sample.body in known[sample.path]
    marks = MARK.findall(sample.body)
    return len(marks) == 1 and marks[0].decode() in labels and sample.body.rstrip().endswith(b"</html>")


def assert_every_answer_whole(load, labels, known, pages):
    assert load.failures() == [], [(s.path, s.status, s.error, s.body[:200]) for s in load.failures()[:5]]
    assert [s.path for s in load.samples if not whole(s, labels, known)] == []
    for path in pages:
        assert len([s for s in load.samples if s.path == path]) >= 10, f"too few answers for {path}"


def assert_served_or_held(load, labels, known):
    """Visitors during a migration: the maintenance page (503), or one whole release; nothing else."""
    assert {s.status for s in load.samples} <= {200, 503}, [(s.path, s.status, s.error) for s in load.failures()[:5]]
    held = [s for s in load.samples if s.status == 503]
    # a request that saw the page an instant before maintenance went off gets Apache's own 503: its
    # ErrorDocument found the page gone (templates/apache.conf); held all the same
    assert held and all(MAINTENANCE in s.body or PAGE_GONE in s.body for s in held)
    assert [s.path for s in load.samples if s.status == 200 and not whole(s, labels, known)] == []


def last(server, event):
    return [e for e in history(server) if e["event"] == event][-1]


# --- MediaWiki on SQLite ---------------------------------------------------------------------------

WIKI_PAGE = "/index.php?title=Main_Page"


@pytest.fixture(scope="module")
def wiki(tmp_path_factory):
    handle, root = start_lab(1, php="mod_php", site_conf=apps.MEDIAWIKI_SITE_CONF, allow_override="All")
    build = apps.mediawiki_build(tmp_path_factory.mktemp("wiki") / "site")
    yield handle, build
    stop_lab(handle, root)


def test_mediawiki_installed_edited_migrated_rolled_back_and_restored(wiki):
    handle, build = wiki
    server = handle.servers[0]
    deploy_to, url = Path(server.deploy_to), server.url.rstrip("/")

    def settings(expect):
        configure(handle, build, required=["index.php"], health={"expect_text": expect}, **apps.MEDIAWIKI_SETTINGS)

    # 1. the code alone: MediaWiki answers that it is not set up yet
    settings("LocalSettings.php not found")
    first = handle.fab("deploy")
    assert first.returncode == 0, first.stderr
    assert "shared/images created empty; shared/data created empty" in first.stdout

    # 2. its installer, as the web server's user, in the live release (fab run)
    installed = handle.fab("run", "--", apps.mediawiki_install(deploy_to, url, PASSWORD))
    assert installed.returncode == 0, installed.stderr
    assert any("MediaWiki has been successfully installed" in text for text in run_lines(installed, "lab1"))
    assert last(server, "run")["as"] == "www-data"
    settings_file = deploy_to / "shared/data/LocalSettings.php"
    assert settings_file.stat().st_uid == (deploy_to / "shared/data/wiki.sqlite").stat().st_uid != 0
    # the site takes the installer's LocalSettings.php into its build, and deploys it
    written = settings_file.read_text()
    assert handle.fab("run", "--", f"rm {shlex.quote(str(settings_file))}").returncode == 0
    apps.mediawiki_release(build, written, "v1")
    settings('content="v1"')
    second = handle.fab("deploy")
    assert second.returncode == 0, second.stderr
    v1 = current(server)

    # 3. an edit and an upload, through HTTP as a visitor and a logged-in user
    visitor = Visitor(url)
    assert apps.mediawiki_edit(visitor, "Cutover_test", "Saved through the edit form.").status == 200
    assert visitor.get("/index.php?title=Cutover_test&action=raw").text == "Saved through the edit form."
    admin = Visitor(url)
    assert "Log out" in apps.mediawiki_login(admin, "Admin", PASSWORD).text
    dot = png((255, 0, 0))
    uploaded = apps.mediawiki_upload(admin, "Cutover-dot.png", dot)
    assert uploaded.status == 200 and uploaded.url.endswith("/File:Cutover-dot.png"), uploaded.url
    image = "/images/" + apps.mediawiki_image_path("Cutover-dot.png")
    assert (deploy_to / "shared" / image.lstrip("/")).read_bytes() == dot
    assert visitor.request(image).status == 200

    # 4. a second release, and a rollback, under load: no failed request, every answer one whole release
    logo = {"v1": (build / "site/logo.svg").read_bytes()}
    apps.mediawiki_release(build, written, "v2")
    logo["v2"] = (build / "site/logo.svg").read_bytes()
    known = {"/site/logo.svg": set(logo.values()), image: {dot}}
    with LoadGen(url, paths=(WIKI_PAGE, "/site/logo.svg", image), threads=3) as load:
        settings('content="v2"')
        deployed = handle.fab("deploy")
        assert deployed.returncode == 0, deployed.stderr
        settings('content="v1"')
        back = handle.fab("rollback")
        assert back.returncode == 0, back.stderr
    assert_every_answer_whole(load, {"v1", "v2"}, known, [WIKI_PAGE])
    assert {MARK.findall(s.body)[0] for s in load.samples if s.path == WIKI_PAGE} == {b"v1", b"v2"}
    assert current(server) == v1

    # 5. a release with an extension whose tables its migration (update.php) makes: visitors get
    #    the maintenance page while it runs, else one whole release
    apps.mediawiki_release(build, written, "v3", extensions=["OATHAuth"])
    logo["v3"] = (build / "site/logo.svg").read_bytes()
    known["/site/logo.svg"] = set(logo.values())
    with LoadGen(url, paths=(WIKI_PAGE, "/site/logo.svg"), threads=2, source=VISITOR) as visitors:
        settings('content="v3"')
        migrated = handle.fab("deploy", "--migrate")
        assert migrated.returncode == 0, migrated.stderr
    assert_served_or_held(visitors, {"v1", "v3"}, known)
    with sqlite3.connect(deploy_to / "shared/data/wiki.sqlite") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "oathauth_users" in tables, sorted(tables)
    assert last(server, "deploy")["backup"]  # taken before the migration, by itself
    v3 = current(server)

    # 6. a backup, changes after it, and the restore: the data as it was
    taken = handle.fab("backup", "--label", "before the changes")
    assert taken.returncode == 0, taken.stderr
    bid = last(server, "backup")["backup"]
    assert apps.mediawiki_edit(visitor, "Cutover_test", "Changed after the backup.").status == 200
    later = apps.mediawiki_upload(admin, "Cutover-later.png", png((0, 0, 255)))
    assert later.status == 200
    later_file = deploy_to / "shared/images" / apps.mediawiki_image_path("Cutover-later.png")
    assert later_file.exists()
    restored = handle.fab("restore", "--backup", bid)
    assert restored.returncode == 0, restored.stderr
    assert visitor.get("/index.php?title=Cutover_test&action=raw").text == "Saved through the edit form."
    assert not later_file.exists() and (deploy_to / "shared" / image.lstrip("/")).read_bytes() == dot
    checked = handle.fab("check")
    assert current(server) == v3 and checked.returncode == 0, checked.stdout


# --- WordPress on MariaDB ------------------------------------------------------------------------

SCHEMA = "CREATE TABLE {prefix}site_notes (\n  id bigint(20) unsigned NOT NULL AUTO_INCREMENT,\n  note text NOT NULL,\n  PRIMARY KEY  (id)\n);\n"
STYLE = "/wp-content/themes/twentytwentythree/style.css"


@pytest.fixture(scope="module")
def blog(tmp_path_factory):
    handle, root = start_lab(1, php="fpm", site_conf=apps.WORDPRESS_SITE_CONF, allow_override="All", mariadb=True)
    build = apps.wordpress_build(tmp_path_factory.mktemp("blog") / "site")
    yield handle, build
    stop_lab(handle, root)


def mariadb(server, sql):
    out = subprocess.run(["mariadb", f"--defaults-extra-file={lab.mariadb_credentials(server)}", "-N", "shop", "-e", sql],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_wordpress_installed_published_migrated_rolled_back_and_restored(blog):
    handle, build = blog
    server = handle.servers[0]
    deploy_to, url = Path(server.deploy_to), server.url.rstrip("/")
    databases = {"databases": [{"name": "blog", "kind": "mariadb", "database": "shop",
                                "credentials": lab.mariadb_credentials(server)}]}  # fmt: skip

    def settings(expect):
        configure(handle, build, required=["index.php", "wp-config.php"], health={"expect_text": expect},
                  backups=databases, **apps.WORDPRESS_SETTINGS)  # fmt: skip

    # 1. the secrets are the server's, put into shared/ before the first deploy; then the code
    keys = {
        f"{n}_{k}": secrets.token_urlsafe(48)
        for n in ("AUTH", "SECURE_AUTH", "LOGGED_IN", "NONCE")
        for k in ("KEY", "SALT")
    }
    socket = Path(server.root, "mariadb", "mysqld.sock")
    (deploy_to / "shared").mkdir(exist_ok=True)
    (deploy_to / "shared/wp-secrets.php").write_text(
        apps.wordpress_secrets("shop", "shop", MARIADB_PASSWORD, socket, keys)
    )
    apps.wordpress_release(build, "v1")
    settings("WordPress")  # the installer's page, where / redirects until it has run
    first = handle.fab("deploy")
    assert first.returncode == 0, first.stderr

    # 2. its installer through HTTP, as its first visitor runs it
    done = apps.wordpress_install(url, "Cutover Blog", "admin", PASSWORD, "admin@example.com")
    assert done.status == 200 and "Success!" in done.text, done.text[:500]
    visitor = Visitor(url)
    front = visitor.get("/")
    assert '<meta name="site-release" content="v1">' in front.text and "Cutover Blog" in front.text
    settings('content="v1"')

    # 3. a post published and an image uploaded by an author's client, as visitors then see them
    author = apps.wordpress_client(url, "admin", PASSWORD)
    post = author.post("Hello from the lab", "Published over HTTP.")
    assert "Published over HTTP." in visitor.get(f"/?p={post}").text
    dot = png((0, 128, 0))
    uploaded = author.upload("dot.png", dot)
    image = uploaded["url"].removeprefix(url)
    assert image.startswith("/wp-content/uploads/") and (deploy_to / "shared" / image.lstrip("/")).read_bytes() == dot

    # 4. a second release, and a rollback, under load: no failed request, every answer one whole release
    style = {"v1": (build / STYLE.lstrip("/")).read_bytes()}
    apps.wordpress_release(build, "v2")
    style["v2"] = (build / STYLE.lstrip("/")).read_bytes()
    known = {STYLE: set(style.values()), image: {dot}}
    with LoadGen(url, paths=("/", STYLE, image), threads=3) as load:
        settings('content="v2"')
        deployed = handle.fab("deploy")
        assert deployed.returncode == 0, deployed.stderr
        settings('content="v1"')
        back = handle.fab("rollback")
        assert back.returncode == 0, back.stderr
    assert_every_answer_whole(load, {"v1", "v2"}, known, ["/"])
    assert {MARK.findall(s.body)[0] for s in load.samples if s.path == "/"} == {b"v1", b"v2"}

    # 5. a release whose migration changes the schema: visitors get the maintenance page while it
    #    runs, else one whole release
    apps.wordpress_release(build, "v3", schema=SCHEMA)
    style["v3"] = (build / STYLE.lstrip("/")).read_bytes()
    known[STYLE] = set(style.values())
    with LoadGen(url, paths=("/", STYLE), threads=2, source=VISITOR) as visitors:
        settings('content="v3"')
        migrated = handle.fab("deploy", "--migrate")
        assert migrated.returncode == 0, migrated.stderr
    assert_served_or_held(visitors, {"v1", "v3"}, known)
    assert "database version" in migrated.stdout
    assert mariadb(server, "SHOW TABLES LIKE 'wp_site_notes'") == "wp_site_notes"
    assert last(server, "deploy")["backup"]  # taken before the migration, by itself

    # 6. a backup, changes after it, and the restore: the data as it was
    taken = handle.fab("backup")
    assert taken.returncode == 0, taken.stderr
    bid = last(server, "backup")["backup"]
    later = author.post("Written after the backup", "Gone after the restore.")
    later_image = author.upload("later.png", png((0, 0, 0)))["url"].removeprefix(url)
    assert visitor.get(f"/?p={later}").status == 200
    restored = handle.fab("restore", "--backup", bid)
    assert restored.returncode == 0, restored.stderr
    assert visitor.get(f"/?p={later}").status == 404
    assert "Published over HTTP." in visitor.get(f"/?p={post}").text
    assert not (deploy_to / "shared" / later_image.lstrip("/")).exists()
    assert (deploy_to / "shared" / image.lstrip("/")).read_bytes() == dot
    assert handle.fab("check").returncode == 0
