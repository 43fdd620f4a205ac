"""A build still being written when the deploy starts (a build tool or a copy running beside
it): each server's rsync reads it at another moment, so the hosts of a group would get different
files under one release id, and the release is no build at all. What the build check saw must
still be the build once every upload has read it, or nothing switches."""

import os
from pathlib import Path

import pytest

from .conftest import configure, current, history, make_build
from .test_murphy import poll

CHANGES = {
    "rewritten": lambda build: (build / "index.html").write_text((build / "index.html").read_text() + "<p>more"),
    "added": lambda build: (build / "late.html").write_text("written after the check"),
    "removed": lambda build: (build / "assets" / "app.js").unlink(),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_build_that_changes_while_it_is_uploaded_is_not_switched_live(lab_pair, tmp_path, change):
    servers = lab_pair.servers
    configure(lab_pair, make_build(tmp_path, "w1"))
    assert lab_pair.fab("deploy").returncode == 0
    live = [current(s) for s in servers]
    build = make_build(tmp_path, "w2")
    configure(lab_pair, build)
    hold = tmp_path / "hold"
    fab = lab_pair.held("upload", hold, "deploy")  # checked, locked; the uploads read the build now
    try:
        CHANGES[change](build)  # the build tool writes on
        hold.unlink()
        out, err = fab.communicate(timeout=60)
    finally:
        if fab.poll() is None:
            fab.kill()
    if change == "removed" and fab.returncode == 4:
        # rsync listed the file before it went: its upload fails ("file has vanished"), which
        # refuses the build as well, before anything switched
        assert "vanished" in err and "app.js" in err, err
    else:
        assert fab.returncode == 2, (out, err)
        assert "the build changed while it was uploaded" in err, err
        assert "deploy again once the build is complete; nothing was switched" in err, err
    assert [current(s) for s in servers] == live
    for s in servers:
        assert poll(lambda s=s: not [n for n in os.listdir(Path(s.deploy_to, "releases")) if n.startswith(".")], 5)
        assert not Path(s.deploy_to, ".cutover", "lock").exists()
        assert history(s)[-1]["result"] == "failed"
    again = lab_pair.fab("deploy")  # the build complete now: it deploys as it is
    assert again.returncode == 0, again.stderr
