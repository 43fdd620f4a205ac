"""The load balancer around a rolling switch (--batch): each batch's servers drained before their
switch (no new connections; those open end, or drain_timeout passes) and made ready after it
verified, through HAProxy's runtime API on the host `balancer.via` (tasks/remote/balancer.py)."""

import time

from .. import hostsfile
from ..errors import ConfigError, CutoverError
from ..fleet import Run
from ..fleet import close as close_run
from ..fleet import connect as connect_run
from ..output import Timer, say
from ..remote.balancer import servers

POLL_S = 0.1  # between two looks at a drained server's open connections


def balancer_of(hosts):
    """The group's balancer (the first host's) and its `via` Host, checked before anything remote;
    None without one."""
    found = {h.balancer for h in hosts}
    chosen = hosts[0].balancer
    if not chosen.configured:
        return None
    if len({(b.via, b.socket, b.backend, b.drain_timeout) for b in found}) > 1:
        raise ConfigError("the hosts of this group name different balancers (balancer.via, socket, backend)")
    missing = [k for k in ("via", "socket", "backend") if getattr(chosen, k) is None]
    if missing:
        raise ConfigError(f"balancer needs {', '.join(missing)} too", hint="set balancer: {via, socket, backend}")
    inventory = hostsfile.load()
    try:
        via = inventory.resolve(chosen.via)[0]
    except ConfigError:
        raise ConfigError(f"balancer.via {chosen.via!r} is no host of hosts.yaml") from None
    return chosen, via


class Balancer:
    """One SSH connection to the balancer's host (the group's own, when it is one of them)."""

    def __init__(self, run, found):
        self.settings, via = found
        self.own = next((r for r in run.hosts if r.host == via), None)
        self.run = None
        if self.own is None:
            self.run = Run.of("balancer", [via])
            connect_run(self.run)
        self.agent = self.own or self.run.hosts[0]

    def close(self):
        if self.run is not None:
            close_run(self.run)

    def _ask(self, *commands):
        return self.agent.call("balancer", "balancer", socket=self.settings.socket, commands=list(commands))["replies"]

    def _server(self, r):
        return r.host.balancer.server or r.name

    def drain(self, batch):
        """Drain every server of the batch, then wait until none has a connection open."""
        t = Timer()
        backend = self.settings.backend
        self._ask(*(f"set server {backend}/{self._server(r)} state drain" for r in batch))
        names = {self._server(r) for r in batch}
        deadline = time.monotonic() + self.settings.drain_timeout
        while True:
            found = servers(self._ask("show stat")[0], backend)
            open_ = {name: found[name]["open"] for name in names if name in found}
            if len(open_) < len(names):
                raise CutoverError(f"balancer: backend {backend} has no server {', '.join(sorted(names - set(open_)))}")
            if not any(open_.values()) or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        for r in batch:
            left = open_[self._server(r)]
            note = f", {left} still open after {self.settings.drain_timeout:g} s" if left else ", no connection open"
            say(r.host, "drain", t.seconds, f"drained from {backend}{note}")

    def ready(self, batch):
        t = Timer()
        backend = self.settings.backend
        self._ask(*(f"set server {backend}/{self._server(r)} state ready" for r in batch))
        for r in batch:
            say(r.host, "enable", t.seconds, f"back in {backend}")
