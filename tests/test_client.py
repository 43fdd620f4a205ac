"""The client's pure decisions, without a server: the rollback target, release ids, rsync's argv,
the sudoers line, Cutover's Apache rules, a group's errors."""

import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks import apache, hostsfile, release, rsync, setup
from tasks.errors import CutoverError, GroupError, HealthError, LockError
from tasks.remote.paths import PLACEHOLDER, RELEASE_ID, commit_of
from tasks.rollback import choose

A, B, C = "20261101T000000.000Z", "20261102T000000.000Z", "20261103T000000.000Z"


def host_run(name, current, releases, previous=None):
    return SimpleNamespace(name=name, current=current, releases=releases, previous=previous)


def test_rollback_goes_to_the_release_live_before_from_history():
    hosts = [host_run("web1", C, [PLACEHOLDER, A, B, C], previous=A), host_run("web2", C, [A, B, C], previous=A)]
    assert choose(hosts, None) == A  # B was promoted by a killed deploy, never live: not chosen


def test_rollback_falls_back_to_release_order_and_never_to_the_placeholder():
    assert choose([host_run("web1", C, [PLACEHOLDER, B, C])], None) == B
    with pytest.raises(CutoverError, match="nothing to roll back to"):
        choose([host_run("web1", B, [PLACEHOLDER, B], previous=PLACEHOLDER)], None)


def test_rollback_to_must_be_kept_on_every_host_and_not_the_placeholder():
    hosts = [host_run("web1", C, [A, B, C]), host_run("web2", C, [B, C])]
    with pytest.raises(CutoverError) as missing:
        choose(hosts, A)
    assert (
        str(missing.value) == f"--to {A}: no such release on web2\n  what to do: releases kept on every host: {C}, {B}"
    )
    assert choose(hosts, B) == B
    with pytest.raises(CutoverError, match="setup's placeholder"):
        choose([host_run("web1", C, [PLACEHOLDER, C])], PLACEHOLDER)


def test_a_group_that_would_roll_back_to_different_releases_is_refused():
    hosts = [host_run("web1", C, [A, B, C], previous=A), host_run("web2", C, [A, B, C], previous=B)]
    with pytest.raises(CutoverError, match=r"different releases \(web1: .*A?, web2: "):
        choose(hosts, None)


def test_release_ids_sort_by_time_and_carry_the_commit(tmp_path):
    now = datetime(2026, 11, 25, 10, 15, 0, 123456, tzinfo=UTC)
    plain = release.new_release_id(tmp_path, now)
    assert plain == "20261125T101500.123Z" and RELEASE_ID.fullmatch(plain) and commit_of(plain) is None
    assert commit_of("20261125T101500.123Z-1a2b3c4") == "1a2b3c4"
    assert sorted([C, A, B]) == [A, B, C]


def lab_host(tmp_path, **settings):
    text = "defaults:\n  deploy_to: /var/www/site\n"
    for key, value in settings.items():
        text += f"  {key}: {value}\n"
    text += "groups:\n  g:\n    - {host: web1.example.com}\n"
    (tmp_path / "hosts.yaml").write_text(text)
    return hostsfile.load(tmp_path / "hosts.yaml").resolve("g")[0]


def test_rsync_never_writes_in_place_and_runs_its_remote_side_through_the_bridge(tmp_path):
    host = lab_host(tmp_path, shared="[media]")
    rsh = ["/usr/bin/python3", "-I", "-S", "/x/rsh.py", "/tmp/s p/rsh.sock"]
    argv = rsync.rsync_argv(host, Path("/b"), "/var/www/site/releases/.incoming-x", rsh)
    assert "--inplace" not in argv and "--delete" in argv and "--checksum" in argv and "--no-times" in argv
    assert argv[argv.index("-e") + 1] == "/usr/bin/python3 -I -S /x/rsh.py '/tmp/s p/rsh.sock'"
    # the host part is a fixed word: the channel goes where the connection goes (an IPv6 address too)
    assert "--exclude=/media" in argv and argv[-2:] == ["/b/", "cutover:/var/www/site/releases/.incoming-x/"]


def test_the_sudoers_line_names_an_absolute_python():
    line = setup.sudoers_line("deploy", "/usr/bin/python3")
    assert line == "deploy ALL=(root) NOPASSWD: /usr/bin/python3 -I -S /usr/local/lib/cutover/swap-helper swap *"


def test_the_rules_pin_files_keep_shared_entries_on_the_normal_mapping_and_deny_never_serve(tmp_path):
    host = lab_host(tmp_path, serve="public", shared="[public/uploads, storage]")
    rules = apache.snippet(host)
    assert '"/var/www/site/releases/%1/public/$1" -f' in rules
    assert "RewriteCond ${cutover_escape:/$1} -U" in rules
    assert "RewriteCond $1 !^(uploads)(/|$)" in rules  # storage is outside public/: never reachable
    assert 'Alias /_cutover_next "/var/www/site/next/public"' in rules
    assert apache.document_root(host) == "/var/www/site/current/public"
    pattern = re.compile(apache.never_serve_pattern(host.never_serve), re.I)
    for path in (
        "/.env",
        "/a/.git/config",
        "/.env.local",
        "/x/.htaccess",
        "/.ENV",
        "/.envrc",
        "/a/.env-prod",
        "/.env_test",
    ):
        assert pattern.search(path), path
    for path in ("/environment", "/a/git/x", "/.envoy/"):
        assert not pattern.search(path), path
    assert "@@" not in rules


