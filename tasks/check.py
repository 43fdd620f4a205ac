"""`fab check`: a preflight of each server of the group, one table row per host."""

import shlex
from urllib.parse import urlsplit

from invoke import task

from .cli import boundary, target
from .errors import CutoverError
from .output import line, table

# What check asks the servers is imported by the functions that ask it: `fab --list` loads none of it.

MIN_FREE = 100 * 1024 * 1024  # below this a deploy may fill the disk
MIN_PYTHON = (3, 7)  # what tasks/remote/ needs on the server


def probe_args(host):
    """What check asks the server to request over HTTP: the health URL, and what must be denied."""
    from .steps import health_args, origin, protected_urls

    if not host.health.urls:
        return None
    base = origin(host.health.urls[0])
    probes = [base + "/" + name.replace("*", "cutover-probe") for name in host.never_serve]
    return {
        "verify": health_args(host.health),
        "denied": probes + protected_urls(host),
        "serve": host.serve,
        "origin": base,
        "fallback": list(host.assets.fallback),
    }


def _pause_cell(host, httpd):
    """How the swap will pause httpd (the server decides, as the swap will): its cgroup frozen with
    one write, or each process signalled."""
    if host.httpd.pause == "none":
        return "not paused"
    if httpd.get("pause") == "freeze":
        return "freeze"
    return f"sigstop, {httpd['children'] + 1} processes"


def http_ports(host):
    """The ports httpd listens on as far as hosts.yaml tells (the health URLs'): where the deploy
    user cannot read httpd's open sockets, the listening sockets are found by port."""
    ports = {urlsplit(url).port or (443 if url.startswith("https:") else 80) for url in host.health.urls}
    return sorted(ports) or [80]


def listen_queue(host, found):
    """(the line on httpd's listen queue, a warning or None): the effective backlog, and whether
    the connections arriving at the rate measured now fit in it for a pause held until
    pause_timeout (a hung swap, before the watchdog resumes httpd)."""
    from .remote import limits

    queue = found.get("listen") or {}
    sockets, rate, somaxconn = queue.get("sockets"), queue.get("rate"), queue.get("somaxconn")
    if host.httpd.pause == "none":
        return None, None
    if not sockets:
        ports = ", ".join(map(str, http_ports(host)))
        return f"listen queue: not found (no sock_diag on the server, or httpd listens on none of {ports})", None
    backlog = min(s["backlog"] for s in sockets)
    where = ", ".join(sorted({f"{s['address']}:{s['port']}" for s in sockets}))
    capped = " (capped by net.core.somaxconn)" if backlog == somaxconn else f" of net.core.somaxconn {somaxconn}"
    line = f"listen queue on {where}: backlog {backlog:,}{capped}"
    if rate is None:
        return line, None
    arriving = rate * host.httpd.pause_timeout
    line += f"; {rate:,.0f} new connections/s now, {arriving:,.0f} in pause_timeout {host.httpd.pause_timeout:g} s"
    if arriving <= backlog:
        return line, None
    lower = backlog / rate
    instead = f", or lower httpd.pause_timeout to {lower:.1f} s" if lower >= limits.PAUSE_TIMEOUT[0] else ""
    return line, (
        f"warning: a swap held until pause_timeout ({host.httpd.pause_timeout:g} s) would queue about {arriving:,.0f} "
        f"connections at the rate measured now, but the listen queue holds {backlog:,}: the kernel would drop the "
        "rest's SYNs, and those visitors wait for their SYN to be sent again (a second or more); raise Apache's "
        f"ListenBacklog and net.core.somaxconn to {arriving:,.0f} or more{instead}"
    )


