"""Steps 7-8: switch every host at once (httpd paused), verify; switch all back on any failure."""

import signal
import threading
import time
from contextlib import contextmanager

from .. import agent, ssh, testhooks
from ..errors import CutoverError, GroupError, HealthError, RemoteError
from ..fleet import STEP_TIMEOUT, STOPPED_WAITING, in_parallel
from ..output import Timer, count, line, say
from ..testhooks import fault_point
from . import health_args, health_seconds, margin, protected_urls

PAUSED = {"freeze": "frozen", "sigstop": "stopped", None: "paused"}  # how httpd was paused (httpd.pause)


def paused(answer):
    """The pause as the output says it: how long, how, and connections the full listen queue refused."""
    text = f"httpd {PAUSED[answer.get('method')]} {answer['pause_ms']} ms"
    queue = answer.get("listen")
    if queue is not None:
        text += f", listen queue overflows {queue['overflows']}"
        if queue["drops"] != queue["overflows"]:
            text += f" (drops {queue['drops']})"
    return text


def _timeout(h):
    # the pause, the health check, the switch back and the health check after it
    return 2 * h.httpd.pause_timeout + 2 * health_seconds(h.health) + margin()


def switch(r, step, release_id, verify, restore=False, arm=False):
    """One host's switch to release_id (and verify, switching back on failure); the swap's answer.
    arm: the swap process prepares and waits for go() (not through the sudo helper)."""
    h = r.host
    if r.uses_helper:
        if not restore:  # the helper records nothing: should this run go away, the agent records the switch
            r.call(step, "helper_switch", release_id=release_id)
        # the helper takes the rest (pidfile, pause_timeout, health settings) from its registration
        args = {
            "deploy_to": h.deploy_to,
            "release_id": release_id,
            "verify": verify is not None,
            "swap_back": verify is not None,
            "restore": restore,
        }
        return agent.call_helper(r.conn, r.name, h.python, step, args, _timeout(h))
    return r.call(
        step, "swap", timeout=STEP_TIMEOUT if arm else _timeout(h), release_id=release_id, pidfile=h.httpd.pidfile,
        pause=h.httpd.pause, pause_timeout=h.httpd.pause_timeout, hold_ms=testhooks.hold_ms(), verify=verify,
        swap_back=verify is not None, previous_depth=h.assets.releases, restore=restore, arm=arm,
        hold_file=None if restore else testhooks.hold_swap(),
    )  # fmt: skip


def arm(run, verify_of):
    """Prepare the swap on every host of a group, each waiting for its go: the renames then follow
    one short message per host instead of each host's preparation. A host that fails to arm
    disarms the others: nothing switched anywhere. Not through the sudo helper (one process per
    call, it cannot wait between two): a group with a helper host swaps in one call per host."""
    if len(run.hosts) < 2 or any(r.uses_helper for r in run.hosts):
        return False

    def one(r):
        r.switch = switch(r, "arm", run.release_id, verify_of(r), arm=True)

    try:
        in_parallel(run.hosts, one, len(run.hosts))
    except BaseException:
        for r in run.hosts:
            if r.switch.get("armed"):
                try:
                    r.call("disarm", "disarm")
                except CutoverError:
                    pass  # its swap process gives up by itself when this connection ends
            r.switch = {}
        raise
    fault_point("go")
    return True


def verify_of(r):
    """The health check after one host's switch (None: no health.url)."""
    return health_args(r.host.health, protected=protected_urls(r.host)) if r.host.health.urls else None


