"""The `cutover` command: Fabric's program under Cutover's name, with fabfile.py's tasks bundled in.

`cutover -H prod deploy` is `fab -H prod deploy` run in a checkout: the same tasks, options, help
and exit codes, and the same group executor (which fabric.yaml selects for `fab`), from any
directory, reading that directory's hosts.yaml. It takes no -c/-r: its tasks are Cutover's own.
"""

import os
import signal
import sys

from cutover import home, version


def _interrupted_early(signum, frame):
    # Ctrl-C while the program starts up, before a task runs (as fabfile.py says it for fab)
    print("cutover: interrupted before the task started; nothing was changed", file=sys.stderr, flush=True)
    os._exit(130)


def program():
    """The Fab program object: name, version, the bundled tasks, the group executor."""
    root = str(home())
    if root not in sys.path:
        sys.path.insert(0, root)  # `tasks`, `lab` and `fabfile` of this Cutover, before anything of that name
    import fabric
    import invoke
    import paramiko
    from fabric import Config
    from fabric.main import Fab

    import fabfile
    from tasks import cli, output
    from tasks.executor import GroupExecutor

    class Cutover(Fab):
        def parse_core(self, argv):
            super().parse_core(argv)
            sys.dont_write_bytecode = sys.flags.dont_write_bytecode  # as fabfile.py says why

        def print_version(self):
            print(f"{self.name} {self.version}")
            for name, module in (("Fabric", fabric), ("Invoke", invoke), ("Paramiko", paramiko)):
                print(f"{name} {module.__version__}")
            print(f"Python {sys.version.split()[0]}")

    cli.PROGRAM = output.COMMAND = "cutover"
    return Cutover(
        name="Cutover",
        binary="cutover",
        binary_names=["cutover"],
        version=version(),
        namespace=fabfile.ns,
        executor_class=GroupExecutor,
        config_class=Config,
    )


def main():
    signal.signal(signal.SIGINT, _interrupted_early)
    program().run()


if __name__ == "__main__":
    main()
