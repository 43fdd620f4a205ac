"""How the client talks to Cutover's server side: one JSON request per line, one JSON answer each.

The client sends this package as one bundle over the SSH channel's stdin (tasks/agent.py) and
then one request per step: {"op": NAME, "args": {...}}. An answer is the operation's result, or
{"error": TEXT, "kind": KIND, "hint": TEXT} when it refused; the client maps the kind to its
own error class. Standard library only; Python 3.7 or newer.
"""

import errno
import importlib
import json
import os
import sys

# op -> (module of this package, function). Modules are imported on first use, so a step pays
# only for what it runs.
OPS = {
    "check": ("views", "op_check"),
    "preflight": ("preflight", "op_preflight"),
    "state": ("views", "op_state"),
    "history": ("views", "op_history"),
    "releases": ("views", "op_releases"),
    "maintenance": ("views", "op_maintenance"),
    "lock": ("stage", "op_lock"),
    "unlock": ("lock", "op_unlock"),
    "stage": ("stage", "op_stage"),
    "migrate": ("stage", "op_migrate"),
    "hook": ("stage", "op_hook"),
    "swap": ("switching", "op_swap"),
    "go": ("switching", "op_go"),
    "helper_switch": ("switching", "op_helper_switch"),
    "disarm": ("swap", "op_disarm"),
    "intent": ("intent", "op_intent"),
    "balancer": ("balancer", "op_balancer"),
    "finish": ("finish", "op_finish"),
    "abort": ("finish", "op_abort"),
    "backup": ("backup", "op_backup"),
    "backup_abort": ("backup", "op_backup_abort"),
    "backup_push": ("offsite", "op_backup_push"),
    "backups": ("backup", "op_backups"),
    "restore": ("restore", "op_restore"),
    "setup": ("install", "op_setup"),
    "install_helper": ("install", "op_install_helper"),
    "run": ("run", "op_run"),
}
HELPER_OPS = {"swap": ("swap", "op_swap")}  # what the root-owned sudo helper answers (helper.checked)


class Refused(Exception):
    """A reason to stop, with advice, sent back as {"error", "kind", "hint", ...extra}.

    kind tells the client which of its errors this is: "locked", "smoke", "migration", "hook",
    or None for a plain failure of the step.
    """

    def __init__(self, message, hint=None, kind=None, **extra):
        super().__init__(message)
        self.hint = hint
        self.kind = kind
        self.extra = extra


def answer(op, args, helper=False):
    """One operation's JSON answer; a refusal or an OS error becomes {"error", "kind", "hint"}."""
    try:
        if helper:
            from . import helper as sudo_helper

            args = sudo_helper.checked(op, args)
        table = HELPER_OPS if helper else OPS
        if op not in table:
            raise Refused("unknown operation %r" % (op,))
        module, function = table[op]
        return getattr(importlib.import_module("." + module, __package__), function)(args)
    except Refused as exc:
        out = dict(exc.extra, error=str(exc), kind=exc.kind)
        if exc.hint:
            out["hint"] = exc.hint
        return out
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            return {"error": "the server's disk is full: %s" % exc, "kind": "disk_full",
                    "hint": "free space under deploy_to"}
        if exc.errno in (errno.EACCES, errno.EPERM) and exc.filename:
            import pwd

            return {"error": "%s may not change %s (%s)" % (pwd.getpwuid(os.geteuid()).pw_name, exc.filename,
                                                            exc.strerror),
                    "kind": None, "hint": "the deploy user must own deploy_to and what Cutover keeps in it: "
                                          "`fab check` names what it may not write"}  # fmt: skip
        return {"error": "%s: %s" % (type(exc).__name__, exc), "kind": None}


_AT_DISCONNECT = {}  # key: what to undo if the client goes away first (a pulled cable, a killed fab)


def at_disconnect(key, undo):
    """Run undo() when this session's client is gone, unless settled(key) is called before."""
    _AT_DISCONNECT[key] = undo


def settled(key):
    """The client took over what at_disconnect(key) would undo (a migration starts, maintenance goes off)."""
    _AT_DISCONNECT.pop(key, None)


def disconnected():
    """Undo, last registered first (maintenance off before the lock that held others off goes)."""
    for key in reversed(list(_AT_DISCONNECT)):
        try:
            _AT_DISCONNECT.pop(key)()
        except Exception as exc:  # the next one still runs; there is nobody to tell but stderr
            sys.stderr.write("cutover: undoing %s after the client left failed: %r\n" % (key, exc))


def serve(stdin, stdout):
    """Answer one request per line until EOF: one process for a whole deploy.

    Each step then costs one message on the open SSH channel instead of a new channel, a
    login shell and a Python start on the server. When the channel ends (the run is over, or
    its connection is gone), what at_disconnect() registered and nothing settled is undone.
    """
    try:
        for line in iter(stdin.readline, b""):
            request = json.loads(line)
            stdout.write((json.dumps(answer(request["op"], request["args"])) + "\n").encode())
            stdout.flush()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client went away while an answer was on its way
    finally:
        disconnected()
    return 0


def main(argv, helper=False):
    """`serve`: answer requests from stdin. `OP JSON`: answer one (the sudo helper: only `swap`)."""
    if argv[0] == "serve" and not helper:
        return serve(sys.stdin.buffer, sys.stdout.buffer)
    if len(argv) != 2:
        sys.stdout.write(json.dumps({"error": "usage: OP JSON_ARGS", "kind": None}) + "\n")
        return 2
    try:
        args = json.loads(argv[1])
    except ValueError:
        args = None
    out = answer(argv[0], args, helper=helper) if isinstance(args, dict) else {"error": "arguments are not a JSON object"}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 1 if "error" in out else 0
