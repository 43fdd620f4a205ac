"""What fab keeps about builds and releases (tasks/manifest.py, tasks/remote/seals.py): with the
live release's files known, the upload compares sizes only, and every release still holds exactly
the build: a file changed with the same size and mtime, a mode change, a deleted and a new file, a
live file edited on the server, a live release this machine did not deploy."""

import hashlib
import marshal
import os
import stat
from pathlib import Path

import pytest

from tasks import manifest

from .conftest import configure, current, make_build

BY_SIZE = "compared by size (unchanged files not read)"


def tree(path):
    """{relative path: (bytes, mode)} of the regular files under path (shared entries aside)."""
    out = {}
    for p in Path(path).rglob("*"):
        if p.is_file() and not p.is_symlink() and not str(p.relative_to(path)).startswith("media"):
            out[str(p.relative_to(path))] = (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
    return out


def live(server):
    return Path(server.deploy_to, "releases", current(server))


def deploy(lab1):
    result = lab1.fab("deploy")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_compared_by_size_every_release_is_still_exactly_the_build(lab1, tmp_path):
    server = lab1.servers[0]
    build = make_build(tmp_path, "sized", extra={f"data/f{i}.bin": os.urandom(3000) for i in range(20)})
    configure(lab1, build)
    assert BY_SIZE not in deploy(lab1)  # nothing known yet: by checksum
    assert BY_SIZE in deploy(lab1)
    # the hazard of a size-and-mtime compare: other bytes, same size, the old mtime
    target = build / "data" / "f3.bin"
    before = target.stat()
    target.write_bytes(os.urandom(3000))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    (build / "data" / "f4.bin").chmod(0o600)  # a mode change, same bytes
    (build / "data" / "f5.bin").unlink()
    (build / "data" / "new.bin").write_bytes(b"new")
    out = deploy(lab1)
    assert BY_SIZE in out
    assert tree(live(server)) == tree(build)
    # and back: the release before is the one that had the old bytes
    assert lab1.fab("rollback").returncode == 0
    assert BY_SIZE in deploy(lab1)
    assert tree(live(server)) == tree(build)


def deployed_twice(lab1, tmp_path, label):
    """A build deployed twice: the second deploy's live release is known here, with its seal."""
    build = make_build(tmp_path, label)
    configure(lab1, build)
    deploy(lab1)
    deploy(lab1)
    return lab1.servers[0], build


def test_a_live_file_edited_on_the_server_is_sent_again(lab1, tmp_path):
    server, build = deployed_twice(lab1, tmp_path, "edited")
    page = live(server) / "assets" / "style.css"
    original = page.read_bytes()
    page.write_bytes(original.upper()[: len(original)])  # a hotfix in place: same size, new mtime
    (build / "index.html").write_text((build / "index.html").read_text() + "<!-- next -->\n")
    out = deploy(lab1)
    assert BY_SIZE in out
    assert (live(server) / "assets" / "style.css").read_bytes() == original
    assert tree(live(server)) == tree(build)


def test_a_live_release_this_machine_did_not_deploy_is_compared_by_checksum(lab1, tmp_path):
    server, build = deployed_twice(lab1, tmp_path, "elsewhere")
    other = lab1.fab("deploy", env={"XDG_CACHE_HOME": str(tmp_path / "another-machine")})
    assert other.returncode == 0, other.stderr
    (build / "assets" / "app.js").write_text("changed elsewhere too\n")
    out = deploy(lab1)
    assert BY_SIZE not in out and tree(live(server)) == tree(build)
    assert BY_SIZE in deploy(lab1)  # known again from here on


def test_the_build_is_read_again_only_where_a_file_changed(tmp_path, monkeypatch):
    from tasks.config import Build
    from tasks.release import check_build

    build = make_build(tmp_path, "hashed")
    setting = Build(path=build, required=())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    read = []
    real = manifest._hash
    monkeypatch.setattr(manifest, "_hash", lambda path, size: read.append(Path(path).name) or real(path, size))
    racy = manifest.RACY_NS
    monkeypatch.setattr(manifest, "RACY_NS", 0)  # as if every file had been written long ago
    first = manifest.build_files(build, check_build(setting).stats)
    assert len(read) == len(first) > 3
    read.clear()
    assert manifest.build_files(build, check_build(setting).stats) == first and read == []
    (build / "assets" / "app.js").write_text("other\n")
    again = manifest.build_files(build, check_build(setting).stats)
    assert read == ["app.js"] and again["assets/app.js"] != first["assets/app.js"]
    # a file written within the last RACY_NS may be written again within its mtime's tick: its digest
    # is not kept, so the next deploy reads it again
    monkeypatch.setattr(manifest, "RACY_NS", racy)
    (build / "assets" / "app.js").write_text("once more\n")
    read.clear()
    manifest.build_files(build, check_build(setting).stats)
    manifest.build_files(build, check_build(setting).stats)
    assert read.count("app.js") == 2  # (the others were written moments ago too: read again as well)


@pytest.mark.parametrize("size", [0, 1, manifest.CHUNK - 1, manifest.CHUNK, manifest.CHUNK + 1, 3 * manifest.CHUNK + 5])
def test_a_digest_is_the_files_whole_content_whatever_size_its_stat_said(tmp_path, size):
    """The size read at the build check decides the first read only: a file that grew or shrank
    since is still read to its end, and read once when it has not."""
    path = tmp_path / "f"
    data = os.urandom(size)
    path.write_bytes(data)
    for seen in (size, 0, size // 2, size + 10):
        assert manifest._hash(str(path), seen) == hashlib.sha256(data).hexdigest()[:32], seen


@pytest.mark.parametrize("size", [100_000, manifest.CHUNK - 1, 3 * manifest.CHUNK + 5])
def test_a_short_read_is_not_taken_for_the_files_end(tmp_path, monkeypatch, size):
    """A network or FUSE file system may answer a read with fewer bytes than asked before the
    end: the digest is still of the whole file, never of what the first read brought."""
    path = tmp_path / "f"
    data = os.urandom(size)
    path.write_bytes(data)
    real, reads = os.read, []

    def short_read(fd, n):
        reads.append(n)
        return real(fd, min(n, 65536))

    monkeypatch.setattr(os, "read", short_read)
    for seen in (size, size - 1, size + 1):
        assert manifest._hash(str(path), seen) == hashlib.sha256(data).hexdigest()[:32], seen
    monkeypatch.setattr(os, "read", real)
    # a file as the check saw it, read whole by its first read, is read once (no read for the end)
    small = tmp_path / "small"
    small.write_bytes(data[:5000])
    reads.clear()
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real(fd, n))
    assert manifest._hash(str(small), 5000) == hashlib.sha256(data[:5000]).hexdigest()[:32]
    assert reads == [5001]


@pytest.mark.parametrize("replaced_by", ["fifo", "link to /dev/zero", "link to a file"])
def test_a_build_file_replaced_after_the_check_by_no_regular_file_leaves_the_digests_unknown(
    tmp_path, monkeypatch, replaced_by
):
    """A file the check saw as a regular file and that is no longer one when its digest is read
    (replaced in between): the digests are not known. Nothing waits for a FIFO's writer, no link
    is followed (one to /dev/zero would be read for ever)."""
    import threading

    from tasks.config import Build
    from tasks.release import check_build

    build = make_build(tmp_path, "replaced")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    stats = check_build(Build(path=build, required=())).stats
    name = build / "assets" / "app.js"
    name.unlink()
    if replaced_by == "fifo":
        os.mkfifo(name)
    else:
        name.symlink_to("/dev/zero" if replaced_by == "link to /dev/zero" else build / "index.html")
    done = []
    reading = threading.Thread(target=lambda: done.append(manifest.build_files(build, stats)), daemon=True)
    reading.start()
    reading.join(10)
    waited = reading.is_alive()
    if waited and replaced_by == "fifo":  # let it end: a writer comes and goes
        os.close(os.open(name, os.O_WRONLY))
        reading.join(10)
    assert not waited, f"the digests were still read after 10 s ({replaced_by})"
    assert done == [None]


# fab deploy, its build check followed by the removal of a build file (a build still running)
GONE_AFTER_THE_CHECK = """
import os
import fabric.main
from tasks import release
real = release.check_build
def check_build(build):
    checked = real(build)
    os.unlink(os.path.join(str(build.path), "assets", "app.js"))
    return checked
release.check_build = check_build
fabric.main.program.run(["fab", "deploy"])
"""


def test_a_build_file_gone_after_the_check_leaves_the_digests_unknown(lab1, tmp_path, monkeypatch):
    """A file the check listed and that is gone when its digest is read: the digests are not
    known, and the deploy is refused as a build that changed while it was uploaded (nothing
    switched, what this machine knows unchanged), instead of a FileNotFoundError after the switch
    (or before the upload, where this machine knew the live release)."""
    import subprocess
    import sys

    from .conftest import PROJECT

    cache = lab1.lab.root / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    env = {**os.environ, "CUTOVER_HOSTS_FILE": str(lab1.hosts_file), "XDG_CACHE_HOME": str(cache)}
    server, host = lab1.servers[0], lab1.host()
    for label in ("nothing known", "live release known"):
        build = make_build(tmp_path, label.replace(" ", "-"))
        configure(lab1, build)
        if label == "live release known":
            deploy(lab1)
            assert manifest.knows(host)
        before = current(server)
        ran = subprocess.run([sys.executable, "-c", GONE_AFTER_THE_CHECK], cwd=PROJECT, env=env, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert ran.returncode == 2, ran.stderr
        assert "the build changed while it was uploaded (assets/app.js)" in ran.stderr, ran.stderr
        assert "Traceback" not in ran.stderr and current(server) == before, label
        assert manifest.knows(host) == (label == "live release known"), label


def test_digests_of_a_build_whose_file_is_gone_are_not_known_nor_kept(tmp_path, monkeypatch):
    from tasks.config import Build
    from tasks.release import check_build

    build = make_build(tmp_path, "gone")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    stats = check_build(Build(path=build, required=())).stats
    (build / "assets" / "app.js").unlink()
    assert manifest.build_files(build, stats) is None
    assert not manifest.cache_dir().exists() or list(manifest.cache_dir().iterdir()) == []


def test_a_cache_of_another_shape_counts_as_not_known(tmp_path, monkeypatch):
    """A cache file that reads back as marshal data but not as this module's tables (another
    version's, damaged in a way marshal does not notice) is read as no cache: every file's digest
    read again, the right digests returned, and the cache written anew."""
    from tasks.config import Build
    from tasks.release import check_build

    build = make_build(tmp_path, "shapes")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(manifest, "RACY_NS", 0)
    stats = check_build(Build(path=build, required=())).stats
    right = manifest.build_files(build, stats)
    cache = next((tmp_path / "cache" / "cutover").glob("build-*.marshal"))
    some = next(iter(stats))
    shapes = [
        (stats, right),  # two tables, not three
        (stats, right, [], "more"),
        ([], right, []),  # the stats not a dict
        (stats, [1, 2], []),  # the digests not a dict
        ({some: stats[some]}, {some: 5}, []),  # a digest not a (size, digest) pair
        ({some: stats[some]}, {some: (1,)}, []),
        (stats, {rel: 5 for rel in stats}, []),  # every stat as seen, every digest of the wrong shape
        (stats, {}, []),  # every stat as seen, no digest
        (stats, right, 7),  # the racy list not a list
    ]
    for shape in shapes:
        cache.write_bytes(marshal.dumps(shape))
        assert manifest.build_files(build, stats) == right, shape
        assert marshal.loads(cache.read_bytes()) == (stats, right, []), shape


def test_a_server_table_of_another_shape_plans_a_checksum_upload(tmp_path, monkeypatch):
    """A release's table that is marshal data but not {path: (size, digest)} leaves that host's
    upload to compare checksums (no plan) instead of failing the deploy."""
    from types import SimpleNamespace

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    host = SimpleNamespace(host="127.0.0.1", port=2222, deploy_to="/srv/site")
    files = {"index.html": (5, "a" * 32), "app.js": (7, "b" * 32)}
    release = "20261203T120000.000Z-1a2b3c4"
    manifest.remember([host], release, files)
    assert manifest.plans([host], {**files, "app.js": (7, "c" * 32)}) == [{"expect": release, "unlink": ["app.js"]}]
    table = manifest._server_dir(host) / f"{release}{manifest.SUFFIX}"
    for shape in (
        {"app.js": {0: 7}},  # indexed by 0 and 1, yet no pair
        {"app.js": {0: 7, 2: "b"}},
        {"app.js": 7},
        {"app.js": "7"},
        {"app.js": (7,)},
        [("app.js", (7, "b" * 32))],
        {"app.js": (7, "b" * 32), 5: None},
        {"app.js": ("7", "b" * 32)},
        {"app.js": (7, 5)},
    ):
        table.write_bytes(marshal.dumps(shape))
        assert manifest.plans([host], {**files, "app.js": (7, "c" * 32)}) == [None], shape
