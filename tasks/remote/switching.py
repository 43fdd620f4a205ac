"""The switch as the agent serves a run: swap.py's switch, and the server's own history line for
it should the client go away before the run's finish or abort step (a killed fab, a pulled
cable): history then names the release this server made live although the run never finished.
The sudo helper runs swap.py's op itself; it serves one call and records nothing, so the client
tells the agent first (op_helper_switch), which records such a switch the same way."""

from . import finish, lock, paths, protocol, swap


def op_swap(a):
    return _until_finished(a, swap.op_swap(a))


def op_go(a):
    return _until_finished(a, swap.op_go(a))


def op_helper_switch(a):
    """Said before a switch through the sudo helper, which records nothing: should the client go
    away after it, the history line of the release it made live (if it is live then)."""
    layout = paths.Layout(a["deploy_to"])
    release_id = paths.release_id(a["release_id"])
    result = {"new": release_id, "old": paths.current_release(layout)}
    token = (lock.owner(layout) or {}).get("token")
    protocol.at_disconnect(key(layout), lambda: finish.record_left(layout, result, token, only_if_live=True))
    return {}


def key(layout):
    return "switch " + layout.deploy_to


def _until_finished(a, result):
    if result.get("armed"):
        return result  # nothing switched yet: go() does
    layout = paths.Layout(a["deploy_to"])
    if a.get("restore"):
        protocol.settled(key(layout))  # a switch back: the run's abort records the run
    else:
        token = (lock.owner(layout) or {}).get("token")  # the run this switch belongs to
        protocol.at_disconnect(key(layout), lambda: finish.record_left(layout, result, token))
    return result
