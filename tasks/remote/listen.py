"""httpd's listening sockets and the kernel's listen queue: each socket's backlog (what Apache's
ListenBacklog became after net.core.somaxconn capped it) and the connections waiting in it, read
with one sock_diag netlink dump as `ss -lt` does (no program needed on the server); and the
network namespace's TcpExt ListenOverflows and ListenDrops (a connection refused because an
accept queue was full) and Tcp PassiveOpens (connections accepted), from /proc/net.

A socket's own drop counter (sk_drops, `ss -m`) is not used: on a listener it also counts stray
segments of connections already closed, thousands an hour under ordinary load.
"""

import os
import socket
import struct
import time

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCP_LISTEN = 10
DIAG_MSG = struct.Struct("=BBBB2H16s16sI8sIIIII")  # inet_diag_msg: 72 bytes
RECV_BYTES = 65536


def _dump(family):
    """Every listening TCP socket of this network namespace of one address family:
    [(port, address, queued, backlog, inode)]."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    try:
        req = struct.pack("=BBBBI48s", family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN, b"")
        sock.send(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
        out = []
        while True:
            data = sock.recv(RECV_BYTES)
            if not data:
                return out
            at = 0
            while at + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, at)
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, at + 16)[0]
                    raise OSError(code, "sock_diag: %s" % os.strerror(code))
                out.append(_listener(family, data[at + 16 : at + length]))
                at += (length + 3) & ~3
    finally:
        sock.close()


def _listener(family, msg):
    fields = DIAG_MSG.unpack_from(msg)
    raw = fields[6][: 4 if family == socket.AF_INET else 16]
    return socket.ntohs(fields[4]), socket.inet_ntop(family, raw), fields[11], fields[12], fields[14]


def socket_inodes(pid):
    """Inodes of the sockets process pid holds open, or None when its fds cannot be read (not root)."""
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return None
    out = set()
    for name in names:
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue  # closed since the listing
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def listeners(parent, ports=()):
    """httpd's listening sockets: those its parent holds, or (its fds unreadable) those on `ports`.
    A list of dicts (address, port, queued, backlog), or None where sock_diag is missing."""
    found = []
    try:
        for family in (socket.AF_INET, socket.AF_INET6):
            found += _dump(family)
    except OSError:
        return None  # no sock_diag (a kernel without it, or a sandbox that forbids netlink): check says so
    inodes = socket_inodes(parent) if parent else None
    keep = [s for s in found if (s[4] in inodes if inodes is not None else s[0] in ports)]
    return [{"address": a, "port": p, "queued": q, "backlog": b} for p, a, q, b, _ in keep]


def counters():
    """This network namespace's TcpExt ListenOverflows and ListenDrops, and Tcp PassiveOpens
    (connections accepted by the kernel), or {} where /proc/net cannot be read."""
    out = {}
    for path, wanted in (("/proc/net/netstat", ("ListenOverflows", "ListenDrops")), ("/proc/net/snmp", ("PassiveOpens",))):
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for names, values in zip(lines[::2], lines[1::2]):
            for name, value in zip(names.split()[1:], values.split()[1:]):
                if name in wanted:
                    out[name] = int(value)
    return out


def dropped(before, after):
    """{"overflows": n, "drops": n} between two counters() readings, or None where unknown."""
    if "ListenDrops" not in before or "ListenDrops" not in after:
        return None
    return {"overflows": after["ListenOverflows"] - before["ListenOverflows"],
            "drops": after["ListenDrops"] - before["ListenDrops"]}


def arrival_rate(window):
    """New TCP connections per second on this server (the namespace's PassiveOpens), over window s."""
    first, t0 = counters().get("PassiveOpens"), time.monotonic()
    time.sleep(window)
    last, t1 = counters().get("PassiveOpens"), time.monotonic()
    if first is None or last is None:
        return None
    return (last - first) / (t1 - t0)
