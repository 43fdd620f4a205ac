"""Backups: how long `fab backup` takes, the disk each backup adds, and how long visitors are held
off, for the example site and for a media directory of 10,000 files with 1% changed since the
backup before; `tar` of the same shared data (a copy of it all each time) measured alongside.

    python3 bench/backup_bench.py [--files 10000] [--mb 100] [--changed 1] [--runs 3]

One lab server. Both sites have the example shop's SQLite database (made by its migration, with
1,000 orders), dumped by every backup. Writes the section "Backups" of bench/RESULTS.md.
"""

import argparse
import random
import re
import sqlite3
import subprocess
import time
from pathlib import Path

from common import fab, generate_site, median, start_lab, stop_lab, write_section

import lab

SHOP_DB = "shared/db/shop.sqlite"
HOLD = 1.0  # backups.hold: the default


def disk(path):
    """Bytes of disk under path, each hard-linked file counted once (du)."""
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def backup(the_lab):
    """One `fab backup`: (seconds, seconds visitors were held, seconds of the second pass)."""
    seconds, result = fab(the_lab.hosts_file, "backup")
    assert result.returncode == 0, result.stderr
    held = float(re.search(r"visitors were held ([\d.]+) s", result.stdout).group(1))
    second = int(re.search(r"backup\s+(\d+) ms  second pass", result.stdout).group(1)) / 1000
    return seconds, held, second


def tar(deploy_to, work):
    """The shared data as one tar file, as an operator's nightly backup makes it: (seconds, bytes)."""
    out = Path(work, "shared.tar")
    t = time.monotonic()
    subprocess.run(["tar", "-cf", str(out), "-C", deploy_to, "shared"], check=True)
    seconds = time.monotonic() - t
    size = out.stat().st_size
    out.unlink()
    return seconds, size


def media(deploy_to, files, total_bytes):
    """`files` files of mixed sizes in shared/media (generate_site's, without its index.html)."""
    site = generate_site(Path(deploy_to, "shared", "media-gen"), files + 1, total_bytes)
    (site / "index.html").unlink()
    target = Path(deploy_to, "shared", "media")
    target.rmdir()
    (site / "assets").rename(target)
    site.rmdir()
    return sorted(p for p in target.rglob("*") if p.is_file())


def change(paths, percent, rng):
    """Rewrite percent% of the files with new content of the same size; returns how many."""
    chosen = rng.sample(paths, max(1, len(paths) * percent // 100))
    for p in chosen:
        p.write_bytes(rng.randbytes(p.stat().st_size))
    return len(chosen)


def add_orders(deploy_to, n, start=0):
    with sqlite3.connect(Path(deploy_to, SHOP_DB)) as db:
        db.executemany(
            "INSERT INTO orders (item, placed_at) VALUES (?, datetime('now'))",
            [(f"item {i}",) for i in range(start, start + n)],
        )


def scenario(name, runs, media_files=0, media_bytes=0, percent=1, hold=HOLD):
    """Rows for one site: the first backup, then `runs` backups each after a change."""
    the_lab, parent = start_lab(1)
    server = the_lab.servers[0]
    settings = {
        "backups": {"databases": [{"name": "shop", "kind": "sqlite", "path": SHOP_DB}], "hold": hold},
        "keep_backups": runs + 2,
        "migrate": {"command": "python3 migrations/migrate.py"},
    }
    rng = random.Random(7)
    try:
        lab.write_hosts_file(the_lab, **settings)
        for args in (("deploy",), ("deploy", "--migrate")):
            _, result = fab(the_lab.hosts_file, *args)
            assert result.returncode == 0, result.stderr
        add_orders(server.deploy_to, 1000)
        paths = media(server.deploy_to, media_files, media_bytes) if media_files else []
        backups = Path(server.deploy_to, "backups")
        rows = []
        for i in range(runs + 1):
            changed = 0
            if i:
                changed = change(paths, percent, rng) if paths else 0
                add_orders(server.deploy_to, 10, start=1000 + 10 * i)
            before = disk(backups)
            seconds, held, second = backup(the_lab)
            added = disk(backups) - before
            tar_s, tar_bytes = tar(server.deploy_to, parent)
            rows.append({"first": i == 0, "changed": changed, "seconds": seconds, "held": held,
                         "second": second, "added": added, "tar_s": tar_s, "tar_bytes": tar_bytes})  # fmt: skip
        shared = disk(Path(server.deploy_to, "shared"))
        return name, hold, shared, rows
    finally:
        stop_lab(the_lab, parent)


def mb(n):
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.0f} KB"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--changed", type=int, default=1, help="percent of the media files changed between backups")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    media = f"{args.files:,} media files, {args.mb} MB"
    sites = [
        scenario("example site", args.runs),
        scenario(media, args.runs, args.files, args.mb * 10**6, args.changed),
        scenario(media, args.runs, args.files, args.mb * 10**6, args.changed, hold=0),
    ]
    lines = [
        f"Command: `python3 bench/backup_bench.py --files {args.files} --mb {args.mb} --changed {args.changed} "
        f"--runs {args.runs}` (one lab server; `fab backup` with `backups.hold` of 1 s (the default) and 0, and the "
        "example shop's SQLite database of 1,000 orders; between backups, 10 orders more and, for the media "
        f"site, {args.changed}% of the media files rewritten; `tar -cf` of the same shared directory for "
        "comparison). Disk added is `du` of backups/ after minus before, hard-linked files counted once.",
        "",
        "| site | hold (s) | backup | files changed | fab backup (s) | visitors held (s) | second pass (s) | "
        "disk added | tar (s) | tar size |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, hold, shared, rows in sites:
        first, later = rows[0], rows[1:]
        lines.append(
            f"| {name} ({mb(shared)} shared) | {hold:g} | first | all | {first['seconds']:.2f} | {first['held']:.2f} | "
            f"{first['second']:.3f} | {mb(first['added'])} | {first['tar_s']:.2f} | {mb(first['tar_bytes'])} |"
        )
        lines.append(
            f"| {name} | {hold:g} | next (median of {len(later)}) | {later[0]['changed']:,} | "
            f"{median([r['seconds'] for r in later]):.2f} | {median([r['held'] for r in later]):.2f} | "
            f"{median([r['second'] for r in later]):.3f} | {mb(median([r['added'] for r in later]))} | "
            f"{median([r['tar_s'] for r in later]):.2f} | {mb(median([r['tar_bytes'] for r in later]))} |"
        )
    _, _, shared, rows = sites[1]
    later = rows[1:]
    ratio = median([r["tar_bytes"] for r in later]) / median([r["added"] for r in later])
    lines += [
        "",
        "Visitors are held for `backups.hold` (for requests in flight to end; 1 s by default) plus the second "
        "pass (the files changed since the first pass, and the database dump); the manifest is written and "
        f"checked after they are back. On the media site a later backup adds {ratio:.0f}x less disk than a tar "
        "of the same data; tar is faster, since it reads without comparing, but copies all of it every time "
        "and cannot hold writers off (the seed's torn media directory).",
    ]
    write_section("Backups", lines)


if __name__ == "__main__":
    main()
