"""Real applications: MediaWiki (SQLite, mod_php) and WordPress (MariaDB, php-fpm) from Debian's
packages, deployed as tests/test_apps.py deploys them: how long the first deploy, a deploy of a
changed setting, a rollback, a backup (databases included) and a restore take.

    python3 bench/apps_bench.py [--runs 5]

One lab server per application, each installed (MediaWiki's installer through `fab run`,
WordPress's over HTTP) before anything is timed. Writes the section "Applications" of
bench/RESULTS.md.
"""

import argparse
import os
import re
import secrets
from pathlib import Path

from common import fab, median, start_lab, stop_lab, write_section

import lab
from lab import apps
from lab.backends import MARIADB_PASSWORD

PASSWORD = "correct-horse-battery-staple"
MARK = '<meta name="site-release"'  # in every page of an installed release (apps.*_release)


def configure(the_lab, build, required, **settings):
    lab.write_hosts_file(the_lab, build=str(build), required=required, **settings)
    lab.apply_rules(the_lab)


def ok(the_lab, *args):
    """`fab ARGS`, asserted to succeed; (seconds, stdout)."""
    seconds, result = fab(the_lab.hosts_file, *args)
    assert result.returncode == 0, f"fab {' '.join(args)}: {result.stderr}"
    return seconds, result.stdout


def sent(stdout):
    found = re.search(r"[\d.]+ [KMG]?B sent", stdout)
    return found.group(0).removesuffix(" sent") if found else "-"


def mediawiki(parent, the_lab):
    """Installed MediaWiki; returns (first deploy seconds and bytes, a function that makes release N)."""
    server = the_lab.servers[0]
    build = apps.mediawiki_build(parent / "wiki")
    url = server.url.rstrip("/")
    settings = dict(apps.MEDIAWIKI_SETTINGS, health={"expect_text": "MediaWiki"})
    configure(the_lab, build, ["index.php"], **settings)
    first, out = ok(the_lab, "deploy")
    ok(the_lab, "run", "--", apps.mediawiki_install(server.deploy_to, url, PASSWORD))
    installed = Path(server.deploy_to, "shared/data/LocalSettings.php")
    written = installed.read_text()
    installed.unlink()

    def release(n):
        apps.mediawiki_release(build, written, f"v{n}")
        configure(the_lab, build, ["index.php"], **dict(settings, health={"expect_text": MARK}))

    release(0)
    ok(the_lab, "deploy")  # installed: a rollback goes back to a release with its settings
    return first, sent(out), release


def wordpress(parent, the_lab):
    """Installed WordPress; returns (first deploy seconds and bytes, a function that makes release N)."""
    server = the_lab.servers[0]
    build = apps.wordpress_build(parent / "blog")
    url = server.url.rstrip("/")
    keys = {
        f"{n}_{k}": secrets.token_urlsafe(48)
        for n in ("AUTH", "SECURE_AUTH", "LOGGED_IN", "NONCE")
        for k in ("KEY", "SALT")
    }
    socket = Path(server.root, "mariadb", "mysqld.sock")
    Path(server.deploy_to, "shared").mkdir(exist_ok=True)
    Path(server.deploy_to, "shared/wp-secrets.php").write_text(
        apps.wordpress_secrets("shop", "shop", MARIADB_PASSWORD, socket, keys)
    )
    databases = {"databases": [{"name": "blog", "kind": "mariadb", "database": "shop",
                                "credentials": lab.mariadb_credentials(server)}]}  # fmt: skip
    settings = dict(apps.WORDPRESS_SETTINGS, backups=databases, health={"expect_text": "WordPress"})
    apps.wordpress_release(build, "v0")
    configure(the_lab, build, ["index.php", "wp-config.php"], **settings)
    first, out = ok(the_lab, "deploy")
    assert apps.wordpress_install(url, "Bench Blog", "admin", PASSWORD, "admin@example.com").status == 200
    author = apps.wordpress_client(url, "admin", PASSWORD)
    for i in range(20):
        author.post(f"Post {i}", "Some text. " * 50)

    def release(n):
        apps.wordpress_release(build, f"v{n}")
        configure(the_lab, build, ["index.php", "wp-config.php"], **dict(settings, health={"expect_text": MARK}))

    return first, sent(out), release


def measure(name, setup, runs, **lab_options):
    the_lab, parent = start_lab(1, **lab_options)
    try:
        first, first_sent, release = setup(parent, the_lab)
        deploys, rollbacks, backups, held, restores, bytes_sent = [], [], [], [], [], []
        for n in range(1, runs + 1):
            release(n)
            seconds, out = ok(the_lab, "deploy")
            deploys.append(seconds)
            bytes_sent.append(sent(out))
            seconds, _ = ok(the_lab, "rollback")
            rollbacks.append(seconds)
            seconds, out = ok(the_lab, "backup")
            backups.append(seconds)
            held.append(float(re.search(r"visitors were held ([\d.]+) s", out).group(1)))
        bid = re.search(r"backup (\S+) of 1 host", out).group(1)
        seconds, _ = ok(the_lab, "restore", "--backup", bid)
        restores.append(seconds)
        files = sum(1 for p in Path(the_lab.servers[0].deploy_to, "current").rglob("*") if p.is_file())
        return (
            f"| {name} ({files:,} files) | {first:.2f} ({first_sent}) | {median(deploys):.2f} ({bytes_sent[-1]}) | "
            f"{median(rollbacks):.2f} | {median(backups):.2f} (held {median(held):.2f}) | {restores[0]:.2f} |"
        )
    finally:
        stop_lab(the_lab, parent)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    load = [os.getloadavg()[0]]
    rows = [
        measure(
            "MediaWiki 1.39, SQLite, mod_php",
            mediawiki,
            args.runs,
            php="mod_php",
            site_conf=apps.MEDIAWIKI_SITE_CONF,
            allow_override="All",
        ),  # fmt: skip
        measure(
            "WordPress 6.1, MariaDB, php-fpm",
            wordpress,
            args.runs,
            php="fpm",
            site_conf=apps.WORDPRESS_SITE_CONF,
            allow_override="All",
            mariadb=True,
        ),  # fmt: skip
    ]
    load.append(os.getloadavg()[0])
    write_section(
        "Applications",
        [
            f"Command: `python3 bench/apps_bench.py --runs {args.runs}` (one lab server per application, Debian's "
            "packages copied into a build as tests/test_apps.py does, installed before anything is timed; each run "
            "deploys a release whose settings file and one asset changed, rolls it back and takes a backup of the "
            "shared data and the databases (MediaWiki's four SQLite files; WordPress's MariaDB database with 20 "
            "posts); then one restore of the last backup). Wall times of `fab`, in seconds, medians of the runs.",
            "",
            "| application | first deploy (sent) | deploy of a change (sent) | rollback | backup (visitors held) | restore |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "A backup holds visitors `backups.hold` (1 s by default) plus its second pass; a restore takes a backup "
            "of the data as it is first, then puts the backup's data and release back inside a maintenance window. "
            f"The machine's load average (1 min) was {load[0]:.1f} at the start and {load[1]:.1f} at the end (other "
            "work shares its 2 cores): single figures vary by a second between runs.",
        ],
    )


if __name__ == "__main__":
    main()
