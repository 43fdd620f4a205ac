"""notify: in hosts.yaml: a local command and a webhook told the outcome of every deploy and rollback
(the JSON of --json on stdin, in the POST body); one that fails, hangs or never answers changes
neither the outcome nor the exit status."""

import base64
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tasks import hostsfile
from tasks.errors import ConfigError

from .conftest import PROJECT, configure, current, make_build, process_gone


class Hook:
    """An HTTP server on 127.0.0.1 recording each POST (path, headers, body); answers `status`, or
    with hang=True never answers (until stopped)."""

    def __init__(self, status=200, hang=False):
        self.posts, self.status, self.hang = [], status, hang
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.posts.append((self.path, dict(self.headers), body))
                if hook.hang:
                    hook.release.wait(30)
                    return
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/deploys?token=s3cret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def notified(tmp_path, n):
    """What the command notifier wrote for notification n: its stdin and its CUTOVER_* variables."""
    stdin = json.loads((tmp_path / f"stdin.{n}").read_text())
    env = dict(line.split("=", 1) for line in (tmp_path / f"env.{n}").read_text().splitlines())
    return stdin, env


def recording_command(tmp_path):
    """A notify command writing its stdin and its CUTOVER_ variables to files numbered per call (the
    test run's own, inherited from the environment, left out)."""
    return (
        f"n=$(ls {tmp_path}/stdin.* 2>/dev/null | wc -l); cat > {tmp_path}/stdin.$n; "
        f"env | grep ^CUTOVER_ | grep -v -e ^CUTOVER_HOSTS_FILE= -e ^CUTOVER_TEST= -e ^CUTOVER_CI= | sort > {tmp_path}/env.$n"
    )


