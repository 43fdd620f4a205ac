"""`deploy --json` and `rollback --json`: the outcome as data for a pipeline, checked field by field
against what the servers serve and what their history recorded."""

import json
import os
import re
from pathlib import Path

from .conftest import configure, current, history, make_build

HOST_FIELDS = ["name", "address", "port", "deploy_to", "result", "before", "after", "switched", "pause_ms",
               "pause_method", "bytes_sent", "steps", "error"]  # fmt: skip
TOP_FIELDS = ["cutover", "command", "target", "release", "result", "exit_code", "error", "dry_run", "started",
              "finished", "seconds", "switch_spread_ms", "text", "hosts"]  # fmt: skip
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def read(path):
    return json.loads(Path(path).read_text())


def check_common(data, command, target="sandbox"):
    assert list(data) == TOP_FIELDS
    assert data["command"] == command and data["target"] == target
    assert re.fullmatch(r"\d+\.\d+\.\d+ \(commit [0-9a-f]{12}(-dirty)?\)", data["cutover"]), data["cutover"]
    assert STAMP.match(data["started"]) and STAMP.match(data["finished"]) and data["started"] <= data["finished"]
    assert 0 < data["seconds"] < 300
    for host in data["hosts"]:
        assert list(host) == HOST_FIELDS


def check_host_against_history(host, server, entry):
    """A host's JSON against the history line its server wrote for the same run."""
    assert (host["name"], host["address"], host["port"], host["deploy_to"]) == (
        server.name, server.address, server.ssh_port, server.deploy_to,
    )  # fmt: skip
    assert host["pause_ms"] == entry["pause_ms"] and host["pause_method"] == entry["pause_method"]
    assert host["bytes_sent"] == entry["bytes_sent"]
    # (the cleanup's time is the server's answer, after the history line was written). The JSON
    # keeps 6 decimals, the history 4: the same time, rounded apart (not twice: 0.0759549 is 0.0759
    # in the history, 0.075955 in the JSON)
    steps = {k: v for k, v in host["steps"].items() if k != "cleanup"}
    recorded = {k: v for k, v in entry["steps"].items() if k != "cleanup"}
    assert sorted(steps) == sorted(recorded)
    assert all(abs(steps[k] - recorded[k]) <= 0.0000505 for k in steps), (steps, recorded)


def test_json_of_a_deploy_a_rollback_and_a_refusal(lab2, tmp_path):
    configure(lab2, make_build(tmp_path, "first"))
    assert lab2.fab("deploy").returncode == 0
    first = [current(s) for s in lab2.servers]
    configure(lab2, make_build(tmp_path, "second"))
    out = tmp_path / "deploy.json"
    deployed = lab2.fab("-H", "sandbox", "deploy", "--json", str(out))
    assert deployed.returncode == 0, deployed.stderr
    assert deployed.stdout.startswith("deploying release ")  # the usual lines, on stdout
    data = read(out)
    check_common(data, "deploy")
    release = current(lab2.servers[0])
    assert release != first[0] and current(lab2.servers[1]) == release
    assert (data["release"], data["result"], data["exit_code"], data["error"], data["dry_run"]) == (
        release, "ok", 0, None, False,
    )  # fmt: skip
    assert data["switch_spread_ms"] == history(lab2.servers[0])[-1]["switch_spread_ms"]
    assert data["text"] == f"deploy of {release} to sandbox (lab1, lab2): ok in {data['seconds']:.1f} s"
    assert [h["name"] for h in data["hosts"]] == ["lab1", "lab2"]
    for host, server, before in zip(data["hosts"], lab2.servers, first):
        entry = history(server)[-1]
        assert (entry["event"], entry["release"], entry["result"]) == ("deploy", release, "ok")
        check_host_against_history(host, server, entry)
        assert (host["result"], host["before"], host["after"], host["switched"], host["error"]) == (
            "ok", before, release, "yes", None,
        )  # fmt: skip
        assert host["bytes_sent"] > 0 and host["pause_ms"] >= 0
        assert {"connect", "lock", "upload", "swap", "cleanup"} <= set(host["steps"])

    # rollback, the JSON on stdout and every other line on stderr
    rolled = lab2.fab("rollback", "--json", "-")
    assert rolled.returncode == 0, rolled.stderr
    data = json.loads(rolled.stdout)
    assert "rolled back to " in rolled.stderr
    check_common(data, "rollback")
    assert (data["release"], data["result"], data["exit_code"], data["error"]) == (first[0], "ok", 0, None)
    for host, server in zip(data["hosts"], lab2.servers):
        entry = history(server)[-1]
        assert (entry["event"], entry["release"], entry["old"]) == ("rollback", first[0], release)
        check_host_against_history(host, server, entry)
        assert (host["result"], host["before"], host["after"], host["switched"], host["bytes_sent"]) == (
            "ok", release, first[0], "yes", 0,
        )  # fmt: skip
        assert current(server) == first[0]

    # refused before anything remote: the JSON says so, nothing changed
    refused = lab2.fab("deploy", "--batch", "x", "--json", str(out))
    assert refused.returncode == 2
    data = read(out)
    check_common(data, "deploy")
    assert (data["release"], data["result"], data["exit_code"]) == (None, "failed", 2)
    assert data["error"]["kind"] == "config" and data["error"]["message"].startswith("--batch 'x': give a number")
    assert data["text"].startswith("deploy to sandbox (lab1, lab2): failed (config) in ")
    assert [(h["name"], h["result"], h["before"], h["after"], h["switched"], h["error"]) for h in data["hosts"]] == [
        ("lab1", "stopped", None, None, "no", None), ("lab2", "stopped", None, None, "no", None),
    ]  # fmt: skip
    assert [current(s) for s in lab2.servers] == first


