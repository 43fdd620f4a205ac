"""The swap as the root-owned sudo helper runs it, driven in this process: what a deploy user can
plant under deploy_to (a FIFO as a map, `current -> releases/..`), where its health URL may send
root, the helper's own directory per site, and an httpd parent that exits inside the pause."""

import gc
import http.server
import json
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lab.servers import free_port
from tasks.agent import LocalAgent
from tasks.errors import RemoteError
from tasks.remote import health, helper, pause, pinmap
from tasks.remote.paths import Layout

IDS = ["20261101T000000.000Z-aaaaaaa", "20261102T000000.000Z-bbbbbbb"]
PROMPT_S = 3  # a refusal comes at once; a call still running after this is hung


@pytest.fixture
def site(tmp_path):
    """A deploy_to made by setup, with two releases, the first live."""
    deploy_to = str(tmp_path / "site")
    agent = LocalAgent()
    agent.call("setup", {"deploy_to": deploy_to, "rules": "# rules\n", "serve": ""})
    layout = Layout(deploy_to)
    for rid in IDS:
        Path(layout.release(rid)).mkdir()
        Path(layout.release(rid), "index.html").write_text(rid)
    agent.call("swap", {"deploy_to": deploy_to, "release_id": IDS[0], "pause": "none"})
    return layout


