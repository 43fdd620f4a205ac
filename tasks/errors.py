"""The errors Cutover raises; each becomes one clear line and an exit status at the task boundary."""


class CutoverError(Exception):
    """Base of every error meant for the person at the terminal."""

    exit_code = 1

    def __init__(self, message, *, host=None, hint=None):
        super().__init__(message)
        self.message = message
        self.host = host
        self.hint = hint
        self.details = {}  # a refusal's whole answer from the server (its output, the lock's owner ...)

    def __str__(self):
        text = f"{self.host}: {self.message}" if self.host else self.message
        if self.hint:
            text += f"\n  what to do: {self.hint}"
        return text


class ConfigError(CutoverError):
    """hosts.yaml or a command-line argument is wrong; nothing remote has happened."""

    exit_code = 2


class ConnectError(CutoverError):
    """A server could not be reached, or its host key is unknown or changed."""

    exit_code = 3


class RemoteError(CutoverError):
    """A step failed on a server."""

    exit_code = 4


class LockError(CutoverError):
    """Another deploy or rollback holds the lock."""

    exit_code = 5


class SmokeError(CutoverError):
    """The smoke tests of an incoming release failed; the live site was not touched."""

    exit_code = 6


class HealthError(CutoverError):
    """The live site failed its health check after a switch."""

    exit_code = 7


class MigrationError(CutoverError):
    """The migration failed; nothing was switched and maintenance mode stays on."""

    exit_code = 8


class BuildError(CutoverError):
    """`deploy --ref`: exporting or building the release failed; nothing remote was touched."""

    exit_code = 10


class Interrupted(CutoverError):
    """Ctrl-C: the run stopped; the message says what each host serves now."""

    exit_code = 130


class HookError(CutoverError):
    """A hook failed after the switch: the new release is live, the hook's work is not done."""

    exit_code = 9


class CommandError(CutoverError):
    """`fab run`: the command exited non-zero, or outlived its timeout, on a host."""

    exit_code = 11


class GroupError(CutoverError):
    """One or more hosts of a group failed a step; holds every host's outcome."""

    def __init__(self, outcomes):
        self.outcomes = outcomes
        self.failures = [(r, e) for r, e in outcomes if isinstance(e, BaseException)]
        first = self.failures[0][1]
        self.exit_code = getattr(first, "exit_code", 1)
        lines = [
            str(CutoverError(e.message if isinstance(e, CutoverError) else repr(e), host=r.name))
            for r, e in self.failures
        ]
        hints = []
        for _, e in self.failures:
            if getattr(e, "hint", None) and e.hint not in hints:
                hints.append(e.hint)
        super().__init__("; ".join(lines), hint="; ".join(hints) or None)

    @property
    def succeeded(self):
        """The runs whose step succeeded."""
        return [r for r, e in self.outcomes if not isinstance(e, BaseException)]
