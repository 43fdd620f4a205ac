"""Run `fab -H NAME TASK` once for the whole group, not once per host.

Fabric's own executor turns each -H value into a Connection and calls the task per host. Cutover
needs every host of a group in one call (two-phase deploys, one release id for the fleet), so
this executor records the -H value in the config and calls each task once with a plain Context.
fabric.yaml beside the fabfile selects it (tasks.executor_class).
"""

from fabric.executor import Executor


class GroupExecutor(Executor):
    def expand_calls(self, calls, apply_hosts=True):
        target = self.core[0].args.hosts.value
        if target is not None:
            self.config.load_overrides({"cutover": {"target": target}})
        return super().expand_calls(calls, apply_hosts=False)
