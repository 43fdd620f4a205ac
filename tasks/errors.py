"""The errors Cutover raises; each becomes one clear line and an exit status at the task boundary."""


class CutoverError(Exception):
    """Base of every error meant for the person at the terminal."""

    exit_code = 1

    def __init__(self, message, *, host=None, hint=None):
        super().__init__(message)
        self.message = message
        self.host = host
        self.hint = hint
        self.answer = {}  # a remote step's whole JSON answer, when it came from one

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
