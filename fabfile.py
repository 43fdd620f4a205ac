"""Cutover's tasks: `fab --list` shows them, `fab --help TASK` their options."""

from invoke import Collection

from tasks import check, deploy, sandbox

ns = Collection(check.check, deploy.deploy, sandbox.sandbox_up, sandbox.sandbox_down)
