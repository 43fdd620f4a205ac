"""A fleet of three lab servers: `parallel` limits the hosts that prepare at the same time, every
host still switches together, and the run reports its switch spread and one row per host; a group
left split by a run that died between two hosts' switches is made whole by the next run."""

import fcntl
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import yaml

from lab.balancer import haproxy
from lab.loadgen import LoadGen

from .conftest import PROJECT, configure, current, history, lab, make_build, stopped_httpd

SMOKE_S = 0.4  # each host's smoke command runs this long and records when it ran


def smoke_intervals(directory):
    """(start, end) of each host's smoke command, in order of start."""
    return sorted(tuple(map(float, p.read_text().split())) for p in directory.iterdir())


def deploy_recording_smoke(lab3, tmp_path, name, **settings):
    record = tmp_path / f"smoke-{name}"
    record.mkdir()
    record.chmod(0o777)
    command = f't0=$(date +%s.%N); sleep {SMOKE_S}; echo "$t0 $(date +%s.%N)" > "$(mktemp -p {record})"'
    configure(lab3, make_build(tmp_path, name), smoke={"commands": [command]}, **settings)
    result = lab3.fab("deploy")
    assert result.returncode == 0, result.stderr
    return result, smoke_intervals(record)


def test_parallel_limits_the_hosts_preparing_at_once_and_all_switch_together(lab3, tmp_path):
    result, intervals = deploy_recording_smoke(lab3, tmp_path, "one-at-a-time", parallel=1)
    assert "preparing 1 host at a time (parallel: 1); all switch together" in result.stdout
    assert len(intervals) == 3
    for (_, end), (start, _) in zip(intervals, intervals[1:]):
        assert start >= end  # one host's smoke test after the other's
    release_id = current(lab3.servers[0])
    assert [current(s) for s in lab3.servers] == [release_id] * 3
    assert all(history(s)[-1]["bytes_sent"] > 0 for s in lab3.servers)  # the later hosts' uploads ran too
    spread = float(re.search(r", switch spread ([\d.]+) ms", result.stdout).group(1))
    assert [history(s)[-1]["switch_spread_ms"] for s in lab3.servers] == [spread] * 3

    result, intervals = deploy_recording_smoke(lab3, tmp_path, "all-at-once")
    assert "at a time" not in result.stdout
    assert intervals[1][0] < intervals[0][1]  # without the limit the hosts' smoke tests overlap


def test_parallel_must_be_a_whole_number_of_hosts(lab3, tmp_path):
    before = [current(s) for s in lab3.servers]
    lab.write_hosts_file(lab3.lab, build=str(make_build(tmp_path, "bad")), parallel=0)
    result = lab3.fab("deploy")
    assert result.returncode == 2 and [current(s) for s in lab3.servers] == before
    assert "defaults.parallel: must be from 1 to 1000, got 0" in result.stderr


def leftovers(server):
    """The armed swap's temporary symlinks (current.PID, release.map.PID) still on the server."""
    top, meta = Path(server.deploy_to), Path(server.deploy_to, ".cutover")
    return [p.name for p in [*top.glob("current.*"), *meta.glob("release.map.*")]]


