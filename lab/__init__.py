"""The lab: real sshd, Apache (and PHP) servers on loopback, for the test suite, the benchmarks and
`fab sandbox-up`. Not part of what Cutover needs to deploy."""

from .backends import mariadb_credentials
from .render import LAB_MAINTENANCE, write_hosts_file
from .servers import Lab, LabServer, apply_rules, graceful_restart, load, pids, start, stop
from .stopping import APACHE, children, stop_server

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
