"""`fab check`: a preflight of each server of the group, one table row per host."""

from invoke import task

from . import agent, ssh
from .cli import boundary, target
from .errors import CutoverError
from .fleet import Run, close, each_host
from .output import table
from .remote.paths import PLACEHOLDER

MIN_FREE = 100 * 1024 * 1024  # below this a deploy may fill the disk


def check_host(r):
    """Check one server: SSH with a checked host key, rsync, deploy_to, httpd, disk, the swap helper."""
    r.conn = ssh.connect(r.host)
    found = r.call("check", "check", pidfile=r.host.httpd.pidfile, helper_path=agent.HELPER if r.uses_helper else None)
    problems = []
    if not found["rsync"]:
        problems.append("rsync is not installed on the server: apt-get install rsync")
    if not found["deploy_to"].startswith(("ok", "missing, can be")):
        problems.append(f"deploy_to {r.host.deploy_to} is {found['deploy_to']}: fix its owner or permissions")
    if r.host.httpd.pause != "none" and not found["httpd"]["ok"]:
        problems.append(found["httpd"]["problem"])
    if found["disk_free"] < MIN_FREE:
        problems.append(f"only {found['disk_free'] // 2**20} MB free under {r.host.deploy_to}")
    if r.uses_helper:
        if found.get("helper_sha256") is None:
            problems.append(f"the swap helper {agent.HELPER} is not installed: run `fab setup`")
        elif found["helper_sha256"] != agent.helper_hash():
            problems.append(f"the swap helper {agent.HELPER} is from another version of Cutover: run `fab setup`")
    return found, problems


def _row(r, outcome):
    if isinstance(outcome, BaseException):
        shown = str(outcome) if isinstance(outcome, CutoverError) else f"{r.name}: {outcome!r}"
        return [r.name, "FAIL", "-", "-", "-", "-", "-", "-"], [shown]
    found, problems = outcome
    httpd = found["httpd"]
    return [
        r.name,
        "ok",
        "ok" if found["rsync"] else "MISSING",
        found["deploy_to"],
        f"ok (pid {httpd['pid']})" if httpd["ok"] else "FAIL",
        f"{found['disk_free'] / 2**30:.1f} GB",
        found["current"] or "-",
        "ON" if found["maintenance"] else "off",
    ], [f"{r.name}: {p}" for p in problems]


def split_group(outcomes):
    """A group whose hosts serve different releases (e.g. a deploy killed between two hosts' swaps)."""
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


@task
@boundary
def check(c):
    """Preflight every host: SSH and host key, rsync, deploy_to, httpd, free disk, maintenance."""
    run = Run.of("check", target(c))
    rows = [["host", "ssh", "rsync", "deploy_to", "httpd", "disk free", "current", "maintenance"]]
    problems = []
    try:
        outcomes = each_host(run.hosts, check_host)
    finally:
        close(run)
    for r, outcome in outcomes:
        row, found = _row(r, outcome)
        rows.append(row)
        problems += found
    print(table(rows))
    problems += split_group(outcomes)
    if problems:
        print("\n" + "\n".join(problems))
        raise CutoverError(f"{len(problems)} problem(s) found on {len(run.hosts)} host(s); see above")
    print(f"\nall {len(run.hosts)} host(s) ready")
