"""What Cutover prints: one line per step per host, sizes, tables, values shown in messages."""

import os
import sys
import threading
import time

SHOWN_MAX = 80  # characters of a command-line value repeated in an error message
_PRINTING = threading.Lock()  # hosts report from threads: one whole line at a time


def say(host, step, seconds, detail=""):
    """One progress line: host, step, duration, detail."""
    name = host if isinstance(host, str) else host.name
    line(f"[{name}] {step:<11} {seconds * 1000:7.0f} ms  {detail}".rstrip())


def line(text):
    """Print one line whole, never interleaved with another thread's."""
    with _PRINTING:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def count(n, thing):
    """'1 file', '2 files'."""
    return f"{n:,} {thing}" if n == 1 else f"{n:,} {thing}s"


def since_start():
    """Seconds since this process started (Python's start-up and imports included), or None."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None  # no /proc (macOS): the task's own timer is all there is


def shown(value, limit=SHOWN_MAX):
    """A value for an error message: repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...' ({len(value)} characters)"


def size(n):
    """Bytes as B, KB, MB or GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def table(rows):
    """Rows of cells as aligned text, the first row a header."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def indented(output, label="output"):
    """A command's output as an indented block for an error message, or nothing."""
    output = (output or "").rstrip()
    return f"\n  {label}:\n    " + "\n    ".join(output.splitlines()) if output else ""


class Timer:
    """Seconds since creation, for the per-step lines."""

    def __init__(self):
        self.start = time.monotonic()

    @property
    def seconds(self):
        return time.monotonic() - self.start
