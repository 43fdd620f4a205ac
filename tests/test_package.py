"""The `cutover` command: the same tasks, options, help and exit codes as `fab` in the checkout;
installed into a fresh venv from a source tree and from a wheel, it deploys to a lab server from a
site's directory, with nothing read from the source tree at run time."""

import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import cutover

from .conftest import PROJECT, current, make_build

CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("CUTOVER_HOSTS_FILE", "PYTHONPATH")}
RELEASE_ID = re.compile(r"\d{8}T\d{6}\.\d{3}Z\S*")
PIP_TIMEOUT = 600  # seconds: an isolated build fetches setuptools from the registry (or pip's cache)


def cutover_in_checkout(*args, cwd=PROJECT, env=None):
    """`python -m cutover ARGS` with this checkout's cutover/ importable, from cwd."""
    full = {**CLEAN_ENV, "PYTHONPATH": str(PROJECT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "cutover", *args], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def fab_in_checkout(*args, cwd=PROJECT, env=None):
    """`fab -r CHECKOUT ARGS` from cwd, as a site uses a checkout."""
    return subprocess.run([sys.executable, "-m", "fabric", "-r", str(PROJECT), *args], cwd=cwd,
                          env={**CLEAN_ENV, **(env or {})}, capture_output=True, text=True, timeout=120)  # fmt: skip


def task_names(listing):
    """The task names of a --list output (fab says 'Available tasks:', cutover 'Subcommands:')."""
    return sorted(m.group(1) for m in re.finditer(r"^  ([a-z][a-z-]+)\s", listing, re.M))


def after_usage(text):
    """A --help text without its first line (the usage line names the program)."""
    first, _, rest = text.partition("\n")
    assert first.startswith("Usage: "), text
    return rest


def checkout_commit():
    head = subprocess.run(["git", "-C", str(PROJECT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    return head


def test_cutover_has_the_tasks_options_and_help_of_fab():
    fab_list, ours = fab_in_checkout("--list"), cutover_in_checkout("--list")
    assert fab_list.returncode == 0 and ours.returncode == 0, fab_list.stderr + ours.stderr
    names = task_names(fab_list.stdout)
    assert len(names) >= 14 and "deploy" in names and "rollback" in names, fab_list.stdout
    assert task_names(ours.stdout) == names
    for name in names:
        fab_help, our_help = fab_in_checkout("--help", name), cutover_in_checkout("--help", name)
        assert our_help.returncode == 0, our_help.stderr
        assert our_help.stdout.startswith(f"Usage: cutover [--core-opts] {name} ")
        assert after_usage(our_help.stdout) == after_usage(fab_help.stdout), name
    core = cutover_in_checkout("--help").stdout
    assert core.startswith("Usage: cutover [--core-opts] <subcommand> [--subcommand-opts] ...\n")
    assert "-H STRING, --hosts=STRING" in core and "--print-completion-script=STRING" in core
    # its tasks are Cutover's own: no other collection, no search root
    assert "--collection" not in core and "--search-root" not in core


def test_cutover_version_names_the_version_and_the_checkouts_commit():
    result = cutover_in_checkout("--version", cwd="/")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(rf"Cutover {re.escape(cutover.__version__)} \(commit {checkout_commit()}(-dirty)?\)", lines[0])
    assert [line.split()[0] for line in lines[1:]] == ["Fabric", "Invoke", "Paramiko", "Python"]


def starter_site(tmp_path):
    """A site directory with init's starter hosts.yaml, its group prod two closed ports of this machine."""
    site = tmp_path / "site"
    (site / "build").mkdir(parents=True)
    (site / "build" / "index.html").write_text("hello\n")
    text = (PROJECT / "templates" / "hosts.yaml").read_text()
    two = "{host: 127.0.0.1, port: 1, name: a}\n    - {host: 127.0.0.1, port: 2, name: b}"
    (site / "hosts.yaml").write_text(text.replace("{host: www.example.com}", two))
    return site


def test_cutover_runs_one_call_per_group_and_exits_as_fab_does(tmp_path):
    site = starter_site(tmp_path)
    cases = [
        (["-H", "nope", "releases"], 2, "-H 'nope' is neither a group nor a host"),
        # the group executor: -H a is host a alone (Fabric's own executor would leave the target unset,
        # and the task would act on default_group: a and b)
        (["-H", "a", "releases"], 3, "a: cannot reach 127.0.0.1 port 1"),
        (["-H", "a,b", "deploy"], 3, "b: cannot reach 127.0.0.1 port 2"),
        (["-H", "prod", "deploy", "--batch", "x"], 2, "--batch 'x': give a number of hosts from 1 to 1"),
        (["deploy", "--no-such-option"], 1, "No idea what '--no-such-option' is!"),
    ]
    for args, code, said in cases:
        fab, ours = fab_in_checkout(*args, cwd=site), cutover_in_checkout(*args, cwd=site)
        said_by = [(r.returncode, r.stderr, RELEASE_ID.sub("RELEASE", r.stdout)) for r in (fab, ours)]
        assert said_by[0] == said_by[1], args
        assert ours.returncode == code and said in ours.stderr, (args, ours.stderr)
    assert "b:" not in cutover_in_checkout("-H", "a", "releases", cwd=site).stderr


def test_init_run_as_cutover_names_cutover_in_its_next_command(tmp_path):
    site = tmp_path / "my site"
    site.mkdir()
    wrote = cutover_in_checkout("init", cwd=site)
    assert wrote.returncode == 0, wrote.stderr
    assert shlex.split(wrote.stdout.splitlines()[-1]) == [sys.executable, "-m", "cutover", "-H", "prod", "check"]


def source_tree(tmp_path):
    """This checkout's files (tracked and new, not ignored) in a git repository of their own, committed:
    what a clone of it holds. Returns (its directory, its commit)."""
    listed = subprocess.run(["git", "-C", str(PROJECT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    src = tmp_path / "src"
    for rel in filter(None, listed):
        if (PROJECT / rel).is_file():  # (a tracked file deleted in the work tree is not)
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / rel, src / rel)
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "source"]):
        subprocess.run([*git, *args], check=True, capture_output=True, timeout=60)
    commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True)
    return src, commit.stdout.strip()


def new_venv(path):
    """A venv that sees this machine's site-packages (Cutover's requirements are installed here: pip
    then fetches none of them) and none of this checkout."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(path)], check=True, timeout=120)
    return path / "bin"


def pip(bin_dir, *args):
    result = subprocess.run([str(bin_dir / "pip"), "--disable-pip-version-check", *args], capture_output=True,
                            text=True, timeout=PIP_TIMEOUT, env=CLEAN_ENV)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_installed_cutover_deploys_from_a_site_directory(lab1, tmp_path):
    """From a source tree (pip install DIR) and from a wheel built from it (pip wheel DIR), into fresh
    venvs; the source tree is removed before either runs."""
    src, commit = source_tree(tmp_path)
    from_source, from_wheel = new_venv(tmp_path / "venv-source"), new_venv(tmp_path / "venv-wheel")
    pip(from_source, "install", str(src))
    pip(from_source, "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(src))
    shutil.rmtree(src)
    (wheel,) = (tmp_path / "dist").glob("cutover-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # one top-level package: nothing named tasks or lab lands in site-packages
    assert {n.split("/")[0] for n in names} == {"cutover", f"cutover-{cutover.__version__}.dist-info"}
    for shipped in ("cutover/fabfile.py", "cutover/tasks/remote/swap.py", "cutover/tasks/rsh.py",
                    "cutover/templates/apache.conf", "cutover/templates/lab/sshd_config", "cutover/lab/packages.txt",
                    "cutover/example/site/index.html", "cutover/hosts.yaml"):  # fmt: skip
        assert shipped in names
    pip(from_wheel, "install", str(wheel))

    server = lab1.servers[0]
    site = tmp_path / "site"
    site.mkdir()
    settings = yaml.safe_load(lab1.hosts_file.read_text())
    settings["defaults"]["build"]["path"] = "build/"  # relative to the site's hosts.yaml
    (site / "hosts.yaml").write_text(yaml.safe_dump(settings))
    fab_list = task_names(fab_in_checkout("--list").stdout)
    for label, bin_dir in (("source", from_source), ("wheel", from_wheel)):
        shutil.rmtree(site / "build", ignore_errors=True)
        make_build(tmp_path, label).rename(site / "build")
        env = {**CLEAN_ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}", "XDG_CACHE_HOME": str(tmp_path / "cache")}

        def run(*args, bin_dir=bin_dir, env=env):
            return subprocess.run([str(bin_dir / "cutover"), *args], cwd=site, env=env, capture_output=True,
                                  text=True, timeout=300)  # fmt: skip

        version = run("--version")
        assert version.returncode == 0, version.stderr
        assert version.stdout.splitlines()[0] == f"Cutover {cutover.__version__} (commit {commit})", label
        listing = run("--list")
        assert task_names(listing.stdout) == fab_list, listing.stdout
        deployed = run("-H", "sandbox", "deploy")
        assert deployed.returncode == 0, label + deployed.stdout + deployed.stderr
        assert re.search(r"^deployed \S+ to 1 host in ", deployed.stdout, re.M), deployed.stdout
        with open(Path(server.deploy_to, "current", "index.html")) as page:
            assert label in page.read()
        assert current(server).startswith(deployed.stdout.split()[2][:10])
        # what it ran came from the venv, nothing from the checkout or the removed source tree
        where = subprocess.run([str(bin_dir / "python"), "-c", "import cutover; print(cutover.home())"],
                               cwd=site, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert Path(where.stdout.strip()).is_relative_to(bin_dir.parent), where.stdout + where.stderr
    assert bash_completions(from_wheel, ["cutover", "-H", "sandbox", "rel"], site, checkout=False) == ["releases"]
    # init's next command names the installed command, as found on PATH
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    wrote = subprocess.run([str(from_wheel / "cutover"), "init"], cwd=fresh, capture_output=True, text=True,
                           env={**CLEAN_ENV, "PATH": f"{from_wheel}:{os.environ['PATH']}"}, timeout=60)  # fmt: skip
    assert wrote.returncode == 0, wrote.stderr
    assert wrote.stdout.splitlines()[-1].split() == ["cutover", "-H", "prod", "check"]


def bash_completions(bin_dir, words, cwd, checkout=True):
    """What bash completes for the command line `words` (the last one being typed), with the
    script `cutover --print-completion-script bash` prints sourced, as ~/.bashrc would."""
    script = (
        "source <(cutover --print-completion-script bash) || exit 9\n"
        f"COMP_WORDS=({shlex.join(words)}); COMP_CWORD={len(words) - 1}\n"
        f"_complete_cutover cutover {shlex.quote(words[-1])} {shlex.quote(words[-2])}\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {**CLEAN_ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}", **({"PYTHONPATH": str(PROJECT)} if checkout else {})}
    result = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_bash_completes_cutovers_tasks_and_their_options_from_any_directory(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cutover").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m cutover "$@"\n')
    (bin_dir / "cutover").chmod(0o755)
    elsewhere = starter_site(tmp_path)  # a site's directory, not the checkout
    assert bash_completions(bin_dir, ["cutover", "-H", "prod", "ro"], elsewhere) == ["rollback"]
    assert bash_completions(bin_dir, ["cutover", "maint"], elsewhere) == ["maintenance-off", "maintenance-on"]
    assert bash_completions(bin_dir, ["cutover", "deploy", "--"], elsewhere) == [
        "--batch", "--build", "--dry-run", "--force-unlock", "--ignore-live-health", "--json", "--migrate", "--ref", "--split",
    ]  # fmt: skip
    assert bash_completions(bin_dir, ["cutover", "rollback", "--t"], elsewhere) == ["--to"]
    assert bash_completions(bin_dir, ["cutover", "--ver"], elsewhere) == ["--version"]


def test_sandbox_up_run_as_cutover_names_the_command_that_reaches_the_sandbox(tmp_path, monkeypatch):
    from tasks import cli, hostsfile, sandbox

    assert sandbox._command() == "fab"  # in a checkout, from its directory
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cutover").write_text("#!/bin/sh\n")
    (bin_dir / "cutover").chmod(0o755)
    monkeypatch.setattr(cli, "PROGRAM", "cutover")
    monkeypatch.setattr(sys, "argv", [str(bin_dir / "cutover"), "sandbox-up"])
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    words = shlex.split(sandbox._command())
    assert words[1:] == ["cutover"] and words[0].startswith("CUTOVER_HOSTS_FILE=")
    own = Path(words[0].split("=", 1)[1])
    assert own == hostsfile.PROJECT_DIR / "hosts.yaml"
    assert [h.name for h in hostsfile.load(own).resolve("sandbox")] == ["lab1", "lab2"]
