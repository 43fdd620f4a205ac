"""What Cutover prints: one line per step per host (or, for a group on a terminal, one live row
per host), sizes, tables, values shown in messages."""

import os
import re
import shutil
import sys
import threading
import time

SHOWN_MAX = 80  # characters of a command-line value repeated in an error message
COMMAND = "fab"  # what the user types: "cutover" when run as the installed command (cutover/__main__.py)
TARGET = None  # the run's -H value, when it was given (tasks/cli.py, target)
# `fab` followed by a task or an option, in advice ("run `fab setup`", "fab -H prod check"): not "fab started"
_ADVICE = re.compile(
    r"(?<![\w/.-])fab (?=(-H|-r|--help|--list|setup|check|deploy|rollback|restore|backups?|releases|history"
    r"|maintenance-on|maintenance-off|init|run|sandbox-up|sandbox-down)\b)"
)
_NO_TARGET = {"-H", "-r", "--help", "--list", "init", "sandbox-up", "sandbox-down"}  # advice that takes no -H


def named(text):
    """text with the commands it advises written as this program is run (`fab setup` becomes
    `cutover setup` for the installed command), and for the hosts this run was given: after
    `-H web1`, `fab -H web1 setup`, not the default group's."""
    if COMMAND == "fab" and TARGET is None:
        return text

    def advice(match):
        target = f"-H {TARGET} " if TARGET is not None and match.group(1) not in _NO_TARGET else ""
        return f"{COMMAND} {target}"

    return _ADVICE.sub(advice, text)


_PRINTING = threading.Lock()  # hosts report from threads: one whole line at a time


def say(host, step, seconds, detail=""):
    """One progress line: host, step, duration, detail (a live table's row instead, when one is on)."""
    name = host if isinstance(host, str) else host.name
    with _PRINTING:
        if _live is not None and name in _live.rows:
            _live.update(name, step, seconds, detail)
            return
    line(f"[{name}] {step:<11} {seconds * 1000:7.0f} ms  {detail}".rstrip())


def line(text):
    """Print one line whole, never interleaved with another thread's (above a live table)."""
    with _PRINTING:
        if _live is not None:
            _live.erase()
        sys.stdout.write(named(text) + "\n")
        if _live is not None:
            _live.draw()
        sys.stdout.flush()


class LiveTable:
    """One row per host, redrawn in place as its steps end: host, last step, the host's time so far,
    what the step said. Only on a terminal (ANSI cursor movement); a log gets the lines."""

    def __init__(self, names):
        self.rows = {name: ("waiting", 0.0, "") for name in names}
        self.width = max(len(n) for n in names)
        self.drawn = 0

    def update(self, name, step, seconds, detail):
        _, total, _ = self.rows[name]
        self.rows[name] = (step, total + seconds, detail)
        self.erase()
        self.draw()
        sys.stdout.flush()

    def erase(self):
        if self.drawn:
            sys.stdout.write(f"\x1b[{self.drawn}A\x1b[J")  # up to the table's first row, clear below
            self.drawn = 0

    def draw(self):
        columns = max(40, shutil.get_terminal_size().columns) - 1  # a wrapped row would break the redraw
        for name, (step, total, detail) in self.rows.items():
            sys.stdout.write(f"{name:<{self.width}}  {step:<11} {total:7.2f} s  {detail}"[:columns].rstrip() + "\n")
        self.drawn = len(self.rows)


_live = None


def plain():
    """Lines only, never a live table: CUTOVER_PLAIN=1, or a CI job (CI set, as GitHub Actions, GitLab
    CI and most others set it), whose log keeps every line even where the runner gives a terminal."""
    return os.environ.get("CUTOVER_PLAIN") == "1" or os.environ.get("CI", "").lower() not in ("", "0", "false")


def live_table(names):
    """Start a live table for these hosts when stdout is a terminal and there are two or more
    (plain(): never); stop_live() ends it, leaving its last state on the screen."""
    global _live
    if len(names) > 1 and sys.stdout.isatty() and not plain():
        with _PRINTING:
            _live = LiveTable(names)
            _live.draw()
            sys.stdout.flush()


def stop_live():
    global _live
    with _PRINTING:
        _live = None


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
