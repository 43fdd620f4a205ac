"""The migration: maintenance on, migrate.command in the new release on one host (on every host
where each has its own SQLite database), then the switch."""

from ..errors import ConfigError, MigrationError
from ..fleet import in_parallel
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


def own_databases(hosts):
    """The SQLite databases backups.databases names on a group of several hosts: each host has its
    own, so the migration runs on each; [] for one host."""
    if len(hosts) < 2:
        return []
    return sorted({d.name for h in hosts for d in h.backups.databases if d.kind == "sqlite"})


def migration_hosts(run):
    """The hosts that run the migration: every host where each has its own SQLite database, else
    migration_host alone."""
    return list(run.hosts) if own_databases([r.host for r in run.hosts]) else [migration_host(run)]


def check_databases(hosts):
    """--migrate on a group: one command cannot migrate each host's own SQLite database and a
    database server's once; refused before anything remote."""
    own = own_databases(hosts)
    served = sorted({d.name for h in hosts for d in h.backups.databases if d.kind != "sqlite"})
    if own and served:
        raise ConfigError(
            f"--migrate on a group of {len(hosts)} hosts whose backups.databases names a SQLite database "
            f"({', '.join(own)}, each host's own: migrated on every host) and a database server's "
            f"({', '.join(served)}: migrated once, on migrate.host)",
            hint="keep the group's data in the database server, or deploy the hosts one at a time (-H HOST)",
        )


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
    """Run migrate.command inside the new release, on one host or on every host that has its own
    SQLite database (in parallel); maintenance is on already."""
    fault_point("migrate")
    run.migration = "started"  # from here the database may change: maintenance stays on if anything fails
    hosts = migration_hosts(run)
    if len(hosts) == 1:
        _migrate_one(run, hosts[0])
    else:  # a GroupError of MigrationErrors: the deploy says maintenance stays on, as for one
        in_parallel(hosts, lambda r: _migrate_one(run, r), len(hosts))


def _migrate_one(run, r):
    m = r.host.migrate
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