def swap(run, batch=None):
    """Switch every host to the run's release at once, or `batch` hosts at a time (rolling, each
    batch drained from the load balancer first and verified before the next); if any fails,
    switch back every host that switched. A group's hosts have recorded the switch first
    (steps/repair.py: with the stage request, or record_intent)."""
    try:
        if batch:
            rolling(run, batch)
        else:
            armed = arm(run, verify_of)
            with _ctrl_c_held() as pressed:  # every go sent, or none: not a group cut at a random host
                unsent = go(run) if armed else {}
            if pressed:
                line(_finishing(run.hosts))
            # all at once; Ctrl-C waits for the answers, so that the switch back follows each switch
            # (after a Ctrl-C held in the go loop this is that wait: the next Ctrl-C stops it)
            try:
                in_parallel(run.hosts, lambda r: _switch_host(run, r, armed, unsent), len(run.hosts),
                            None if pressed else _finishing(run.hosts))  # fmt: skip
            except KeyboardInterrupt:
                if pressed:
                    line(STOPPED_WAITING)
                raise
            if pressed:
                raise KeyboardInterrupt
            run.spread_ms = spread_ms(run)
    except BaseException as exc:  # any failure, Ctrl-C included: the group must not stay split
        if isinstance(exc, CutoverError) and none_switched(run):
            exc.message = f"nothing was switched: {exc.message}"
        try:
            undone = switch_back(run)
        except KeyboardInterrupt:  # Ctrl-C stopped waiting for the switch back: it runs on, on the server
            for r in run.hosts:
                if r.switched != "no":
                    r.back_left = "left under way (Ctrl-C)"
            raise
        except GroupError as failed:
            for r, _ in failed.failures:
                r.back_left = "failed"
            if isinstance(exc, CutoverError):
                exc.message += f"; switching the others back failed too: {failed.message}"
            raise exc from None
        if undone and isinstance(exc, CutoverError):
            exc.message += f"; switched back on {', '.join(undone)} so the group stays on one release"
        raise


def _finishing(hosts, what="switch", then="then every host that switched goes back"):
    """What Ctrl-C during the switch (or the switch back) says: the switches under way are waited
    for, then undone."""
    longest = max(_longest(r) for r in hosts)
    return f"Ctrl-C: waiting for the {what} under way to answer (at most {longest:.0f} s), {then}; Ctrl-C again stops waiting"


def _longest(r):
    """The longest one host's switch can take: through the sudo helper, the agent's word first
    (helper_switch), then a new channel opened and its command started, each bounded apart."""
    if not getattr(r, "uses_helper", False):
        return _timeout(r.host)
    return STEP_TIMEOUT + 2 * ssh.START_TIMEOUT + _timeout(r.host)


