"""Cutover's Apache rules on a lab Apache: pinning keeps every access rule of the site, and serves
nothing outside `serve` or named in never_serve."""

import http.client
import os
from pathlib import Path

import pytest

import lab

from .conftest import configure, current, make_build, start_lab, stop_lab

# The site's own Apache config, as an operator (or a distribution's package) writes it: rules
# for the path they know, <deploy_to>/current/...
SITE_CONF = """
<Directory "@@deploy_to@@/current">
    AllowOverride All
</Directory>
<Directory "@@deploy_to@@/current/private">
    Require all denied
</Directory>
<Files "secret.conf">
    Require all denied
</Files>
<Directory "@@deploy_to@@/current/status">
    DirectoryIndex check.html
</Directory>
"""


def get(server, path, source="127.0.0.1"):
    """GET path from the source address (127.0.0.2: a visitor; loopback, but not the server's own address)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("X-Cutover-Release"), response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def site_lab():
    handle, root = start_lab(1, site_conf=SITE_CONF)
    yield handle
    stop_lab(handle, root)


def protected_build(parent, label):
    """The example site plus what its config protects, in each of the ways Apache can."""
    return make_build(
        parent,
        label,
        {
            "private/orders.csv": b"alice,4111111111111111\n",  # <Directory .../current/private>
            "internal/.htaccess": b"Require all denied\n",  # the app's own .htaccess
            "internal/users.txt": b"alice:$2y$10$hash\n",
            "config/secret.conf": b"password=hunter2\n",  # <Files> anywhere
            ".env": b"DB_PASSWORD=hunter2\n",  # never_serve
            ".git/config": b"[core]\n",
            "sub/.env.local": b"X=1\n",
            ".envrc": b"export DB_PASSWORD=hunter2\n",  # direnv's
            "config/.env-production": b"DB_PASSWORD=hunter2\n",
            "public.txt": b"fine\n",
        },
    )


PROTECTED = [
    "/private/orders.csv",
    "/internal/users.txt",
    "/config/secret.conf",
    "/.env",
    "/.git/config",
    "/sub/.env.local",
]


def test_pinning_never_serves_what_the_site_denies(site_lab, tmp_path):
    server = site_lab.servers[0]
    configure(site_lab, protected_build(tmp_path, "one"))
    result = site_lab.fab("deploy")
    assert result.returncode == 0, result.stderr
    release_id = current(server)
    for path in PROTECTED:
        status, pinned, body = get(server, path)
        assert status in (403, 404), (path, status, body[:80])
        assert b"hunter2" not in body and b"4111" not in body and b"hash" not in body
    # what the site allows is pinned to the live release
    assert get(server, "/public.txt") == (200, release_id, b"fine\n")
    assert get(server, "/")[:2] == (200, release_id)
    # .git and .env* answer 404 (never_serve), whatever the site's rules
    never = ("/.env", "/.git/config", "/sub/.env.local", "/.ENV", "/.envrc", "/config/.env-production")
    assert [get(server, p)[0] for p in never] == [404] * 6


def test_the_same_paths_are_denied_without_cutovers_rules(site_lab, tmp_path):
    # the oracle: plain Apache with the site's config denies the same paths (never_serve aside)
    server = site_lab.servers[0]
    configure(site_lab, protected_build(tmp_path, "two"))
    assert site_lab.fab("deploy").returncode == 0
    rules = Path(server.deploy_to, ".cutover", "apache.conf")
    saved = rules.read_text()
    try:
        rules.write_text("")
        lab.graceful_restart(server)
        assert [get(server, p)[0] for p in PROTECTED[:3]] == [403, 403, 403]
        assert get(server, "/.env")[0] == 200  # what never_serve adds
    finally:
        rules.write_text(saved)
        lab.graceful_restart(server)


def test_shared_entries_are_served_by_the_normal_mapping(site_lab, tmp_path):
    server = site_lab.servers[0]
    configure(site_lab, make_build(tmp_path, "media"))
    assert site_lab.fab("deploy").returncode == 0
    Path(server.deploy_to, "shared", "media", "photo.txt").write_text("user upload\n")
    status, pinned, body = get(server, "/media/photo.txt")
    assert (status, pinned, body) == (200, None, b"user upload\n")  # not pinned: no release holds it


def test_serve_maps_the_site_to_a_folder_of_the_release(tmp_path):
    handle, root = start_lab(1, serve="public", site_conf=SITE_CONF)
    try:
        server = handle.servers[0]
        build = make_build(tmp_path, "app", {".env": b"DB_PASSWORD=hunter2\n", "composer.json": b"{}\n"})
        public = build / "public"
        public.mkdir()
        (public / "index.html").write_text('<meta name="release" content="app"><p>public index</p>\n')
        (public / "app.css").write_text("body{}\n")
        configure(handle, build, serve="public", smoke={"url": f"{server.url}_cutover_next/"})
        result = handle.fab("deploy")
        assert result.returncode == 0, result.stderr
        release_id = current(server)
        assert get(server, "/") == (200, release_id, (public / "index.html").read_bytes())
        assert get(server, "/app.css") == (200, release_id, b"body{}\n")
        for path in ("/composer.json", "/.env", "/public/index.html"):
            status, _, body = get(server, path)
            assert status == 404, (path, status)
            assert b"hunter2" not in body
    finally:
        stop_lab(handle, root)


def test_the_smoke_preview_answers_only_the_server_itself_and_only_while_a_release_is_tested(site_lab, tmp_path):
    server = site_lab.servers[0]
    next_link = Path(server.deploy_to, "next")
    build = make_build(tmp_path, "preview", {"unreleased.txt": b"not released yet\n"})
    configure(site_lab, build, smoke={"url": f"{server.url}_cutover_next/"})
    result = site_lab.fab("deploy")
    assert result.returncode == 0, result.stderr  # the smoke URL answered the server itself
    assert not os.path.lexists(next_link)  # gone after the promote
    assert get(server, "/_cutover_next/unreleased.txt")[0] == 404
    # while a release is tested (`next` as the stage points it): the server itself, not a visitor
    os.symlink(f"releases/{current(server)}", next_link)
    try:
        assert get(server, "/_cutover_next/unreleased.txt", source="127.0.0.2")[0] == 403
        assert get(server, "/_cutover_next/unreleased.txt") == (200, None, b"not released yet\n")
    finally:
        os.unlink(next_link)
    # a smoke URL that fails: the deploy stops, and the preview is gone too
    broken = make_build(tmp_path, "broken", {"index.html": b"<p>no release name here</p>\n"})
    configure(site_lab, broken, smoke={"url": f"{server.url}_cutover_next/"})
    failed = site_lab.fab("deploy")
    assert failed.returncode != 0 and "smoke URL failed" in failed.stderr, failed.stderr
    assert not os.path.lexists(next_link)
    assert get(server, "/_cutover_next/")[0] == 404


def test_the_smoke_preview_has_the_sites_rules_for_current(site_lab, tmp_path):
    """What the site's <Directory current/...> blocks say holds for the release its preview serves:
    here a DirectoryIndex of its own (without it the preview answers 403 and the deploy stops)."""
    server = site_lab.servers[0]
    page = b'<meta name="release" content="status"><p>ok</p>\n'
    build = make_build(tmp_path, "status", {"status/check.html": page, "private/x.txt": b"secret\n"})
    configure(site_lab, build, smoke={"url": f"{server.url}_cutover_next/status/"})
    result = site_lab.fab("deploy")
    assert result.returncode == 0, result.stderr
    assert get(server, "/status/")[::2] == (200, page)
    next_link = Path(server.deploy_to, "next")
    os.symlink(f"releases/{current(server)}", next_link)  # as the stage points it while a release is tested
    try:
        assert get(server, "/_cutover_next/status/") == (200, None, page)
        assert get(server, "/_cutover_next/private/x.txt")[0] == 403  # <Directory current/private>
    finally:
        os.unlink(next_link)


def test_check_names_a_site_rule_added_since_setup_and_access_holds_meanwhile(site_lab, tmp_path):
    server = site_lab.servers[0]
    build = make_build(tmp_path, "drift", {"secret/new.txt": b"new secret\n", "dl/report.html": b"<p>report</p>\n"})
    configure(site_lab, build)
    assert site_lab.fab("deploy").returncode == 0
    release_id = current(server)
    assert site_lab.fab("check").returncode == 0
    # the operator adds rules to the site's config and reloads Apache, but does not rerun setup
    conf = Path(server.site_conf_file)  # the site's VirtualHost
    added = (
        f'<Directory "{server.deploy_to}/current/secret">\n    Require all denied\n</Directory>\n'
        f'<Directory "{server.deploy_to}/current/dl">\n    ForceType application/octet-stream\n</Directory>\n'
    )
    text = conf.read_text()
    assert "\n    # Cutover's rules" in text
    conf.write_text(text.replace("\n    # Cutover's rules", "\n" + added + "    # Cutover's rules", 1))
    try:
        lab.graceful_restart(server)
        line = conf.read_text().splitlines().index(f'<Directory "{server.deploy_to}/current/secret">') + 1
        # access is decided by the normal mapping before a request is pinned: the denial holds already
        assert get(server, "/secret/new.txt")[0] == 403
        # the ForceType does not hold for pinned requests yet, and check says which rule and what to do
        assert get(server, "/dl/report.html") == (200, release_id, b"<p>report</p>\n")
        checked = site_lab.fab("check")
        assert checked.returncode != 0
        for at, first in ((line, "secret"), (line + 3, "dl")):
            assert (
                f'the site\'s block at {conf}:{at} <Directory "{server.deploy_to}/current/{first}"> is new since '
                "`fab setup`; rerun `fab setup` and reload Apache"
            ) in checked.stdout, checked.stdout
        assert site_lab.fab("setup").returncode == 0
        lab.graceful_restart(server)
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
        conn.request("GET", "/dl/report.html")
        answer = conn.getresponse()
        assert (answer.status, answer.getheader("Content-Type"), answer.getheader("X-Cutover-Release")) == (
            200,
            "application/octet-stream",
            release_id,
        )
        conn.close()
        assert site_lab.fab("check").returncode == 0
    finally:
        conf.write_text(text)
        lab.apply_rules(site_lab.lab)  # the site's config and the blocks written for it as before
        lab.graceful_restart(server)
