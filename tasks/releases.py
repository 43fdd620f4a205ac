"""`fab releases` and `fab history`: read-only views of each host."""

from invoke import task

from .check import render_table
from .cli import boundary, target
from .errors import ConfigError
from .fleet import HostRun, Run, close, connect, in_parallel, owner_record


def _read(c, op, **args):
    run = Run(op, "", [HostRun(h) for h in target(c).hosts], owner_record(op))
    answers = {}

    def one(r):
        answers[r.name] = r.agent(op, op, **args)

    try:
        connect(run)
        in_parallel(run.hosts, one)
    finally:
        close(run)
    return [(r.host, answers[r.name]) for r in run.hosts]


@task
@boundary
def releases(c):
    """List the kept releases of each host, newest first, the live one marked."""
    for host, answer in _read(c, "releases"):
        rows = [["", "release", "deployed", "user", "commit", "note"]]
        for rel in answer["releases"]:
            commit = rel["release"].split("Z-", 1)[1] if "Z-" in rel["release"] else "-"
            rows.append(
                [
                    "*" if rel["current"] else "",
                    rel["release"],
                    rel["deployed"] or "-",
                    rel["user"] or "-",
                    commit,
                    "rolled back" if rel["rolled_back"] else "",
                ]
            )
        print(f"{host.name} ({host.deploy_to}): {len(answer['releases'])} release(s), * = live")
        print(render_table(rows) + "\n")


@task(help={"n": "how many entries to show per host (default 20)"})
@boundary
def history(c, n=None):
    """Show the last entries of each host's deploy history."""
    # n arrives as text (no int default): invoke would answer a bad number with a traceback
    try:
        n = 20 if n is None else int(n)
    except ValueError:
        n = 0
    if not 1 <= n <= 10000:
        raise ConfigError("-n must be a whole number from 1 to 10000")
    for host, answer in _read(c, "history", n=n):
        rows = [["started", "event", "release", "from", "user", "result", "pause ms", "seconds"]]
        for e in answer["entries"]:
            rows.append(
                [
                    e.get("started") or e.get("at") or "-",
                    e.get("event", "-"),
                    e.get("release") or "-",
                    e.get("old") or "-",
                    e.get("user") or "-",
                    e.get("result", "-"),
                    "-" if e.get("pause_ms") is None else f"{e['pause_ms']:.3f}",
                    "-" if e.get("duration_s") is None else f"{e['duration_s']:.2f}",
                ]
            )
        print(f"{host.name}: last {len(answer['entries'])} entr{'y' if len(answer['entries']) == 1 else 'ies'}")
        print(render_table(rows) + "\n")
