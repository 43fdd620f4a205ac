"""Cutover's tasks: `fab --list` shows them, `fab --help TASK` their options."""

from invoke import Collection

from tasks import check, sandbox

ns = Collection(check.check, sandbox.sandbox_up, sandbox.sandbox_down)
