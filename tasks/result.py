"""The outcome of a deploy or rollback as data, for pipelines and notifiers: `--json FILE` writes it
(`--json -`: to standard output, every other line then on standard error), and the notifiers of
hosts.yaml (tasks/notify.py) receive it.

One object: the run (command, target, release, result, exit code, error kind, times) and, per host,
the release before and after, its result, the pause, bytes sent and the time of each step. Built
from what the run learned (tasks/fleet.py's Run), whatever the point the run stopped at.
"""

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from .errors import ConfigError, CutoverError, GroupError
from .output import Timer, shown

JSON_HELP = "write the outcome as JSON to FILE (- : to standard output, every other line then to standard error)"
STDOUT = "-"
PATH_SHOWN = 300  # characters of a --json path repeated in an error


def kind(error):
    """An error's kind, as JSON and notifiers name it: ConfigError -> config, SmokeError -> smoke, a
    group's failure -> its first host's; 'internal' for what is not a Cutover error (a bug)."""
    if isinstance(error, GroupError):
        return kind(error.failures[0][1])
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if not isinstance(error, CutoverError):
        return "internal"
    name = type(error).__name__
    return re.sub(r"Error$", "", name).lower() if name != "CutoverError" else "error"


def _error(error):
    if isinstance(error, CutoverError):
        return {"kind": kind(error), "message": error.message, "hint": error.hint}
    return {"kind": kind(error), "message": repr(error), "hint": None}


def _stamp(seconds):
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def check_json_path(value):
    """--json FILE: '-', or a file in an existing, writable directory; refused before anything remote."""
    if value is None or value == STDOUT:
        return value
    path = Path(value)
    try:
        if path.is_dir():
            raise ConfigError(
                f"--json {shown(value, PATH_SHOWN)}: is a directory; nothing was changed", hint="name a file in it"
            )
        parent = path.parent
        if not parent.is_dir():
            raise ConfigError(
                f"--json {shown(value, PATH_SHOWN)}: the directory {shown(str(parent), PATH_SHOWN)} does not exist; nothing was changed",
                hint="create it first, or name a file in an existing directory (- for standard output)",
            )
    except OSError as exc:  # a name too long, a loop of symlinks ...
        raise ConfigError(f"--json {shown(value, PATH_SHOWN)}: {exc.strerror}; nothing was changed") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--json {shown(value, PATH_SHOWN)}: cannot write into {shown(str(parent), PATH_SHOWN)}; nothing was changed"
        )
    return value


