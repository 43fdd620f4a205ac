"""rollback, releases and history against lab servers."""

import json
from pathlib import Path

from lab.loadgen import LoadGen
from tasks.remote.paths import PLACEHOLDER

from .conftest import configure, current, history, known_bodies, make_build, releases, stopped_httpd


def deploy_builds(handle, tmp_path, *labels):
    builds = []
    for label in labels:
        build = make_build(tmp_path, label)
        configure(handle, build)
        result = handle.fab("deploy")
        assert result.returncode == 0, result.stderr
        builds.append(build)
    return builds


def test_rollback_under_load_lands_on_the_previous_release(lab_pair, tmp_path):
    a, b = deploy_builds(lab_pair, tmp_path, "a", "b")
    server = lab_pair.servers[0]
    deployed = releases(server)[-2:]
    known = known_bodies(a, b)
    with LoadGen(server.url, paths=("/", "/assets/style.css"), threads=3) as load:
        result = lab_pair.fab("rollback")
    assert result.returncode == 0, result.stderr
    assert load.failures() == [] and load.unknown(known) == []
    assert len(load.samples) > 50
    assert [current(s) for s in lab_pair.servers] == [deployed[0], deployed[0]]
    assert releases(server)[-2:] == deployed  # the rolled-away release is kept
    assert f"rolled back to {deployed[0]} on 2 hosts" in result.stdout
    entry = history(server)[-1]
    assert (entry["event"], entry["release"], entry["old"], entry["result"]) == (
        "rollback",
        deployed[0],
        deployed[1],
        "ok",
    )
    assert entry["pause_ms"] is not None and stopped_httpd(server) == []
    # ...so rollback --to can return to it
    again = lab_pair.fab("rollback", "--to", deployed[1])
    assert again.returncode == 0, again.stderr
    assert current(server) == deployed[1]


def test_rollback_to_valid_missing_and_hostile_values(lab1, tmp_path):
    deploy_builds(lab1, tmp_path, "a", "b", "c")
    server = lab1.servers[0]
    kept = releases(server)
    live = current(server)
    result = lab1.fab("rollback", "--to", kept[1])
    assert result.returncode == 0, result.stderr
    assert current(server) == kept[1]
    missing = lab1.fab("rollback", "--to", "20200101T000000Z")
    assert missing.returncode == 2
    assert "--to 20200101T000000Z: no such release on lab1" in missing.stderr
    deployed = [k for k in kept if k != PLACEHOLDER]
    assert f"releases kept on every host: {', '.join(reversed(deployed))}" in missing.stderr
    placeholder = lab1.fab("rollback", "--to", PLACEHOLDER)
    assert placeholder.returncode == 2
    assert f"--to {PLACEHOLDER}: that is setup's placeholder, not a deployed release" in placeholder.stderr
    for hostile in ("..", "/", "../../etc", "$(touch /tmp/cutover-pwned)", "a;b", "x\ny", "9" * 5000):
        refused = lab1.fab("rollback", "--to", hostile)
        assert refused.returncode == 2, hostile
        assert "is not a release name; nothing was changed" in refused.stderr
        assert f"releases kept on every host: {', '.join(reversed(deployed))}" in refused.stderr
    assert not Path("/tmp/cutover-pwned").exists()
    assert current(server) == kept[1] and releases(server) == kept and live == kept[-1]
    assert not Path(server.deploy_to, ".cutover", "lock").exists()


def test_rollback_with_a_single_release_changes_nothing(lab1):
    server = lab1.servers[0]
    before = (current(server), releases(server))
    result = lab1.fab("rollback")
    assert result.returncode == 1
    assert "nothing to roll back to" in result.stderr and "nothing was changed" in result.stderr
    assert (current(server), releases(server)) == before
    assert history(server) == []
    assert not Path(server.deploy_to, ".cutover", "lock").exists()


def test_releases_and_history_are_listed(lab1, tmp_path):
    deploy_builds(lab1, tmp_path, "a", "b")
    assert lab1.fab("rollback").returncode == 0
    server = lab1.servers[0]
    older, newer = releases(server)[-2:]
    listed = lab1.fab("releases")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("lab1 (") and "3 release(s), * = live" in lines[0]
    newer_line = next(line for line in lines if newer in line)
    older_line = next(line for line in lines if older in line)
    assert lines.index(newer_line) < lines.index(older_line)  # newest first
    assert older_line.startswith("*") and "root" in older_line
    assert newer_line.rstrip().endswith("rolled back")
    shown = lab1.fab("history", "-n", "2")
    assert shown.returncode == 0, shown.stderr
    rows = [line.split() for line in shown.stdout.splitlines()[2:4]]
    assert [r[1] for r in rows] == ["deploy", "rollback"]
    assert rows[1][2:5] == [older, "-", newer]  # release, ref (none: not built from git), from
    assert lab1.fab("history", "-n", "0").returncode == 2
    raw = [json.loads(line) for line in Path(server.deploy_to, ".cutover", "history.jsonl").read_text().splitlines()]
    assert [e["event"] for e in raw] == ["deploy", "deploy", "rollback"]


def test_history_says_why_a_run_failed(lab1, tmp_path):
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "x"), smoke={"commands": ["echo 'cache dir not writable' >&2; exit 3"]})
    assert lab1.fab("deploy").returncode == 6
    recorded = history(server)[-1]
    assert recorded["result"] == "failed"
    reason = recorded["error"].splitlines()[0]
    assert reason == "lab1: stage: smoke command \"echo 'cache dir not writable' >&2; exit 3\" exited 3", reason
    shown = lab1.fab("history")
    assert shown.returncode == 0, shown.stderr
    header, row = shown.stdout.splitlines()[1:3]
    assert header.split()[-1] == "error"
    assert row.split()[1] == "deploy" and row.split()[6] == "failed"
    assert row.endswith(f"  {reason}"), row
