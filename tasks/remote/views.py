"""Read-only views of a server (check, state, history, releases) and the maintenance switch."""

import os
import shutil
import sys

from . import history, httpd, intent, limits, lock, pause, paths, protocol
from .protocol import Refused


def _disk_free(path):
    while not os.path.exists(path):
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def op_check(a):
    """Preflight: rsync present, deploy_to usable, httpd alive, disk space; for a deploy user who is
    not root, whether sudo lets it run the swap helper, and the helper's version and registration."""
    layout = paths.Layout(a["deploy_to"])
    out = {"rsync": shutil.which("rsync"), "python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable}
    if os.path.isdir(layout.deploy_to):
        out["deploy_to"] = "ok" if os.access(layout.deploy_to, os.W_OK | os.X_OK) else "not writable"
    else:
        parent = layout.deploy_to
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        out["deploy_to"] = "missing, can be created" if os.access(parent, os.W_OK) else "missing, cannot be created"
    try:
        pid = httpd.parent(a["pidfile"])
        out["httpd"] = {"ok": True, "pid": pid, "children": len(httpd.children(pid))}
        try:
            out["httpd"]["pause"] = "freeze" if pause.method(a.get("pause"), pid, write=False) else "sigstop"
        except Refused as exc:  # httpd.pause freeze where it cannot be had
            out["httpd"]["pause_problem"] = "%s: %s" % (exc, exc.hint)
    except Refused as exc:
        out["httpd"] = {"ok": False, "problem": str(exc)}
        pid = None
    out["listen"] = _listen_queue(pid, a.get("ports") or ())
    out["disk_free"] = _disk_free(layout.deploy_to)
    out["current"] = paths.current_release(layout)
    out["releases"] = paths.releases(layout)
    out["intent"] = intent.read(layout)
    out["maintenance"] = os.path.exists(layout.maintenance_page)
    if "shared" in a:
        from . import shared

        out["unshared"] = shared.unnamed(layout, a["shared"])
    from . import preflight

    out["server"] = preflight.server_state(layout, a.get("users"))
    if a.get("helper"):
        out["helper"] = preflight.helper_state(layout.deploy_to, a["helper"])
    # Cutover's rules, written by setup: without them (a deploy_to that is wrong, or not set up
    # yet) the layout the HTTP probes read is not there either
    out["set_up"] = os.path.isfile(layout.apache_conf)
    if out["set_up"] and "rules" in a:  # what setup would write now (hosts.yaml changed since?)
        with open(layout.apache_conf) as f:
            out["rules_current"] = f.read() == a["rules"]
    if a.get("probe") and out["set_up"]:
        out["http"] = _probe(layout, out["current"], a["probe"])
    if os.path.exists(layout.apache_conf):  # set up: the site's blocks for pinned requests are current
        from . import siteconf

        out["site_blocks"] = siteconf.problems(layout, a.get("pidfile"))
    return out


RATE_WINDOW_S = 0.5  # new connections per second are counted over this long


def _listen_queue(parent, ports):
    """httpd's listening sockets (backlog, queued now), net.core.somaxconn and the rate of new
    connections now: what a pause held until pause_timeout would have to queue."""
    from . import listen

    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            somaxconn = int(f.read())
    except (OSError, ValueError):
        somaxconn = None
    return {"sockets": listen.listeners(parent, ports), "somaxconn": somaxconn,
            "rate": listen.arrival_rate(RATE_WINDOW_S), "window_s": RATE_WINDOW_S}


PROBED_OUTSIDE = 20  # entries of the release outside `serve` requested by check


def _probe(layout, current, probe):
    """Over HTTP on this server: the front page as the health check expects it, which release
    answered (Cutover's rules active?), the status of every URL that must not be served (the
    given ones and each entry of the live release outside `serve`), and which private-looking
    files of the live release are served (private.py)."""
    from . import health

    verify = health.checked(dict(probe["verify"], retries=0, protected=[]))
    if current == paths.PLACEHOLDER:
        verify["expect_text"] = None  # nothing deployed yet: setup's page cannot hold the site's text
    timeout = verify["timeout"]
    reached = health.status_of(verify["urls"][0], timeout)
    if not isinstance(reached, int):  # Apache down: one problem, not one per probe
        return {"front": "%s: %s" % (verify["urls"][0], reached), "release": None, "denied": {}, "reachable": False}
    out = {"front": health.problem(verify, current or "") or "ok", "reachable": True,
           "release": health.release_of(verify["urls"][0], timeout)}
    if current == paths.PLACEHOLDER and reached == 404 and out["release"] is None:
        # nothing deployed yet, and the health URL is a page of the site: whether the rules are
        # active shows on the placeholder's own page
        out["nothing_deployed"] = True
        out["release"] = health.release_of(probe["origin"] + "/index.html", timeout)
    urls = list(probe.get("denied", []))
    serve = probe.get("serve")
    if serve and current:
        names = sorted(n for n in os.listdir(layout.release(current)) if n != serve.split("/")[0])
        urls += [probe["origin"] + "/" + n for n in names[:PROBED_OUTSIDE]]
    out["denied"] = {url: health.status_of(url, timeout) for url in urls}
    if current:
        from . import private

        out["private"] = private.probe(os.path.join(layout.release(current), serve or ""), probe["origin"], timeout)
        out["php_source"] = _php_source(os.path.join(layout.release(current), serve or ""), probe["origin"], verify)
    if probe.get("fallback"):
        out["fallback"] = _probe_fallback(layout, current, probe, timeout)
    return out


def _php_source(root, origin, verify):
    """The site's index.php (where the health URLs ask no PHP: a static /health.txt) answered as its
    source: [url, why], or None. Asked as any visitor asks the front page."""
    from . import health

    if not os.path.isfile(os.path.join(root, "index.php")) or any(health.PHP_URL.search(u) for u in verify["urls"]):
        return None
    url = origin + "/index.php"
    try:
        _status, headers, body = health.get(url, verify["timeout"])
    except (OSError, ValueError):  # not answered: the front page's probe says so
        return None
    why = health.php_source(url, headers, body)
    return [url, why] if why else None


def _probe_fallback(layout, current, probe, timeout):
    """Whether an asset only the previous release has is served from it: "on", "off" or a problem."""
    from . import health

    with open(layout.apache_conf) as f:
        if "CUTOVER_FALLBACK" not in f.read():
            return "off: the rules on this server have no fallback (rerun `fab setup`)"
    previous = None
    try:
        with open(layout.map_file(current)) as f:
            previous = dict(line.split()[:2] for line in f if len(line.split()) >= 2).get("previous")
    except OSError:
        pass  # no map of the live release: nothing deployed yet
    if not previous or not os.path.isdir(layout.release(previous)):
        return "on (no earlier release to try it with)"
    serve = probe.get("serve") or ""
    old_root, new_root = layout.release(previous), layout.release(current)
    for root, _dirs, files in os.walk(os.path.join(old_root, serve)):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), os.path.join(old_root, serve))
            if rel.rsplit(".", 1)[-1].lower() in probe["fallback"] and not os.path.lexists(os.path.join(new_root, serve, rel)):
                status, headers, _ = health.get(probe["origin"] + "/" + rel, timeout)
                if status == 200 and headers.get("X-Cutover-Fallback") == "previous":
                    return "on"
                return "FAIL: /%s, which only %s has, answered %s without the fallback" % (rel, previous, status)
    return "on (every asset of %s is in the live release too)" % previous


