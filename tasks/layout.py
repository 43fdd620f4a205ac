"""The remote layout contract: every server-side path Cutover uses is named here, and only here."""

from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class Layout:
    """Paths under one server's deploy_to (see README, "On the server")."""

    deploy_to: str

    def _path(self, *parts):
        return str(PurePosixPath(self.deploy_to, *parts))

    @property
    def releases(self):
        return self._path("releases")

    @property
    def shared(self):
        return self._path("shared")

    @property
    def current(self):
        return self._path("current")

    @property
    def next(self):
        return self._path("next")

    @property
    def maintenance(self):
        return self._path("maintenance")

    @property
    def meta(self):
        return self._path(".cutover")

    @property
    def lock(self):
        return self._path(".cutover", "lock")

    @property
    def history(self):
        return self._path(".cutover", "history.jsonl")

    def release(self, release_id):
        return self._path("releases", release_id)

    def incoming(self, release_id):
        return self._path("releases", f".incoming-{release_id}")

    def as_dict(self):
        """The paths the remote scripts need, as plain data."""
        return {
            "deploy_to": self.deploy_to,
            "releases": self.releases,
            "shared": self.shared,
            "current": self.current,
            "next": self.next,
            "maintenance": self.maintenance,
            "meta": self.meta,
            "lock": self.lock,
            "history": self.history,
        }