def in_child(function, seconds=PROMPT_S):
    """function() in a forked child, its outcome ("ok", value) or ("error", text) as JSON through a
    pipe; ("hung", None) when it is still running after `seconds` (then killed by its PID)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = ["ok", function()]
        except BaseException as exc:  # reported to the parent, which asserts on it
            out = ["error", f"{type(exc).__name__}: {exc}"]
        os.write(w, json.dumps(out, default=str).encode())
        os._exit(0)
    os.close(w)
    deadline = time.monotonic() + seconds
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return "hung", None
        time.sleep(0.02)
    with os.fdopen(r) as f:
        return tuple(json.loads(f.read()))


def test_a_fifo_as_the_live_releases_map_is_refused_at_once(site):
    """maps/<old>.map is a FIFO the deploy user made: root never blocks opening it; the swap is
    refused before anything changes, naming the file."""
    fifo = Path(site.map_file(IDS[0]))
    fifo.unlink()
    os.mkfifo(fifo)
    dirs = pinmap.Dirs(site)
    try:
        assert in_child(lambda: pinmap.read_map(dirs, IDS[0])) == (
            "error", f"Refused: .cutover/maps/{IDS[0]}.map is not a regular file; refusing to read it",
        )  # fmt: skip
    finally:
        dirs.close()
    args = {"deploy_to": site.deploy_to, "release_id": IDS[1], "pause": "none"}
    outcome, text = in_child(lambda: LocalAgent().call("swap", args))
    assert outcome == "error" and f".cutover/maps/{IDS[0]}.map is not a regular file" in text, text
    assert os.readlink(site.current) == "releases/" + IDS[0]
    assert os.readlink(site.release_map) == f"maps/{IDS[0]}.map" and stat.S_ISFIFO(fifo.lstat().st_mode)
    # a symlink in its place is refused too (never followed), and a missing map is no map
    fifo.unlink()
    fifo.symlink_to("/etc/passwd")
    dirs = pinmap.Dirs(site)
    try:
        assert in_child(lambda: pinmap.read_map(dirs, IDS[0]))[1].endswith("is not a regular file; refusing to read it")
        fifo.unlink()
        assert pinmap.read_map(dirs, IDS[0]) == {}
    finally:
        dirs.close()


def test_a_current_that_names_no_release_is_refused_before_a_switch_that_may_switch_back(site):
    """current -> releases/.. (the deploy user's doing): the swap back after a failed health check
    would point current at deploy_to itself; refused before anything changes."""
    os.unlink(site.current)
    os.symlink("releases/..", site.current)
    verify = {"urls": [f"http://127.0.0.1:{free_port()}/"], "expect_status": 200, "expect_text": None, "retries": 0,
              "timeout": 1}  # fmt: skip
    args = {"deploy_to": site.deploy_to, "release_id": IDS[1], "pause": "none", "verify": verify, "swap_back": True}
    with pytest.raises(RemoteError) as refused:
        LocalAgent().call("swap", args)
    assert str(refused.value) == (
        "local: swap: current points at 'releases/..', which is not a release: a failed health check could not switch "
        "back to it; point current at a release in releases/ by hand first"
    )
    assert os.readlink(site.current) == "releases/.."
    assert not os.path.exists(site.map_file(IDS[1]))


def test_each_site_has_a_helper_directory_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(helper, "RUN_DIR", str(tmp_path / "run"))
    a_b, a_slash_b = helper.meta_dir("/srv/a_b"), helper.meta_dir("/srv/a/b")
    assert a_b != a_slash_b
    for path, prefix in ((a_b, "srv_a_b-"), (a_slash_b, "srv_a_b-")):
        assert os.path.dirname(path) == str(tmp_path / "run") and os.path.basename(path).startswith(prefix)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert helper.meta_dir("/srv/a_b") == a_b  # the same site finds its swap.pid again
    assert len(os.listdir(tmp_path / "run")) == 2
    # `..` and a very long path stay one directory inside RUN_DIR, its name within NAME_MAX
    for odd in ("/srv/../etc", "/srv/" + "x" * 300):
        path = helper.meta_dir(odd)
        assert os.path.dirname(path) == str(tmp_path / "run") and len(os.path.basename(path)) <= 80


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.paths.append(self.path)
        target = self.server.redirects.get(self.path)
        self.send_response(302 if target else 200)
        if target:
            self.send_header("Location", target)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def web():
    """Two HTTP servers on loopback ports; each records the paths asked and redirects as told."""
    servers = []
    for _ in range(2):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.paths, server.redirects = [], {}
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def test_the_health_check_follows_no_redirect_to_another_origin(web):
    here, elsewhere = web
    base, other = (f"http://127.0.0.1:{s.server_address[1]}" for s in web)
    here.redirects = {"/health": f"{other}/internal", "/moved": "/ok"}
    verify = {"urls": [f"{base}/health"], "expect_status": 200, "expect_text": None, "retries": 0, "timeout": 2}
    assert health.problem(verify, IDS[0]) == (
        f"{base}/health: redirected to {other}/internal, another origin: not followed (health urls must answer "
        "themselves, or redirect within their own scheme, host and port)"
    )
    assert elsewhere.paths == []
    # a redirect within the same origin is followed
    assert health.problem(dict(verify, urls=[f"{base}/moved"]), IDS[0]) is None
    assert here.paths == ["/health", "/moved", "/ok"]


def test_an_httpd_parent_that_exits_inside_the_pause_leaves_the_swap_process_as_it_found_it(tmp_path):
    """The parent gone (killed, reaped) while paused: the renames stand, and the swap process still
    resumes the children, drops real-time priority, re-enables gc and disarms its watchdog."""
    stand_in = subprocess.Popen(["sleep", "60"])  # httpd's parent, as far as the pause is concerned
    (tmp_path / "live").mkdir()
    os.symlink("a", tmp_path / "current.tmp")
    log = tmp_path / "watchdog.log"

    def exit_inside_the_pause():
        deadline = time.monotonic() + PROMPT_S
        while time.monotonic() < deadline:
            if Path(f"/proc/{stand_in.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
                stand_in.kill()
                stand_in.wait()
                return
            time.sleep(0.005)

    def paused():
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        out = pause.pause_and_rename([(fd, "current.tmp", "current")], stand_in.pid, 5, str(log), 1500)
        return dict(out, policy=os.sched_getscheduler(0), gc=gc.isenabled())

    killer = threading.Thread(target=exit_inside_the_pause)
    killer.start()
    try:
        outcome, out = in_child(paused, seconds=10)
    finally:
        killer.join()
        if stand_in.poll() is None:
            stand_in.kill()
            stand_in.wait()
    assert outcome == "ok", out
    assert out["policy"] == os.SCHED_OTHER and out["gc"] is True
    assert out["note"] == f"httpd's parent (pid {stand_in.pid}) exited during the pause"
    assert os.readlink(tmp_path / "current") == "a"
    time.sleep(0.5)  # a watchdog left armed writes at once when the swap process ends
    assert not log.exists()
