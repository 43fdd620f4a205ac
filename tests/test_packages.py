"""What the tests need from the machine: one list (lab/packages.txt) read by `make install`, .ci/run
and the test run's first check; and the CI policy that a skip is a failure there."""

import ast
import fnmatch
import os
import re
import subprocess
import sys
import textwrap

from lab import packages

from .conftest import PROJECT

# Programs of Debian's Essential packages (coreutils, dash, bash, tar): on every Debian system, unlisted.
ESSENTIAL = {"sh", "bash", "chown", "sleep", "true", "tar", "head"}
RUNS = {"run", "Popen", "check_output", "check_call", "call"}
ABSOLUTE = re.compile(r"^/(usr/)?s?bin/[A-Za-z0-9_.*+-]+$")


def _first_word(node):
    while isinstance(node, ast.BinOp):  # ["tc", *ns] + [...]
        node = node.left
    if isinstance(node, ast.List) and node.elts and isinstance(node.elts[0], ast.Constant):
        return node.elts[0].value if isinstance(node.elts[0].value, str) else None
    return None


def programs_run(root=PROJECT):
    """{program: files}: every absolute program path in the lab's, the tests' and fab's code, and
    every program a subprocess call or an `argv = [...]` there starts by name."""
    found = {}
    for sub in ("lab", "tests", "tasks", "tasks/remote", "tasks/steps"):
        for path in sorted((root / sub).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                words = []
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and ABSOLUTE.match(node.value):
                    words.append(node.value)
                called = getattr(node.func, "attr", getattr(node.func, "id", "")) if isinstance(node, ast.Call) else ""
                if called in RUNS and node.args:
                    words.append(_first_word(node.args[0]))
                if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "argv" for t in node.targets):
                    words.append(_first_word(node.value))
                for word in filter(None, words):
                    found.setdefault(word, set()).add(f"{sub}/{path.name}")
    return found


def test_the_package_list_names_every_program_the_lab_and_the_tests_run():
    listed = {program for _, program in packages.needed()}
    names = listed | {os.path.basename(p) for p in listed}
    found = programs_run()
    assert {"/usr/sbin/mariadbd", "mariadb-install-db", "mariadb", "/usr/sbin/sshd", "ip"} <= set(found)
    known = names | ESSENTIAL
    unlisted = {p: sorted(files) for p, files in found.items() if p not in known and os.path.basename(p) not in known}
    assert unlisted == {}, f"programs run but not in {packages.LIST}: {unlisted}"
    assert ("mariadb-server", "/usr/sbin/mariadbd") in packages.needed()
    assert ("mariadb-client", "mariadb") in packages.needed()


def test_a_program_started_by_its_path_is_listed_by_that_path():
    """`make install` checks a listed name on PATH: a program the lab starts as /usr/bin/X must be
    listed as that path, or an X elsewhere on PATH (/usr/local/bin) would leave its package out."""
    paths = [program for _, program in packages.needed() if program.startswith("/")]
    unlisted = {p: sorted(files) for p, files in programs_run().items()
                if p.startswith("/") and os.path.basename(p) not in ESSENTIAL
                and not any(fnmatch.fnmatch(p, listed) for listed in paths)}  # fmt: skip
    assert unlisted == {}, f"programs started by their path but listed by name only in {packages.LIST}: {unlisted}"


def test_a_missing_program_is_named_with_its_package(tmp_path):
    listed = tmp_path / "packages.txt"
    listed.write_text("# comment\ndash  sh  # the shell\n\nfake-db  /no/such/dbd  no-such-client\nfake-web /x/web*\n")
    assert packages.needed(listed) == [("dash", "sh"), ("fake-db", "/no/such/dbd"), ("fake-db", "no-such-client"),
                                       ("fake-web", "/x/web*")]  # fmt: skip
    assert packages.missing(listed) == {"fake-db": ["/no/such/dbd", "no-such-client"], "fake-web": ["/x/web*"]}
    assert packages.problem(listed) == (
        "the lab and the tests run programs this machine does not have:\n"
        "  /no/such/dbd, no-such-client: from the Debian package fake-db\n"
        "  /x/web*: from the Debian package fake-web\n"
        f"install them: `make install`, or apt-get install fake-db fake-web (the list: {listed})"
    )
    listed.write_text("fake-db\n")
    try:
        packages.needed(listed)
    except ValueError as exc:
        assert str(exc) == f"{listed}:1: package fake-db names no program it brings"
    else:
        raise AssertionError("a package without a program was accepted")


