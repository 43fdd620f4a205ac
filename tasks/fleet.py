"""A group of hosts acting as one: a connection per host, steps run on all hosts in parallel."""

import getpass
import os
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fabric import Connection

from . import agent, ssh
from .config import Host
from .errors import CutoverError, GroupError
from .output import Timer, line

STEP_TIMEOUT = 60  # seconds for a step whose time does not grow with a setting (views, unlock ...)
MAX_THREADS = 16  # hosts worked on at once, unless a step asks for more (the swap: every host)
STOPPED_WAITING = "stopped waiting (Ctrl-C again)"
# The main thread's waits for other threads wake this often: Python runs a signal's handler on
# the main thread only, and a wait there is cut short only by a signal delivered to that thread
# while it blocks. A Ctrl-C the kernel gives to another thread, or that comes just before the
# wait blocks, was seen only once the wait ended (a swap's timeout, a silent host's connect).
WAKE_S = 0.25


@dataclass
class HostRun:
    """One host's part of a run: its connection and what this run learned and did there."""

    host: Host
    conn: Connection | None = None
    current: str | None = None  # the live release when this run took the lock
    releases: list = field(default_factory=list)  # kept releases, oldest first
    previous: str | None = None  # what was live before `current`, from history (rollback)
    locked: bool = False
    switched: str = "no"  # "no", "yes", or "unknown" while a switch is under way or its answer was lost
    switch: dict = field(default_factory=dict)  # the swap's answer: old, new, pause_ms, rename_ms ...
    back_left: str | None = None  # its switch back "failed", or was "left under way" (Ctrl-C): the abort says so
    steps: dict = field(default_factory=dict)  # seconds per step
    bytes_sent: int = 0
    upload: object = None  # the deploy's running rsync (tasks.rsync.Upload)
    missing_shared: list = field(default_factory=list)  # shared entries the server lacks: seeded from the build
    hooks: list = field(default_factory=list)  # what each hook did, for the history
    migrated: str | None = None  # the backup taken before the live release's migration (rollback says so)
    intent: dict | None = None  # a group switch recorded here and not concluded (tasks/steps/repair.py)
    sized: dict | None = None  # the live release's files known here: the upload compares sizes (tasks/manifest.py)
    sized_ok: bool = False  # the lock step found that release live, with its seal
    live_deferred: dict | None = None  # the live health check to run under this run's lock (preflight)

    @property
    def name(self):
        return self.host.name

    @property
    def uses_helper(self):
        """A deploy user who is not root pauses httpd through the sudo helper that setup installs."""
        return self.host.httpd.pause != "none" and (self.host.user or getpass.getuser()) != "root"

    def call(self, step, op, timeout=STEP_TIMEOUT, **args):
        """One operation of the server side on this host (deploy_to added); its answer, or an error."""
        return agent.call(
            self.conn, self.name, self.host.python, step, op, dict(args, deploy_to=self.host.deploy_to), timeout
        )

    def send(self, step, op, **args):
        """The request of call(), not waiting for its answer (receive)."""
        agent.send(self.conn, self.name, self.host.python, step, op, dict(args, deploy_to=self.host.deploy_to))

    def receive(self, step, timeout=STEP_TIMEOUT):
        return agent.receive(self.conn, self.name, step, timeout)


@dataclass
class Run:
    """A deploy, rollback or other task across a group: one release id for the whole fleet."""

    command: str
    hosts: list
    release_id: str | None = None
    who: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    ref: str | None = None  # the git ref a deploy was built from (deploy --ref)
    backup: str | None = None  # the backup a deploy --migrate took first, once it is complete
    spread_ms: float | None = None  # a group's switch: first to last host's rename, by the servers' clocks
    go_ms: float | None = None  # an armed group's switch: from the first host's go sent to the last's
    parallel: int | None = None  # hosts that prepare at the same time (hosts.yaml `parallel`); None: all
    build: object = None  # a deploy's BuildInfo
    files: dict | None = None  # a deploy's build files, {path: (size, sha256)} (build.compare: checksum)
    migration: str | None = None  # deploy --migrate: "started" once the migration may have changed the database

    def summary(self):
        """One row per host once the group switched: what it serves, what it sent, its pause, time."""
        rows = [["host", "now serves", "was", "sent", "httpd paused", "seconds"]]
        for r in self.hosts:
            sent = f"{r.bytes_sent:,} B" if self.command == "deploy" else "-"
            pause = f"{r.switch.get('pause_ms')} ms ({r.switch.get('method') or 'no pause'})"
            rows.append(
                [r.name, r.switch.get("new"), r.switch.get("old") or "-", sent, pause, f"{sum(r.steps.values()):.2f}"]
            )
        return rows

    @classmethod
    def of(cls, command, hosts, release_id=None):
        limits = [h.parallel for h in hosts if h.parallel]
        return cls(command, [HostRun(h) for h in hosts], release_id, who(command), parallel=min(limits, default=None))


