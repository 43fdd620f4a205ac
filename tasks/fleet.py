"""A group of hosts acting as one: a connection per host, parallel steps, one release id."""

import getpass
import os
import secrets
import socket
import time
from dataclasses import dataclass, field

from fabric import Connection

from . import ssh
from .cli import Timer, each_host
from .errors import CutoverError
from .hostsfile import Host
from .layout import Layout


@dataclass
class HostRun:
    """One host's part of a deploy or rollback: its connection and what happened there."""

    host: Host
    conn: Connection | None = None
    current: str | None = None  # the live release before this run
    releases: list = field(default_factory=list)  # kept releases, oldest first
    previous: str | None = None  # what was live before `current`, from history
    locked: bool = False
    swapped: bool = False
    steps: dict = field(default_factory=dict)
    bytes_sent: int = 0
    files_sent: int = 0
    swap: dict = field(default_factory=dict)
    upload: object = None  # the deploy's running rsync (tasks.upload.Upload)
    deploy_user: str | None = None

    @property
    def layout(self):
        return Layout(self.host.deploy_to)

    @property
    def name(self):
        return self.host.name

    @property
    def uses_helper(self):
        """A deploy user who is not root pauses httpd through the sudo helper that setup installs."""
        return self.host.httpd.pause == "sigstop" and (self.host.user or getpass.getuser()) != "root"

    def agent(self, step, op, **args):
        return ssh.agent(
            self.conn, step, op, python=self.host.python, host_name=self.name, layout=self.layout.as_dict(), **args
        )


@dataclass
class Run:
    """A deploy or rollback across a group: one release id for the whole fleet."""

    command: str
    release_id: str
    hosts: list
    owner: dict
    started: float = field(default_factory=time.time)


def owner_record(command):
    """Who runs this deploy, for the lock and the history; the token proves lock ownership."""
    return {
        "user": getpass.getuser(),
        "local_host": socket.gethostname(),
        "pid": os.getpid(),
        "command": command,
        "token": secrets.token_hex(8),
    }


def in_parallel(runs, fn):
    """fn(run) on every host at once; raise the first failure after all have finished."""
    failed = [(run, outcome) for run, outcome in each_host(runs, fn) if isinstance(outcome, CutoverError)]
    if failed:
        first = failed[0][1]
        if len(failed) > 1:
            others = "; ".join(f"{r.name}: {e.message}" for r, e in failed[1:])
            first.message += f" (also failed: {others})"
        raise first


def connect(run):
    """Open one SSH connection per host, in parallel, host keys checked."""

    def one(r):
        t = Timer()
        r.conn = ssh.connect(r.host)
        r.steps["connect"] = t.seconds

    in_parallel(run.hosts, one)


def close(run):
    for r in run.hosts:
        if r.conn is not None:
            r.conn.close()