def test_json_of_a_deploy_that_fails_on_one_host(lab2, tmp_path):
    """The smoke test fails on lab2 only: lab2 failed (smoke), lab1 stopped, both still serve the
    release before; the human lines go to stderr with --json -."""
    configure(lab2, make_build(tmp_path, "first"))
    assert lab2.fab("deploy").returncode == 0
    before = current(lab2.servers[0])
    # the incoming release is <deploy_to>/releases/.incoming-ID: ../../ is deploy_to
    configure(lab2, make_build(tmp_path, "second"), smoke={"commands": ["test ! -e ../../smoke-fails"]})
    Path(lab2.servers[1].deploy_to, "smoke-fails").write_text("")
    failed = lab2.fab("deploy", "--json", "-")
    assert failed.returncode == 6, failed.stderr
    data = json.loads(failed.stdout)
    assert "cutover: error: lab2: stage: smoke command" in failed.stderr and "deploying release" in failed.stderr
    check_common(data, "deploy")
    assert (data["result"], data["exit_code"], data["error"]["kind"]) == ("failed", 6, "smoke")
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{3}Z.*", data["release"]) and data["release"] != before
    assert data["text"] == (
        f"deploy of {data['release']} to sandbox (lab1, lab2): failed (smoke) in {data['seconds']:.1f} s"
    )
    lab1, lab2_ = data["hosts"]
    assert (lab1["result"], lab1["before"], lab1["after"], lab1["switched"], lab1["error"]) == (
        "stopped", before, before, "no", None,
    )  # fmt: skip
    assert (lab2_["result"], lab2_["before"], lab2_["after"], lab2_["switched"]) == ("failed", before, before, "no")
    assert lab2_["error"]["kind"] == "smoke"
    assert lab2_["error"]["message"].startswith("stage: smoke command 'test ! -e ../../smoke-fails' exited 1")
    for host, server in zip(data["hosts"], lab2.servers):
        entry = history(server)[-1]
        assert (entry["event"], entry["release"], entry["result"]) == ("deploy", data["release"], "failed")
        assert host["bytes_sent"] == entry["bytes_sent"] and host["pause_ms"] is None
        assert current(server) == before
    os.unlink(Path(lab2.servers[1].deploy_to, "smoke-fails"))


def test_json_file_argument_checked_before_anything_and_never_written_through_a_link(lab2, tmp_path):
    configure(lab2, make_build(tmp_path, "json-path"))
    live = [current(s) for s in lab2.servers]
    missing = lab2.fab("deploy", "--json", str(tmp_path / "no-such-dir" / "out.json"))
    assert missing.returncode == 2
    gone = tmp_path / "no-such-dir"
    assert f"--json {str(gone / 'out.json')!r}: the directory {str(gone)!r} does not exist" in missing.stderr
    assert "nothing was changed" in missing.stderr
    directory = lab2.fab("deploy", "--json", str(tmp_path))
    assert directory.returncode == 2 and f"--json {str(tmp_path)!r}: is a directory" in directory.stderr
    for task in ("deploy", "rollback"):  # refused, not echoed back whole, no traceback
        long = lab2.fab(task, "--json", "x" * 5000)
        assert long.returncode == 2 and "File name too long; nothing was changed" in long.stderr
        assert "Traceback" not in long.stderr and len(long.stderr) < 1000
    assert [current(s) for s in lab2.servers] == live
    # a symlink at the path is replaced by the file; what it pointed to stays as it was
    other = tmp_path / "other.txt"
    other.write_text("not Cutover's\n")
    (tmp_path / "sub").mkdir()
    link = tmp_path / "sub" / "out.json"
    link.symlink_to(other)
    through = lab2.fab("deploy", "--dry-run", "--json", str(tmp_path / "sub" / ".." / "sub" / "out.json"))
    assert through.returncode == 0, through.stderr
    assert other.read_text() == "not Cutover's\n" and not link.is_symlink()
    data = read(link)
    assert (data["dry_run"], data["result"], data["exit_code"]) == (True, "ok", 0)
    assert [(h["result"], h["after"], h["switched"]) for h in data["hosts"]] == [("ok", None, "no")] * 2
    assert [current(s) for s in lab2.servers] == live
