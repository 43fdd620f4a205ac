"""A fleet of three lab servers: `parallel` limits the hosts that prepare at the same time, every
host still switches together, and the run reports its switch spread and one row per host."""

import re

import pytest

from .conftest import configure, current, history, lab, make_build, start_lab, stop_lab

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
