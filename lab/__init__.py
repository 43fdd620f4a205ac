"""The lab: real sshd, Apache (and PHP) servers on loopback, for the test suite, the benchmarks and
`fab sandbox-up`. Not part of what Cutover needs to deploy."""

from .render import LAB_MAINTENANCE, write_hosts_file
from .servers import (
    APACHE,
    Lab,
    LabServer,
    apply_rules,
    children,
    graceful_restart,
    load,
    mariadb_credentials,
    pids,
    start,
    stop,
    stop_server,
)

__all__ = [
    "APACHE",
    "LAB_MAINTENANCE",
    "Lab",
    "LabServer",
    "apply_rules",
    "children",
    "graceful_restart",
    "load",
    "mariadb_credentials",
    "pids",
    "start",
    "stop",
    "stop_server",
    "write_hosts_file",
]
