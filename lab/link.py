"""Link profiles: a lab server behind a link of a given rate and delay, so that every tool under
test pays the same bandwidth and round trips a real network charges.

`loopback` (the default) is the machine's own loopback. Any other profile puts the server (its
sshd, Apache, PHP and database) in a network namespace of its own, reached from here through two
TUN devices and the lab's delay element between them (lab/wire.py: each packet held for the
one-way delay); tbf on each device sets the rate, both ways. Addresses are from 198.18.0.0/15,
the range set aside for benchmarks (RFC 2544): 198.18.K.1 here, 198.18.K.2 the server.
Needs root, /dev/net/tun and `ip`/`tc` (iproute2); tc's netem is not needed.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import CutoverError

WIRE = Path(__file__).resolve().parent / "wire.py"
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"
LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: a preexec_fn only calls it


@dataclass(frozen=True)
class Profile:
    name: str
    mbit: int  # rate each way
    delay_ms: float  # one way
    mtu: int

    def __str__(self):
        return f"{self.name} ({self.mbit} Mbit/s, {2 * self.delay_ms:g} ms round trip, MTU {self.mtu})"


PROFILES = {
    "loopback": None,
    # jumbo frames, as LANs that carry deploys often have; also keeps the delay element's packet rate
    # at 1 Gbit/s within what one Python process carries
    "lan": Profile("lan", 1000, 0.5, 9000),
    "wan": Profile("wan", 100, 10.0, 1500),
}


def profile(name):
    if name not in PROFILES:
        raise CutoverError(f"lab: link must be one of {', '.join(PROFILES)}, not {name!r}")
    return PROFILES[name]


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _free_index():
    used = _ip("-o", "-4", "addr", "show").stdout + " ".join(os.listdir(NETNS_DIR) if os.path.isdir(NETNS_DIR) else [])
    for k in range(1, 255):
        if f"198.18.{k}.1" not in used and f"cutover-lab-{k}" not in used.split():
            return k
    raise CutoverError("lab: no free link address left in 198.18.0.0/16 (stale labs? stop them first)")


def up(name):
    """A link of profile `name` to a new network namespace; returns (netns, server address, wire pid)."""
    p = profile(name)
    k = _free_index()
    netns, outside, inside = f"cutover-lab-{k}", f"cvl{k}o", f"cvl{k}i"
    _ip("netns", "add", netns)
    wire = subprocess.Popen(
        [sys.executable, "-I", "-S", str(WIRE), netns, outside, inside, str(p.delay_ms)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        if wire.stdout.readline().strip() != b"ready":
            raise CutoverError(f"lab: the link's delay element did not start (exit {wire.wait()})")
        here, there = f"198.18.{k}.1", f"198.18.{k}.2"
        burst = max(2 * p.mtu, p.mbit * 125)  # bytes: the larger of two packets and 1 ms at the rate
        for ns, dev, local, peer in ((), outside, here, there), (("-n", netns), inside, there, here):
            _ip(*ns, "addr", "add", local, "peer", f"{peer}/32", "dev", dev)
            _ip(*ns, "link", "set", dev, "mtu", str(p.mtu), "up")
            tc = ["tc", *ns, "qdisc", "add", "dev", dev, "root", "tbf"]
            subprocess.run(tc + ["rate", f"{p.mbit}mbit", "burst", str(burst), "latency", "50ms"], check=True)
        _ip("-n", netns, "link", "set", "lo", "up")
    except BaseException:
        down(netns, wire.pid)
        raise
    return netns, there, wire.pid


def down(netns, wire_pid):
    """Stop the delay element (its devices go with it) and remove the namespace."""
    if wire_pid and _is_wire(wire_pid):
        os.kill(wire_pid, signal.SIGTERM)
        for _ in range(100):
            try:
                if os.waitpid(wire_pid, os.WNOHANG)[0] == wire_pid:
                    break
            except ChildProcessError:
                if not _is_wire(wire_pid):
                    break
            time.sleep(0.01)
    if netns and os.path.exists(f"{NETNS_DIR}/{netns}"):
        _ip("netns", "del", netns, check=False)


def _is_wire(pid):
    try:
        return str(WIRE).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def round_trips(address, port, count):
    """Seconds of `count` small HTTP GETs on one open connection to address:port (the first one
    included, which also pays the connect)."""
    import http.client

    conn = http.client.HTTPConnection(address, port, timeout=10)
    times = []
    try:
        for _ in range(count):
            start = time.monotonic()
            conn.request("GET", "/")
            conn.getresponse().read()
            times.append(time.monotonic() - start)
    finally:
        conn.close()
    return times


def entering(netns):
    """A preexec_fn that moves the child into netns before it runs the program ("" or None: stay)."""
    if not netns:
        return None
    path = f"{NETNS_DIR}/{netns}"

    def enter():
        fd = os.open(path, os.O_RDONLY)
        if LIBC.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
        os.close(fd)

    return enter
