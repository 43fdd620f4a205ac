"""Murphy's law: faults, races and hostile input against lab servers.

After every fault the site must answer 200 with one complete release (old or new), no httpd
process may be stopped, shared/ must be unchanged, the lock must be free or held by a dead
owner, and the next deploy must succeed.
"""

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.loadgen import LoadGen
from tasks import agent, hostsfile, ssh
from tasks.errors import ConfigError
from tasks.remote.paths import Layout

from .conftest import PROJECT, configure, current, history, known_bodies, make_build, releases, start_lab, stop_lab
from .conftest import stopped_httpd as stopped

# --- the checks after every fault ------------------------------------------------------------


def shared_snapshot(server):
    root = Path(server.deploy_to, "shared")
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def fetch(server, path, source="127.0.0.1"):
    """A GET from source (maintenance lets 127.0.0.1 through; 127.0.0.2 is a visitor)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def deploy_until_smoking(handle, marker, **env):
    """`fab deploy` in the background, returned once its smoke command has touched `marker`."""
    env = dict(os.environ, CUTOVER_HOSTS_FILE=str(handle.hosts_file), **env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabric", "deploy"], cwd=PROJECT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert poll(marker.exists, seconds=20), "the smoke test never ran"
    return proc


def poll(predicate, seconds=15):
    """Whether predicate() comes true within `seconds`."""
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def wait_resumed(server, seconds=10):
    deadline = time.monotonic() + seconds
    while stopped(server) and time.monotonic() < deadline:
        time.sleep(0.02)
    swap_pid = Path(server.deploy_to, ".cutover", "swap.pid")
    while swap_pid.exists() and time.monotonic() < deadline:  # the detached swap may still verify
        try:
            os.kill(int(swap_pid.read_text().split()[0]), 0)
        except (ProcessLookupError, ValueError):
            break
        time.sleep(0.02)


def lock_state(handle, server):
    host = handle.host(server.name)
    with ssh.connect(host) as conn:
        return agent.call(conn, host.name, host.python, "state", "state", {"deploy_to": host.deploy_to}, 30)["lock"]


def assert_whole(handle, known, shared_before, build_next):
    """The post-conditions of every fault case."""
    for server in handle.servers:
        wait_resumed(server)
        assert stopped(server) == [], "httpd left stopped"
        labels = set()
        for path in ("/", "/assets/style.css"):
            status, body = fetch(server, path)
            assert status == 200, (path, status)
            matches = [label for label, b in known[path].items() if b == body]
            assert matches, f"{path} is not one complete release"
            labels.add(matches[0])
        assert len(labels) == 1, f"page and stylesheet from different releases: {labels}"
        assert current(server) in releases(server)
        assert shared_snapshot(server) == shared_before[server.name]
        # free, or held by a dead run: once what the killed run started on the server has ended
        # (a smoke command runs on to its end), its lock can be cleared
        assert poll(lambda s=server: (o := lock_state(handle, s)) is None or o["alive"] is False, seconds=30)
    configure(handle, build_next)
    result = handle.fab("deploy", "--force-unlock")
    assert result.returncode == 0, result.stderr
    for server in handle.servers:
        assert fetch(server, "/")[1] == (build_next / "index.html").read_bytes()


def prepare(handle, tmp_path, extra=None):
    """Deploy release 'old' with something in shared/; return builds and the shared snapshot."""
    old = make_build(tmp_path, "old")
    configure(handle, old)
    assert handle.fab("deploy").returncode == 0
    for server in handle.servers:
        Path(server.deploy_to, "shared", "media", "upload.jpg").write_bytes(b"user upload " * 100)
    new = make_build(tmp_path, "new", extra)
    nxt = make_build(tmp_path, "next")
    known = known_bodies(old, new, nxt)
    return new, nxt, known, {s.name: shared_snapshot(s) for s in handle.servers}


# --- 1. the local fab killed at each step ----------------------------------------------------

DEPLOY_KILLS = {
    "after lock": ("upload", {}, None),
    "mid upload": ("upload:0.3", {}, {f"big/{i}.bin": os.urandom(1_000_000) for i in range(40)}),
    "mid smoke": ("stage:0.3", {"smoke": {"commands": ["sleep 1"]}}, None),
    "after smoke and promote": ("swap", {}, None),
    "during the swap": ("swap:0.4", {"hold": 1200}, None),
    "after the swap, before clean up": ("finish", {}, None),
}


@pytest.mark.parametrize("case", list(DEPLOY_KILLS))
def test_deploy_killed(lab1, tmp_path, case):
    """fab killed at this step of a deploy: no request fails and every answer is one whole release; then
    the site answers 200 with one whole release, no httpd is stopped, shared/ is unchanged, the lock is
    free or its owner dead, and the next deploy succeeds."""
    kill_at, settings_, extra = DEPLOY_KILLS[case]
    new, nxt, known, shared = prepare(lab1, tmp_path, extra)
    hold = settings_.pop("hold", 0)
    configure(lab1, new, **settings_)
    with LoadGen(lab1.servers[0].url, paths=("/", "/assets/style.css"), threads=2) as load:
        result = lab1.fab("deploy", env={"CUTOVER_TEST_KILL_AT": kill_at, "CUTOVER_TEST_HOLD_PAUSE_MS": str(hold)})
        wait_resumed(lab1.servers[0])
    assert result.returncode == -signal.SIGKILL
    assert load.failures() == [] and load.unknown(known) == []
    if case == "after smoke and promote":
        # the promoted release was never live: a rollback must not pick it
        promoted = releases(lab1.servers[0])
        assert len(promoted) == 3 and current(lab1.servers[0]) == promoted[1]
    configure(lab1, nxt)
    assert_whole(lab1, known, shared, nxt)


@pytest.mark.parametrize("kill_at,hold", [("swap", 0), ("swap:0.4", 1200), ("finish", 0)])
def test_rollback_killed(lab1, tmp_path, kill_at, hold):
    """fab killed at this step of a rollback; then the site answers 200 with one whole release, no httpd is
    stopped, shared/ is unchanged, the lock is free or its owner dead, and the next deploy succeeds."""
    new, nxt, known, shared = prepare(lab1, tmp_path)
    configure(lab1, new)
    assert lab1.fab("deploy").returncode == 0
    result = lab1.fab("rollback", env={"CUTOVER_TEST_KILL_AT": kill_at, "CUTOVER_TEST_HOLD_PAUSE_MS": str(hold)})
    assert result.returncode == -signal.SIGKILL
    assert_whole(lab1, known, shared, nxt)


def test_rollback_never_picks_a_release_that_was_never_live(lab1, tmp_path):
    """A release that a killed deploy promoted but never switched to is skipped: rollback lands on the
    release live before."""
    new, nxt, known, shared = prepare(lab1, tmp_path)
    server = lab1.servers[0]
    first = current(server)
    configure(lab1, new)
    assert lab1.fab("deploy", env={"CUTOVER_TEST_KILL_AT": "swap"}).returncode == -signal.SIGKILL
    configure(lab1, nxt)
    assert lab1.fab("deploy", "--force-unlock").returncode == 0
    never_live = [r for r in releases(server) if r not in (first, current(server)) and "placeholder" not in r]
    assert len(never_live) == 1
    result = lab1.fab("rollback")
    assert result.returncode == 0, result.stderr
    assert current(server) == first


# --- 2 and 3. the connection cut, the swap killed ---------------------------------------------


def test_ssh_connection_cut_during_the_swap(lab1, tmp_path):
    """The sshd process of the connection killed inside the pause: httpd resumes, fab exits 4 naming the
    swap and the connection; then the site answers 200 with one whole release, no httpd is stopped,
    shared/ is unchanged, the lock is free or its owner dead, and the next deploy succeeds."""
    new, nxt, known, shared = prepare(lab1, tmp_path)
    server = lab1.servers[0]
    configure(lab1, new)
    env = dict(os.environ, CUTOVER_HOSTS_FILE=str(lab1.hosts_file), CUTOVER_TEST="1", CUTOVER_TEST_HOLD_PAUSE_MS="1500")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabric", "deploy"],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while not stopped(server) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert stopped(server), "httpd was never paused"
    owner = Path(server.deploy_to, ".cutover", "lock", "owner.json").read_text()
    import json

    session = json.loads(owner)["session_pid"]
    os.kill(session, signal.SIGKILL)  # the sshd process of this deploy's connection: the cable is pulled
    cut = time.monotonic()
    out, err = proc.communicate(timeout=60)
    wait_resumed(server)
    assert time.monotonic() - cut < 1.5 + 5 + 1
    assert proc.returncode == 4
    assert "lab1: swap: " in err and "connection" in err, err
    assert current(server) in releases(server)
    assert_whole(lab1, known, shared, nxt)


def test_a_silent_network_ends_the_run_with_a_clear_error(lab1, tmp_path):
    """The connection goes silent during the smoke test: fab exits 4 at the step's timeout with that
    message, the abort path does not wait again, the live release is unchanged; then the site answers
    200 with one whole release, no httpd is stopped, shared/ is unchanged, the lock is free or its owner
    dead, and the next deploy succeeds."""
    # The sshd process of the deploy's connection is stopped while the smoke test runs: the
    # TCP connection stays up, but nothing comes back, as when a link goes silent.
    new, nxt, known, shared = prepare(lab1, tmp_path)
    server = lab1.servers[0]
    marker = tmp_path / "smoking"
    before = current(server)
    configure(lab1, new, smoke={"commands": [f"touch {marker}; sleep 1"], "timeout": 3})
    proc = deploy_until_smoking(lab1, marker, CUTOVER_TEST="1", CUTOVER_TEST_MARGIN="2")
    import json

    session = json.loads(Path(server.deploy_to, ".cutover", "lock", "owner.json").read_text())["session_pid"]
    os.kill(session, signal.SIGSTOP)
    silent = time.monotonic()
    try:
        out, err = proc.communicate(timeout=60)
        ended = time.monotonic() - silent
    finally:
        os.kill(session, signal.SIGCONT)
    # the stage step's timeout: one smoke command of 3 s plus the margin of 2 s
    assert proc.returncode == 4, err
    assert ended < 3 + 2 + 3, ended
    assert "lab1: stage: no answer from the server within 5 s (the network or the server is silent)" in err
    assert "could not clean up" in err and "not sent: the connection was lost earlier" in err
    assert "its lock stays until --force-unlock" in err
    assert current(server) == before  # the failure came before the switch
    assert_whole(lab1, known, shared, nxt)


# --- 4 and 5. two operators at once, a dead owner's lock -------------------------------------


@pytest.mark.parametrize("second", ["deploy", "rollback"])
def test_two_runs_at_the_same_instant(lab1, tmp_path, second):
    """Two runs that reach their lock step at the same instant (each held before it until both are
    there, however slowly a loaded machine starts them): one succeeds, the other exits 5 naming who
    holds the lock; then the site answers 200 with one whole release, no httpd is stopped, shared/
    is unchanged, the lock is free or its owner dead, and the next deploy succeeds."""
    new, nxt, known, shared = prepare(lab1, tmp_path)
    configure(lab1, new)
    assert lab1.fab("deploy").returncode == 0  # so that a rollback has somewhere to go
    configure(lab1, nxt)
    holds = [tmp_path / f"hold-{n}" for n in range(2)]
    procs = []
    for cmd, hold in zip(("deploy", second), holds):
        hold.touch()
        env = dict(os.environ, CUTOVER_HOSTS_FILE=str(lab1.hosts_file), CUTOVER_TEST="1",
                   CUTOVER_TEST_HOLD_PAUSE_MS="800", CUTOVER_TEST_HOLD_AT=f"lock:{hold}")  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-m", "fabric", cmd], cwd=PROJECT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    try:
        assert poll(lambda: all(Path(f"{h}.waiting").exists() for h in holds), seconds=60), "a run never got there"
    finally:
        for hold in holds:
            hold.unlink()
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 5], results
    loser = next(err for code, err in results if code == 5)
    assert "lab1: locked by root@" in loser and "wait for that run to finish" in loser
    assert_whole(lab1, known, shared, make_build(tmp_path, "after"))


# --- 6. the disk fills up during the upload ---------------------------------------------------


def test_disk_full_during_upload(tmp_path):
    """The disk fills up during the upload: exit 4 saying so, the live release and the kept releases
    unchanged, no incoming dir or lock left; then the site answers 200 with one whole release, no httpd
    is stopped, shared/ is unchanged, the lock is free or its owner dead, and the next deploy succeeds."""
    handle, root = start_lab(1, tmpfs_mb=12)
    try:
        new, nxt, known, shared = prepare(handle, tmp_path, {f"big/{i}.bin": os.urandom(1_000_000) for i in range(20)})
        server = handle.servers[0]
        before = (current(server), releases(server))
        configure(handle, new)
        result = handle.fab("deploy")
        assert result.returncode == 4
        assert "the server's disk is full" in result.stderr
        assert (current(server), releases(server)) == before
        assert not list(Path(server.deploy_to, "releases").glob(".incoming-*"))
        assert not Path(server.deploy_to, ".cutover", "lock").exists()
        assert_whole(handle, known, shared, nxt)
    finally:
        stop_lab(handle, root)


# --- 7. a pidfile that lies -------------------------------------------------------------------


def _pidfile(kind, tmp_path):
    path = tmp_path / f"{kind.replace(' ', '-')}.pid"
    if kind == "stale":
        p = subprocess.Popen(["true"])
        p.wait()
        path.write_text(f"{p.pid}\n")
    elif kind == "not httpd":
        p = subprocess.Popen(["sleep", "60"])
        path.write_text(f"{p.pid}\n")
        return path, p
    return path, None


@pytest.mark.parametrize(
    "kind,message",
    [
        ("missing", "does not exist: Apache is not running"),
        ("stale", "which is not running (stale pidfile)"),
        ("not httpd", "which is 'sleep', not httpd"),
    ],
)
def test_a_lying_pidfile_is_refused_before_anything_pauses(lab1, tmp_path, kind, message):
    """A pidfile that names no process, another program or no PID: refused with that reason before anything
    pauses; nothing stopped, nothing switched."""
    new, nxt, known, shared = prepare(lab1, tmp_path)
    server = lab1.servers[0]
    path, proc = _pidfile(kind, tmp_path)
    try:
        before = (current(server), releases(server))
        configure(lab1, new)
        lab1.hosts_file.write_text(lab1.hosts_file.read_text().replace(server.pidfile, str(path)))
        result = lab1.fab("deploy")
        assert result.returncode == 4
        assert message in result.stderr
        assert (current(server), releases(server)) == before
        if proc is not None:
            assert Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T"
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
    configure(lab1, nxt)
    assert_whole(lab1, known, shared, nxt)


# --- 8. hostile input -------------------------------------------------------------------------

NASTY = st.one_of(
    st.sampled_from(
        [
            "$(touch CANARY)",
            "`touch CANARY`",
            "; touch CANARY",
            "| touch CANARY",
            "&& touch CANARY",
            "\ntouch CANARY",
            "../../../../tmp/CANARY",
            "/tmp/CANARY",
            "'\"; touch CANARY #",
            "x" * 5000,
        ]
    ),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=200),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=NASTY)
def test_every_remote_word_is_quoted(lab2, value):
    """Each value reaches the server byte for byte through the one quoting function (printf round trip)."""
    host = lab2.host()
    with ssh.connect(host) as conn:
        out = ssh.run(conn, "echo", ["printf", "%s", value])
    assert out.stdout == value


@settings(max_examples=200, deadline=None)
@given(
    value=NASTY,
    field=st.sampled_from(
        ["deploy_to", "user", "python", "shared", "pidfile", "health", "host", "name", "allow", "required"]
    ),
)
def test_hosts_file_values_are_refused_or_harmless(tmp_path_factory, value, field):
    """Each value is refused with file:line:key, or accepted only when free of shell metacharacters and '..'."""
    import yaml

    host = {"host": "web1.example.com"}
    defaults = {"deploy_to": "/var/www/site"}
    if field in ("deploy_to", "user", "python"):
        defaults[field] = value
    elif field == "shared":
        defaults["shared"] = [value]
    elif field == "pidfile":
        defaults["httpd"] = {"pidfile": value}
    elif field == "health":
        defaults["health"] = {"url": value}
    elif field == "allow":
        defaults["maintenance"] = {"allow": [value]}
    elif field == "required":
        defaults["build"] = {"required": [value]}
    else:
        host[field] = value
    path = tmp_path_factory.mktemp("h") / "hosts.yaml"
    path.write_text(yaml.safe_dump({"defaults": defaults, "groups": {"g": [host]}}))
    try:
        h = hostsfile.load(path).resolve("g")[0]
    except ConfigError as exc:
        assert str(exc).startswith(str(path))
        return
    for server_value in (
        h.deploy_to,
        h.user or "",
        h.python,
        h.httpd.pidfile,
        h.host,
        h.name,
        *h.shared,
        *h.maintenance.allow,
    ):
        assert not set(server_value) & set(" \t\n;|&$`'\"<>()*?!\\"), server_value
        assert ".." not in Path(server_value).parts
    for url in h.health.urls:
        assert not set(url) & set(" \t\n")
    for rel in h.build.required:
        assert not rel.startswith("/") and ".." not in Path(rel).parts


CLI = [
    ("rollback", "--to"),
    ("maintenance-on", "--message"),
    ("maintenance-on", "--retry-after"),
    ("history", "-n"),
    ("deploy", "--build"),
]


@pytest.mark.parametrize("which", CLI, ids=[f"{task} {option}" for task, option in CLI])
def test_every_option_refuses_a_very_long_value(lab2, which):
    """Refused with exit 2, no traceback, the value not echoed back whole."""
    task, option = which
    result = lab2.fab(task, option, "x" * 5000)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr) < 1000  # the value is not echoed back whole
    lab2.fab("maintenance-off")


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=NASTY.filter(lambda v: v and not v.startswith("-")), which=st.sampled_from(CLI))
def test_command_line_values_are_refused_or_harmless(lab2, tmp_path_factory, value, which):
    """Refused (exit 2) or harmless (exit 0); no canary file anywhere; no traceback."""
    canary = f"cutover-canary-{os.getpid()}"
    value = value.replace("CANARY", canary)
    task, option = which
    result = lab2.fab(task, option, value)
    assert result.returncode in (0, 2), result.stderr
    assert "Traceback" not in result.stderr
    for where in (Path("/tmp"), PROJECT, Path.home(), *(Path(s.deploy_to) for s in lab2.servers)):
        assert not (where / canary).exists()
    if task == "maintenance-on":
        lab2.fab("maintenance-off")


# --- 9. soak: deploy and rollback cycles under load (bench/soak.py runs 100) ------------------


def test_soak_five_cycles_under_load(lab1, tmp_path):
    """0 failed requests, every response one whole release, no httpd stopped."""
    server = lab1.servers[0]
    builds = [make_build(tmp_path, f"s{i}") for i in range(5)]
    known = known_bodies(*builds, make_build(tmp_path, "example-1"))
    configure(lab1, builds[0])
    assert lab1.fab("deploy").returncode == 0
    with LoadGen(server.url, paths=("/", "/assets/style.css"), threads=3) as load:
        for build in builds:
            configure(lab1, build)
            assert lab1.fab("deploy").returncode == 0
            assert lab1.fab("rollback").returncode == 0
            assert lab1.fab("rollback", "--to", history(server)[-1]["old"]).returncode == 0
    assert len(load.samples) > 500
    assert load.failures() == [] and load.unknown(known) == []
    pauses = [e["pause_ms"] for e in history(server) if e.get("pause_ms") is not None]
    assert len(pauses) == 16 and max(pauses) < 50
    assert stopped(server) == []


# --- torn responses: the file's length from one release, its bytes from the other ------------


def swap_many(handle, count, sizes=(500, 3000)):
    """Switch back and forth between two releases whose page sizes differ, under load."""
    server = handle.servers[0]
    host = handle.host()
    layout = Layout(host.deploy_to)
    bodies = {}
    for i, size in enumerate(sizes):
        release_id = f"2030010{i + 1}T000000Z"
        Path(layout.release(release_id)).mkdir()
        bodies[release_id] = (release_id * 1000)[:size].encode()
        Path(layout.release(release_id), "index.html").write_bytes(bodies[release_id])
    ids = list(bodies)
    with ssh.connect(host) as conn:

        def switch(release_id):
            args = {"pidfile": server.pidfile, "pause": "sigstop", "pause_timeout": 5}
            agent.call(
                conn,
                host.name,
                host.python,
                "swap",
                "swap",
                dict(args, deploy_to=host.deploy_to, release_id=release_id),
                30,
            )

        switch(ids[0])
        with LoadGen(server.url, paths=("/index.html",), threads=4) as load:
            for i in range(count):
                switch(ids[(i + 1) % 2])
    return load, bodies


def test_no_torn_responses_across_many_switches(lab1):
    """0 responses with one release's length and another's bytes over 200 switches under load."""
    load, bodies = swap_many(lab1, 200)
    assert len(load.samples) > 2000
    torn = [(s.status, len(s.body)) for s in load.samples if s.status != 200 or s.body not in bodies.values()]
    assert torn == []
    pin = Path(lab1.servers[0].deploy_to, ".cutover", "release.map").read_text()
    assert pin == "current 20300101T000000Z\nprevious 20300102T000000Z\n"  # the last switch, and the one before


def test_ctrl_c_during_the_smoke_test_stops_at_once_and_says_what_each_host_serves(lab1, tmp_path):
    """Ctrl-C in the middle of a step: fab stops waiting at once, removes its upload, unlocks, and
    says which release each host serves; exit 130."""
    new, nxt, known, shared = prepare(lab1, tmp_path)
    server = lab1.servers[0]
    before = current(server)
    marker = tmp_path / "smoking"
    configure(lab1, new, smoke={"commands": [f"touch {marker}; sleep 4"]})
    proc = deploy_until_smoking(lab1, marker)
    proc.send_signal(signal.SIGINT)
    pressed = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - pressed < 2.5  # not the 4 s the smoke command still runs
    assert proc.returncode == 130, err
    assert f"cutover: error: interrupted\n  the site now: lab1 serves {before}" in err
    assert current(server) == before
    wait_until_gone = time.monotonic() + 10
    while Path(server.deploy_to, ".cutover", "lock").exists() and time.monotonic() < wait_until_gone:
        time.sleep(0.05)
    assert not Path(server.deploy_to, ".cutover", "lock").exists()

    # the abandoned smoke command ends on the server; nothing of that run may go live after it
    def smoke_running():
        for proc_dir in Path("/proc").iterdir():
            try:
                if str(marker).encode() in (proc_dir / "cmdline").read_bytes():
                    return True
            except OSError:
                continue  # exited since the listing
        return False

    gone = time.monotonic() + 15
    while smoke_running() and time.monotonic() < gone:
        time.sleep(0.05)
    assert not smoke_running()
    assert current(server) == before
    assert_whole(lab1, known, shared, nxt)


def test_ctrl_c_before_the_task_starts_says_so():
    """Ctrl-C while fab loads the tasks: a message and exit 130, not invoke's silent exit 1."""
    code = "import fabfile, os, signal, time; os.kill(os.getpid(), signal.SIGINT); time.sleep(5)"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 130
    assert result.stderr == "cutover: interrupted before the task started; nothing was changed\n"


