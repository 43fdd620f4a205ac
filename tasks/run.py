"""`fab run -- COMMAND`: a one-off command (an app's installer, a maintenance script, a cache
rebuild) in the live release of each host, under the deploy lock, its output shown per host."""

from invoke import task

from .cli import FORCE_UNLOCK_HELP, boundary, target
from .errors import CommandError, ConfigError, CutoverError, GroupError, Interrupted
from .output import Timer, count, line, say, shown

USERS = ("web", "migrate", "deploy")
TIMEOUT = (1, 86400)
TIMEOUT_DEFAULT = 600
COMMAND_MAX = 10_000  # characters
EXAMPLE = "fab run -- php maintenance/runJobs.php"


def check_command(remainder):
    """The words after `--`, joined by spaces as ssh joins them: one command for the server's sh."""
    command = (remainder or "").strip()
    if not command:
        raise ConfigError(f"give the command after --, e.g. {EXAMPLE}")
    if len(command) > COMMAND_MAX:
        raise ConfigError(f"the command is {len(command):,} characters long; at most {COMMAND_MAX:,}")
    if "\x00" in command:
        raise ConfigError("the command holds a NUL byte")
    return command


def check_timeout(value):
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        seconds = 0
    if not TIMEOUT[0] <= seconds <= TIMEOUT[1]:
        raise ConfigError(f"--timeout {shown(value)}: give a whole number of seconds from {TIMEOUT[0]} to {TIMEOUT[1]}")
    return seconds


def user_of(host, as_):
    """The user the command runs as on host (None: the deploy user, as it logs in)."""
    if as_ == "web":
        return host.web_user
    if as_ == "migrate":
        if host.migrate.user is None:
            raise ConfigError(
                f"--as migrate: migrate.user is not set for {host.name} in hosts.yaml; nothing was run",
                hint="set migrate.user (e.g. www-data), or use --as web or --as deploy",
            )
        return host.migrate.user
    return None


@task(
    help={
        "as": "who runs it: web (web_user, the default), migrate (migrate.user) or deploy (the SSH user)",
        "timeout": f"seconds the command may take on each host (default {TIMEOUT_DEFAULT}); then it is stopped",
        "force-unlock": FORCE_UNLOCK_HELP,
    }
)
@boundary
def run(c, as_="web", timeout=None, force_unlock=False):
    """Run a one-off command in the live release of each host: fab run -- COMMAND."""
    from .fleet import Run, close, connect, each_host  # the run's steps: not loaded to list the tasks
    from .steps.lock import force_unlock as clear_lock
    from .steps.lock import lock, unlock

    command = check_command(c.config.get("cutover", {}).get("command"))
    if as_ not in USERS:
        raise ConfigError(f"--as {shown(as_)}: give web, migrate or deploy")
    seconds = check_timeout(TIMEOUT_DEFAULT if timeout is None else timeout)
    hosts = target(c)
    users = {h.name: user_of(h, as_) for h in hosts}
    group = Run.of("run", hosts)
    group.who["command"] = f"run: {command}"  # what a deploy refused meanwhile names
    error = None
    try:
        connect(group)
        if force_unlock:
            clear_lock(group)
        lock(group, unlock_if_gone=True)
        error = _conclusion(each_host(group.hosts, lambda r: _one(group, r, command, users[r.name], seconds)))
    except KeyboardInterrupt:
        # the command is never cut halfway: where it started it runs to its end, and that server
        # records it and frees its lock then (unlock_if_gone), so this run must not unlock now
        close(group)
        raise Interrupted(
            "interrupted; the command runs on to its end where it had started, and each server frees its lock then"
        ) from None
    except CutoverError as exc:
        error = exc
    try:
        unlock(group)
    except CutoverError as failed:  # a host whose connection is gone: its server frees the lock itself
        if error is None:
            raise
        error.message += f"; and then: {failed.message}"
    finally:
        close(group)
    if error is not None:
        raise error


def _one(group, r, command, user, seconds):
    """The command on one host, its output shown under its name; returns its exit status."""
    from .steps import margin

    t = Timer()
    try:
        answer = r.call("run", "run", timeout=seconds + margin(), token=group.who["token"], command=command, user=user,
                        command_timeout=seconds)  # fmt: skip
    except CommandError as exc:  # it outlived its timeout: what it printed is shown all the same
        _show(r, exc.details.get("output"))
        raise
    say(r.host, "run", t.seconds, f"exit {answer['exit']} as {answer['as']} in {answer['release']}")
    _show(r, answer["output"])
    return answer["exit"]


def _show(r, output):
    lines = (output or "").splitlines()
    if lines:
        line("\n".join(f"[{r.name}] | {text}" for text in lines))  # one block: hosts never interleave


def _conclusion(outcomes):
    """None when the command exited 0 on every host (said), else the error naming each failure."""
    failed = [(r, o) for r, o in outcomes if isinstance(o, BaseException) or o != 0]
    if not failed:
        line(f"ran on {count(len(outcomes), 'host')}: exit 0 on every one")
        return None
    # a connection or a refusal (not the command's failure) is said as it is, with its exit status
    others = [(r, o) for r, o in failed if isinstance(o, BaseException) and not isinstance(o, CommandError)]
    commands = [(r, o) for r, o in failed if (r, o) not in others]
    ok = [r.name for r, o in outcomes if o == 0]
    message = "the command failed on " + ", ".join(f"{r.name} ({_why(o)})" for r, o in commands)
    message += f"; it succeeded on {', '.join(ok)}" if ok else ""
    if not others:
        return CommandError(message)
    error = GroupError(others)
    if commands:
        error.message += f"; {message}"
    return error


def _why(outcome):
    if isinstance(outcome, CommandError):
        return outcome.message.removeprefix("run: ")
    return f"exit {outcome}"
