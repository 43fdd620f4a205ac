"""`fab check`: a preflight of each server of the group, one table row per host."""

from invoke import task

from . import ssh
from .cli import boundary, each_host, target
from .errors import CutoverError
from .layout import Layout

MIN_FREE = 100 * 1024 * 1024  # below this a deploy may fill the disk


def check_host(host):
    """Check one server: SSH with a checked host key, python3, rsync, deploy_to, httpd, disk."""
    with ssh.connect(host) as conn:
        found = ssh.agent(
            conn,
            "check",
            "check",
            python=host.python,
            host_name=host.name,
            layout=Layout(host.deploy_to).as_dict(),
            pidfile=host.httpd.pidfile,
        )
    problems = []
    if not found["rsync"]:
        problems.append("rsync is not installed on the server: apt-get install rsync")
    if not found["deploy_to"].startswith(("ok", "missing, can be")):
        problems.append(f"deploy_to {host.deploy_to} is {found['deploy_to']}: fix its owner or permissions")
    if host.httpd.pause != "none" and not found["httpd"]["ok"]:
        problems.append(found["httpd"]["problem"])
    if found["disk_free"] < MIN_FREE:
        problems.append(f"only {found['disk_free'] // 2**20} MB free under {host.deploy_to}")
    return found, problems


def _row(host, outcome):
    if isinstance(outcome, CutoverError):
        return [host.name, "FAIL", "-", "-", "-", "-", "-", "-"], [str(outcome)]
    found, problems = outcome
    httpd = found["httpd"]
    return [
        host.name,
        "ok",
        "ok" if found["rsync"] else "MISSING",
        found["deploy_to"],
        f"ok (pid {httpd['pid']})" if httpd["ok"] else "FAIL",
        f"{found['disk_free'] / 2**30:.1f} GB",
        found["current"] or "-",
        "ON" if found["maintenance"] else "off",
    ], [f"{host.name}: {p}" for p in problems]


def split_group(hosts, outcomes):
    """A group whose hosts serve different releases (e.g. a deploy killed between two hosts' swaps)."""
    serving = {h.name: o[0]["current"] for h, o in zip(hosts, outcomes) if not isinstance(o, CutoverError)}
    releases = set(serving.values())
    if len(releases) <= 1:
        return []
    newest = max(r for r in releases if r)
    listed = ", ".join(f"{name} serves {release}" for name, release in serving.items())
    return [
        f"the group is split: {listed}; bring it back to one release with "
        f"`fab rollback --to RELEASE` (e.g. --to {newest}) or a new `fab deploy`"
    ]


def render_table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


@task
@boundary
def check(c):
    """Preflight every host: SSH and host key, rsync, deploy_to, httpd, free disk, maintenance."""
    hosts = target(c).hosts
    rows = [["host", "ssh", "rsync", "deploy_to", "httpd", "disk free", "current", "maintenance"]]
    problems = []
    each_host_results = each_host(hosts, check_host)
    for host, outcome in each_host_results:
        row, found = _row(host, outcome)
        rows.append(row)
        problems += found
    print(render_table(rows))
    problems += split_group(hosts, [outcome for _, outcome in each_host_results])
    if problems:
        print("\n" + "\n".join(problems))
        raise CutoverError(f"{len(problems)} problem(s) found on {len(hosts)} host(s); see above")
    print(f"\nall {len(hosts)} host(s) ready")
