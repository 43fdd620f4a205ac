"""Cutover's tasks: `fab --list` shows them, `fab --help TASK` their options."""

from invoke import Collection

from tasks import check, deploy, maintenance, releases, rollback, sandbox, setup

ns = Collection(
    setup.setup,
    check.check,
    deploy.deploy,
    rollback.rollback,
    releases.releases,
    releases.history,
    maintenance.maintenance_on,
    maintenance.maintenance_off,
    sandbox.sandbox_up,
    sandbox.sandbox_down,
)
