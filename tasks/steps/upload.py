"""Step 3: rsync the build into each host's releases/.incoming-<id>, over the prelinked files."""

import os

from .. import manifest, rsync
from ..fleet import in_parallel
from ..output import count, line, say, size
from ..remote.paths import Layout


def start_uploads(run, build):
    """Start rsync on every host (the first `parallel` ones) together with the lock step: its start
    overlaps the lock, its server side waiting for the incoming dir (when_ready.py); on any
    failure abort() stops it. upload_all starts the others as earlier ones end. Where the live
    release's files are known here, rsync compares sizes only (tasks/manifest.py)."""
    if run.files is not None:
        for r, plan in zip(run.hosts, manifest.plans([r.host for r in run.hosts], run.files)):
            r.sized = plan
    for r in run.hosts[: run.parallel or len(run.hosts)]:
        _start(run, r, build)


def _start(run, r, build):
    dest = Layout(r.host.deploy_to).incoming(run.release_id)
    r.upload = rsync.Upload.start(r.host, r.conn, build, dest, when_ready=True, sized=r.sized is not None)


def upload_all(run, build):
    """Wait for every host's upload; one line each with files changed and bytes sent. Shared entries
    the server lacks and the build has are then uploaded too: stage seeds shared/ with them."""

    def one(r):
        if r.sized is not None and not r.sized_ok:  # the live release is not the one known here
            if r.upload is not None:
                r.upload.stop()
            r.sized = None
            r.upload = None
        if r.upload is None:  # beyond `parallel`, or compared by checksum after all: its turn came
            _start(run, r, build)
        stats = r.upload.result(progress=lambda text: line(f"[{r.name}] upload     {text}"))
        r.steps["upload"] = stats.seconds
        r.bytes_sent = stats.bytes_sent
        known = ", compared by size (unchanged files not read)" if r.sized is not None else ""
        say(
            r.host,
            "upload",
            stats.seconds,
            f"{count(stats.files, 'file')} changed, {size(stats.bytes_sent)} sent{known}",
        )
        seeds = [e for e in r.missing_shared if os.path.lexists(os.path.join(build.path, e))]
        if seeds:
            dest = Layout(r.host.deploy_to).incoming(run.release_id)
            stats = rsync.seed(r.host, r.conn, build, seeds, dest)
            r.bytes_sent += stats.bytes_sent
            say(
                r.host,
                "upload",
                stats.seconds,
                f"{', '.join(seeds)} from the build, to seed shared/ ({size(stats.bytes_sent)} sent)",
            )

    in_parallel(run.hosts, one, run.parallel)