def check_host(r):
    """Check one server: SSH with a checked host key, rsync, deploy_to, httpd, disk, the swap helper
    (sudo allows it, its version, its registration as hosts.yaml has it), and over HTTP: the front
    page, Cutover's rules, the paths that must not be served, private-looking files served."""
    from . import apache, ssh, swaphelper
    from .fleet import STEP_TIMEOUT
    from .remote import private
    from .remote.views import PROBED_OUTSIDE
    from .steps.preflight import server_problems, users_of

    r.conn = ssh.connect(r.host)
    probe = probe_args(r.host)
    probes = len(probe["denied"]) + PROBED_OUTSIDE + private.PROBED + 2 if probe else 0
    timeout = STEP_TIMEOUT + probes * r.host.health.timeout
    found = r.call(
        "check", "check", timeout=timeout, pidfile=r.host.httpd.pidfile, probe=probe,
        helper=swaphelper.probe_args(r.host) if r.uses_helper else None, ports=http_ports(r.host),
        pause=r.host.httpd.pause, shared=list(r.host.shared), users=users_of(r.host), rules=apache.snippet(r.host),
    )  # fmt: skip
    problems = []
    if tuple(int(x) for x in found["python"].split(".")[:2]) < MIN_PYTHON:
        problems.append(f"the server's Python ({found['executable']}) is {found['python']}: Cutover needs 3.7 or newer")
    if not found["rsync"]:
        problems.append("rsync is not installed on the server: apt-get install rsync")
    problems += filter(None, [deploy_to_problem(r.host, found)])
    problems += server_problems(r.host, found["server"])
    if found.get("rules_current") is False:
        problems.append(
            f"Cutover's Apache rules in {r.host.deploy_to}/.cutover/apache.conf are not what hosts.yaml makes now "
            "(serve, never_serve, maintenance or assets changed since setup): rerun `fab setup`, then reload Apache"
        )
    if r.host.httpd.pause != "none" and not found["httpd"]["ok"]:
        problems.append(found["httpd"]["problem"])
    elif found["httpd"].get("pause_problem"):
        problems.append(found["httpd"]["pause_problem"])
    if found["disk_free"] < MIN_FREE:
        problems.append(f"only {found['disk_free'] // 2**20} MB free under {r.host.deploy_to}")
    problems += found.get("site_blocks", [])
    http = http_problems(r.host, found)
    found["http_ok"] = not http
    problems += http
    if r.uses_helper:
        problems += swaphelper.problems(r.host, found["helper"])
    return found, problems


def deploy_to_problem(host, found):
    """What keeps deploy_to from being deployed to, with the fix, or None."""
    state, where = found["deploy_to"], f"deploy_to {host.deploy_to}"
    elsewhere = "if the site lives elsewhere, correct deploy_to in hosts.yaml"
    if state.startswith("missing"):
        new = (
            "`fab setup` creates it"
            if state == "missing, can be created"
            else f"create it as root for the deploy user ({shlex.join(['install', '-d', '-o', host.user or 'USER', host.deploy_to])}), "
            "then run `fab setup`"
        )
        return f"{where} does not exist on the server: {elsewhere}; for a new site, {new}"
    if state != "ok":
        return f"{where} is {state}: fix its owner or permissions"
    if not found["set_up"]:
        return f"{where} has no Cutover layout (no .cutover/apache.conf): {elsewhere}; else run `fab setup`, which makes it"
    return None


def nothing_deployed(host, found):
    """The note for a health URL the placeholder release lacks (answered 404), or None."""
    if not found.get("http", {}).get("nothing_deployed"):
        return None
    return (
        f"nothing deployed yet: {host.health.urls[0]} answered 404 from setup's placeholder release (it holds "
        "only index.html); the health check applies from the first deploy"
    )


def unshared(found):
    """A note on what shared/ holds that no shared: entry names: data the app now writes into each
    release instead (where cleanup deletes it), or leftovers to remove."""
    shown, total = found.get("unshared") or ([], 0)
    if not total:
        return []
    more = f" and {total - len(shown)} more" if total > len(shown) else ""
    listed = ", ".join(f"shared/{p}" for p in shown)
    return [
        f"{listed}{more}: named by no shared: entry, so no release links it (the app writes into each release "
        "instead, and cleanup deletes that); add it to shared: or remove it from the server"
    ]


def http_problems(host, found):
    """What the HTTP probes found wrong."""
    from .remote.health import DENIED, PHP_NOT_RUNNING

    http = found.get("http")
    if http is None:
        return []
    problems = []
    url = host.health.urls[0]
    if http["front"] != "ok" and not http.get("nothing_deployed"):
        problems.append(f"the front page does not answer as the health check expects: {http['front']}")
    if not http["reachable"]:
        return problems
    if http["release"] is None:
        rules = f"{host.deploy_to}/.cutover/apache.conf"
        problems.append(
            f"Cutover's Apache rules are not active at {url}: Include {rules} in the site's VirtualHost (README)"
        )
    elif http["release"] != found["current"]:
        problems.append(f"{url} answered from release {http['release']}, but current is {found['current']}")
    for probed, status in http["denied"].items():
        if status not in DENIED:
            problems.append(f"{probed} answered {status}: it must never be served (401, 403 or 404)")
    if http.get("fallback", "").startswith(("FAIL", "off: ")):
        problems.append(f"the asset fallback: {http['fallback']}")
    if http.get("php_source"):
        probed, why = http["php_source"]
        problems.append(f"{probed} answered PHP source ({why}): {PHP_NOT_RUNNING}")
    for probed, status in http.get("private", {}).get("served", {}).items():
        problems.append(
            f"{probed} answered {status}, and its name looks private (a hosts file, key, credentials, database "
            "dump or copy of a file): leave it out of the build (build.exclude) or deny it in Apache"
        )
    return problems


