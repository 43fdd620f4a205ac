"""The listen queue under a pause: overflows counted by the swap and reported with the pause, and
`fab check` warning when the connections arriving during pause_timeout would overflow it."""

import re

from lab.loadgen import LoadGen

from .conftest import configure, history, make_build, start_lab, stop_lab

BACKLOG = 4  # Apache's ListenBacklog on this lab server: a queue a few clients fill


def test_a_held_pause_overflows_a_small_listen_queue_and_the_swap_counts_it(tmp_path):
    handle, root = start_lab(1, listen_backlog=BACKLOG)
    try:
        server = handle.servers[0]
        configure(handle, make_build(tmp_path, "a"), httpd={"pidfile": server.pidfile, "pause_timeout": 5})
        quiet = handle.fab("check")
        assert quiet.returncode == 0, quiet.stderr
        assert (
            f"lab1: listen queue on 127.0.0.1:{server.http_port}: backlog {BACKLOG} of net.core.somaxconn"
            in quiet.stdout
        )
        first = handle.fab("deploy")
        assert first.returncode == 0, first.stderr
        assert history(server)[-1]["listen"] == {"overflows": 0, "drops": 0}  # nobody waiting: nothing refused
        # 16 clients, each request on a new connection: more than the queue holds while httpd is paused
        with LoadGen(server.url, threads=4 * BACKLOG, new_connections=True, max_seconds=60) as load:
            busy = handle.fab("check")
            configure(handle, make_build(tmp_path, "b"), httpd={"pidfile": server.pidfile, "pause_timeout": 5})
            held = handle.fab("deploy", env={"CUTOVER_TEST_HOLD_PAUSE_MS": "1500"})
        assert held.returncode == 0, held.stderr
        overflows = history(server)[-1]["listen"]["overflows"]
        assert overflows > 0
        assert re.search(rf"httpd (frozen|stopped) 15\d\d\.\d+ ms, listen queue overflows {overflows}\b", held.stdout)
        # a dropped SYN is sent again by the client a second or more later: the visitors waited, none failed
        assert load.failures() == [] and len(load.samples) > 100
        assert max(s.latency for s in load.samples) > 1.0
        assert busy.returncode == 0, busy.stderr  # a warning, not a failure
        warning = re.search(
            r"lab1: warning: a swap held until pause_timeout \(5 s\) would queue about ([\d,]+) connections at the rate "
            rf"measured now, but the listen queue holds {BACKLOG}: the kernel would drop the rest's SYNs",
            busy.stdout,
        )
        assert warning and int(warning.group(1).replace(",", "")) > BACKLOG, busy.stdout
        assert "raise Apache's ListenBacklog and net.core.somaxconn to" in busy.stdout
    finally:
        stop_lab(handle, root)
