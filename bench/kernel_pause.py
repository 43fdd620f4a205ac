"""The kernel's own cost of the two ways to pause httpd, measured apart from Apache and from
Cutover: a cgroup v2 freeze (the write to cgroup.freeze, then cgroup.events polled until it says
frozen) and signals (a loop of kill(SIGSTOP) over every process, then /proc read until each is
stopped), and back (thaw; SIGCONT).

    python3 bench/kernel_pause.py [--sizes 16,64,256] [--rounds 200]

The processes are `sleep` processes, one thread each and idle, as prefork's children wait in
accept(): a cgroup of their own (lab/cgroups.py), nothing else in it. Writes the section "The
kernel's cost of a pause" of bench/RESULTS.md.
"""

import argparse
import os
import signal
import subprocess
import time

from common import percentile, quiet, quiet_options, write_section

from lab.cgroups import make_cgroup, remove_cgroup


def frozen(events):
    with open(events) as f:
        return "frozen 1" in f.read()


def state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def measure(count, rounds):
    path = make_cgroup(f"kernel-{count}")
    assert path, "no writable cgroup v2 here"
    procs = []
    try:
        procs = [
            subprocess.Popen(
                ["sleep", "3600"], preexec_fn=lambda: open(os.path.join(path, "cgroup.procs"), "w").write("0")
            )
            for _ in range(count)
        ]
        pids = [p.pid for p in procs]
        deadline = time.monotonic() + 10
        while any(state(pid) != "S" for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        control, events = os.path.join(path, "cgroup.freeze"), os.path.join(path, "cgroup.events")
        out = {k: [] for k in ("freeze write", "frozen", "thaw", "kill loop", "all stopped", "cont loop")}
        fd = os.open(control, os.O_WRONLY)
        try:
            for _ in range(rounds):
                t0 = time.perf_counter()
                os.write(fd, b"1")
                t1 = time.perf_counter()
                for _ in range(100000):
                    if frozen(events):
                        break
                t2 = time.perf_counter()
                os.write(fd, b"0")
                for _ in range(100000):
                    if not frozen(events):
                        break
                t3 = time.perf_counter()
                out["freeze write"].append(t1 - t0)
                out["frozen"].append(t2 - t0)
                out["thaw"].append(t3 - t2)
                time.sleep(0.005)
                t0 = time.perf_counter()
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                t1 = time.perf_counter()
                for pid in pids:
                    for _ in range(100000):
                        if state(pid) == "T":
                            break
                t2 = time.perf_counter()
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
                t3 = time.perf_counter()
                out["kill loop"].append(t1 - t0)
                out["all stopped"].append(t2 - t0)
                out["cont loop"].append(t3 - t2)
                time.sleep(0.005)
        finally:
            os.write(fd, b"0")
            os.close(fd)
        return out
    finally:
        for p in procs:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
            p.wait()
        remove_cgroup(path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="16,64,256")
    parser.add_argument("--rounds", type=int, default=200)
    quiet_options(parser, wait=60)
    args = parser.parse_args()
    results, loads = {}, []
    for n in args.sizes.split(","):
        loads.append(quiet(args.load, args.wait))
        results[int(n)] = measure(int(n), args.rounds)
    keys = ("freeze write", "frozen", "thaw", "kill loop", "all stopped", "cont loop")
    lines = [
        f"Command: `python3 bench/kernel_pause.py --sizes {args.sizes} --rounds {args.rounds} --load {args.load} --wait {args.wait:g}` (idle one-thread "
        "processes in a cgroup v2 of their own; milliseconds, p50 / p99 over the rounds; freeze: the write to "
        "cgroup.freeze, then until cgroup.events says frozen, then the thaw until it says not; signals: the loop "
        "of kill(SIGSTOP), then until /proc says every process stopped, then the loop of SIGCONT). Load average "
        f"(1 min) at each size's start (each waited at most --wait s for --load): "
        + ", ".join(f"{x:.2f}" for x in loads)
        + ".",
        "",
        "| processes | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for n, out in results.items():
        cells = [f"{percentile(out[k], 50) * 1000:.3f} / {percentile(out[k], 99) * 1000:.3f}" for k in keys]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    write_section("The kernel's cost of a pause", lines)


if __name__ == "__main__":
    main()
