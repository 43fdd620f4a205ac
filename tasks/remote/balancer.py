"""HAProxy's runtime API, on the host that reaches its socket: one command per connection, its
reply read to the end (how HAProxy answers a command not in interactive mode).

Standard library only.
"""

import re
import socket

from .protocol import Refused

COMMAND = re.compile(r"(set server [\w.:-]+/[\w.:-]+ state (drain|ready)|show stat|show servers state [\w.:-]+)")
TIMEOUT = 10  # seconds for one command's reply


def ask(path, command):
    if not COMMAND.fullmatch(command):
        raise Refused("not a balancer command Cutover sends: %r" % command)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect(path)
        s.sendall((command + "\n").encode())
        reply = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    except OSError as exc:
        raise Refused(
            "HAProxy's runtime API at %s: %s" % (path, exc),
            hint="check balancer.socket (HAProxy's `stats socket ... level admin`) and balancer.via",
        ) from None
    finally:
        s.close()
    return reply.decode("utf-8", "replace")


def servers(stat, backend):
    """{server: {"open": connections open now, "status": DRAIN, UP, no check ...}} of one backend,
    from `show stat`'s CSV (pxname, svname, ..., scur at 4, ..., status at 17)."""
    out = {}
    for row in stat.splitlines():
        fields = row.split(",")
        if len(fields) > 17 and fields[0] == backend and fields[1] not in ("BACKEND", "FRONTEND"):
            out[fields[1]] = {"open": int(fields[4] or 0), "status": fields[17]}
    return out


def admin_states(state, backend):
    """{server: srv_admin_state} of one backend from `show servers state BACKEND` (the admin state
    `show stat`'s status hides behind DOWN or NOLB when a health check fails): 0x01, 0x02, 0x04,
    0x20, 0x40 are kinds of maintenance, 0x08 and 0x10 a drain."""
    out = {}
    for line in state.splitlines():
        fields = line.split()
        if len(fields) > 6 and not fields[0].startswith("#") and fields[1] == backend and fields[6].isdigit():
            out[fields[3]] = int(fields[6])
    return out


def op_balancer(a):
    """Each command's reply; a `set server` that HAProxy refuses (an unknown backend or server)
    is refused with its words."""
    replies = []
    for command in a["commands"]:
        reply = ask(a["socket"], command)
        if command.startswith("set ") and reply.strip():
            raise Refused("HAProxy refused %r: %s" % (command, reply.strip()),
                          hint="check balancer.backend and each host's balancer.server")  # fmt: skip
        replies.append(reply)
    return {"replies": replies}
