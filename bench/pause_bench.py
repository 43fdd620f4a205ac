"""The pause against httpd's size: prefork with 16, 64 and 256 children and the event MPM, each
paused by freezing its cgroup v2 (one write) and by signals (SIGSTOP to every process), under
wrk load, in one run.

    python3 bench/pause_bench.py [--deploys 30] [--sizes 16,64,256]

Each lab Apache runs in a cgroup of its own, as systemd runs apache2.service. In each lab the two
methods alternate deploy by deploy (freeze, sigstop, freeze, ...), so both meet the same load and
the same moment of the machine. Writes the section "Pause against httpd's size" of bench/RESULTS.md.
"""

import argparse
import shutil
import time

from common import PROJECT, Wrk, fab, history, lab, percentile, save_data, start_lab, stop_lab, write_section

from tasks.remote import httpd  # common put the project on sys.path

METHODS = ("freeze", "sigstop")
POOL_WAIT_S = 60
BASELINE_S = 30
SECONDS_PER_DEPLOY = 4  # wrk is started for this long per deploy and stopped after the last one
WRK_CONNECTIONS = 16


def measure(mpm, workers, deploys):
    """{method: pause_ms list}, wrk's figures, and httpd's process count, for one lab Apache."""
    the_lab, parent = start_lab(1, mpm=mpm, workers=workers)
    server = the_lab.servers[0]
    site = parent / "site"
    shutil.copytree(PROJECT / "example" / "site", site)
    try:
        assert server.cgroup, "no writable cgroup v2 here: the lab's Apache has no cgroup of its own to freeze"
        deadline = time.monotonic() + POOL_WAIT_S  # Apache starts a fixed pool's children over seconds
        while workers and len(lab.children(server.httpd_pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.5)
        processes = 1 + len(lab.children(server.httpd_pid))
        auto = "freeze" if httpd.freeze_is_quicker(server.cgroup) else "sigstop"
        # the same load with no deploy: what Apache and wrk do by themselves (keep-alive races)
        baseline = Wrk(server.url, seconds=BASELINE_S, threads=2, connections=WRK_CONNECTIONS).result()
        load = Wrk(server.url, seconds=deploys * 2 * SECONDS_PER_DEPLOY, threads=2, connections=WRK_CONNECTIONS)
        started = time.monotonic()
        pauses = {m: [] for m in METHODS}
        overflows = {m: 0 for m in METHODS}
        for i in range(2 * deploys):
            method = METHODS[i % 2]
            lab.write_hosts_file(the_lab, build=str(site), httpd={"pause": method})
            page = site / "index.html"
            page.write_text(page.read_text() + f"<!-- {i} -->\n")
            _, result = fab(the_lab.hosts_file, "deploy")
            assert result.returncode == 0, result.stderr
            entry = history(server)[-1]
            assert entry["pause_method"] == method, entry
            pauses[method].append(entry["pause_ms"])
            overflows[method] += entry["listen"]["overflows"]
        assert time.monotonic() - started < deploys * 2 * SECONDS_PER_DEPLOY, "wrk ended before the last deploy"
        return pauses, overflows, load.stop(), baseline, processes, auto
    finally:
        stop_lab(the_lab, parent)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--deploys", type=int, default=30, help="deploys per method and size")
    parser.add_argument("--sizes", default="16,64,256", help="prefork children, comma-separated")
    args = parser.parse_args()
    cases = [("prefork", int(n)) for n in args.sizes.split(",")] + [("event", 0)]
    rows, data = [], []
    for mpm, workers in cases:
        pauses, overflows, seen, baseline, processes, auto = measure(mpm, workers, args.deploys)
        label = f"prefork, {workers} children" if mpm == "prefork" else "event (default pool)"
        data.append({"httpd": label, "processes": processes, "pause_ms": pauses, "auto": auto})
        for method in METHODS:
            p = pauses[method]
            picked = " (auto)" if method == auto else ""
            rows.append(
                f"| {label} | {processes} | {method}{picked} | {len(p)} | {percentile(p, 50):.3f} | {percentile(p, 99):.3f} "
                f"| {max(p):.3f} | {overflows[method]} |"
            )
        ratio = percentile(pauses["sigstop"], 50) / percentile(pauses["freeze"], 50)
        rows.append(f"| | | sigstop / freeze, p50 | | {ratio:.1f}x | | | |")
        rows.append(
            f"| | | wrk: failed during the deploys; with none ({BASELINE_S} s) | | {seen['errors']} of "
            f"{seen['requests']:,}; {baseline['errors']} of {baseline['requests']:,} | | | |"
        )
        print(rows[-4:], flush=True)
    save_data("pause", {"cases": data})
    write_section(
        "Pause against httpd's size",
        [
            f"Command: `python3 bench/pause_bench.py --deploys {args.deploys} --sizes {args.sizes}` (one lab "
            f"server per row group, the example site, Apache in a cgroup v2 of its own as under systemd; "
            f"freeze and sigstop alternate deploy by deploy under one `wrk -t2 -c{WRK_CONNECTIONS}`; the swap "
            "process runs SCHED_FIFO).",
            "",
            "| httpd | processes | pause | deploys | p50 (ms) | p99 (ms) | max (ms) | listen overflows |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Both grow with httpd's size: the freezer sets a flag on every task (thread) of the cgroup and wakes "
            "it, inside the write; a SIGSTOP costs a syscall and a wakeup per process (`killpg`, one syscall for the "
            "group, measured the same). For one thread per process (prefork) the freezer is the quicker; a threaded "
            "process stops its other threads itself after kill() returned, so signals pause the event MPM sooner, "
            "and `httpd.pause: auto` picks per server (marked auto). The wrk failures with no deploy are Apache's "
            "and wrk's own (keep-alive connections closed while wrk sends on them).",
        ],
    )


if __name__ == "__main__":
    main()