@contextmanager
def _ctrl_c_held():
    """Ctrl-C inside the block is kept for after it (a list, true once pressed); a second one is
    raised at once."""
    pressed = []
    if threading.current_thread() is not threading.main_thread():
        yield pressed
        return

    def keep(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(signum)

    previous = signal.signal(signal.SIGINT, keep)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def none_switched(run):
    """Whether no host of the run switched, even for a moment (each answered, before any rename)."""
    return all(r.switched == "no" and "new" not in r.switch for r in run.hosts)


def rolling(run, batch):
    """`batch` hosts at a time: drained from the balancer (if there is one), switched and verified,
    back in the balancer; then the next batch."""
    from .balancer import Balancer, balancer_of  # a rolling switch's only

    found = balancer_of([r.host for r in run.hosts])
    lb = Balancer(run, found) if found else None
    if lb is None:
        line(
            f"switching {count(batch, 'host')} at a time; no balancer: set balancer: in hosts.yaml to drain each first"
        )
    try:
        batches = [run.hosts[i : i + batch] for i in range(0, len(run.hosts), batch)]
        for k, hosts in enumerate(batches, 1):
            line(f"batch {k} of {len(batches)}: {', '.join(r.name for r in hosts)}")
            try:
                if lb:
                    lb.drain(hosts)
                in_parallel(hosts, lambda r: _switch_host(run, r, False, {}), len(hosts), _finishing(hosts))
            except BaseException as exc:
                if lb:
                    _give_back(lb, hosts, exc)
                raise
            if lb:
                error = _give_back(lb, hosts)  # switched and verified: each server as it was before its drain
                if error is not None:
                    raise error
    finally:
        if lb:
            lb.close()


def _give_back(lb, hosts, exc=None):
    """Each server of the batch as it was before its drain (switched, switched back, or never
    switched), but one whose switch is unknown stays drained. What stays drained, or may (the
    balancer could not be reached to give a server its state back), is said in exc's message,
    which a failure of the balancer never replaces; without exc, such a failure is returned."""
    backend = lb.settings.backend
    try:
        unknown, problem = lb.restore(hosts), None
    except CutoverError as failed:
        unknown, problem = (
            [r.name for r in hosts if lb.before.get(r.name) == "ready" and r.switched == "unknown"],
            failed,
        )
    notes = [
        f"{name} left drained in {backend}: whether its switch happened is unknown "
        f"(check it with fab check, then: set server {backend}/{lb.server_of(name)} state ready)"
        for name in unknown
    ]
    if problem is not None:
        notes += [
            f"{r.name} may be left drained in {backend}: giving it back its state failed ({problem.message}); once "
            f"the balancer answers: set server {backend}/{lb.server_of(r.name)} state ready"
            for r in hosts
            if lb.before.get(r.name) == "ready" and r.name not in unknown
        ]
    target = exc if exc is not None else problem
    if isinstance(target, CutoverError) and notes:
        target.message += "; " + "; ".join(notes)
    return problem if exc is None else None


def _switch_host(run, r, armed, unsent):
    """One host's switch (its go, when armed), verified; raises on a failure."""
    t = Timer()
    verify = verify_of(r)
    r.switched = "unknown"  # until an answer says otherwise, this host may have switched
    try:
        if armed:
            if r.name in unsent:
                raise unsent[r.name]
            testhooks.before_go(r.name)
            answer = r.receive("swap", timeout=_timeout(r.host))
            testhooks.after_go(r.name)
        else:
            answer = switch(r, "swap", run.release_id, verify)
    except RemoteError as exc:
        if exc.details:  # the server answered: it says where current is now
            r.switched = "yes" if exc.details.get("current") == run.release_id else "no"
        raise
    r.switch = answer
    r.switched = "no" if answer.get("swapped_back") else "yes"
    r.steps["swap"] = t.seconds
    note = f" ({answer['note']})" if answer.get("note") else ""
    say(r.host, "swap", t.seconds, f"{answer['old']} -> {answer['new']}, {paused(answer)}{note}")
    if verify is None:
        say(r.host, "verify", 0, "skipped: no health.url")
    elif answer["health"] != "ok":
        raise HealthError(
            f"health check failed after the switch: {answer['health']}; switched back to {answer['old']} at once "
            f"(health after switching back: {answer.get('health_after_swap_back', 'not checked')})"
        )
    else:
        say(r.host, "verify", 0, "healthy")


def go(run):
    """Every armed host's go, from this one thread, back to back: the renames follow each other by
    the time a short message takes to leave, not by 32 threads taking turns. Returns {host name:
    the error} for the hosts it could not be sent to (each is then a failed swap)."""
    unsent, start = {}, time.monotonic()
    for r in run.hosts:
        r.switched = "unknown"  # from now on this host may switch
        if not testhooks.sends_go(r.name):
            continue
        try:
            r.send("swap", "go")
        except CutoverError as exc:
            unsent[r.name] = exc
    run.go_ms = round((time.monotonic() - start) * 1000, 1)
    return unsent


def spread_ms(run):
    """Milliseconds from the first host's rename to the last's (the servers' clocks: as close as
    their time sync, NTP keeps it within a few ms), or None for one host."""
    times = [r.switch["renamed_at"] for r in run.hosts if r.switch.get("renamed_at") is not None]
    return round((max(times) - min(times)) * 1000, 1) if len(times) > 1 else None


def spread_note(run):
    """The switch spread as the last line of a group's deploy or rollback says it."""
    if run.spread_ms is None:
        return ""
    sent = f"; every go sent within {run.go_ms} ms" if run.go_ms is not None else ""
    return f", switch spread {run.spread_ms} ms (first to last host's rename{sent})"


def switch_back(run):
    """Return every host this run switched (or may have) to the release it served before; names them."""
    back = [r for r in run.hosts if r.switched in ("yes", "unknown") and r.current]
    if not back:
        return []
    for r in back:
        if r.switched == "unknown" and getattr(r, "conn", None) is not None:
            agent.abandon(r.conn)  # it may still owe the swap's answer, which the switch back would read as its own

    def one(r):
        answer = switch(r, "switch back", r.current, None, restore=True)
        r.switched = "no"
        say(r.host, "switch back", 0, f"{answer['old']} -> {answer['new']}, {paused(answer)}")

    # Ctrl-C waits for it too: it runs on, on the server, and the abort must read what it left
    in_parallel(back, one, len(back), _finishing(back, "switch back", "then the run ends"))
    return [r.name for r in back]
