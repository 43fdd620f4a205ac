"""The migration: maintenance on, migrate.command in the new release on one host, then the switch."""

from ..errors import ConfigError, MigrationError
from ..output import indented, say
from ..testhooks import fault_point
from . import margin


def migration_host(run):
    """The host that runs the migration: migrate.host, else the first host of the group."""
    wanted = run.hosts[0].host.migrate.host
    for r in run.hosts:
        if wanted is None or r.name == wanted:
            return r
    raise ConfigError(f"migrate.host {wanted!r} is not a host of this group ({', '.join(r.name for r in run.hosts)})")


def check_settings(hosts):
    """Every host of the group must agree on migrate: one migration runs for all of them."""
    first = hosts[0].migrate
    differ = [h.name for h in hosts if h.migrate != first]
    if differ:
        raise ConfigError(
            f"the hosts of this group have different migrate settings ({', '.join(differ)} differ from "
            f"{hosts[0].name}); one migration runs for the whole group",
            hint="set migrate: once for the group (in defaults or the group), not per host",
        )
    return first


def migrate(run):
    """Run migrate.command inside the new release, on one host; maintenance is on already."""
    r = migration_host(run)
    m = r.host.migrate
    fault_point("migrate")
    run.migration = "started"  # from here the database may change: maintenance stays on if anything fails
    try:
        answer = r.call("migrate", "migrate", timeout=m.timeout + margin(), release_id=run.release_id,
                        migration={"command": m.command, "timeout": m.timeout, "user": m.user})  # fmt: skip
    except MigrationError as exc:
        raise MigrationError(
            f"{exc.details.get('error', exc.message)}{indented(exc.details.get('output'))}\n  nothing was switched; "
            "maintenance mode stays ON so that no visitor meets a half-migrated database",
            host=r.name,
            hint="fix the database and the migration, then deploy again with --migrate; `fab maintenance-off` "
            "turns the site back on as it is",
        ) from None
    output = answer["output"].strip()
    say(r.host, "migrate", answer["seconds"], output.splitlines()[-1] if output else "")
