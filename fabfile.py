"""Cutover's tasks: `fab --list` shows them, `fab --help TASK` their options."""

import gc
import os
import signal
import sys

from invoke import Collection


def _interrupted_early(signum, frame):
    # Ctrl-C while fab starts up, before a task runs (invoke would exit 1 without a word)
    print("cutover: interrupted before the task started; nothing was changed", file=sys.stderr, flush=True)
    os._exit(130)


signal.signal(signal.SIGINT, _interrupted_early)

# Invoke turns off writing .pyc files (for a user's tasks.py beside their code) before it loads
# this file: every run would compile Cutover's modules again (23 ms of a rollback). They are
# cached as an installed package's are, unless Python itself was told not to (-B,
# PYTHONDONTWRITEBYTECODE).
sys.dont_write_bytecode = sys.flags.dont_write_bytecode

from tasks import backups, check, deploy, init, maintenance, releases, rollback, run, sandbox, setup  # noqa: E402 (after the handler)

ns = Collection(
    init.init,
    backups.backup,
    backups.backups,
    backups.restore,
    setup.setup,
    check.check,
    deploy.deploy,
    rollback.rollback,
    releases.releases,
    releases.history,
    run.run,
    maintenance.maintenance_on,
    maintenance.maintenance_off,
    sandbox.sandbox_up,
    sandbox.sandbox_down,
)

# What is loaded now lives as long as fab does: Python's cyclic garbage collector need not walk it
# again, during the task nor at exit (its last collection at exit took 30 ms of every run).
gc.freeze()
