"""Asset continuity: a page served just before a switch still gets its own stylesheet and script
after it, from the release live before (assets.fallback); pages and scripts never come from there."""

import hashlib
import http.client
import re
import shutil
import time
from pathlib import Path

from .conftest import EXAMPLE, Background, configure, current, releases

ASSET = re.compile(r'(?:href|src)="(assets/[^"]+)"')


def fingerprinted_build(parent, i):
    """The example site whose theme and script are named after their content, which changes each time."""
    build = Path(parent) / f"build-{i}"
    shutil.copytree(EXAMPLE, build)
    page = (build / "index.html").read_text().replace("example-1", f"v{i}")
    for old in (build / "assets").glob("theme.*.css"):
        old.unlink()
    for name, text in (("theme", f"header {{ color: #{i:06x}; }}\n"), ("app", f"console.log('v{i}');\n")):
        ext = "css" if name == "theme" else "js"
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        (build / "assets" / f"{name}.{digest}.{ext}").write_text(text)
        page = re.sub(
            rf"assets/{name}\.[0-9a-f]{{8}}\.{ext}|assets/{name}\.{ext}", f"assets/{name}.{digest}.{ext}", page
        )
    (build / "index.html").write_text(page)
    (build / f"page-{i}.html").write_text(f"<p>only in v{i}</p>\n")
    return build


def get(server, path):
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        conn.request("GET", "/" + path.lstrip("/"))
        r = conn.getresponse()
        return r.status, r.getheader("X-Cutover-Fallback"), r.read()
    finally:
        conn.close()


class Browsers(Background):
    """Threads that load the page, wait as a browser parsing it would, then load the assets it names."""

    def __init__(self, server, threads=4, think=0.05, seconds=120):
        super().__init__([(self.run, ())] * threads, seconds)
        self.server, self.think, self.assets = server, think, []

    def run(self):
        while self.running():
            status, _, page = get(self.server, "/")
            assert status == 200
            time.sleep(self.think)
            for path in ASSET.findall(page.decode()):
                self.assets.append((path, *get(self.server, path)[:2]))


def deploy_many(handle, tmp_path, first, count, **settings):
    server = handle.servers[0]
    with Browsers(server) as browsers:
        for i in range(first, first + count):
            configure(handle, fingerprinted_build(tmp_path, i), **settings)
            result = handle.fab("deploy")
            assert result.returncode == 0, result.stderr
    return browsers.assets


def test_pages_in_flight_get_their_assets_across_switches_and_not_without_the_fallback(lab1, tmp_path):
    server = lab1.servers[0]
    configure(lab1, fingerprinted_build(tmp_path, 0))
    assert lab1.fab("deploy").returncode == 0
    seen = deploy_many(lab1, tmp_path, 1, 20)
    assert len(seen) > 200
    assert [s for s in seen if s[1] != 200] == []  # no asset 404 across 20 switches
    from_previous = [s for s in seen if s[2] == "previous"]
    assert from_previous, "no page was in flight across a switch: the test would prove nothing"
    # pages and scripts of the previous release are never served from it
    assert get(server, "page-20.html")[0] == 200 and get(server, "page-19.html")[0] == 404
    assert get(server, "index.html")[2].count(b"v20") and get(server, "index.html")[1] is None
    # the same page views with the fallback off: the old page's new-missing assets are 404s
    off = deploy_many(lab1, tmp_path, 21, 20, assets={"fallback": []})
    assert [s for s in off if s[1] == 404], "without the fallback the same test sees 404s"
    assert not [s for s in off if s[2]]


def test_after_a_rollback_previous_is_the_release_rolled_away_from(lab1, tmp_path):
    server = lab1.servers[0]
    for i in (1, 2):
        configure(lab1, fingerprinted_build(tmp_path, i))
        assert lab1.fab("deploy").returncode == 0
    one, two = releases(server)[-2:]
    pin = Path(server.deploy_to, ".cutover", "release.map")
    assert pin.read_text() == f"current {two}\nprevious {one}\n"
    assert lab1.fab("rollback").returncode == 0
    assert current(server) == one and pin.read_text() == f"current {one}\nprevious {two}\n"
    # a page of `two` still open in a browser gets its theme, now from `previous`
    theme = next(
        p for p in ASSET.findall(Path(server.deploy_to, "releases", two, "index.html").read_text()) if "theme" in p
    )
    assert get(server, theme)[:2] == (200, "previous")
    checked = lab1.fab("check")
    assert checked.returncode == 0 and checked.stdout.splitlines()[1].split()[-1] == "on"