def test_the_command_and_the_webhook_get_each_outcome(lab1, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    configure(lab1, make_build(tmp_path, "first"))
    assert lab1.fab("deploy").returncode == 0
    first = current(lab1.servers[0])
    with Hook() as hook:
        configure(lab1, make_build(tmp_path, "second"), notify={"command": recording_command(out), "url": hook.url})
        deployed = lab1.fab("deploy", "--json", str(tmp_path / "deploy.json"))
        assert deployed.returncode == 0, deployed.stderr
        result = json.loads((tmp_path / "deploy.json").read_text())
        stdin, env = notified(out, 0)
        assert stdin == result and result["result"] == "ok" and result["release"] == current(lab1.servers[0])
        assert env == {
            "CUTOVER_COMMAND": "deploy",
            "CUTOVER_ERROR_KIND": "",
            "CUTOVER_EXIT_CODE": "0",
            "CUTOVER_RELEASE": result["release"],
            "CUTOVER_RESULT": "ok",
            "CUTOVER_TARGET": "sandbox",
            "CUTOVER_TEXT": result["text"],
        }
        (path, headers, body) = hook.posts[0]
        assert path == "/hooks/deploys?token=s3cret" and json.loads(body) == result
        assert headers["Content-Type"] == "application/json"
        assert headers["User-Agent"].startswith("cutover/")
        # said in the log, the webhook by its address only: its path may hold a secret
        assert "notify: command exited 0" in deployed.stdout
        assert "notify: POST http://127.0.0.1:" in deployed.stdout and "s3cret" not in deployed.stdout

        rolled = lab1.fab("rollback")
        assert rolled.returncode == 0, rolled.stderr
        stdin, env = notified(out, 1)
        assert (stdin["command"], stdin["result"], stdin["release"]) == ("rollback", "ok", first)
        assert (env["CUTOVER_COMMAND"], env["CUTOVER_RELEASE"]) == ("rollback", first)
        assert json.loads(hook.posts[1][2]) == stdin

        # a failed deploy is told too, with its error kind
        configure(lab1, make_build(tmp_path, "third"), smoke={"commands": ["false"]},
                  notify={"command": recording_command(out), "url": hook.url})  # fmt: skip
        failed = lab1.fab("deploy")
        assert failed.returncode == 6
        stdin, env = notified(out, 2)
        assert (stdin["result"], stdin["exit_code"], stdin["error"]["kind"]) == ("failed", 6, "smoke")
        assert (env["CUTOVER_RESULT"], env["CUTOVER_EXIT_CODE"], env["CUTOVER_ERROR_KIND"]) == ("failed", "6", "smoke")
        assert json.loads(hook.posts[2][2]) == stdin

        # a dry run changes nothing and tells no one
        assert lab1.fab("deploy", "--dry-run").returncode == 0
        assert len(hook.posts) == 3 and not (out / "stdin.3").exists()
    assert current(lab1.servers[0]) == first


def test_a_failing_or_hanging_notifier_changes_neither_outcome_nor_exit_status(lab1, tmp_path):
    configure(lab1, make_build(tmp_path, "first"))
    assert lab1.fab("deploy").returncode == 0
    with Hook(status=500) as broken:
        configure(lab1, make_build(tmp_path, "second"),
                  notify={"command": "echo it broke >&2; exit 5", "url": broken.url})  # fmt: skip
        deployed = lab1.fab("deploy")
        assert deployed.returncode == 0, deployed.stderr
        assert "cutover: warning: notify: command exited 5: it broke" in deployed.stderr
        assert f"cutover: warning: notify: POST http://127.0.0.1:{broken.server.server_port}/...: answered 500" in (
            deployed.stderr
        )
        assert "s3cret" not in deployed.stdout + deployed.stderr
        assert len(broken.posts) == 1
    live = current(lab1.servers[0])

    pidfile = tmp_path / "notifier.pid"
    with Hook(hang=True) as silent:
        configure(lab1, make_build(tmp_path, "third"), smoke={"commands": ["false"]},
                  notify={"command": f"echo $$ > {pidfile}; exec sleep 120", "url": silent.url, "timeout": 1})  # fmt: skip
        started = time.monotonic()
        failed = lab1.fab("deploy")
        took = time.monotonic() - started
        assert failed.returncode == 6, failed.stderr  # the deploy's own failure, as without notifiers
        assert "cutover: error: lab1: stage: smoke command 'false' exited 1" in failed.stderr
        assert "cutover: warning: notify: command did not end within 1 s: stopped" in failed.stderr
        assert "cutover: warning: notify: POST http://127.0.0.1:" in failed.stderr
        assert "no answer within 1 s" in failed.stderr
        assert len(silent.posts) == 1
    assert took < 30, took  # each notifier bounded by its timeout (the deploy itself: a few seconds)
    assert process_gone(int(pidfile.read_text()))  # the command's process group was stopped
    assert current(lab1.servers[0]) == live

    # a webhook nothing listens on
    configure(lab1, make_build(tmp_path, "fourth"), notify={"url": "http://127.0.0.1:1/hook"})
    deployed = lab1.fab("deploy")
    assert deployed.returncode == 0, deployed.stderr
    assert "cutover: warning: notify: POST http://127.0.0.1:1/...: " in deployed.stderr


HOSTS = """\
defaults:
  deploy_to: /var/www/site
groups:
  prod:
    notify: {url: "https://hooks.example.com/x"}
    hosts: [{host: web1.example.com}]
  staging:
    hosts: [{host: stage.example.com}]
"""


@pytest.mark.parametrize(
    "notify, said",
    [
        ("{url: ftp://example.com/}", "notify.url: 'ftp://example.com/' is not an http:// or https:// URL"),
        ("{timeout: 0}", "notify.timeout: must be from 1 to 300, got 0"),
        ("{timeout: 301}", "notify.timeout: must be from 1 to 300, got 301"),
        ("{commands: [x]}", "notify.commands: is not a known key"),
        ("{command: [x]}", "notify.command: must be a single value, got a list"),
    ],
)
def test_notify_settings_are_checked_naming_the_key(tmp_path, notify, said):
    path = tmp_path / "hosts.yaml"
    path.write_text(
        f"defaults:\n  deploy_to: /var/www/site\n  notify: {notify}\ngroups:\n  prod: [{{host: a.example.com}}]\n"
    )
    with pytest.raises(ConfigError) as raised:
        hostsfile.load(path)
    assert said in str(raised.value) and f"{path}:3" in str(raised.value)


def test_hosts_with_different_notifiers_are_refused_before_anything(tmp_path):
    (tmp_path / "hosts.yaml").write_text(HOSTS)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "index.html").write_text("x")
    from .test_package import fab_in_checkout

    refused = fab_in_checkout("-H", "prod,staging", "deploy", cwd=tmp_path)
    assert refused.returncode == 2
    assert "the hosts of this run have different notify: settings (web1.example.com, stage.example.com)" in (
        refused.stderr
    )
    inventory = hostsfile.load(tmp_path / "hosts.yaml")
    (web1,) = inventory.resolve("prod")
    assert (web1.notify.url, web1.notify.command, web1.notify.timeout) == ("https://hooks.example.com/x", None, 10)
    assert inventory.resolve("staging")[0].notify.url is None
    assert urllib.parse.urlsplit(web1.notify.url).hostname == "hooks.example.com"
    assert not os.path.exists(Path(tmp_path, "deploy.json"))


