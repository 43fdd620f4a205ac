"""What fab costs on the operator's machine: the build check and the digest cache per file, and
what `fab --list` and a deploy import. Costs are compared with a bare walk of the same tree in the
same test (CPU time of this thread), so the bounds hold on a slower or busier machine."""

import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import buildfiles, manifest, release
from tasks.config import Build

from .conftest import PROJECT, accepted, configure, current, descendants, make_build, processes, releases

FILES = 5000


def many_files(path, count=FILES):
    """A build of `count` small files in 50 directories, with an index.html."""
    path.mkdir()
    (path / "index.html").write_text("<p>x</p>\n")
    for i in range(count - 1):
        sub = path / "assets" / f"d{i % 50:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}.js").write_bytes(b"x" * (i % 97))
    return path


def cpu_of(fn, runs=5):
    """Median CPU time (this thread) of fn() over `runs` calls."""
    times = []
    for _ in range(runs):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return statistics.median(times)


def bare_walk(path):
    """What any build check must do: list every directory and stat every file once."""
    count = 0
    for root, _, names in os.walk(path):
        for name in names:
            os.lstat(os.path.join(root, name))
            count += 1
    return count


def test_the_build_check_costs_little_more_than_listing_the_build(tmp_path):
    """The exclusion rules (ALWAYS and build.exclude) are matched once per name, not rule by rule
    and part by part of every path."""
    build = Build(
        path=many_files(tmp_path / "site"),
        required=("index.html",),
        exclude=("*.psd", "/drafts", "node_modules", "/assets/d07/private", "*.map"),
    )
    assert release.check_build(build).files == FILES
    walk = cpu_of(lambda: bare_walk(build.path))
    check = cpu_of(lambda: release.check_build(build))
    assert check < 2.5 * walk, f"the build check took {check * 1000:.1f} ms of CPU, a bare walk {walk * 1000:.1f} ms"