def op_state(a):
    """Releases, current, lock, maintenance and stopped httpd PIDs of one server."""
    layout = paths.Layout(a["deploy_to"])
    out = {
        "releases": paths.releases(layout),
        "current": paths.current_release(layout),
        "lock": lock.owner(layout),
        "maintenance": os.path.exists(layout.maintenance_page),
    }
    if a.get("pidfile"):
        try:
            out["stopped"] = httpd.stopped(a["pidfile"])
        except Refused as exc:
            out["stopped"] = None
            out["httpd_problem"] = str(exc)
    return out


def op_history(a):
    """The last n history entries, oldest first."""
    return {"entries": history.read(paths.Layout(a["deploy_to"]), last=a["n"])}


def op_releases(a):
    """Kept releases, newest first, with deploy time, user and whether one was rolled away from."""
    layout = paths.Layout(a["deploy_to"])
    notes = history.release_notes(history.read(layout))
    current = paths.current_release(layout)
    out = []
    for name in reversed(paths.releases(layout)):
        d = notes.get(name, {})
        out.append({"release": name, "current": name == current, "deployed": d.get("deployed"),
                    "user": d.get("user"), "rolled_back": d.get("rolled_back", False), "ref": d.get("ref")})
    return {"releases": out, "current": current}


def _end_orphaned(layout, page, who):
    """Maintenance off after its run went away with nothing changed (a backup's hold): the page
    this run put up, and only that page, is removed."""
    try:
        with open(layout.maintenance_page) as f:
            if f.read() != page:
                return
    except OSError:
        return
    os.unlink(layout.maintenance_page)
    history.record(layout, "maintenance-off", who, "ok", note="its run went away before changing anything")


def op_maintenance(a):
    """Place (on) or remove (off) maintenance/index.html atomically; idempotent. keep: a page
    already there stays as it is. ends_with_run: if this session's client goes away before
    turning it off or starting a migration or restore, the page goes (nothing was changed)."""
    layout = paths.Layout(a["deploy_to"])
    was_on = os.path.exists(layout.maintenance_page)
    if was_on and a["on"] and a.get("keep"):  # a backup or a migration inside the operator's own window
        return {"was_on": True, "on": True, "changed": False}
    changed = was_on != a["on"]
    if a["on"]:
        if not limits.within(a["retry_after"], limits.RETRY_AFTER):
            raise Refused("retry_after must be from %d to %d seconds" % limits.RETRY_AFTER)
        os.makedirs(layout.maintenance, exist_ok=True)
        if was_on:
            with open(layout.maintenance_page) as f:
                changed = f.read() != a["page"]  # a new message or Retry-After
        # retry-after first: the page turns maintenance on, and Apache reads both
        paths.write_file(layout.retry_after, str(int(a["retry_after"])))
        paths.write_file(layout.maintenance_page, a["page"])  # readers see no page or the whole page, never half
    elif was_on:
        os.unlink(layout.maintenance_page)
    if a["on"] and a.get("ends_with_run") and not was_on:
        protocol.at_disconnect("maintenance", lambda: _end_orphaned(layout, a["page"], a["who"]))
    if not a["on"]:
        protocol.settled("maintenance")
    if was_on != a["on"]:
        os.makedirs(layout.meta, exist_ok=True)
        history.record(layout, "maintenance-" + ("on" if a["on"] else "off"), a["who"], "ok")
    return {"was_on": was_on, "on": a["on"], "changed": changed}
