"""The first step on the servers, before anything is uploaded or locked: what would fail at the
switch. For a deploy user who is not root, whether sudo lets it run the swap helper and whether
the helper's registration still matches hosts.yaml; for a deploy, whether the live release passes
its health check (a host already failing it would fail the new release's check too, or pass it
late, while the others serve the new release for its retries, and then switch the group back).
The live release is held to the status, the protected URLs and no PHP source, not to
health.expect_text, which may name what only the new release shows."""

from ..errors import CutoverError, GroupError
from ..fleet import STEP_TIMEOUT, in_parallel
from ..output import Timer, say
from . import health_seconds
from .migrate import migration_hosts
from .swap import verify_of

LIVE_HINT = "fix the live site first; or, when this release is what fixes it, deploy anyway with --ignore-live-health"


def users_of(host, migrating=True):
    """The users hosts.yaml names that the run needs on this host: {setting: user name}."""
    users = {}
    if host.writable or host.readable:
        users["web_user"] = host.web_user
    if migrating and host.migrate.command and host.migrate.user:
        users["migrate.user"] = host.migrate.user
    return users


def server_problems(host, found):
    """What this server lacks for the run (the server's preflight.server_state), each with the fix:
    a user hosts.yaml names, a directory of the layout the deploy user may not write."""
    out = []
    if "web_user" in found["missing_users"]:
        out.append(
            f"web_user {host.web_user!r} does not exist on this server (writable: and readable: are granted to it): "
            "set web_user in hosts.yaml to the user Apache or php-fpm runs PHP as"
        )
    if "migrate.user" in found["missing_users"]:
        out.append(
            f"migrate.user {host.migrate.user!r} does not exist on this server: set migrate.user in hosts.yaml to the "
            "user the migration must run as (or leave it out: the deploy user)"
        )
    if found["unwritable"]:
        where = sorted(d["path"] for d in found["unwritable"])
        owners = ", ".join(sorted({d["owner"] for d in found["unwritable"]}))
        out.append(
            f"the deploy user {found['me']} may not write {', '.join(where)} (owned by {owners}): as root on the "
            f"server, chown {found['me']} {' '.join(where)}"
        )
    return out


def preflight(run, live_health=True, migrating=False):
    """Ask every host at once (one round trip each); refuse the run, having changed nothing, with
    every problem found on every host. live_health=False: not the live release's health check
    (a rollback, or deploy --ignore-live-health). migrating: the migration's user must exist."""
    migrates = {r.name for r in migration_hosts(run)} if migrating else set()

    def one(r):
        args = {"users": users_of(r.host, r.name in migrates)}
        if r.uses_helper:  # a deploy user who is not root: sudo and the swap helper
            from .. import swaphelper

            args["helper"] = swaphelper.probe_args(r.host)
        verify = verify_of(r) if live_health else None
        if verify is not None:
            # not expect_text: it may name what only the new release shows (its version, its title)
            args["verify"] = verify = dict(verify, expect_text=None)
        t = Timer()
        timeout = STEP_TIMEOUT + (health_seconds(r.host.health) if verify is not None else 0)
        found = r.call("preflight", "preflight", timeout=timeout, **args)
        problems = server_problems(r.host, found)
        if r.uses_helper:
            problems += swaphelper.problems(r.host, found)
        live = found.get("live") or {}
        r.live_deferred = verify if live.get("deferred") else None  # checked again under this run's lock
        if live.get("problem"):
            problems.append(f"the live release {live['release']} fails its health check: {live['problem']}")
        if problems:
            raise CutoverError("; ".join(problems), hint=LIVE_HINT if live.get("problem") else None)
        notes = ["sudo allows the swap helper"] if r.uses_helper else []
        notes += [f"{key} {name} exists" for key, name in args["users"].items()]
        if verify is not None:
            notes.append(live.get("skipped") or f"live release {live['release']} healthy")
        say(r.host, "preflight", t.seconds, "; ".join(notes))

    try:
        in_parallel(run.hosts, one, run.parallel)
    except GroupError as failed:
        changed = "nothing was uploaded or switched" if run.command == "deploy" else "nothing was switched"
        error = CutoverError(f"{changed}: {failed.message}", hint=failed.hint)
        error.exit_code = failed.exit_code
        raise error from None


def live_health_under_lock(run):
    """The live health check preflight left for later, where another run held the lock then (its
    swap may have paused httpd or switched under the check): now, under this run's own lock, no
    other run switches, and a failure is the site's. Refused: nothing was switched."""

    def one(r):
        t = Timer()
        found = r.call("preflight", "preflight", timeout=STEP_TIMEOUT + health_seconds(r.host.health),
                       users={}, verify=r.live_deferred, token=run.who["token"])  # fmt: skip
        live = found.get("live") or {}
        if live.get("problem"):
            raise CutoverError(f"the live release {live['release']} fails its health check: {live['problem']}",
                               hint=LIVE_HINT)  # fmt: skip
        if live.get("deferred"):  # under this run's own lock only an outside hand switches the site
            why = live["skipped"].removeprefix("not checked yet: ")
            if live.get("switched_to"):
                why += "; something other than Cutover switches it"
            raise CutoverError(
                f"the live release {live['release']} was not checked under this run's lock: {why}",
                hint="find what changes the `current` symlink on this server and stop it, then deploy again",
            )
        say(r.host, "preflight", t.seconds, f"live release {live.get('release')} healthy (checked under the lock)")

    waiting = [r for r in run.hosts if r.live_deferred is not None]
    if not waiting:
        return
    try:
        in_parallel(waiting, one, run.parallel)
    except GroupError as failed:
        error = CutoverError(f"nothing was switched: {failed.message}", hint=failed.hint)
        error.exit_code = failed.exit_code
        raise error from None
