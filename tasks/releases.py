"""`fab releases` and `fab history`: read-only views of each host."""

from invoke import task

from .cli import boundary, target
from .errors import ConfigError
from .output import table

HISTORY_SHOWN = (1, 10000)  # bounds of -n
HISTORY_DEFAULT = 20


def _read(c, op, **args):
    """The answer of one read-only op from every host: [(Host, answer)]."""
    from .fleet import in_parallel, on_group

    def read(run):
        return [(r.host, answer) for r, answer in in_parallel(run.hosts, lambda r: r.call(op, op, **args))]

    return on_group(op, target(c), read)


def _commit(release_id):
    from .remote.paths import PLACEHOLDER, commit_of

    if release_id == PLACEHOLDER:
        return "-"
    return (commit_of(release_id) or "-") + (" (dirty)" if release_id.endswith("-dirty") else "")


def _reason(error):
    """Why a run failed, as history recorded it: the error's first line (the rest is its output and
    what to do), without control characters; "" for a run that did not fail."""
    if not isinstance(error, str) or not error.strip():
        return ""
    first = error.strip().splitlines()[0]
    return "".join(ch if ch.isprintable() else "?" for ch in first)


@task
@boundary
def releases(c):
    """List the kept releases of each host, newest first, the live one marked."""
    from .remote.paths import PLACEHOLDER

    for host, answer in _read(c, "releases"):
        rows = [["", "release", "deployed", "user", "ref", "commit", "note"]]
        for rel in answer["releases"]:
            rows.append(
                [
                    "*" if rel["current"] else "",
                    rel["release"],
                    rel["deployed"] or "-",
                    rel["user"] or "-",
                    rel.get("ref") or "-",
                    _commit(rel["release"]),
                    "setup's placeholder"
                    if rel["release"] == PLACEHOLDER
                    else "rolled back"
                    if rel["rolled_back"]
                    else "",
                ]
            )
        print(f"{host.name} ({host.deploy_to}): {len(answer['releases'])} release(s), * = live")
        print(table(rows) + "\n")


@task(help={"n": f"how many entries to show per host (default {HISTORY_DEFAULT})"})
@boundary
def history(c, n=None):
    """Show the last entries of each host's deploy history."""
    # n arrives as text (no int default): invoke would answer a bad number with a traceback
    try:
        n = HISTORY_DEFAULT if n is None else int(n)
    except ValueError:
        n = 0
    low, high = HISTORY_SHOWN
    if not low <= n <= high:
        raise ConfigError(f"-n must be a whole number from {low} to {high}")
    for host, answer in _read(c, "history", n=n):
        rows = [["started", "event", "release", "ref", "from", "user", "result", "pause ms", "seconds", "error"]]
        for e in answer["entries"]:
            rows.append(
                [
                    e.get("started") or e.get("at") or "-",  # "at": lines written before one schema
                    e.get("event", "-"),
                    e.get("release") or "-",
                    e.get("ref") or "-",
                    e.get("old") or "-",
                    e.get("user") or "-",
                    e.get("result", "-"),
                    "-" if e.get("pause_ms") is None else f"{e['pause_ms']:.3f}",
                    "-" if e.get("duration_s") is None else f"{e['duration_s']:.2f}",
                    _reason(e.get("error")),
                ]
            )
        print(f"{host.name}: last {len(answer['entries'])} entr{'y' if len(answer['entries']) == 1 else 'ies'}")
        print(table(rows) + "\n")
