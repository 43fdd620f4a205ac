"""A fleet of three lab servers: `parallel` limits the hosts that prepare at the same time, every
host still switches together, and the run reports its switch spread and one row per host."""

import re
import time
from pathlib import Path

import pytest
import yaml

from .conftest import configure, current, history, lab, make_build, start_lab, stop_lab, stopped_httpd

SMOKE_S = 0.4  # each host's smoke command runs this long and records when it ran


@pytest.fixture(scope="module")
def lab3():
    handle, root = start_lab(3)
    yield handle
    stop_lab(handle, root)


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
