"""Bounds both sides enforce: hosts.yaml validation on the client, and the server (the sudo
helper cannot trust its caller). Standard library only; this file runs on the server."""

PAUSE_TIMEOUT = (0.5, 60)  # seconds the watchdog lets httpd stay paused, whatever happens
PAUSE_TIMEOUT_DEFAULT = 5
HEALTH_RETRIES = (0, 100)
HEALTH_TIMEOUT = (0.5, 120)  # seconds per health request
HEALTH_RETRY_DELAY = 0.5  # seconds between health retries
EXPECT_STATUS = (100, 599)
RETRY_AFTER = (1, 7 * 86400)  # seconds a maintenance page tells clients to wait
HEALTH_BODY_READ = 65536  # bytes of a health answer searched for expect_text
PREVIOUS_DEPTH = (1, 10)  # earlier releases whose assets stay reachable (assets.releases)


def within(value, bounds):
    """Whether value is a number (not a bool) inside bounds, both ends included."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bounds[0] <= value <= bounds[1]
