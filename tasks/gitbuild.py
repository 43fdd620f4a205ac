"""`deploy --ref REF`: a release built from an exact commit of the local git repository.

The tree of REF is exported clean (`git archive`: no untracked, ignored or uncommitted file),
`build.command` runs in it on this machine, and `build.output` of it is what gets uploaded. The
command finds a cache that survives between deploys in $CUTOVER_CACHE (one per repository), so
that an unchanged dependency set is not fetched again, e.g. `npm ci --cache "$CUTOVER_CACHE/npm"`
or `COMPOSER_CACHE_DIR="$CUTOVER_CACHE/composer" composer install --no-dev`. Nothing remote
happens here: a failing build stops the deploy before any server is touched.
"""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from .config import Build
from .errors import BuildError, ConfigError
from .output import indented, shown

REF = re.compile(r"^[A-Za-z0-9._/@^~+-]{1,200}$")  # a branch, tag, commit or rev expression, no options
GIT_TIMEOUT = 120  # seconds for git itself (rev-parse, archive)
OUTPUT_SHOWN = 3000  # characters of a failed build's output in the error
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cutover"


@dataclass(frozen=True)
class Built:
    """A build of one commit: the Build to upload, the commit and where it all lives until removed."""

    build: Build
    ref: str
    commit: str
    work: Path

    def remove(self):
        shutil.rmtree(self.work, ignore_errors=True)


def _git(repo, *args, **kwargs):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=GIT_TIMEOUT, **kwargs)


def repository(host):
    """The local git repository builds come from: the one holding build.git (by default the folder
    of hosts.yaml, tasks/hostsfile.py)."""
    start = host.build.git
    if start is None:
        raise ConfigError("--ref needs a git repository", hint="set build.git in hosts.yaml to the site's repository")
    found = _git(start, "rev-parse", "--show-toplevel", text=True)
    if found.returncode != 0:
        raise ConfigError(
            f"--ref needs a git repository, and {start} is in none",
            hint="set build.git in hosts.yaml to the site's repository",
        )
    return Path(found.stdout.strip())


def build(host, ref, say=print):
    """Export REF of the repository, run build.command in it, return Built (remove it afterwards)."""
    if not REF.fullmatch(ref) or ref.startswith("-"):
        raise ConfigError(f"--ref {shown(ref)} is not a branch, tag or commit name")
    repo = repository(host)
    commit = _git(repo, "rev-parse", "--verify", "--short=7", f"{ref}^{{commit}}", text=True)
    if commit.returncode != 0:
        raise ConfigError(f"--ref {ref}: no such branch, tag or commit in {repo}", hint="git -C REPO tag; git branch")
    commit = commit.stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="cutover-build-"))
    try:
        tree = work / "tree"
        tree.mkdir()
        # tar.umask=user: each file's mode as `git checkout` makes it, 666 (777 for what git records
        # as executable) less this process's umask, so a release from git has the modes of the
        # work tree's files and switching between the two ways sends only what changed. git's
        # default (664/775) would be kept by tar run as root: every file different, and sent again.
        archive = _git(repo, "-c", "tar.umask=user", "archive", "--format=tar", commit)
        if archive.returncode != 0:
            raise BuildError(f"git archive {commit} failed: {archive.stderr.decode(errors='replace').strip()}")
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True, timeout=GIT_TIMEOUT)
        if host.build.command:
            _run(host, ref, commit, tree, repo, say)
        output = (tree / host.build.output).resolve()
        if not output.is_relative_to(tree.resolve()) or not output.is_dir():
            raise BuildError(f"build.output {host.build.output!r} is not a directory of the build of {ref}")
        return Built(replace(host.build, path=output), ref, commit, work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _run(host, ref, commit, tree, repo, say):
    cache = CACHE_ROOT / hashlib.sha256(str(repo).encode()).hexdigest()[:16]
    cache.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CUTOVER_CACHE=str(cache), CUTOVER_REF=ref, CUTOVER_COMMIT=commit)
    say(f"building {ref} ({commit}): {host.build.command}")
    # a session of its own: past the timeout the whole build stops, what the shell started too
    proc = subprocess.Popen(
        ["/bin/sh", "-c", host.build.command], cwd=tree, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=host.build.timeout)
    except BaseException as exc:  # the timeout, or Ctrl-C: nothing of the build runs on
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # ended meanwhile
        proc.stdout.close()
        proc.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise BuildError(
                f"the build of {ref} timed out after {host.build.timeout} s{_output(exc.output)}"
            ) from None
        raise
    run = subprocess.CompletedProcess(proc.args, proc.returncode, out)
    if run.returncode != 0:
        raise BuildError(
            f"the build of {ref} ({commit}) failed: {host.build.command!r} exited {run.returncode}"
            f"{_output(run.stdout)}\n  nothing was sent to any server",
            hint="fix the build and deploy again",
        )


def _output(data):
    text = (data or b"").decode("utf-8", "replace")
    return indented(text if len(text) <= OUTPUT_SHOWN else "..." + text[-OUTPUT_SHOWN:])