def private_notes(host, found):
    """What check saw of the live release's private-looking files besides a problem."""
    from .remote import private

    seen = found.get("http", {}).get("private")
    if not seen:
        return []
    notes = []
    if seen["vcs"]:
        notes.append(
            f"the live release holds {', '.join(seen['vcs'])} (uploaded by an older deploy; never served: "
            "never_serve); the next deploy leaves it out"
        )
    if seen["more"]:
        notes.append(f"{seen['more']} more private-looking files of the live release were not requested")
    if seen["stopped"]:
        notes.append(f"the live release has more than {private.WALKED:,} entries: not all were looked at")
    return notes


def _row(r, outcome):
    if isinstance(outcome, BaseException):
        shown = str(outcome) if isinstance(outcome, CutoverError) else f"{r.name}: {outcome!r}"
        return [r.name, "FAIL", "-", "-", "-", "-", "-", "-", "-", "-"], [shown]
    found, problems = outcome
    httpd = found["httpd"]
    return [
        r.name,
        "ok",
        "ok" if found["rsync"] else "MISSING",
        found["deploy_to"],
        f"ok (pid {httpd['pid']}, {_pause_cell(r.host, httpd)})" if httpd["ok"] else "FAIL",
        f"{found['disk_free'] / 2**30:.1f} GB",
        found["current"] or "-",
        "ON" if found["maintenance"] else "off",
        _http_cell(found, problems),
        _assets_cell(r.host, found),
    ], [f"{r.name}: {p}" for p in problems]


def _assets_cell(host, found):
    """The asset fallback: on, off or FAIL (probed over HTTP when an earlier release allows it)."""
    if not host.assets.fallback:
        return "off"
    fallback = found.get("http", {}).get("fallback")
    if fallback is None:
        return "-"
    return fallback.split(":")[0].split(" (")[0]


def _http_cell(found, problems):
    if "http" not in found:
        return "-"
    return "ok" if found["http_ok"] else "FAIL"


def split_group(outcomes):
    """A group whose hosts serve different releases (e.g. a deploy killed between two hosts' swaps)."""
    from .remote.paths import PLACEHOLDER

    serving = {r.name: o[0]["current"] for r, o in outcomes if not isinstance(o, BaseException)}
    releases = set(serving.values())
    if len(releases) <= 1:
        return []
    listed = ", ".join(f"{name} serves {release}" for name, release in serving.items())
    kept = [set(o[0]["releases"]) for _, o in outcomes if not isinstance(o, BaseException)]
    common = sorted(set.intersection(*kept) - {PLACEHOLDER}, reverse=True)
    way = (
        f"`fab rollback --to {common[0]}` (kept on every host) or a new `fab deploy`"
        if common
        else "a new `fab deploy`"
    )
    return [f"the group is split: {listed}; bring it back to one release with {way}"]


def half_done(outcomes):
    """Group switches a dead run left recorded (tasks/remote/intent.py), one line each."""
    from .steps.repair import describe

    found = {}
    for r, o in outcomes:
        intent = None if isinstance(o, BaseException) else o[0].get("intent")
        if intent:
            found.setdefault(intent.get("token"), (intent, []))[1].append(r.name)
    return [
        f"{describe(i)} left its switch of {', '.join(i.get('hosts') or [])} recorded on {', '.join(names)}; "
        "finish or undo it with `fab check --repair` (or the next deploy or rollback does)"
        for i, names in found.values()
    ]


@task(help={"repair": "first finish or undo a group switch that a dead run left half done, then check"})
@boundary
def check(c, repair=False):
    """Preflight every host: SSH and host key, rsync, deploy_to, httpd, free disk, maintenance."""
    from .fleet import Run, close, each_host
    from .steps.repair import repair_group

    hosts = target(c)
    if repair:
        repair_group(hosts)
    run = Run.of("check", hosts)
    rows = [["host", "ssh", "rsync", "deploy_to", "httpd", "disk free", "current", "maintenance", "http", "assets"]]
    problems, notes = [], []
    try:
        outcomes = each_host(run.hosts, check_host)
    finally:
        close(run)
    for r, outcome in outcomes:
        row, found = _row(r, outcome)
        rows.append(row)
        problems += found
        if not isinstance(outcome, BaseException):
            lines = [*listen_queue(r.host, outcome[0]), nothing_deployed(r.host, outcome[0]), *unshared(outcome[0])]
            lines += private_notes(r.host, outcome[0])
            notes += [f"{r.name}: {text}" for text in lines if text]
    line(table(rows))  # line(): its advice names the command as it was run (fab or cutover)
    if notes:
        line("\n" + "\n".join(notes))
    problems += half_done(outcomes) or split_group(outcomes)
    if problems:
        line("\n" + "\n".join(problems))
        raise CutoverError(f"{len(problems)} problem(s) found on {len(run.hosts)} host(s); see above")
    line(f"\nall {len(run.hosts)} host(s) ready")