def who(command):
    """Who runs this task, for the lock and the history; the token proves lock ownership."""
    return {
        "user": getpass.getuser(),
        "local_host": socket.gethostname(),
        "pid": os.getpid(),
        "command": command,
        "token": secrets.token_hex(8),
    }


class Background:
    """fn(*args) in a daemon thread (a failed connect does not wait for it before fab exits)."""

    def __init__(self, fn, *args):
        self.value, self.error = None, None
        self.ended, self.then, self.lock = False, None, threading.Lock()
        self.thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self.thread.start()

    def _run(self, fn, args):
        try:
            self.value = fn(*args)
        except BaseException as exc:  # raised again where the result is wanted
            self.error = exc
        finally:
            with self.lock:
                self.ended, then = True, self.then
            if then is not None:
                then()

    def abandon(self, cleanup):
        """Nobody wants the result: cleanup() once fn has returned, at once if it has. Nothing
        waits for fn (a connection to a silent host takes up to its timeout to fail)."""
        with self.lock:
            if not self.ended:
                self.then = cleanup
                return
        cleanup()

    def result(self):
        while self.thread.is_alive():
            self.thread.join(WAKE_S)  # see WAKE_S
        if self.error is not None:
            raise self.error
        return self.value


def each_host(runs, fn, limit=None, finish=None):
    """fn(run) for every run in parallel (at most `limit` at a time, default MAX_THREADS); returns
    [(run, result or the exception it raised)] in order.

    Ctrl-C stops waiting for the hosts' steps: their agents are abandoned, so that what follows
    (switch back, abort) talks to new ones, and a thread left behind sends nothing more. With
    `finish` (what to say), Ctrl-C instead waits for the steps under way to end, each within its
    own timeout, before it is raised; a second Ctrl-C stops waiting."""

    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=min(limit or MAX_THREADS, len(runs)) or 1)
    futures = []
    try:
        for r in runs:
            futures.append(pool.submit(_outcome, fn, r, stop))
        results = [_result(f) for f in futures]
    except BaseException:
        if finish is not None and _waited(futures, finish):
            pool.shutdown()
            raise
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        for r in runs:
            if getattr(r, "conn", None) is not None:
                agent.abandon(r.conn)
        raise
    pool.shutdown()
    return list(zip(runs, results))


def _waited(futures, saying):
    """Wait for every step under way to end after a Ctrl-C; False when Ctrl-C came again."""
    if all(f.done() for f in futures):
        return True
    try:  # a Ctrl-C as soon as the line is out stops the wait too
        line(saying)
        for f in futures:
            _result(f)
    except BaseException:
        line(STOPPED_WAITING)
        return False
    return True


def _result(future):
    """future.result(), the wait woken every WAKE_S."""
    while True:
        try:
            return future.result(WAKE_S)
        except TimeoutError:
            continue


def _outcome(fn, r, stop=None):
    if stop is not None:
        agent.stop_threads(stop)
    try:
        return fn(r)
    except Exception as exc:  # kept as that host's outcome; in_parallel raises them together
        if isinstance(exc, CutoverError) and exc.host is None:
            exc.host = r.name
        return exc


def in_parallel(runs, fn, limit=None, finish=None):
    """fn(run) on every host at once (at most `limit` at a time); returns the outcomes, or raises
    one GroupError naming every failure. finish: as each_host's."""
    outcomes = each_host(runs, fn, limit, finish)
    if any(isinstance(outcome, BaseException) for _, outcome in outcomes):
        raise GroupError(outcomes)
    return outcomes


def connect(run, start_agent=False):
    """Open one SSH connection per host, in parallel, host keys checked. The threads are daemons:
    a run that fails before it needs its connections exits without waiting for a silent host.
    start_agent: each connection's server-side agent is started at once (agent.start), while
    the caller does its own work (a deploy's build check)."""

    def one(r):
        t = Timer()
        r.conn = ssh.connect(r.host)
        r.steps["connect"] = t.seconds
        if start_agent:
            agent.start(r.conn, r.host.python, STEP_TIMEOUT)  # as long as its first call would wait

    waiting, outcomes = list(reversed(run.hosts)), {}

    def worker():
        while waiting:
            try:
                r = waiting.pop()
            except IndexError:  # another thread took the last one
                return
            outcomes[id(r)] = _outcome(one, r)

    threads = [threading.Thread(target=worker, daemon=True)
               for _ in range(min(run.parallel or MAX_THREADS, len(run.hosts)))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(WAKE_S)  # see WAKE_S
    outcomes = [(r, outcomes.get(id(r))) for r in run.hosts]
    if any(isinstance(outcome, BaseException) for _, outcome in outcomes):
        raise GroupError(outcomes)


def close(run):
    for r in run.hosts:
        if r.conn is not None:
            r.conn.close()


def on_group(command, hosts, fn):
    """Connect to every host, fn(run), close: the shape of every task that is not a deploy or rollback."""
    run = Run.of(command, hosts)
    try:
        connect(run)
        return fn(run)
    finally:
        close(run)
