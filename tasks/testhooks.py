"""Hooks for the fault tests (tests/test_murphy.py), inert unless CUTOVER_TEST=1 is set too.

CUTOVER_TEST_KILL_AT=STEP[:SECONDS] kills this process at a step of a deploy or rollback;
CUTOVER_TEST_HOLD_PAUSE_MS widens httpd's pause so a test can act inside it;
CUTOVER_TEST_MARGIN shortens the margin added to every step's timeout, so a test of a silent
network ends in seconds; CUTOVER_TEST_GO_ONLY=HOST[,HOST] sends an armed group's go to those hosts
only and kills this process once they answered (a run that dies between two hosts' switches). All need CUTOVER_TEST=1, so a variable left in an operator's shell can
never freeze a production httpd or cut a deploy short. CUTOVER_TEST_HOLD_AT=STEP:FILE holds a deploy
before that step (check: its build check, as its connections open; lock: its lock step; upload: its
wait for the upload, the lock held; finish: its clean up, the release live) while FILE exists (FILE.waiting says it waits), for a test to
act in between. CUTOVER_TEST_HOLD_SWAP=FILE
holds the server's swap, before it begins, the same way (FILE on the server).
"""

import os
import signal
import threading

ENABLE = "CUTOVER_TEST"
KILL_AT = "CUTOVER_TEST_KILL_AT"
HOLD_PAUSE = "CUTOVER_TEST_HOLD_PAUSE_MS"
MARGIN = "CUTOVER_TEST_MARGIN"
GO_ONLY = "CUTOVER_TEST_GO_ONLY"
HOLD_AT = "CUTOVER_TEST_HOLD_AT"
HOLD_SWAP = "CUTOVER_TEST_HOLD_SWAP"
HOLD_LIMIT_S = 60
_went = set()


def _enabled():
    return os.environ.get(ENABLE) == "1"


def fault_point(step):
    """SIGKILL this process at `step`, or `step:SECONDS` into it."""
    if not _enabled():
        return
    name, _, delay = os.environ.get(KILL_AT, "").partition(":")
    if name != step:
        return
    if not delay:
        os.kill(os.getpid(), signal.SIGKILL)
    timer = threading.Timer(float(delay), os.kill, (os.getpid(), signal.SIGKILL))
    timer.daemon = True
    timer.start()


def sends_go(host):
    """Whether this host's go is sent (CUTOVER_TEST_GO_ONLY leaves some out)."""
    only = os.environ.get(GO_ONLY) if _enabled() else None
    return not only or host in only.split(",")


def before_go(host):
    """A host left out of CUTOVER_TEST_GO_ONLY never gets its go: this thread waits to be killed."""
    only = os.environ.get(GO_ONLY) if _enabled() else None
    if only and host not in only.split(","):
        threading.Event().wait()


def after_go(host):
    """SIGKILL this process once every host of CUTOVER_TEST_GO_ONLY has switched."""
    only = os.environ.get(GO_ONLY) if _enabled() else None
    if only:
        _went.add(host)
        if set(only.split(",")) <= _went:
            os.kill(os.getpid(), signal.SIGKILL)


def hold_ms():
    """Milliseconds to hold httpd paused after the renames (0 outside the fault tests)."""
    return int(os.environ.get(HOLD_PAUSE, "0")) if _enabled() else 0


def hold_swap():
    """The file on the server while which its swap waits before it begins (None outside the fault tests)."""
    return os.environ.get(HOLD_SWAP) or None if _enabled() else None


def margin(default):
    """Seconds added to a step's timeout (default, unless a test shortens it)."""
    return float(os.environ.get(MARGIN, default)) if _enabled() and os.environ.get(MARGIN) else default


def hold_point(step):
    """Wait before `step` while CUTOVER_TEST_HOLD_AT's file exists (at most HOLD_LIMIT_S)."""
    if not _enabled():
        return
    name, _, path = os.environ.get(HOLD_AT, "").partition(":")
    if name != step or not path:
        return
    import time

    with open(path + ".waiting", "w"):
        pass
    deadline = time.monotonic() + HOLD_LIMIT_S
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