class Redirecting:
    """An HTTP server on 127.0.0.1 that answers every POST with `status` and a Location on the same
    server; records each request (method, path, body)."""

    def __init__(self, status):
        self.requests = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self):
                length = int(self.headers.get("Content-Length") or 0)
                hook.requests.append((self.command, self.path, self.rfile.read(length)))

            def do_POST(self):
                self._record()
                self.send_response(status)
                self.send_header("Location", "/landed?token=elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                self._record()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/deploys?token=s3cret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def test_a_webhook_that_redirects_is_a_warning_and_is_not_followed(lab1, tmp_path):
    """A POST redirected with 301, 302 or 303 would arrive as a GET without the JSON (and a redirect
    may lead anywhere): said as a warning, never followed, never reported as delivered."""
    for n, status in enumerate((302, 301, 303, 307)):
        with Redirecting(status) as hook:
            configure(lab1, make_build(tmp_path, f"moved{n}"), notify={"url": hook.url})
            deployed = lab1.fab("deploy")
            assert deployed.returncode == 0, deployed.stderr
            assert [(m, p) for m, p, _ in hook.requests] == [("POST", "/hooks/deploys?token=s3cret")], status
            port = hook.server.server_port
            said = (
                f"cutover: warning: notify: POST http://127.0.0.1:{port}/...: answered {status}, a redirect to "
                f"http://127.0.0.1:{port}/..., not followed (the JSON would not arrive): set notify.url to the "
                "address it redirects to"
            )
            assert said in deployed.stderr, deployed.stderr
            assert "notify: POST" not in deployed.stdout
            assert "elsewhere" not in deployed.stdout + deployed.stderr and "s3cret" not in deployed.stderr


def test_a_notify_command_that_leaves_a_process_in_the_background_is_not_waited_for(lab1, tmp_path):
    """`cmd &` in the command: the shell exits at once, and what it left running holds the output
    open. The outcome is the shell's exit status, the run does not wait, and the process left in
    the background (the operator's to keep) is not killed."""
    pidfile, said = tmp_path / "background.pid", tmp_path / "said"
    command = f"(exec sleep 60) & echo $! > {pidfile}; echo started; cat > {said}"
    configure(lab1, make_build(tmp_path, "bg"), notify={"command": command, "timeout": 30})
    started = time.monotonic()
    deployed = lab1.fab("deploy")
    took = time.monotonic() - started
    pid = int(pidfile.read_text())
    try:
        assert deployed.returncode == 0, deployed.stderr
        assert "notify: command exited 0" in deployed.stdout
        assert "warning" not in deployed.stderr, deployed.stderr
        assert took < 15, took  # not the 30 s of notify.timeout
        assert not process_gone(pid)  # left running, as `&` asked
        assert json.loads(said.read_text())["result"] == "ok"
    finally:
        if not process_gone(pid):
            os.kill(pid, 9)


def test_a_webhook_url_with_a_user_and_password_sends_them_as_basic_auth(lab1, tmp_path):
    """http://user:pass@host/...: urllib took 'user:pass@host' for the host name ("Name or service
    not known"); the credentials go in an Authorization header, and never into the log."""
    with Hook() as hook:
        port = hook.server.server_port
        url = f"http://deployer:s3cret%21@127.0.0.1:{port}/hooks/deploys"
        configure(lab1, make_build(tmp_path, "auth"), notify={"url": url})
        deployed = lab1.fab("deploy")
        assert deployed.returncode == 0, deployed.stderr
        assert f"notify: POST http://127.0.0.1:{port}/...: answered 200" in deployed.stdout, deployed.stderr
        [(path, headers, body)] = hook.posts
        assert path == "/hooks/deploys" and json.loads(body)["result"] == "ok"
        assert headers["Authorization"] == "Basic " + base64.b64encode(b"deployer:s3cret!").decode()
        assert "s3cret" not in deployed.stdout + deployed.stderr and "deployer" not in deployed.stdout


def test_a_notify_command_that_prints_without_end_costs_neither_memory_nor_disk(tmp_path):
    """Its output is read as it comes, its end kept: 300 MB of it peaked at 1.1 GB of memory before
    the warning kept 500 characters (and a file instead of the pipe would fill the disk)."""
    probe = (
        "import sys, tempfile\n"
        "tempfile.tempdir = sys.argv[1]\n"
        "from tasks import notify\n"
        "from tasks.config import Notify\n"
        "data = {'error': None, 'command': 'deploy', 'result': 'ok', 'exit_code': 0, 'release': 'r', "
        "'target': 't', 'text': 'x'}\n"
        "ok, said = notify._run_command(Notify(command='head -c 300000000 /dev/zero; echo the end; exit 3', "
        "timeout=60), data, b'{}')\n"
        "peak = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')][0]\n"
        "print(ok, repr(said[-20:]), peak, sep='|')\n"
    )
    temp = tmp_path / "temp"
    temp.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", probe, str(temp)], cwd=PROJECT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    ok, said, peak_kb = done.stdout.strip().split("|")
    assert int(peak_kb) < 100_000, f"peak {int(peak_kb) // 1024} MB"
    assert (ok, said) == ("False", repr("\x00" * 13 + "the end"))
