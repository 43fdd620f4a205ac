"""notify: in hosts.yaml: after each deploy and rollback (not a dry run), whatever its outcome, a
local command and a webhook on the operator's side get the outcome (tasks/result.py) as JSON: on
the command's stdin, in the POST body. Each is bounded by notify.timeout; one that fails or hangs
is a warning, never the run's outcome or exit status.

The command runs with /bin/sh in the current directory; what it needs of the outcome comes as
data (stdin, CUTOVER_* variables), never inside its command line.
"""

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.parse

from .config import Notify
from .errors import ConfigError
from .output import line

OUTPUT_SHOWN = 500  # characters of a failing command's output in its warning
KILL_WAIT = 5  # seconds for a killed command to be reaped
OUTPUT_WAIT = 0.5  # seconds for what a command printed before it ended to be read


def settings_of(hosts):
    """The notify settings of a run's hosts (one run tells its notifiers once): None when none are
    set; refused, before anything remote, when the hosts differ."""
    found = {h.notify for h in hosts}
    if len(found) > 1:
        names = ", ".join(h.name for h in hosts)
        raise ConfigError(
            f"the hosts of this run have different notify: settings ({names}); nothing was changed",
            hint="set notify: once in defaults, or run each group with its own -H",
        )
    settings = next(iter(found), None)
    return settings if settings and (settings.command or settings.url) else None


def send(settings: Notify, data):
    """Tell the command, then the webhook; each said in one line (a warning when it failed)."""
    body = json.dumps(data).encode()
    if settings.command:
        _say(_run_command(settings, data, body))
    if settings.url:
        _say(_post(settings, body, data["cutover"]))


def _say(outcome):
    ok, text = outcome
    if ok:
        line(f"notify: {text}")
    else:
        print(f"cutover: warning: notify: {text}", file=sys.stderr, flush=True)


def _run_command(settings, data, body):
    """The command with the outcome on stdin; (ok, what happened). Its outcome is its shell's exit
    status: what it leaves running in the background (`cmd &`, the operator's to keep) does not
    hold the run up, though it holds the output open. Only the end of the output is kept."""
    error = data["error"] or {}
    env = dict(
        os.environ,
        CUTOVER_COMMAND=data["command"],
        CUTOVER_RESULT=data["result"],
        CUTOVER_EXIT_CODE=str(data["exit_code"]),
        CUTOVER_ERROR_KIND=error.get("kind") or "",
        CUTOVER_RELEASE=data["release"] or "",
        CUTOVER_TARGET=data["target"] or "",
        CUTOVER_TEXT=data["text"],
    )
    with tempfile.TemporaryFile() as stdin:  # a file: a command that never reads it blocks nothing
        stdin.write(body)
        stdin.seek(0)
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", settings.command], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,  # its own group: stopped whole
            )  # fmt: skip
        except OSError as exc:
            return False, f"command could not start: {exc.strerror}"
    kept = bytearray()
    reader = threading.Thread(target=_keep_end, args=(proc.stdout, kept), daemon=True)
    reader.start()
    try:
        proc.wait(timeout=settings.timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        return False, f"command did not end within {settings.timeout:g} s: stopped"
    # what it printed before its shell ended; a process left in the background may hold the pipe
    # open for long after: the reader (a daemon thread) goes on draining it, unwaited for
    reader.join(OUTPUT_WAIT)
    if proc.returncode != 0:
        text = bytes(kept).decode("utf-8", "replace").strip()[-OUTPUT_SHOWN:]
        return False, f"command exited {proc.returncode}" + (f": {text}" if text else "")
    return True, "command exited 0"


def _keep_end(pipe, kept):
    """Read pipe to its end, keeping only its last bytes in kept: a command that prints without end
    costs no memory (nor disk)."""
    for chunk in iter(lambda: pipe.read1(65536), b""):
        kept += chunk
        if len(kept) > 8 * OUTPUT_SHOWN:
            del kept[: -4 * OUTPUT_SHOWN]


def _stop(proc):
    """Kill the command's process group (made by start_new_session: its pid is the group's id)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it ended by itself in the meantime
    proc.wait(timeout=KILL_WAIT)


def shown_url(url):
    """A webhook's address as the log says it: scheme, host and port only (its path or query may
    hold a secret token)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/..."


def _credentials(url):
    """(the URL without user:password@, the Authorization header they make): urllib would take
    them for part of the host name."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, {}
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), {"Authorization": f"Basic {token}"}


def _opener():
    """urllib's opener, made only where a webhook is set (urllib.request and http.client take 20 ms
    to load). A redirect is not followed: a POST redirected with 301-303 arrives as a GET without
    the JSON, and a redirect may lead anywhere. It is the webhook's answer, said as a warning."""
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            return None

    return urllib.request.build_opener(NoRedirect)


def _post(settings, body, version):
    """POST the outcome to the webhook, all of it bounded by the timeout; (ok, what happened)."""
    import urllib.error
    import urllib.request

    opener = _opener()
    url, headers = _credentials(settings.url)
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"cutover/{version.split()[0]}", **headers},
    )
    outcome = {}

    def post():
        try:
            with opener.open(request, timeout=settings.timeout) as answer:
                outcome["status"] = answer.status
        except urllib.error.HTTPError as exc:
            outcome["status"], outcome["location"] = exc.code, exc.headers.get("Location")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            outcome["error"] = "timeout" if isinstance(reason, TimeoutError) else str(reason)

    # in a thread of its own: a server that answers a byte at a time cannot stretch the timeout
    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    thread.join(settings.timeout)
    where = f"POST {shown_url(settings.url)}"
    if thread.is_alive() or outcome.get("error") == "timeout":
        return False, f"{where}: no answer within {settings.timeout:g} s"
    if "error" in outcome:
        return False, f"{where}: {outcome['error']}"
    status = outcome["status"]
    if 300 <= status < 400 and outcome.get("location"):
        target = shown_url(urllib.parse.urljoin(settings.url, outcome["location"]))
        return False, (
            f"{where}: answered {status}, a redirect to {target}, not followed (the JSON would not arrive): "
            "set notify.url to the address it redirects to"
        )
    if not 200 <= status < 300:
        return False, f"{where}: answered {status}"
    return True, f"{where}: answered {status}"
