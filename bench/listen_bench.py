"""The listen queue under a pause: is `fab check`'s warning right?

    python3 bench/listen_bench.py [--rate 800] [--backlogs 64,511,8192] [--deploys 30]

Visitors arrive open-loop (a new connection every 1/rate s, whether or not earlier ones were
answered, as real visitors do; wrk's fixed set of connections would stop arriving while httpd is
paused). For each ListenBacklog, with httpd.pause_timeout 2 s:
  1. `fab check` under that load: the backlog it reports, the rate it measures, and whether it
     warns that the connections arriving during pause_timeout would overflow the queue;
  2. a deploy whose swap holds httpd paused until the watchdog resumes it after pause_timeout
     (a hung swap; the fault tests' hold): the listen overflows it reports, and what the visitors saw.
Then `--deploys` ordinary deploys under the same load at Apache's default backlog: the overflows
at the default pause. Writes the section "Listen queue" of bench/RESULTS.md.
"""

import argparse
import asyncio
import re
import resource
import shutil
import threading
import time

from common import PROJECT, fab, history, lab, percentile, save_data, start_lab, stop_lab, write_section

PAUSE_TIMEOUT = 2  # s: the watchdog resumes httpd after this long
HOLD_MS = 3000  # the swap holds the pause longer than pause_timeout: the watchdog ends it
ANSWER_TIMEOUT = 30  # s a visitor waits for its answer (SYN retries at 1, 3, 7, 15 s)