def test_the_test_run_stops_at_its_start_naming_a_missing_program_and_its_package(tmp_path):
    """With an empty PATH, no program named without its path is found: the run ends before any
    test, naming each missing program and its package."""
    env = dict(os.environ, PATH=str(tmp_path))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_hostsfile.py"], cwd=PROJECT,
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert "the lab and the tests run programs this machine does not have" in out, out
    assert "\n  ip, tc, ss: from the Debian package iproute2\n" in out, out
    assert "\n  mariadb-install-db: from the Debian package mariadb-server\n" in out, out  # mariadbd: a path
    assert "\n  mariadb, mariadb-dump: from the Debian package mariadb-client\n" in out, out
    assert " passed" not in out and "collected" not in out, out


SKIPPING = """
    import pytest

    @pytest.fixture
    def machine():
        pytest.skip("no frobnicator on this machine")

    def test_skips_in_its_body():
        pytest.skip("no widget here")

    def test_skips_in_a_fixture(machine):
        pass

    def test_passes():
        assert True
"""


def _run_skipping(tmp_path, ci, *files):
    (tmp_path / "test_skipping.py").write_text(textwrap.dedent(SKIPPING))
    (tmp_path / "test_skipped_module.py").write_text("import pytest\n\npytest.importorskip('no_such_module_here')\n")
    env = {k: v for k, v in os.environ.items() if k != "CUTOVER_CI"}
    if ci:
        env["CUTOVER_CI"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "-p", "tests.conftest", "--rootdir",
         str(tmp_path), *(str(tmp_path / f) for f in files)], cwd=PROJECT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_a_skip_is_reported_with_its_reason(tmp_path):
    run = _run_skipping(tmp_path, False, "test_skipping.py", "test_skipped_module.py")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "test_skipping.py:9: no widget here" in run.stdout, run.stdout
    assert "test_skipping.py:11: no frobnicator on this machine" in run.stdout, run.stdout
    assert "test_skipped_module.py:3: could not import 'no_such_module_here'" in run.stdout, run.stdout
    assert "1 passed, 3 skipped" in run.stdout, run.stdout


def test_ci_fails_a_skip_with_its_reason(tmp_path):
    """CUTOVER_CI=1 (.ci/run): a test that would skip fails, saying why it would have skipped; a
    module that would skip whole stops the run."""
    run = _run_skipping(tmp_path, True, "test_skipping.py")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 failed, 1 passed, 1 error" in run.stdout, run.stdout  # a fixture's failure is an error
    for reason in ("no widget here", "no frobnicator on this machine"):
        assert f"skipped, which CI does not allow (CUTOVER_CI=1): {reason}" in run.stdout, run.stdout
    run = _run_skipping(tmp_path, True, "test_skipped_module.py")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "skipped, which CI does not allow (CUTOVER_CI=1): could not import 'no_such_module_here'" in run.stdout
    assert "Interrupted: 1 error during collection" in run.stdout, run.stdout


def test_make_install_installs_the_packages_of_a_missing_program(tmp_path):
    # a stand-in apt-get records what it is asked; the missing program is not the first one
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/apt.log\n')
    (bin_dir / "apt-get").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    listed = tmp_path / "packages.txt"
    for text, expected in (
        ("dash sh\ncoreutils ls /usr/bin/l?\nfake-db /no/such/dbd /no/such/db*\nfake-cli sh no-such-client\n",
         "install -y -qq fake-db fake-cli"),
        ("dash sh\ncoreutils ls /usr/bin/l?\n", None),
    ):  # fmt: skip
        listed.write_text(text)
        (tmp_path / "apt.log").unlink(missing_ok=True)
        run = subprocess.run(
            ["make", "-s", "install", f"PACKAGES={listed}", "PYTHON=true"], cwd=PROJECT, env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        log = (tmp_path / "apt.log").read_text() if (tmp_path / "apt.log").exists() else None
        assert (log.splitlines()[-1] if log else None) == expected, (text, log)
