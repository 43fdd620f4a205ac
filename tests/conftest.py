"""Lab fixtures: real sshd and Apache servers on 127.0.0.1, stopped by PID after each module."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import lab
from lab import packages
from tasks import hostsfile

PROJECT = Path(__file__).resolve().parent.parent
CI = os.environ.get("CUTOVER_CI") == "1"  # .ci/run: every test must run, a skip is a failure


def pytest_sessionstart(session):
    """Before any test: every program the lab and the tests run is here (lab/packages.txt), or the
    run ends now naming each missing one and its Debian package. A pipeline's own CI=true (or
    CUTOVER_PLAIN) would make every fab the tests start plain: the tests that want it set it."""
    for name in ("CI", "CUTOVER_PLAIN"):
        os.environ.pop(name, None)
    try:
        problem = packages.problem()
    except ValueError as exc:  # a line of the list without a program
        problem = str(exc)
    if problem:
        raise pytest.UsageError(problem)


def _skip_fails_in_ci(report):
    """In CI, a skip (no cgroup v2 to freeze, no sudo, no ACLs ...) fails, with its reason: a CI
    machine must run everything, and a green run must mean every test ran."""
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, which CI does not allow (CUTOVER_CI=1): {reason.removeprefix('Skipped: ')}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    return _skip_fails_in_ci((yield))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    return _skip_fails_in_ci((yield))  # a whole module skipped (pytest.importorskip ...)


# Test files that change what this machine has once (users, /etc/sudoers.d, the swap helper in
# /usr/local/lib/cutover and its registration in /etc/cutover, the sandbox's fixed ports): under
# pytest-xdist (`make test` runs two workers) they run one after the other, in one worker.
MACHINE_WIDE = {
    "test_bundle", "test_client", "test_lab", "test_lock", "test_offsite", "test_package", "test_preflight",
    "test_preflight_server", "test_run", "test_sandbox", "test_setup", "test_sudoers_python",
}  # fmt: skip


def pytest_configure(config):
    config.addinivalue_line("markers", "xdist_group(name): tests pytest-xdist runs in one worker (--dist loadgroup)")


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups
def pytest_collection_modifyitems(config, items):
    """Each test file stays whole in one worker (its module's lab is started once); the files of
    MACHINE_WIDE share one (xdist's --dist loadgroup)."""
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group("machine-wide" if module in MACHINE_WIDE else module))


class Background:
    """Threads, each running one of `targets` (with its args), while a `with` block lasts and
    at most `seconds`; a target loops while self.running()."""

    def __init__(self, targets, seconds=120):
        self.stop, self.deadline = threading.Event(), time.monotonic() + seconds
        self.threads = [threading.Thread(target=t, args=args, daemon=True) for t, args in targets]

    def running(self):
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def new_lab_dir():
    """A fresh directory for a lab, reachable by Apache's www-data children."""
    parent = tempfile.mkdtemp(prefix="cutover-test-", dir="/tmp")
    os.chmod(parent, 0o755)
    return Path(parent) / "lab"


def process_gone(pid):
    """True once pid has exited (a zombie counts as gone: it serves nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def descendants(pid):
    """Every process below pid: its children (of its main thread), theirs, and so on."""
    out = []
    for child in lab.children(pid):
        out += [child, *descendants(child)]
    return out


def processes(matches, under=None):
    """PIDs of the processes whose argv (a list of bytes) matches(argv) holds: below `under`, or
    anywhere on this machine."""
    found = []
    for pid in descendants(under) if under else [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone since it was listed
        if matches(argv):
            found.append(pid)
    return found


class LabHandle:
    """A running lab plus helpers the tests share."""

    def __init__(self, lab_):
        self.lab = lab_
        self.servers = lab_.servers
        self.hosts_file = lab_.hosts_file

    def inventory(self):
        return hostsfile.load(self.hosts_file)

    def host(self, name="lab1"):
        return self.inventory().resolve(name)[0]

    def fab(self, *args, hosts_file=None, env=None, timeout=300):
        """Run `fab ARGS` in the project with this lab's hosts.yaml; returns CompletedProcess."""
        # CUTOVER_TEST=1: the fault hooks some tests set (tasks/testhooks.py) take effect
        # what fab keeps about builds and releases (tasks/manifest.py): the lab's own, gone with it
        full_env = {
            **os.environ,
            "CUTOVER_HOSTS_FILE": str(hosts_file or self.hosts_file),
            "CUTOVER_TEST": "1",
            "XDG_CACHE_HOME": str(self.lab.root / "cache"),
            **(env or {}),
        }
        return subprocess.run(
            [sys.executable, "-m", "fabric", *args],
            cwd=PROJECT,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def started(self, *args, env=None):
        """`fab ARGS` started, as fab() runs it: a Popen with text pipes, for a test to act on it."""
        full_env = {**os.environ, "CUTOVER_HOSTS_FILE": str(self.hosts_file), "CUTOVER_TEST": "1",
                    "XDG_CACHE_HOME": str(self.lab.root / "cache"), **(env or {})}  # fmt: skip
        return subprocess.Popen([sys.executable, "-m", "fabric", *args], cwd=PROJECT, env=full_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

    def held(self, step, hold, *args, env=None):
        """`fab ARGS` (a Popen, text pipes) held before `step` while the file `hold` exists
        (tasks/testhooks.py, hold_point), returned once it waits there (at most 60 s)."""
        Path(hold).touch()
        fab = self.started(*args, env={"CUTOVER_TEST_HOLD_AT": f"{step}:{hold}", **(env or {})})
        deadline = time.monotonic() + 60
        while not Path(f"{hold}.waiting").exists():
            assert fab.poll() is None and time.monotonic() < deadline, fab.communicate()
            time.sleep(0.02)
        return fab


def start_lab(count, **options):
    root = new_lab_dir()
    handle = LabHandle(lab.start(root, count=count, **options))
    return handle, root


def stop_lab(handle, root):
    pids = lab.pids(handle.lab)
    lab.stop(root)
    os.rmdir(root.parent)
    left = [p for p in pids if not process_gone(p)]
    assert left == [], f"lab processes still running after stop: {left}"


@pytest.fixture(scope="module")
def lab2():
    """Two lab servers shared by the tests of one module (tests must not break them)."""
    handle, root = start_lab(2)
    yield handle
    stop_lab(handle, root)


@pytest.fixture(scope="module")
def lab3():
    """Three lab servers shared by the tests of one module (a group of hosts)."""
    handle, root = start_lab(3)
    yield handle
    stop_lab(handle, root)


@pytest.fixture
def lab_pair():
    """Two lab servers of the test's own, free to be broken."""
    handle, root = start_lab(2)
    yield handle
    stop_lab(handle, root)


@pytest.fixture
def lab1():
    """One lab server of the test's own, free to be broken."""
    handle, root = start_lab(1)
    yield handle
    stop_lab(handle, root)


EXAMPLE = PROJECT / "example" / "site"
LABELLED = ("index.html", "assets/style.css", "assets/app.js")


def make_build(parent, label, extra=None):
    """A copy of the example site whose pages carry `label`; extra: {relative path: bytes}."""
    build = Path(parent) / f"build-{label}"
    shutil.copytree(EXAMPLE, build)
    for rel in LABELLED:
        path = build / rel
        path.write_text(path.read_text().replace("example-1", label))
    for rel, data in (extra or {}).items():
        (build / rel).parent.mkdir(parents=True, exist_ok=True)
        (build / rel).write_bytes(data)
    return build


def known_bodies(*builds):
    """{url path: {label: body}} for the labelled files of each build, for the load generator."""
    known = {}
    for build in builds:
        label = build.name.removeprefix("build-")
        known.setdefault("/", {})[label] = (build / "index.html").read_bytes()
        for rel in LABELLED[1:]:
            known.setdefault(f"/{rel}", {})[label] = (build / rel).read_bytes()
    return known


def configure(handle, build=None, **overrides):
    """Rewrite the lab's hosts.yaml with another build and default settings; Apache follows the
    settings that change Cutover's rules (as `fab setup` and a graceful restart would)."""
    lab.write_hosts_file(handle.lab, build=str(build) if build else None, **overrides)
    lab.apply_rules(handle.lab)


def skip_without_cgroup(server, pause):
    """Skip a test of httpd.pause freeze where the lab's Apache has no cgroup of its own (.ci/run
    mounts cgroup v2 where none is; in CI the skip is a failure)."""
    if pause == "freeze" and not server.cgroup:
        pytest.skip("no writable cgroup v2 on this machine: the lab's Apache has no cgroup of its own")


def accepted(server):
    """Logins the server's sshd accepted so far (LogLevel INFO)."""
    return Path(server.root, "ssh", "sshd.log").read_text().count("Accepted publickey for root")


def history(server):
    path = Path(server.deploy_to, ".cutover", "history.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def current(server):
    return os.readlink(Path(server.deploy_to, "current")).removeprefix("releases/")


def releases(server):
    return sorted(p.name for p in Path(server.deploy_to, "releases").iterdir())


def stopped_httpd(server):
    """PIDs of this server's httpd processes that are paused: in the stopped state (T), or all of
    them when their cgroup is frozen. Read from /proc and the cgroup here, not through Cutover, as
    an independent check; fails when the httpd parent is gone, so that "none stopped" can never
    mean "Apache died"."""
    assert not process_gone(server.httpd_pid), f"httpd of {server.name} (pid {server.httpd_pid}) is gone"
    pids = [server.httpd_pid] + lab.children(server.httpd_pid)
    if server.cgroup and Path(server.cgroup, "cgroup.freeze").read_text().strip() == "1":
        return pids
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # a child that exited since the listing
        if state == "T":
            out.append(pid)
    return out
