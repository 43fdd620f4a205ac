"""Run `fab -H NAME TASK` once for the whole group, not once per host.

Fabric's own executor turns each -H value into a Connection and calls the task per host. Cutover
needs every host of a group in one call (two-phase deploys, one release id for the fleet), so
this executor records the -H value in the config and calls each task once with a plain Context.
fabric.yaml beside the fabfile selects it (tasks.executor_class).

The words after `--` (Invoke's remainder, joined by spaces as ssh joins a command's words) are
the command of `fab run`; Fabric would run them on each -H host itself, without the lock.
"""

from fabric.executor import Executor
from invoke.exceptions import Exit

TAKES_COMMAND = "run"


class GroupExecutor(Executor):
    def expand_calls(self, calls, apply_hosts=True):
        # load_overrides replaces what an earlier call loaded (this method is called again for each
        # task's pre- and post-tasks): keep it
        cutover = dict(self.config.get("cutover") or {})
        target = self.core[0].args.hosts.value
        if target is not None:
            cutover["target"] = target
        if self.core.remainder:
            names = [getattr(call, "called_as", None) or getattr(call, "name", None) for call in calls]
            if names != [TAKES_COMMAND]:
                raise Exit(
                    "cutover: error: only `fab run` takes a command after --, as in "
                    "`fab -H GROUP run -- php maintenance/runJobs.php`; nothing was run",
                    code=2,
                )
            cutover["command"] = self.core.remainder
            self.core.remainder = ""
        if cutover:
            self.config.load_overrides({"cutover": cutover})
        return super().expand_calls(calls, apply_hosts=False)