def test_a_group_error_names_every_failed_host_and_keeps_the_first_exit_status():
    one, two = SimpleNamespace(name="web1"), SimpleNamespace(name="web2")
    error = GroupError([(one, LockError("locked by x", hint="wait")), (two, HealthError("unhealthy", hint="wait"))])
    assert error.exit_code == LockError.exit_code
    assert str(error) == "web1: locked by x; web2: unhealthy\n  what to do: wait"
    assert error.succeeded == []


def _fleet(switch, *names):
    """Hosts whose swap is `switch` (faked): armed first, then go, whose answer is the fake's swap."""
    health = SimpleNamespace(urls=(), retries=0, timeout=1, expect_status=200, expect_text=None)
    runs = []
    for name in names:
        host = SimpleNamespace(name=name, health=health, httpd=SimpleNamespace(pause_timeout=1), protected=())
        r = SimpleNamespace(name=name, host=host, current="old", switched="no", switch={}, steps={}, uses_helper=False)
        r.call = lambda step, op, timeout=None, r=r, **args: {}  # the intent, before the switch
        r.send = lambda step, op, **args: None  # go, sent from one thread; the fake swap runs at receive
        r.receive = lambda step, timeout=None, r=r: switch(r, step, "new", None)
        runs.append(r)
    who = {"token": "t0", "user": "ann", "local_host": "laptop"}
    return SimpleNamespace(hosts=runs, release_id="new", command="deploy", who=who)


def test_a_failed_swap_switches_back_every_host_that_switched_and_keeps_both_errors(monkeypatch, capsys):
    from tasks.errors import RemoteError
    from tasks.steps import swap as swap_step

    calls = []

    def switch(r, step, release_id, verify, restore=False, arm=False):
        if arm:
            return {"armed": True, "old": "old"}
        calls.append((r.name, step, release_id))
        if step == "swap" and r.name == "web2":
            raise RemoteError("swap: the connection failed: OSError")  # no answer: may have switched
        if step == "switch back" and r.name == "web2":
            raise RemoteError("switch back: not sent: the connection was lost earlier")
        return {"old": "old", "new": release_id, "pause_ms": 0.1, "health": "ok"}

    monkeypatch.setattr(swap_step, "switch", switch)
    run = _fleet(switch, "web1", "web2")
    with pytest.raises(GroupError) as failed:
        swap_step.swap(run)
    message = str(failed.value)
    assert message.startswith("web2: swap: the connection failed: OSError")
    assert (
        "switching the others back failed too: web2: switch back: not sent: the connection was lost earlier" in message
    )
    assert sorted(c for c in calls if c[1] == "switch back") == [
        ("web1", "switch back", "old"),
        ("web2", "switch back", "old"),
    ]
    assert [r.switched for r in run.hosts] == ["no", "unknown"]  # web1 is back; web2's state is unknown


def test_the_wait_ctrl_c_announces_during_the_switch_bounds_the_sudo_helpers_too():
    """Ctrl-C during the switch says how long it waits at most: through the sudo helper a switch
    also waits for the agent's word and for a new channel and its command to start."""
    from tasks import ssh
    from tasks.fleet import STEP_TIMEOUT
    from tasks.steps import swap as swap_step

    run = _fleet(None, "web1", "web2")
    plain = swap_step._timeout(run.hosts[0].host)
    assert f"(at most {plain:.0f} s)" in swap_step._finishing(run.hosts)
    run.hosts[1].uses_helper = True
    helper = STEP_TIMEOUT + 2 * ssh.START_TIMEOUT + plain
    assert f"(at most {helper:.0f} s)" in swap_step._finishing(run.hosts)


def test_any_exception_during_the_swap_switches_back(monkeypatch, capsys):
    from tasks.steps import swap as swap_step

    def switch(r, step, release_id, verify, restore=False, arm=False):
        if arm:
            return {"armed": True, "old": "old"}
        if step == "swap" and r.name == "web2":
            raise KeyError("an answer without 'old'")  # a bug, not a CutoverError
        return {"old": "old", "new": release_id, "pause_ms": 0.1, "health": "ok"}

    monkeypatch.setattr(swap_step, "switch", switch)
    run = _fleet(switch, "web1", "web2")
    with pytest.raises(GroupError):
        swap_step.swap(run)
    assert [r.switched for r in run.hosts] == ["no", "no"]
    assert "[web1] switch back" in capsys.readouterr().out


def test_advice_names_the_command_the_user_runs(monkeypatch):
    from tasks import output

    text = "run `fab setup`, then fab -H prod check (fab restore --backup X); 2.00 s since fab started; prefab setup"
    assert output.named(text) == text
    monkeypatch.setattr(output, "COMMAND", "cutover")
    assert output.named(text) == (
        "run `cutover setup`, then cutover -H prod check (cutover restore --backup X); 2.00 s since fab started; "
        "prefab setup"
    )
