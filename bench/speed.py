"""Speed, bytes and disk of a deploy on generated sites, and the seed's method side by side.

    python3 bench/speed.py [--sizes 1000,10000,50000] [--repeat 3] [--pause-deploys 50]

For each site size: a full first deploy, then deploys after changing one file, after changing 1%
of the files, after adding 100 files (wall time, bytes sent, extra disk of the new release), and
rollbacks. Then the pause over many deploys under wrk load, the time per step of a one-file
change, and the seed's method (stop Apache, rename directories, start Apache) on the same lab
and load. Writes the section "Speed" of bench/RESULTS.md.
"""

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from common import (
    PROJECT,
    Wrk,
    deploy,
    example_lab,
    fab,
    generate_site,
    history,
    lab,
    median,
    pauses_under_load,
    percentile,
    save_data,
    start_lab,
    stop_lab,
    write_section,
)

SIZES = {1000: 50 * 2**20, 10000: 200 * 2**20, 50000: 500 * 2**20}
COMPARE = "checksum"


def hosts_file(the_lab, site):
    return lab.write_hosts_file(the_lab, build=str(site), build_compare=COMPARE)


def extra_disk(server, release, previous):
    """Bytes of the new release's files that are not hard links into the previous release."""
    base = Path(server.deploy_to, "releases")
    old_inodes = {p.stat().st_ino for p in (base / previous).rglob("*") if p.is_file() and not p.is_symlink()}
    return sum(
        p.stat().st_size
        for p in (base / release).rglob("*")
        if p.is_file() and not p.is_symlink() and p.stat().st_ino not in old_inodes
    )


def change_files(paths):
    changed = 0
    for p in paths:
        data = os.urandom(p.stat().st_size)
        p.write_bytes(data)
        changed += len(data)
    return changed


REBUILD = "every file rewritten, same bytes"


def rewrite_all(site):
    """What many site generators do: write the whole output anew (new mtimes); 0 bytes change."""
    later = time.time() + 10
    for p in site.rglob("*"):
        if p.is_file():
            p.write_bytes(p.read_bytes())
            os.utime(p, (later, later))
    return 0