def test_a_run_killed_between_arming_and_go_switches_no_host(lab3, tmp_path):
    """Every host armed (prepared, waiting), fab killed before any go: the swap processes see their
    connection end, remove what they prepared and exit; every host keeps its release, httpd runs."""
    configure(lab3, make_build(tmp_path, "before"))
    assert lab3.fab("deploy").returncode == 0
    before = [current(s) for s in lab3.servers]
    configure(lab3, make_build(tmp_path, "never"))
    killed = lab3.fab("deploy", env={"CUTOVER_TEST_KILL_AT": "go"})
    assert killed.returncode == -9, killed.stderr
    shown = [line.split()[:2] for line in killed.stdout.splitlines()]
    assert all([f"[{s.name}]", "promote"] in shown for s in lab3.servers)  # every host prepared
    assert not any(step == "swap" for _, step in (s for s in shown if len(s) == 2))  # and none swapped
    deadline = time.monotonic() + 15
    while any(leftovers(s) for s in lab3.servers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [leftovers(s) for s in lab3.servers] == [[], [], []]
    assert [current(s) for s in lab3.servers] == before
    assert all(stopped_httpd(s) == [] for s in lab3.servers)
    again = lab3.fab("deploy", "--force-unlock")  # the killed run's locks have a dead owner
    assert again.returncode == 0, again.stderr
    assert len({current(s) for s in lab3.servers}) == 1 and current(lab3.servers[0]) not in before


def test_a_host_that_cannot_arm_disarms_the_others(lab3, tmp_path):
    """lab3's httpd pidfile disappears after its checks (a before_switch hook moves it): its arm is
    refused, lab1 and lab2, already armed, are disarmed; no host switched, the deploy fails."""
    configure(lab3, make_build(tmp_path, "armed"))
    target = lab3.servers[2]
    data = yaml.safe_load(Path(lab3.hosts_file).read_text())
    data["groups"]["sandbox"][2]["hooks"] = {"before_switch": [f"mv {target.pidfile} {target.pidfile}.away"]}
    Path(lab3.hosts_file).write_text(yaml.safe_dump(data))
    before = [current(s) for s in lab3.servers]
    try:
        result = lab3.fab("deploy")
    finally:
        Path(f"{target.pidfile}.away").rename(target.pidfile)
    assert result.returncode == 4, result.stderr
    assert f"lab3: arm: httpd pidfile {target.pidfile}" in result.stderr, result.stderr
    assert [current(s) for s in lab3.servers] == before
    assert [leftovers(s) for s in lab3.servers] == [[], [], []]
    assert all(history(s)[-1]["result"] != "ok" for s in lab3.servers)  # recorded as failed, unlocked
    configure(lab3, make_build(tmp_path, "after"))  # without the hook
    again = lab3.fab("deploy")
    assert again.returncode == 0, again.stderr


def intents(lab3):
    return [Path(s.deploy_to, ".cutover", "intent.json").exists() for s in lab3.servers]


def split_by_a_dead_run(lab3, tmp_path, name):
    """Deploy `name` and kill fab once lab1 has switched, before lab2's and lab3's go: returns the
    release lab1 now serves and the one the others still serve."""
    configure(lab3, make_build(tmp_path, f"{name}-old"))
    assert lab3.fab("deploy").returncode == 0
    old = current(lab3.servers[0])
    configure(lab3, make_build(tmp_path, name))
    killed = lab3.fab("deploy", env={"CUTOVER_TEST_GO_ONLY": "lab1"})
    assert killed.returncode == -9, killed.stderr
    new = current(lab3.servers[0])
    assert new != old and [current(s) for s in lab3.servers[1:]] == [old, old]
    assert intents(lab3) == [True, True, True]  # recorded on every host before the first switch
    return new, old


def test_a_group_split_by_a_dead_run_is_completed_by_the_next_deploy(lab3, tmp_path):
    """fab dies between two hosts' switches under load: check names the half-done switch; the next
    deploy completes it first (every host had the release staged), says so, then deploys; no
    request failed on any host and every answer was one whole release."""
    loads = [LoadGen(s.url, paths=("/", "/assets/style.css"), threads=1) for s in lab3.servers]
    for load in loads:
        load.__enter__()
    try:
        new, old = split_by_a_dead_run(lab3, tmp_path, "half")
        check = lab3.fab("check")
        assert check.returncode != 0
        assert f"an interrupted deploy of {new}" in check.stdout and "fab check --repair" in check.stdout
        configure(lab3, make_build(tmp_path, "after-half"))
        again = lab3.fab("deploy", "--force-unlock")  # the dead run's locks
        assert again.returncode == 0, again.stderr
    finally:
        for load in loads:
            load.__exit__(None, None, None)
    assert f"repaired an interrupted deploy of {new}" in again.stdout
    assert "completed (every host keeps its release, staged and smoke-tested); switched lab2, lab3" in again.stdout
    assert [history(s)[-1]["old"] for s in lab3.servers[1:]] == [new, new]  # the repair ran before this deploy
    assert len({current(s) for s in lab3.servers}) == 1 and intents(lab3) == [False, False, False]
    for load in loads:
        assert load.failures() == [] and len(load.samples) > 0
        assert all(s.body.count(b'name="release"') == 1 for s in load.samples if s.path == "/")


def test_check_repair_undoes_a_switch_whose_release_one_host_lost(lab3, tmp_path):
    """Split by a dead run, then lab3 loses the new release: `fab check --repair` takes over the dead
    run's locks, switches lab1 back, records it, and the check then passes."""
    new, old = split_by_a_dead_run(lab3, tmp_path, "lost")
    shutil.rmtree(Path(lab3.servers[2].deploy_to, "releases", new))
    result = lab3.fab("check", "--repair")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"repaired an interrupted deploy of {new}" in result.stdout
    assert f"undone (lab3 no longer keeps its release); switched lab1; every host serves {old}" in result.stdout
    assert "all 3 host(s) ready" in result.stdout
    assert [current(s) for s in lab3.servers] == [old] * 3 and intents(lab3) == [False, False, False]
    assert [(history(s)[-1]["event"], history(s)[-1]["release"]) for s in lab3.servers] == [("repair", old)] * 3
    nothing = lab3.fab("check", "--repair")
    assert nothing.returncode == 0 and "nothing to repair" in nothing.stdout


def test_a_rollback_after_a_dead_run_completes_its_switch_then_rolls_the_group_back(lab3, tmp_path):
    new, old = split_by_a_dead_run(lab3, tmp_path, "then-back")
    result = lab3.fab("rollback", "--force-unlock")
    assert result.returncode == 0, result.stderr
    assert f"repaired an interrupted deploy of {new}" in result.stdout and "completed" in result.stdout
    assert f"rolled back to {old} on 3 hosts" in result.stdout
    assert [current(s) for s in lab3.servers] == [old] * 3 and intents(lab3) == [False, False, False]


def test_a_host_serving_neither_release_is_refused_and_nothing_changes(lab3, tmp_path):
    new, old = split_by_a_dead_run(lab3, tmp_path, "neither")
    releases = Path(lab3.servers[2].deploy_to, "releases")
    shutil.copytree(releases / old, releases / "20200101T000000.000Z")  # a third release, live by hand
    link = Path(lab3.servers[2].deploy_to, "current.by-hand")
    link.symlink_to("releases/20200101T000000.000Z")
    link.rename(Path(lab3.servers[2].deploy_to, "current"))
    result = lab3.fab("check", "--repair")
    assert result.returncode != 0
    assert "lab3 serves 20200101T000000.000Z, neither its release nor the one before; nothing was changed" in (
        result.stderr
    )
    assert [current(s) for s in lab3.servers] == [new, old, "20200101T000000.000Z"]
    assert intents(lab3) == [True, True, True]
    link = Path(lab3.servers[2].deploy_to, "current.by-hand")  # put back as it was: the repair then works
    link.symlink_to(f"releases/{old}")
    link.rename(Path(lab3.servers[2].deploy_to, "current"))
    repaired = lab3.fab("check", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert len({current(s) for s in lab3.servers}) == 1


def in_terminal(lab3, *args):
    """fab ARGS with its stdout on a pseudo-terminal 200 columns wide; returns what it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    env = {**os.environ, "CUTOVER_HOSTS_FILE": str(lab3.hosts_file), "XDG_CACHE_HOME": str(lab3.lab.root / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "fabric", *args], cwd=PROJECT, env=env, stdout=slave,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's last writer is gone
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    return out.decode()


def test_a_group_on_a_terminal_gets_one_live_row_per_host(lab3, tmp_path):
    """On a terminal a group's deploy redraws one row per host in place (no interleaved lines); its
    last drawing shows every host's last step; a log (not a terminal) keeps the lines."""
    configure(lab3, make_build(tmp_path, "tty"))
    out = in_terminal(lab3, "deploy")
    assert "\x1b[3A\x1b[J" in out and "[lab1]" not in out
    last = out.rsplit("\x1b[J", 1)[1].replace("\r", "").splitlines()[:3]
    assert [row.split()[:2] for row in last] == [["lab1", "cleanup"], ["lab2", "cleanup"], ["lab3", "cleanup"]]
    assert "deployed" in out.rsplit("\x1b[J", 1)[1]  # the summary follows the table
    piped = lab3.fab("deploy")
    assert piped.returncode == 0 and "[lab1] swap" in piped.stdout and "\x1b[" not in piped.stdout


def test_batch_1_behind_haproxy_drains_each_host_for_its_switch_and_loses_no_request(lab3, tmp_path):
    """--batch 1 with the lab's HAProxy in front: each host is drained, switched, verified and back
    in the backend before the next is drained; HAProxy had each host (and only it) drained when it
    renamed; no request through the balancer failed or got a mixed release."""
    with haproxy(lab3.lab) as hp:
        configure(lab3, make_build(tmp_path, "lb-old"))
        assert lab3.fab("deploy").returncode == 0
        balancer = {"via": "lab1", "socket": hp.socket, "backend": "web"}
        configure(lab3, make_build(tmp_path, "lb-new"), balancer=balancer)
        samples, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                samples.append((time.time(), hp.states()))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with LoadGen(hp.url, paths=("/", "/assets/style.css"), threads=2) as load:
                result = lab3.fab("deploy", "--batch", "1")
        finally:
            stop.set()
            sampler.join()
        after = hp.states()
    assert result.returncode == 0, result.stderr
    assert load.failures() == [] and len(load.samples) > 50
    assert all(s.body.count(b'name="release"') == 1 for s in load.samples if s.path == "/")
    order = [m for m in re.findall(r"(?m)^\[(lab\d)\] (drain|swap|verify|enable) ", result.stdout)]
    assert order == [(h, step) for h in ("lab1", "lab2", "lab3") for step in ("drain", "swap", "verify", "enable")]
    for server in lab3.servers:
        renamed = history(server)[-1]["renamed_at"]
        seen = [states for t, states in samples if t <= renamed][-1]
        assert seen[server.name] == "DRAIN" and list(seen.values()).count("DRAIN") == 1, (server.name, seen)
    assert "DRAIN" not in after.values()
    assert len({current(s) for s in lab3.servers}) == 1


def test_batch_must_leave_some_hosts_serving(lab3, tmp_path):
    configure(lab3, make_build(tmp_path, "whole"))
    before = [current(s) for s in lab3.servers]
    for value in ("3", "0", "x"):
        refused = lab3.fab("deploy", "--batch", value)
        assert refused.returncode == 2 and "give a number of hosts from 1 to 2" in refused.stderr
    assert [current(s) for s in lab3.servers] == before
