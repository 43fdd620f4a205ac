"""The load balancer around a rolling switch (--batch): each batch's servers drained before their
switch (no new connections; those open end, or drain_timeout passes) and given back the state they
had before once it verified, through HAProxy's runtime API on the host `balancer.via`
(tasks/remote/balancer.py). A server the operator had in maintenance or draining is left as it
is; a server whose switch is unknown stays drained."""

import time

from .. import hostsfile
from ..errors import ConfigError, CutoverError
from ..fleet import Run
from ..fleet import close as close_run
from ..fleet import connect as connect_run
from ..output import Timer, say
from ..remote.balancer import admin_states, servers

POLL_S = 0.1  # between two looks at a drained server's open connections
MAINT_BITS = 0x01 | 0x02 | 0x04 | 0x20 | 0x40  # srv_admin_state: forced, inherited, config, resolution, hostname
DRAIN_BITS = 0x08 | 0x10  # srv_admin_state: forced, inherited


def admin_state(bits, status):
    """ "maint", "drain" or "ready", from a server's srv_admin_state (`show servers state`): what the
    operator set, whatever its health check says (`show stat` says DOWN for a drained server whose
    check fails). An HAProxy without that command (before 1.6): from the `show stat` status."""
    if bits is None:
        return "maint" if status.startswith("MAINT") else "drain" if status.startswith("DRAIN") else "ready"
    if bits & MAINT_BITS:
        return "maint"
    return "drain" if bits & DRAIN_BITS else "ready"


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
        self.hosts = run.hosts
        self.own = next((r for r in run.hosts if r.host == via), None)
        self.run = None
        if self.own is None:
            self.run = Run.of("balancer", [via])
            connect_run(self.run)
        self.agent = self.own or self.run.hosts[0]
        self.before = {}  # host name -> its server's admin state before this run drained it

    def close(self):
        if self.run is not None:
            close_run(self.run)

    def _ask(self, *commands):
        return self.agent.call("balancer", "balancer", socket=self.settings.socket, commands=list(commands))["replies"]

    def _server(self, r):
        return r.host.balancer.server or r.name

    def server_of(self, name):
        """The balancer's server name of the host named `name`."""
        return next(self._server(r) for r in self.hosts if r.name == name)

    def _servers(self, names):
        backend = self.settings.backend
        found = servers(self._ask("show stat")[0], backend)
        if names - set(found):
            raise CutoverError(f"balancer: backend {backend} has no server {', '.join(sorted(names - set(found)))}")
        return found

    def drain(self, batch):
        """Drain every server of the batch that is in rotation, then wait until none of the batch has
        a connection open. A server in maintenance or draining already is left as it is."""
        t = Timer()
        backend = self.settings.backend
        found = self._servers({self._server(r) for r in batch})
        admin = admin_states(self._ask(f"show servers state {backend}")[0], backend)
        for r in batch:
            self.before[r.name] = admin_state(admin.get(self._server(r)), found[self._server(r)]["status"])
        ready = [r for r in batch if self.before[r.name] == "ready"]
        if ready:
            self._ask(*(f"set server {backend}/{self._server(r)} state drain" for r in ready))
        names = {self._server(r) for r in batch if self.before[r.name] != "maint"}
        deadline = time.monotonic() + self.settings.drain_timeout
        while names:
            found = self._servers(names)
            open_ = {name: found[name]["open"] for name in names}
            if not any(open_.values()) or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        for r in batch:
            name = self._server(r)
            if self.before[r.name] == "maint":
                say(r.host, "drain", t.seconds, f"in maintenance ({found[name]['status']}) in {backend}: left as it is")
                continue
            left = found[name]["open"]
            note = f", {left} still open after {self.settings.drain_timeout:g} s" if left else ", no connection open"
            already = " (it was draining already)" if self.before[r.name] == "drain" else ""
            say(r.host, "drain", t.seconds, f"drained from {backend}{already}{note}")

    def restore(self, batch):
        """Give each server of the batch the state it had before drain(); one whose switch is unknown
        (r.switched) stays drained. Returns the names of the servers left drained for that."""
        t = Timer()
        backend = self.settings.backend
        unknown = [r for r in batch if r.switched == "unknown" and self.before.get(r.name) == "ready"]
        back = [r for r in batch if r.switched != "unknown" and self.before.get(r.name) == "ready"]
        if back:
            self._ask(*(f"set server {backend}/{self._server(r)} state ready" for r in back))
        for r in batch:
            if r in back:
                say(r.host, "enable", t.seconds, f"back in {backend}")
            elif r in unknown:
                say(r.host, "enable", t.seconds, f"left drained in {backend}: whether it switched is unknown")
            elif r.name in self.before:
                was = {"maint": "MAINT", "drain": "DRAIN"}[self.before[r.name]]
                say(r.host, "enable", t.seconds, f"left in {was}, as it was")
        return [r.name for r in unknown]
