"""The advice in a message is a command to paste: run with -H, it names the same hosts, not the
default group (whose servers the pasted command would change instead)."""

from lab import render

from .conftest import configure, make_build


def test_advice_after_h_names_the_hosts_the_run_was_given(lab1, tmp_path):
    build = make_build(tmp_path, "a1")
    configure(lab1, build)
    # Cutover's rules out of date: hosts.yaml changed, setup not rerun (the lab's Apache not told)
    render.write_hosts_file(lab1.lab, build=str(build), serve="public")
    checked = lab1.fab("-H", "lab1", "check")
    assert checked.returncode == 1, checked.stdout
    assert "not what hosts.yaml makes now" in checked.stdout, checked.stdout
    assert "rerun `fab -H lab1 setup`, then reload Apache" in checked.stdout, checked.stdout
    default = lab1.fab("check")  # without -H: the advice without it too
    assert "rerun `fab setup`, then reload Apache" in default.stdout, default.stdout


def test_advice_names_the_target_but_not_for_tasks_that_take_none(monkeypatch):
    from tasks import output

    text = "run `fab setup`, then fab -H prod check; fab init; fab sandbox-up; fab --list; prefab setup"
    monkeypatch.setattr(output, "TARGET", "web1,web2")
    assert output.named(text) == (
        "run `fab -H web1,web2 setup`, then fab -H prod check; fab init; fab sandbox-up; fab --list; prefab setup"
    )
    monkeypatch.setattr(output, "COMMAND", "cutover")
    assert output.named(text) == (
        "run `cutover -H web1,web2 setup`, then cutover -H prod check; cutover init; cutover sandbox-up; "
        "cutover --list; prefab setup"
    )
