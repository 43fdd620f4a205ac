"""Cutover in a pipeline (CI=true): it never waits for input, never draws the live table (not even
on a terminal a runner allocates), and the log names every host's outcome, of a failed run too."""

import os
import pty
import re
import select
import subprocess
import sys
import time

from .conftest import PROJECT, configure, current, make_build

ANSI = re.compile(r"\x1b\[")
RUN_TIMEOUT = 120  # seconds: a deploy here takes a few; a run waiting for input would take them all


def on_a_terminal(handle, args, env):
    """`fab ARGS` with a terminal as its stdin, stdout and stderr (as a runner with a tty gives it);
    (exit status, everything it wrote). Nobody types: a prompt would wait until RUN_TIMEOUT."""
    master, slave = pty.openpty()
    full_env = {**os.environ, "CUTOVER_HOSTS_FILE": str(handle.hosts_file), "CUTOVER_TEST": "1",
                "XDG_CACHE_HOME": str(handle.lab.root / "cache"), "COLUMNS": "200", **env}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "fabric", *args], cwd=PROJECT, env=full_env, stdin=slave,
                            stdout=slave, stderr=slave, start_new_session=True)  # fmt: skip
    os.close(slave)
    out, deadline = b"", time.monotonic() + RUN_TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's other side is closed, every writer gone
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
        status = proc.wait(timeout=10)
    finally:
        os.close(master)
    assert time.monotonic() < deadline, f"still running after {RUN_TIMEOUT} s: {out.decode(errors='replace')}"
    return status, out.decode("utf-8", "replace").replace("\r\n", "\n")


def test_in_ci_no_live_table_and_every_hosts_outcome_in_the_log(lab2, tmp_path):
    configure(lab2, make_build(tmp_path, "first"))
    # on a terminal, outside CI: the live table (the control of what follows)
    status, out = on_a_terminal(lab2, ["deploy"], {"CI": ""})
    assert status == 0, out
    assert ANSI.search(out)

    configure(lab2, make_build(tmp_path, "second"))
    status, out = on_a_terminal(lab2, ["deploy"], {"CI": "true"})
    assert status == 0, out
    assert not ANSI.search(out), out
    release = current(lab2.servers[0])
    for name in ("lab1", "lab2"):
        for step in ("lock", "upload", "smoke", "swap", "verify", "cleanup"):
            assert re.search(rf"^\[{name}\] {step} ", out, re.M), (name, step, out)
        # the summary table: what each host serves now
        assert re.search(rf"^{name} +{release} ", out, re.M), out
    assert f"deployed {release} to 2 hosts in " in out


def test_a_failed_deploy_in_ci_fails_the_job_and_says_what_each_host_serves(lab2, tmp_path):
    configure(lab2, make_build(tmp_path, "first"))
    assert lab2.fab("deploy").returncode == 0
    live = current(lab2.servers[0])
    configure(lab2, make_build(tmp_path, "broken"), smoke={"commands": ["false"]})
    env = {**os.environ, "CI": "true", "CUTOVER_HOSTS_FILE": str(lab2.hosts_file), "CUTOVER_TEST": "1",
           "XDG_CACHE_HOME": str(lab2.lab.root / "cache")}  # fmt: skip
    # stdin a pipe kept open and never written: anything asking would wait for RUN_TIMEOUT
    proc = subprocess.Popen([sys.executable, "-m", "fabric", "deploy"], cwd=PROJECT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 6, err
    assert not ANSI.search(out + err)
    assert re.search(r"^\[lab1\] lock ", out, re.M) and re.search(r"^\[lab2\] lock ", out, re.M)
    assert "cutover: error: lab1: stage: smoke command 'false' exited 1" in err
    assert f"the site now: lab1 serves {live}; lab2 serves {live}" in err
    assert [current(s) for s in lab2.servers] == [live, live]


def test_every_cutover_command_of_the_ci_guide_names_a_task_and_options_it_has():
    from .test_package import cutover_in_checkout

    guide = (PROJECT / "docs" / "ci.md").read_text()
    commands = re.findall(r"^\s*(?:- )?cutover (.+)$", guide, re.M)
    assert len(commands) == 4, commands  # deploy and rollback, in each of the two CIs
    tasks = set()
    for command in commands:
        words = command.split()
        if words[0] == "-H":
            words = words[2:]
        task, options = words[0], [w for w in words[1:] if w.startswith("--")]
        tasks.add(task)
        known = cutover_in_checkout("--help", task)
        assert known.returncode == 0, (command, known.stderr)
        for option in options:
            assert re.search(rf"^\s+(-\w( STRING)?, )?{re.escape(option)}(=|\s)", known.stdout, re.M), (command, option)
    assert tasks == {"deploy", "rollback"}
    # the result it keeps as an artifact is what --json writes
    assert all(c.endswith(" --json cutover.json") for c in commands)
    assert guide.count("path: cutover.json") == 2 and guide.count("paths: [cutover.json]") == 1