class Report:
    """What one deploy or rollback did, gathered while it runs (see reported())."""

    def __init__(self, c, command, dry_run=False):
        self.command = command
        self.target = c.config.get("cutover", {}).get("target")
        self.dry_run = dry_run
        self.started = time.time()
        self.timer = Timer()
        self._hosts = ()
        self.notifiers = None  # hosts.yaml's notify: settings of these hosts (tasks/notify.py)
        self.run = None  # the Run, once the task made one (started())

    @property
    def hosts(self):
        return self._hosts

    @hosts.setter
    def hosts(self, hosts):
        """The hosts of the run (cli.target): the target's name resolved, the notifiers checked."""
        from . import hostsfile, notify  # the run's: not loaded to list the tasks

        self._hosts = hosts
        if self.target is None:
            self.target = hostsfile.load().default_group
        self.notifiers = notify.settings_of(hosts)

    def data(self, error=None):
        """The outcome as a dict, for JSON; error: the exception the run ended with, or None."""
        run = self.run
        failed = {}
        if isinstance(error, GroupError):
            failed = {r.name: e for r, e in error.failures}
        elif isinstance(error, CutoverError) and error.host:
            failed = {error.host: error}
        if run is not None:
            hosts = [self._host(r.host, r, failed.get(r.name), error, run.release_id) for r in run.hosts]
        else:
            hosts = [self._host(h, None, failed.get(h.name), error, None) for h in self.hosts]
        code = 0 if error is None else getattr(error, "exit_code", 130 if isinstance(error, KeyboardInterrupt) else 1)
        release = run.release_id if run is not None else None
        out = {
            "cutover": _version(),
            "command": self.command,
            "target": self.target,
            "release": release,
            "result": "ok" if error is None else "failed",
            "exit_code": code,
            "error": None if error is None else _error(error),
            "dry_run": self.dry_run,
            "started": _stamp(self.started),
            "finished": _stamp(self.started + self.timer.seconds),
            "seconds": round(self.timer.seconds, 3),
            "switch_spread_ms": run.spread_ms if run is not None else None,
            "text": None,
            "hosts": hosts,
        }
        out["text"] = summary(out)
        return out

    def _host(self, host, r, own_error, error, release_id):
        switched = r.switched if r is not None else "no"
        before = r.current if r is not None else None
        after = {"yes": release_id, "no": before}.get(switched)  # "unknown": not known
        if own_error is not None:
            result = "failed"
        else:
            result = "ok" if error is None else "stopped"
        switch = r.switch if r is not None else {}
        return {
            "name": host.name,
            "address": host.host,
            "port": host.port,
            "deploy_to": host.deploy_to,
            "result": result,
            "before": before,
            "after": after,
            "switched": switched,
            "pause_ms": switch.get("pause_ms"),
            "pause_method": switch.get("method"),
            "bytes_sent": r.bytes_sent if r is not None else 0,
            "steps": {k: round(v, 6) for k, v in r.steps.items()} if r is not None else {},
            "error": None if own_error is None else _error(own_error),
        }


def summary(data):
    """One line for people: 'deploy of R to prod (web1, web2): ok in 3.2 s' (chat webhooks show it)."""
    release = f" of {data['release']}" if data["release"] else ""
    names = ", ".join(h["name"] for h in data["hosts"])
    target = f"{data['target']} ({names})" if names else str(data["target"])
    dry = "dry run: " if data["dry_run"] else ""
    outcome = "ok" if data["error"] is None else f"failed ({data['error']['kind']})"
    return f"{dry}{data['command']}{release} to {target}: {outcome} in {data['seconds']:.1f} s"


def _version():
    try:
        import cutover  # the package around tasks/ when installed, or beside it in a checkout

        return cutover.version()
    except ImportError:
        return "unknown"


_current = None  # the Report of the task running in this process


def started(run):
    """The deploy or rollback made its Run: the report follows it (called by tasks/deploy.py and rollback.py)."""
    if _current is not None:
        _current.run = run


@contextlib.contextmanager
def reported(c, command, json_path=None, dry_run=False):
    """Around a deploy or rollback: on the way out, the notifiers told and the JSON written, whatever
    the outcome; the run's error (and exit status) stays the task's."""
    global _current
    json_path = check_json_path(json_path)
    report = _current = Report(c, command, dry_run)
    real_stdout = sys.stdout
    redirect = contextlib.redirect_stdout(sys.stderr) if json_path == STDOUT else contextlib.nullcontext()
    error, data = None, None
    try:
        with redirect:  # the notifiers' lines too
            try:
                yield report
            except BaseException as exc:
                error = exc
                raise
            finally:
                _current = None
                data = report.data(error)
                if report.notifiers and not dry_run:
                    from . import notify

                    notify.send(report.notifiers, data)
    finally:
        if json_path and data is not None:
            write_json(data, json_path, real_stdout)


def write_json(data, json_path, stdout):
    """The outcome to FILE (whole or not at all: a temporary file renamed over it, never written
    through a symlink there) or to standard output; a failure to write is said, not raised."""
    text = json.dumps(data, indent=2) + "\n"
    if json_path == STDOUT:
        stdout.write(text)
        stdout.flush()
        return
    path = Path(json_path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        print(f"cutover: warning: --json {json_path}: not written: {exc.strerror}", file=sys.stderr, flush=True)