def measure_site(files, total, repeat, work):
    site = generate_site(work / f"site{files}", files, total)
    assets = sorted((site / "assets").rglob("*.bin"))
    out = {"files": files, "mb": total / 2**20}
    firsts = []
    for _ in range(repeat):  # a full upload: a fresh server each time
        the_lab, parent = start_lab(1, fresh_fs=True)
        try:
            hosts_file(the_lab, site)
            os.sync()  # the generated site's writes are not the deploy's
            seconds, entry = deploy(the_lab)
            firsts.append((seconds, entry["bytes_sent"]))
        finally:
            stop_lab(the_lab, parent)
    out["first"] = (median([f[0] for f in firsts]), median([f[1] for f in firsts]))
    out["first range"] = (min(f[0] for f in firsts), max(f[0] for f in firsts))
    the_lab, parent = start_lab(1, fresh_fs=True)
    server = the_lab.servers[0]
    try:
        hosts_file(the_lab, site)
        deploy(the_lab)

        def add_100(i):
            for j in range(100):
                (site / "assets" / f"added{i}-{j}.bin").write_bytes(os.urandom(20_000))
            return 100 * 20_000

        changes = {  # name -> change the site (for repeat i), return the bytes changed
            "one file": lambda i: change_files([assets[(i * 7919) % len(assets)]]),
            "1% of files": lambda i: change_files(assets[i::100][: max(1, len(assets) // 100)]),
            "100 new files": add_100,
            REBUILD: lambda i: rewrite_all(site),
        }
        for name, change in changes.items():
            rows = []
            for i in range(1, repeat + 1):
                changed = change(i)
                os.sync()  # the change's writes are not the deploy's
                seconds, entry = deploy(the_lab)
                disk = extra_disk(server, entry["release"], entry["old"])
                rows.append((seconds, entry["bytes_sent"], changed, disk, entry["steps"]))
            out[name] = rows
        rollbacks = []
        for i in range(repeat):
            seconds, result = (
                fab(the_lab.hosts_file, "rollback")
                if i % 2 == 0
                else fab(the_lab.hosts_file, "rollback", "--to", history(server)[-1]["old"])
            )
            assert result.returncode == 0, result.stderr
            rollbacks.append(seconds)
        out["rollback"] = median(rollbacks)
    finally:
        stop_lab(the_lab, parent)
    shutil.rmtree(site, ignore_errors=True)
    return out


def _serving(url):
    try:
        with urllib.request.urlopen(url, timeout=0.5) as r:
            return r.status == 200
    except OSError:
        return False


def seed_method(work, rounds=5):
    """The seed's way on the same lab and load: stop Apache, rename directories, start Apache."""
    the_lab, parent = start_lab(1)
    server = the_lab.servers[0]
    try:
        # Apache's DocumentRoot (deploy_to/current) becomes a real directory, as in the seed.
        os.unlink(Path(server.deploy_to, "current"))
        shutil.copytree(PROJECT / "example" / "site", Path(server.deploy_to, "current"))
        conf = Path(server.httpd_conf)
        pid = server.httpd_pid
        wrk = Wrk(server.url, seconds=rounds * 3 + 4, threads=2, connections=8)
        time.sleep(1)
        downtimes = []
        for i in range(rounds):
            new = Path(server.deploy_to, "current_new")
            shutil.copytree(PROJECT / "example" / "site", new)
            t0 = time.monotonic()
            os.kill(pid, signal.SIGTERM)  # apachectl stop
            os.waitpid(pid, 0)
            old = Path(server.deploy_to, f"current_old{i}")
            os.rename(Path(server.deploy_to, "current"), old)
            os.rename(new, Path(server.deploy_to, "current"))
            proc = subprocess.Popen(
                [lab.APACHE, "-f", str(conf), "-DFOREGROUND"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            pid = proc.pid
            while not _serving(server.url):
                time.sleep(0.005)
            downtimes.append(time.monotonic() - t0)
            time.sleep(1.5)
        load = wrk.result()
        server.httpd_pid = pid
        lab.servers._save(the_lab)
    finally:
        stop_lab(the_lab, parent)
    return downtimes, load


def rename_only(work, rounds=5):
    """The seed's quicker variant: two mv's without stopping Apache (a 404 window between them)."""
    the_lab, parent = start_lab(1)
    server = the_lab.servers[0]
    try:
        root = Path(server.deploy_to)
        os.unlink(root / "current")
        shutil.copytree(PROJECT / "example" / "site", root / "current")
        wrk = Wrk(server.url, seconds=rounds + 4, threads=2, connections=8)
        time.sleep(1)
        for i in range(rounds):
            shutil.copytree(PROJECT / "example" / "site", root / "current_new")
            subprocess.run(["mv", str(root / "current"), str(root / f"current_old{i}")], check=True)
            subprocess.run(["mv", str(root / "current_new"), str(root / "current")], check=True)
            time.sleep(1)
        load = wrk.result()
    finally:
        stop_lab(the_lab, parent)
    return load


def _faster(s, wall):
    lo, hi = s["first range"]
    return (
        f"{s['first'][0] / wall:.1f}x faster than the full upload's median "
        f"({lo / wall:.1f}x-{hi / wall:.1f}x against its fastest and slowest run)"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pause-deploys", type=int, default=50)
    parser.add_argument(
        "--compare", choices=("checksum", "mtime"), default="checksum", help="build.compare of the sites"
    )
    args = parser.parse_args()
    global COMPARE
    COMPARE = args.compare
    work = Path(tempfile.mkdtemp(prefix="cutover-speed-", dir="/tmp"))
    try:
        sites = [measure_site(int(n), SIZES[int(n)], args.repeat, work) for n in args.sizes.split(",")]
        if args.compare == "mtime":
            pauses = None
        else:
            with example_lab() as (pause_lab, _, example):
                pauses, load = pauses_under_load(pause_lab, example, args.pause_deploys)
            seed_downtimes, seed_load = seed_method(work)
            mv_load = rename_only(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        f"Command: `python3 bench/speed.py --sizes {args.sizes} --repeat {args.repeat} --pause-deploys {args.pause_deploys} "
        f"--compare {args.compare}` "
        "(lab servers: real sshd and Apache event MPM on 127.0.0.1, deploy_to on a new ext4 file system per server; medians of the repeats; wall time is the whole `fab` "
        "command, Python start-up included, the disk synced before each; extra disk counts the new release's files that are not hard links into the previous one).",
        "",
        "| site | change | wall time | bytes sent | changed bytes | sent / changed | extra disk / changed |",
        "|---|---|---|---|---|---|---|",
    ]
    checks = []
    for s in sites:
        label = f"{s['files']:,} files, {s['mb']:.0f} MB"
        first_s, first_b = s["first"]
        lo, hi = s["first range"]
        lines.append(
            f"| {label} | first deploy (full upload) | {first_s:.2f} s ({lo:.2f}-{hi:.2f}) | {first_b:,.0f} | | | |"
        )
        for name in ("one file", "1% of files", "100 new files", REBUILD):
            rows = s[name]
            wall, sent, changed, disk = (median([r[k] for r in rows]) for k in range(4))
            if changed:
                ratios = f"{sent / changed:.2f} | {disk / changed:.2f}"
            else:
                ratios = f"(none changed) | {disk:,.0f} bytes"
            lines.append(f"| {label} | {name} | {wall:.2f} s | {sent:,.0f} | {changed:,.0f} | {ratios} |")
            if name == "one file":
                checks.append((s, wall, sent, changed, disk))
        lines.append(f"| {label} | rollback | {s['rollback']:.2f} s | 0 | | | |")
    lines += [
        "",
        "Time per step of a one-file change (seconds, last run of each site):",
        "",
        "| site | " + " | ".join(sites[0]["one file"][-1][4]) + " |",
        "|---|" + "---|" * len(sites[0]["one file"][-1][4]),
    ]
    for s in sites:
        steps = s["one file"][-1][4]
        lines.append(f"| {s['files']:,} files | " + " | ".join(f"{v:.3f}" for v in steps.values()) + " |")
    save_data(
        "speed" if pauses is not None else "speed-mtime",
        {"sites": [{"files": s["files"], "mb": s["mb"], **{k: s[k] for k in ("one file", "1% of files", "100 new files", REBUILD)},
                    "first": s["first"], "rollback": s["rollback"]} for s in sites]},
    )  # fmt: skip
    if pauses is None:
        lines += ["", "Ratios (one-file change):", ""]
        for s, wall, sent, changed, _disk in checks:
            lines.append(f"- {s['files']:,} files: {_faster(s, wall)}; sent {sent / changed:.2f}x the changed bytes.")
        write_section("Speed (build.compare: mtime)", lines)
        return
    lines += [
        "",
        f"Pause over {len(pauses)} deploys under wrk load (2 threads, 8 connections): p50 {median(pauses):.3f} ms, "
        f"p99 {percentile(pauses, 99):.3f} ms, max {max(pauses):.3f} ms; failed requests {load['errors']} of {load['requests']:,}; "
        f"worst request latency {load['max_latency_ms']:.1f} ms.",
        "",
        "The seed's method on the same lab and load, 5 switches each:",
        "",
        "| method | failed requests | downtime per switch |",
        "|---|---|---|",
        f"| stop Apache, rename directories, start Apache | {seed_load['errors']:,} of {seed_load['requests']:,} | median {median(seed_downtimes) * 1000:.0f} ms |",
        f"| rename directories with two mv, Apache running | {mv_load['errors']:,} of {mv_load['requests']:,} (404s between the two mv) | the window between the mv's |",
        f"| Cutover (paused httpd, one rename) | {load['errors']} of {load['requests']:,} | pause p99 {percentile(pauses, 99):.3f} ms |",
        "",
        "Targets, as ratios in this run (one-file change):",
        "",
    ]
    for s, wall, sent, changed, disk in checks:
        lines.append(
            f"- {s['files']:,} files: sent {sent / changed:.2f}x the changed bytes ({sent - changed:,.0f} bytes over: file list); "
            f"{_faster(s, wall)}; extra disk {disk / changed:.2f}x the changed bytes."
        )
    write_section("Speed", lines)


if __name__ == "__main__":
    main()