class OpenLoop:
    """Visitors arriving at `rate` per second, each on a new connection (GET /, Connection:
    close), in a thread of its own; `stop()` returns the latencies and the failures."""

    def __init__(self, port, rate):
        self.port, self.rate = port, rate
        self.latencies, self.failures = [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _visit(self):
        t0 = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), ANSWER_TIMEOUT)
            writer.write(b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
            status = await asyncio.wait_for(reader.readline(), ANSWER_TIMEOUT)
            await asyncio.wait_for(reader.read(), ANSWER_TIMEOUT)
            writer.close()
            if b" 200 " not in status:
                raise ValueError(status)
            self.latencies.append(time.monotonic() - t0)
        except (TimeoutError, OSError, ValueError):
            self.failures += 1

    async def _run(self):
        visits, start, n = set(), time.monotonic(), 0
        while not self._stop.is_set():
            n += 1
            task = asyncio.ensure_future(self._visit())
            visits.add(task)
            task.add_done_callback(visits.discard)
            await asyncio.sleep(max(0.0, start + n / self.rate - time.monotonic()))
        if visits:
            await asyncio.wait(visits)

    def stop(self):
        self._stop.set()
        self._thread.join(ANSWER_TIMEOUT + 10)
        return self.latencies, self.failures


def quantiles(values, steps=200):
    """The 0th to 100th percentile of values in `steps` equal steps, rounded to 0.1 ms (for the CDF chart)."""
    return [round(percentile(values, 100 * k / steps), 4) for k in range(steps + 1)]


def check_figures(out, name):
    """(backlog, rate measured, arrivals predicted, warned) from `fab check`'s output."""
    m = re.search(
        rf"{name}: listen queue on \S+: backlog ([\d,]+).*?; ([\d,]+) new connections/s now, ([\d,]+) in", out
    )
    assert m, out
    backlog, rate, arriving = (int(g.replace(",", "")) for g in m.groups())
    return backlog, rate, arriving, f"{name}: warning: a swap held until pause_timeout" in out


def held_case(site, backlog, rate):
    the_lab, parent = start_lab(1, listen_backlog=backlog)
    server = the_lab.servers[0]
    try:
        lab.write_hosts_file(the_lab, build=str(site), httpd={"pause_timeout": PAUSE_TIMEOUT})
        _, first = fab(the_lab.hosts_file, "deploy")
        assert first.returncode == 0, first.stderr
        load = OpenLoop(server.http_port, rate)
        time.sleep(1)
        _, check = fab(the_lab.hosts_file, "check")
        assert check.returncode == 0, check.stdout + check.stderr
        (site / "index.html").write_text((site / "index.html").read_text() + f"<!-- held {backlog} -->\n")
        _, held = fab(
            the_lab.hosts_file, "deploy", env={"CUTOVER_TEST": "1", "CUTOVER_TEST_HOLD_PAUSE_MS": str(HOLD_MS)}
        )
        time.sleep(1)
        latencies, failures = load.stop()
        assert held.returncode == 0, held.stderr
        entry = history(server)[-1]
        assert entry["pause_ms"] >= PAUSE_TIMEOUT * 1000, entry  # the watchdog, not the swap, ended the pause
        return check_figures(check.stdout, server.name), entry["listen"]["overflows"], latencies, failures
    finally:
        stop_lab(the_lab, parent)


def default_pause(site, rate, deploys):
    the_lab, parent = start_lab(1)
    server = the_lab.servers[0]
    try:
        lab.write_hosts_file(the_lab, build=str(site))
        load = OpenLoop(server.http_port, rate)
        pauses, overflows = [], 0
        for i in range(deploys):
            (site / "index.html").write_text((site / "index.html").read_text() + f"<!-- {i} -->\n")
            _, result = fab(the_lab.hosts_file, "deploy")
            assert result.returncode == 0, result.stderr
            pauses.append(history(server)[-1]["pause_ms"])
            overflows += history(server)[-1]["listen"]["overflows"]
        latencies, failures = load.stop()
        return pauses, overflows, latencies, failures
    finally:
        stop_lab(the_lab, parent)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=800, help="new connections per second")
    parser.add_argument("--backlogs", default="64,511,8192")
    parser.add_argument("--deploys", type=int, default=30)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a held pause keeps every arrival open
    site = PROJECT / "bench" / ".listen-site"
    shutil.rmtree(site, ignore_errors=True)
    shutil.copytree(PROJECT / "example" / "site", site)
    rows, data = [], []
    try:
        for backlog in (int(b) for b in args.backlogs.split(",")):
            (effective, measured, arriving, warned), overflows, latencies, failures = held_case(
                site, backlog, args.rate
            )
            right = warned == (overflows > 0)
            data.append({"backlog": backlog, "effective": effective, "rate": measured, "arriving": arriving,
                         "warned": warned, "overflows": overflows, "latency_quantiles_s": quantiles(latencies),
                         "failed": failures})  # fmt: skip
            rows.append(
                f"| {backlog:,} | {effective:,} | {measured:,} | {arriving:,} | {'yes' if warned else 'no'} | {overflows:,} | "
                f"{percentile(latencies, 99):.2f} / {max(latencies):.2f} | {failures} | {'right' if right else 'WRONG'} |"
            )
            print(rows[-1], flush=True)
        pauses, overflows, latencies, failures = default_pause(site, args.rate, args.deploys)
    finally:
        shutil.rmtree(site, ignore_errors=True)
    save_data("listen", {"rate": args.rate, "pause_timeout_s": PAUSE_TIMEOUT, "held": data,
                         "default": {"pause_ms": pauses, "overflows": overflows, "failed": failures}})  # fmt: skip
    write_section(
        "Listen queue",
        [
            f"Command: `python3 bench/listen_bench.py --rate {args.rate} --backlogs {args.backlogs} --deploys "
            f"{args.deploys}` (one lab server per row, event MPM, the example site; visitors arrive open-loop at "
            f"{args.rate} new connections/s; httpd.pause_timeout {PAUSE_TIMEOUT} s).",
            "",
            f"A swap held until the watchdog resumes httpd ({PAUSE_TIMEOUT} s, a hung swap), against what `fab check` "
            "said under the same load just before:",
            "",
            "| ListenBacklog | effective backlog | rate check measured (/s) | arrivals in pause_timeout | check warned "
            "| listen overflows in the held swap | visitors' latency p99 / max (s) | failed | warning |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"At the default pause, ListenBacklog 511, the same load, {len(pauses)} deploys: pause p50 "
            f"{percentile(pauses, 50):.3f} / p99 {percentile(pauses, 99):.3f} ms, listen overflows {overflows}, "
            f"{len(latencies):,} visits, {failures} failed, latency p99 {percentile(latencies, 99) * 1000:.1f} ms / max "
            f"{max(latencies) * 1000:.1f} ms.",
        ],
    )


if __name__ == "__main__":
    main()