# --- backups and migrations cut short ---------------------------------------------------------


def test_backup_killed_while_visitors_are_held(lab1, tmp_path):
    """fab killed with maintenance on for a backup: nothing was changed, so the server itself turns
    maintenance off, removes the incomplete backup and frees the lock; the next backup just runs."""
    server = lab1.servers[0]
    build = make_build(tmp_path, "b")
    configure(lab1, build, backups={"hold": 5})
    assert lab1.fab("deploy").returncode == 0
    page = Path(server.deploy_to, "maintenance", "index.html")
    result = lab1.fab("backup", env={"CUTOVER_TEST_KILL_AT": "hold:0.5"})
    assert result.returncode == -signal.SIGKILL
    assert poll(lambda: not page.exists())
    assert poll(lambda: not Path(server.deploy_to, ".cutover", "lock").exists())
    assert list(Path(server.deploy_to, "backups").iterdir()) == []
    assert history(server)[-1]["note"] == "its run went away before changing anything"
    assert fetch(server, "/", source="127.0.0.2")[0] == 200
    configure(lab1, build, backups={"hold": 0})
    again = lab1.fab("backup")
    assert again.returncode == 0, again.stderr


def test_deploy_killed_during_its_migration_leaves_maintenance_on(lab1, tmp_path):
    """fab killed while the migration runs: the database may be half-migrated, so maintenance stays
    on after the server-side run ends and the old release stays live; restoring the backup taken
    before the migration (past the dead run's lock) keeps the window open, a new deploy finishes."""
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "m1"))
    assert lab1.fab("deploy").returncode == 0
    before = current(server)
    migrate = {"command": "sleep 2 && python3 migrations/migrate.py"}
    shop = {"hold": 0, "databases": [{"name": "shop", "kind": "sqlite", "path": "shared/db/shop.sqlite"}]}
    configure(lab1, make_build(tmp_path, "m2"), backups=shop, migrate=migrate)
    result = lab1.fab("deploy", "--migrate", env={"CUTOVER_TEST_KILL_AT": "migrate:0.5"})
    assert result.returncode == -signal.SIGKILL
    marker = Path(server.deploy_to, "shared", "db", "shop.sqlite")
    assert poll(lambda: marker.exists(), seconds=20)  # the migration ran to its end on the server
    owner = json.loads(Path(server.deploy_to, ".cutover", "lock", "owner.json").read_text())
    assert poll(lambda: not Path(f"/proc/{owner['agent_pid']}").exists())  # and the killed run's server side
    assert Path(server.deploy_to, "maintenance", "index.html").exists()
    assert fetch(server, "/", source="127.0.0.2")[0] == 503 and current(server) == before
    # the way back: the backup the killed run took before migrating, restored past its dead lock
    taken = [e for e in history(server) if e["event"] == "backup"][-1]["backup"]
    restored = lab1.fab("restore", "--backup", taken, "--force-unlock")
    assert restored.returncode == 0, restored.stderr
    assert "stays on: it was on before this run" in restored.stdout and not marker.exists()
    rerun = lab1.fab("deploy", "--migrate")
    assert rerun.returncode == 0, rerun.stderr
    assert lab1.fab("maintenance-off").returncode == 0
    assert fetch(server, "/", source="127.0.0.2")[0] == 200 and current(server) != before
