"""The delay element of a lab link: one process that carries IP packets between two TUN devices,
one in this network namespace and one in a lab server's, each packet held for the link's one-way
delay. The link's rate is tbf's, on each device (lab/link.py); this adds only the propagation
delay, which tc's netem would add where the kernel has it.

    python3 wire.py NETNS OUTSIDE_DEV INSIDE_DEV DELAY_MS

Prints "ready" once both devices exist; runs until killed. Standard library only.
"""

import collections
import ctypes
import fcntl
import os
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
CLONE_NEWNET = 0x40000000
MAX_PACKET = 65536
QUEUE_LIMIT = 20000  # packets held per direction; more are dropped, as a router's full queue does


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def setns(path):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def make_devices(netns, outside, inside):
    """The outside device here, the inside one in netns (a TUN device belongs to the namespace it
    was made in)."""
    here = f"/proc/{os.getpid()}/ns/net"
    home = os.open(here, os.O_RDONLY)
    a = open_tun(outside)
    setns(f"/var/run/netns/{netns}")
    try:
        b = open_tun(inside)
    finally:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setns(home, CLONE_NEWNET)
        os.close(home)
    return a, b


def carry(a, b, delay):
    """Forever: every packet read from one device is written to the other `delay` seconds later."""
    queues = {a: collections.deque(), b: collections.deque()}  # packets read from fd: (due, bytes)
    other = {a: b, b: a}
    while True:
        now = time.monotonic()
        due = [q[0][0] for q in queues.values() if q]
        timeout = max(0.0, min(due) - now) if due else None
        readable, _, _ = select.select([a, b], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            queue = queues[fd]
            while True:  # everything waiting, then one select again
                try:
                    packet = os.read(fd, MAX_PACKET)
                except BlockingIOError:
                    break
                if len(queue) < QUEUE_LIMIT:
                    queue.append((now + delay, packet))
        for fd, queue in queues.items():
            while queue and queue[0][0] <= now:
                try:
                    os.write(other[fd], queue.popleft()[1])
                except (BlockingIOError, OSError):
                    pass  # the device's queue is full or the link is going down: the packet is lost


def main(argv):
    netns, outside, inside, delay_ms = argv
    a, b = make_devices(netns, outside, inside)
    print("ready", flush=True)
    carry(a, b, float(delay_ms) / 1000)


if __name__ == "__main__":
    main(sys.argv[1:])