def test_an_unchanged_builds_digests_plan_and_record_cost_little_per_file(tmp_path, monkeypatch):
    """With every digest cached: reading the cache, the prelink's plan and recording the release
    cost less than walking the build once (JSON, encoded piece by piece, cost 1.4 walks)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(manifest, "RACY_NS", 0)  # every file written long ago: every digest is kept
    build = Build(path=many_files(tmp_path / "site"), required=())
    info = release.check_build(build)
    digests = manifest.build_files(build.path, info.stats)

    class Host:
        host, port, deploy_to = "web1", 22, "/var/www/site"

    manifest.remember([Host], "20261203T000000.000Z", digests)
    ids = iter(f"20261203T0000{i:02d}.000Z" for i in range(1, 60))

    def bookkeeping():
        files = manifest.build_files(build.path, info.stats)
        [plan] = manifest.plans([Host], files)
        assert plan["unlink"] == [] and plan["expect"].startswith("20261203T0000")
        manifest.remember([Host], next(ids), files)

    # the least CPU of 9 runs each: a busy neighbour (the other test worker) evicts caches and
    # slows both, the short walk (10 ms here) most. Taken so, the cost is 0.5 walks here, alone or
    # beside two busy processes (the median of 5 runs was 0.6-0.75, and 1.4 in a loaded CI run); JSON's 1.4
    walk = min(cpu_of(lambda: bare_walk(build.path), runs=1) for _ in range(9))
    cost = min(cpu_of(bookkeeping, runs=1) for _ in range(9))
    assert cost < walk, f"digests, plan and remember took {cost * 1000:.1f} ms of CPU, a bare walk {walk * 1000:.1f} ms"


NAMES = ["index.html", "a.psd", ".git", "node_modules", "x~", "drafts", "app.js", "b.map", ".ssh", "Thumbs.db", "d e"]
RULES = ["*.psd", "/drafts", "node_modules", "/assets/drafts", "*.map", "a/b/c", "/x*/y", "?.js", "d e"]


@settings(max_examples=60, deadline=None)
@given(
    paths=st.lists(st.lists(st.sampled_from(NAMES + ["assets", "a", "b", "c", "x1", "y"]), min_size=1, max_size=4),
                   min_size=1, max_size=25),
    exclude=st.lists(st.sampled_from(RULES), max_size=5, unique=True),
)  # fmt: skip
def test_the_build_check_takes_exactly_what_the_rules_leave_in(tmp_path_factory, paths, exclude):
    """Against buildfiles.excluded, path by path: a file is counted when no rule leaves it or a
    directory above it out."""
    site = tmp_path_factory.mktemp("site")
    (site / "index.html").write_text("x")
    files = {"index.html"}
    for parts in paths:
        path = site.joinpath(*parts)
        if any(p.is_file() for p in [path, *path.parents] if site in p.parents):
            continue  # a file where a directory would go
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        files.add("/".join(parts))
    build = Build(path=site, required=(), exclude=tuple(exclude))
    rules = buildfiles.rules(build)

    def left_out(rel):
        parts = rel.split("/")
        return any(buildfiles.excluded(rules, "/".join(parts[: i + 1])) for i in range(len(parts)))

    expected = sorted(rel for rel in files if not left_out(rel))
    if not expected:
        return  # an empty build is refused; tested elsewhere
    assert sorted(release.check_build(build).stats) == expected


def test_the_build_check_still_refuses_links_that_lead_outside_and_reads_only_links(tmp_path, monkeypatch):
    site = many_files(tmp_path / "site", 200)
    (site / "assets" / "up").symlink_to("../../elsewhere")
    (site / "assets" / "d01" / "in").symlink_to("../d02")
    read = []
    real = os.readlink
    monkeypatch.setattr(os, "readlink", lambda p, *a, **k: read.append(Path(p).name) or real(p, *a, **k))
    with pytest.raises(Exception) as refused:
        release.check_build(Build(path=site, required=()))
    assert "assets/up -> ../../elsewhere" in str(refused.value)
    assert sorted(read) == ["in", "up"]


# What `fab` loads for a task is its module and what the task runs: `fab --list` and `fab --help`
# need the task definitions only. Run in a fresh interpreter, the new modules listed at exit.
LOADED = """
import atexit, json, sys
import fabric.main
before = set(sys.modules)
atexit.register(lambda: print(json.dumps(sorted(set(sys.modules) - before)), file=sys.stderr))
fabric.main.program.run(["fab", *sys.argv[1:]])
"""
TASK_MODULES = {"tasks.backups", "tasks.check", "tasks.deploy", "tasks.init", "tasks.maintenance", "tasks.releases",
                "tasks.rollback", "tasks.run", "tasks.sandbox", "tasks.setup"}  # fmt: skip
# what the definitions name: the task boundary, errors, help texts, what Cutover prints
DEFINITIONS = {"fabfile", "tasks", "tasks.cli", "tasks.errors", "tasks.result", "tasks.executor", "tasks.output"}


def loaded(*args, env=None):
    """(the modules fab loaded beyond Fabric's own, its CompletedProcess)."""
    result = subprocess.run([sys.executable, "-c", LOADED, *args], cwd=PROJECT, env={**os.environ, **(env or {})},
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    return set(json.loads(result.stderr.strip().splitlines()[-1])), result


@pytest.mark.parametrize("args", [["--list"], ["--help", "deploy"], ["--help", "backup"]])
def test_listing_the_tasks_loads_their_definitions_only(args):
    modules, result = loaded(*args)
    assert result.returncode == 0, result.stderr
    own = {m for m in modules if m.split(".")[0] in ("fabfile", "tasks", "lab")}
    assert own - TASK_MODULES - DEFINITIONS == set()
    assert modules & {"urllib.request", "http.client", "html"} == set()


def test_a_deploy_loads_what_it_runs_only(lab1, tmp_path):
    """No notifier configured: no HTTP client; no migration, backup, maintenance page, git build,
    check or setup code; with a root deploy user no swap helper."""
    configure(lab1, make_build(tmp_path, "loaded"))
    env = {"CUTOVER_HOSTS_FILE": str(lab1.hosts_file), "XDG_CACHE_HOME": str(lab1.lab.root / "cache")}
    modules, result = loaded("deploy", env=env)
    assert result.returncode == 0, result.stderr
    assert "deployed" in result.stdout
    unused = {"urllib.request", "http.client", "html", "tasks.gitbuild",
              "tasks.steps.backup", "tasks.steps.balancer", "tasks.swaphelper", "tasks.remote.views",
              "tasks.remote.health"}  # fmt: skip
    assert modules & unused == set()


@pytest.mark.parametrize("told_not_to", [False, True])
def test_fab_keeps_cutovers_modules_compiled_unless_python_is_told_not_to(tmp_path, told_not_to):
    """Invoke turns off .pyc writing before it loads the fabfile; Cutover's modules are cached
    anyway, as an installed package's are, unless PYTHONDONTWRITEBYTECODE says otherwise."""
    tree = tmp_path / "cutover"
    tree.mkdir()
    for name in ("fabfile.py", "fabric.yaml", "tasks"):
        copy = shutil.copytree if (PROJECT / name).is_dir() else shutil.copy2
        copy(
            PROJECT / name,
            tree / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if name == "tasks" else {}),
        )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if told_not_to:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    result = subprocess.run([sys.executable, "-m", "fabric", "--list"], cwd=tree, env=env, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    cached = {p.name.split(".")[0] for p in tree.glob("tasks/__pycache__/*.pyc")}
    tasks = {m.removeprefix("tasks.") for m in TASK_MODULES}
    assert cached == set() if told_not_to else tasks <= cached, sorted(cached)


EXIT_CPU = """
import atexit, resource, sys
import fabric.main
atexit.register(lambda: print(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), file=sys.stderr))
fabric.main.program.run(["fab", "--list"])
"""


def test_fab_exits_without_walking_every_object_it_loaded():
    """Python's last garbage collection at exit walks every object still alive: about 30 ms of CPU
    for what Fabric and Cutover load. They live until the exit anyway: frozen, they are not walked."""
    spent = []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = subprocess.run([sys.executable, "-c", EXIT_CPU], cwd=PROJECT, capture_output=True, text=True,
                                timeout=60)  # fmt: skip
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        assert result.returncode == 0, result.stderr
        at_exit = float(result.stderr.strip().splitlines()[-1])
        spent.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime - at_exit)
    assert statistics.median(spent) < 0.015, f"CPU after the task: {[round(s * 1000, 1) for s in spent]} ms"


def seen_during_the_check(handle, tmp_path, seen):
    """`fab deploy` held before its build check (while its connections open) until seen() holds,
    at most 10 s: (whether seen() held then, fab's stdout). The deploy must succeed."""
    hold = tmp_path / "check-held"
    fab = handle.held("check", hold, "deploy")
    try:
        deadline = time.monotonic() + 10
        while not seen() and time.monotonic() < deadline:
            time.sleep(0.02)
        was = seen()
    finally:
        hold.unlink()
    out, err = fab.communicate(timeout=120)
    assert fab.returncode == 0, err
    return was, out


def test_a_deploy_opens_its_connections_while_the_build_is_checked(lab1, tmp_path):
    configure(lab1, make_build(tmp_path, "overlap"))
    server = lab1.servers[0]
    before = accepted(server)
    logged_in, out = seen_during_the_check(lab1, tmp_path, lambda: accepted(server) > before)
    assert logged_in
    assert current(server) == re.search(r"^deployed (\S+) to 1 host", out, re.M)[1]


def test_a_deploy_starts_its_server_side_agents_while_the_build_is_checked(lab1, tmp_path):
    configure(lab1, make_build(tmp_path, "agent early"))
    server = lab1.servers[0]
    agent = lambda: processes(lambda argv: argv[-2:] == [b"serve", b""], under=server.sshd_pid)  # noqa: E731
    started, out = seen_during_the_check(lab1, tmp_path, agent)
    assert started
    assert current(server) == re.search(r"^deployed (\S+) to 1 host", out, re.M)[1]


def test_a_server_silent_after_its_login_is_waited_for_once(lab1, monkeypatch):
    """The agent a deploy starts beside the build check meets a server that went silent after
    the login: its first call says so at once, as it did when it started the agent itself,
    instead of waiting a second time."""
    import signal

    from tasks import fleet, ssh
    from tasks.errors import RemoteError

    monkeypatch.setattr(fleet, "STEP_TIMEOUT", 2)  # how long the agent's start waits for the channel
    server, stopped = lab1.servers[0], []
    real = ssh.connect

    def connect_then_silent(host):
        conn = real(host)
        for pid in descendants(server.sshd_pid):  # this connection's sshd processes
            try:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            except ProcessLookupError:
                pass  # a short-lived one, ended since it was listed
        return conn

    monkeypatch.setattr(ssh, "connect", connect_then_silent)
    run = fleet.Run.of("deploy", [lab1.host()])
    try:
        start = time.monotonic()
        fleet.connect(run, True)
        with pytest.raises(RemoteError) as err:
            run.hosts[0].call("preflight", "preflight", timeout=2)
        took = time.monotonic() - start
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        fleet.close(run)
    assert stopped
    assert err.value.message == "preflight: the connection failed: SSHException: Timeout opening channel."
    assert 2 <= took < 3.5, f"{took:.1f} s"


def test_a_refused_build_is_said_at_once_while_a_host_stays_silent(lab1, tmp_path):
    """The connections that open beside the build check do not hold its refusal: a host that
    accepts TCP and never answers (ssh's timeout is 10 s) delays nothing, and changes nothing."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = lab1.servers[0].ssh_port
    text = lab1.hosts_file.read_text()
    assert text.count(f"port: {port}\n") == 1
    hosts_file = tmp_path / "hosts.yaml"
    hosts_file.write_text(text.replace(f"port: {port}\n", f"port: {silent.getsockname()[1]}\n"))
    before = releases(lab1.servers[0]), current(lab1.servers[0])
    try:
        start = time.monotonic()
        result = lab1.fab("deploy", "--build", str(tmp_path / "no-such-build"), hosts_file=hosts_file, timeout=60)
        took = time.monotonic() - start
    finally:
        silent.close()
    assert result.returncode == 2, result.stderr
    assert f"the build {tmp_path / 'no-such-build'} does not exist or is not a directory" in result.stderr
    assert took < 5, f"the refusal took {took:.1f} s"
    assert (releases(lab1.servers[0]), current(lab1.servers[0])) == before
