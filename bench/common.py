"""Shared pieces of the benchmarks: a lab, generated sites, wrk load, timed fab runs, figures."""

import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

import lab  # noqa: E402

RESULTS = PROJECT / "bench" / "RESULTS.md"

# fab runs as on an operator's machine, its modules compiled once and cached: a shell that sets
# PYTHONDONTWRITEBYTECODE would have every timed run compile them again.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

# `timeout` and kill send SIGTERM: end as on Ctrl-C, so that every `finally` stops its lab servers.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


FRESH_FS_MB = 3072  # a new ext4 of this size for deploy_to, where the benchmark writes whole sites


def start_lab(count=1, mpm="event", fresh_fs=False, under="/tmp", **options):
    """Lab servers under a new temporary dir of `under`; fresh_fs: deploy_to on a new ext4
    (lab.start_server); options: more of lab.start's (php, site_conf, settings)."""
    parent = Path(tempfile.mkdtemp(prefix="cutover-bench-", dir=under))
    parent.chmod(0o755)
    ext4 = FRESH_FS_MB if fresh_fs else None
    return lab.start(parent / "lab", count=count, mpm=mpm, ext4_mb=ext4, **options), parent


def quiet(limit, wait):
    """Wait (at most `wait` s) for the 1-minute load average to fall below `limit`; returns it."""
    deadline = time.monotonic() + wait
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(2)
    return os.getloadavg()[0]


def quiet_options(parser, wait):
    """--load and --wait: each timed step first waits (quiet()) for a quieter machine."""
    parser.add_argument("--load", type=float, default=1.0, help="start each timed step below this load average")
    parser.add_argument("--wait", type=float, default=wait, help="at most this long (s) for it")


def under_option(parser):
    """--under DIR: the generated sites and the lab servers (their deploy_to) there, e.g. a tmpfs."""
    parser.add_argument("--under", default=os.environ.get("TMPDIR", "/tmp"), help="sites and lab servers here")


def stop_lab(the_lab, parent):
    lab.stop(the_lab.root)
    shutil.rmtree(parent, ignore_errors=True)


@contextmanager
def before_tree(revision, prefix):
    """(short commit, work dir, checkout of `revision` in work/before); both removed afterwards."""
    commit = subprocess.run(
        ["git", "-C", str(PROJECT), "rev-parse", "--short", revision], capture_output=True, text=True, check=True
    ).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    tree = work / "before"
    subprocess.run(["git", "-C", str(PROJECT), "worktree", "add", "--detach", str(tree), commit], check=True)
    try:
        yield commit, work, tree
    finally:
        subprocess.run(["git", "-C", str(PROJECT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def fab(hosts_file, *args, env=None):
    """Run fab; returns (seconds, CompletedProcess)."""
    t = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "fabric", *args],
        cwd=PROJECT,
        # what fab keeps about builds and releases (tasks/manifest.py): beside the lab, gone with it
        env=dict(
            os.environ,
            CUTOVER_HOSTS_FILE=str(hosts_file),
            XDG_CACHE_HOME=str(Path(hosts_file).parent / "cache"),
            **(env or {}),
        ),  # fmt: skip
        capture_output=True,
        text=True,
    )
    return time.monotonic() - t, result


@contextmanager
def example_lab():
    """One lab server, and a working copy of the example site as its build; all removed afterwards."""
    the_lab, parent = start_lab(1)
    site = parent / "site"
    shutil.copytree(PROJECT / "example" / "site", site)
    lab.write_hosts_file(the_lab, build=str(site))
    try:
        yield the_lab, the_lab.servers[0], site
    finally:
        stop_lab(the_lab, parent)


def deploy(the_lab, *args):
    """`fab deploy ARGS` against the lab's first server; asserts success; returns (seconds, its history entry)."""
    seconds, result = fab(the_lab.hosts_file, "deploy", *args)
    assert result.returncode == 0, result.stderr
    return seconds, history(the_lab.servers[0])[-1]


def redeploy(the_lab, site, tag):
    """Change one line of the site's index.html and deploy it; returns (seconds, history entry)."""
    page = site / "index.html"
    page.write_text(page.read_text() + f"<!-- {tag} -->\n")
    return deploy(the_lab)


def pauses_under_load(the_lab, site, deploys):
    """pause_ms of `deploys` one-line deploys under continuous wrk load, and what wrk saw."""
    wrk = Wrk(the_lab.servers[0].url, seconds=max(30, deploys * 3), threads=2, connections=8)
    pauses = [redeploy(the_lab, site, f"load {i}")[1]["pause_ms"] for i in range(deploys)]
    return pauses, wrk.result()


def generate_site(path, files, total_bytes, seed=1):
    """A site of `files` files of mixed realistic sizes adding up to about total_bytes."""
    rng = random.Random(seed)
    path = Path(path)
    (path / "assets").mkdir(parents=True)
    (path / "index.html").write_text('<!doctype html><meta name="release" content="bench"><p>bench</p>\n')
    weights = [rng.lognormvariate(0, 1.5) for _ in range(files - 1)]
    scale = (total_bytes - 100) / sum(weights)
    for i, w in enumerate(weights):
        sub = path / "assets" / f"d{i % 50:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i:05d}.bin").write_bytes(rng.randbytes(max(1, int(w * scale))))
    return path


def history(server):
    lines = Path(server.deploy_to, ".cutover", "history.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def median(values):
    return statistics.median(values) if values else float("nan")


class Wrk:
    """wrk in the background against a loopback URL, bounded by its duration."""

    def __init__(self, url, seconds, threads=2, connections=8):
        assert url.startswith("http://127.0.0.1:"), "loopback only"
        self.proc = subprocess.Popen(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--latency", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def stop(self):
        """End the run now (wrk prints its figures on SIGINT); its result()."""
        self.proc.send_signal(signal.SIGINT)
        return self.result()

    def result(self):
        out = self.proc.communicate()[0]
        errors = 0
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        if m:
            errors += sum(int(x) for x in m.groups())
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if m:
            errors += int(m.group(1))
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        m = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
        worst = float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)] if m else float("nan")
        return {"requests": requests, "errors": errors, "max_latency_ms": worst, "raw": out}


def machine():
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass  # no /proc/cpuinfo: the figures say "unknown" CPU
    rsync = subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return f"{os.cpu_count()} cores, {cpu}, Linux {platform.release()}, Python {platform.python_version()}, {rsync}"


DATA = PROJECT / "bench" / "data"


def save_data(name, figures):
    """Keep a bench's raw figures in bench/data/NAME.json, for bench/plots.py."""
    DATA.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    (DATA / f"{name}.json").write_text(
        json.dumps({"measured": stamp, "machine": machine(), **figures}, indent=1) + "\n"
    )


def write_section(title, lines):
    """Replace (or add) one section of bench/RESULTS.md."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = f"## {title}\n\nMeasured {stamp} on {machine()}.\n\n" + "\n".join(lines) + "\n"
    text = (
        RESULTS.read_text()
        if RESULTS.exists()
        else "# Cutover benchmark results\n\nRerun with the command named in each section.\n"
    )
    sections = re.split(r"(?m)^(?=## )", text)
    kept = [s for s in sections if not s.startswith(f"## {title}\n")]
    RESULTS.write_text("".join(kept).rstrip() + "\n\n" + body)
    print(body)
