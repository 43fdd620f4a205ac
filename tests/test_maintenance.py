"""Maintenance mode and migrations against lab servers (the real Apache rule)."""

import http.client
import sqlite3
import threading
import time
from pathlib import Path

import lab

from .conftest import configure, current, history, make_build, releases


def get(server, path="/", source="127.0.0.2"):
    """GET as a visitor from another loopback address (127.0.0.1 is on maintenance.allow)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


def test_maintenance_on_and_off(lab1, tmp_path):
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "live", {"health.txt": b"ok\n"}))
    assert lab1.fab("deploy").returncode == 0
    failures, stop = [], threading.Event()

    def visitor():
        deadline = time.monotonic() + 120  # bounded, whatever happens to the test
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                status, _, _ = get(server)
                if status not in (200, 503):
                    failures.append(status)
            except (OSError, http.client.HTTPException) as exc:
                failures.append(repr(exc))

    load = threading.Thread(target=visitor)
    load.start()
    try:
        switch_on_and_off(lab1, server)
    finally:
        stop.set()
        load.join()
    assert failures == []
    assert [e["event"] for e in history(server)][-2:] == ["maintenance-on", "maintenance-off"]


def switch_on_and_off(lab1, server):
    on = lab1.fab("maintenance-on", "--message", "Migrating <orders> & more", "--retry-after", "120")
    assert on.returncode == 0, on.stderr
    # the output says who still sees the site: a visitor on this machine is on the allow list
    assert "on: visitors get 503 with Retry-After 120; still served to 127.0.0.1, ::1, /health.txt" in on.stdout
    status, headers, body = get(server)
    assert status == 503
    assert headers["Retry-After"] == "120"
    assert "Migrating &lt;orders&gt; &amp; more" in body
    assert get(server, "/health.txt")[:1] == (200,)  # the health path goes through
    assert get(server, source="127.0.0.1")[0] == 200  # so does maintenance.allow
    again = lab1.fab("maintenance-on", "--message", "Migrating <orders> & more", "--retry-after", "120")
    assert "on (already)" in again.stdout  # idempotent
    assert "on (page updated)" in lab1.fab("maintenance-on", "--message", "Almost done").stdout
    checked = lab1.fab("check")
    assert checked.stdout.splitlines()[1].split()[-3] == "ON"  # the maintenance column
    off = lab1.fab("maintenance-off")
    assert off.returncode == 0, off.stderr
    assert get(server)[0] == 200
    assert "off (already)" in lab1.fab("maintenance-off").stdout


def test_maintenance_rejects_bad_arguments(lab1):
    result = lab1.fab("maintenance-on", "--retry-after", "soon")
    assert result.returncode == 2
    assert "--retry-after must be a whole number of seconds" in result.stderr
    assert not Path(lab1.servers[0].deploy_to, "maintenance", "index.html").exists()


def schema(db):
    con = sqlite3.connect(db)
    try:
        tables = sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'"))
        applied = [r[0] for r in con.execute("SELECT name FROM schema_migrations")]
    finally:
        con.close()
    return tables, applied


def test_migration_runs_once_on_one_host(lab_pair, tmp_path):
    one, two = lab_pair.servers
    migrate = {"command": "python3 migrations/migrate.py"}
    configure(lab_pair, make_build(tmp_path, "v1"), migrate=migrate)
    result = lab_pair.fab("deploy", "--migrate")
    assert result.returncode == 0, result.stderr
    assert "[lab1] migrate" in result.stdout and "applied 001_orders" not in result.stderr
    db = Path(one.deploy_to, "shared", "db", "shop.sqlite")
    assert schema(db) == (["orders", "schema_migrations"], ["001_orders"])
    assert not Path(two.deploy_to, "shared", "db").exists()  # migrate.host: the first host only
    events = [e["event"] for e in history(one)][-4:]
    assert events == ["maintenance-on", "backup", "maintenance-off", "deploy"]  # the backup: writers held
    assert not Path(one.deploy_to, "maintenance", "index.html").exists()
    configure(lab_pair, make_build(tmp_path, "v2"), migrate=migrate)
    assert lab_pair.fab("deploy", "--migrate").returncode == 0
    assert schema(db) == (["orders", "schema_migrations"], ["001_orders"])  # changed exactly once


def test_failing_migration_keeps_maintenance_on_and_current_unchanged(lab1, tmp_path):
    server = lab1.servers[0]
    configure(lab1, make_build(tmp_path, "base"))
    assert lab1.fab("deploy").returncode == 0
    before = (current(server), releases(server))
    configure(lab1, make_build(tmp_path, "next"), migrate={"command": "echo 'table orders exists' >&2; exit 9"})
    result = lab1.fab("deploy", "--migrate")
    assert result.returncode == 8
    assert """lab1: migration "echo 'table orders exists' >&2; exit 9" exited 9""" in result.stderr
    assert "table orders exists" in result.stderr
    assert "maintenance mode stays ON" in result.stderr
    assert "`fab maintenance-off`" in result.stderr
    assert (current(server), releases(server)) == before
    assert Path(server.deploy_to, "maintenance", "index.html").exists()
    assert get(server)[0] == 503


def test_migrate_needs_a_command(lab1, tmp_path):
    configure(lab1, make_build(tmp_path, "x"))
    result = lab1.fab("deploy", "--migrate")
    assert result.returncode == 2  # a settings problem: nothing remote was touched
    assert "--migrate needs migrate.command in hosts.yaml" in result.stderr


def test_setup_rewrites_the_rules_the_server_serves(lab1, tmp_path):
    # one source of rules: what `fab setup` writes is what Apache includes
    server = lab1.servers[0]
    build = make_build(tmp_path, "live", {"status.txt": b"up\n"})
    # hosts.yaml changes; the lab's Apache is not told: only `fab setup` rewrites the rules
    lab.write_hosts_file(lab1.lab, build=str(build), maintenance={"health_path": "/status.txt"})
    assert lab1.fab("deploy").returncode == 0
    assert "!^/status" not in Path(server.deploy_to, ".cutover", "apache.conf").read_text()
    assert lab1.fab("setup").returncode == 0
    assert "!^/status\\.txt$" in Path(server.deploy_to, ".cutover", "apache.conf").read_text()
    lab.graceful_restart(server)
    assert lab1.fab("maintenance-on").returncode == 0
    try:
        assert get(server, "/status.txt")[0] == 200  # the health path set in hosts.yaml
        assert get(server, "/health.txt")[0] == 503  # the lab's default one no longer is
    finally:
        assert lab1.fab("maintenance-off").returncode == 0


def test_a_migration_runs_on_every_host_of_a_group_whose_sqlite_database_is_each_hosts_own(lab_pair, tmp_path):
    """backups.databases names a SQLite database: each host has its own, so `deploy --migrate`
    migrates each host's (in its own new release), not migrate.host's alone while the other
    serves the new release on a database never migrated."""
    one, two = lab_pair.servers
    migrate = {"command": "python3 migrations/migrate.py"}
    shop = {"databases": [{"name": "shop", "kind": "sqlite", "path": "shared/db/shop.sqlite"}], "hold": 0}
    configure(lab_pair, make_build(tmp_path, "v1"), migrate=migrate, backups=shop, shared=["db"])
    result = lab_pair.fab("deploy", "--migrate")
    assert result.returncode == 0, result.stderr
    for server in (one, two):
        assert f"[{server.name}] migrate" in result.stdout, result.stdout
        assert schema(Path(server.deploy_to, "shared", "db", "shop.sqlite")) == (
            ["orders", "schema_migrations"],
            ["001_orders"],
        )
        assert not Path(server.deploy_to, "maintenance", "index.html").exists()


def test_a_migration_of_a_group_with_sqlite_and_a_database_server_is_refused_before_anything_remote(lab_pair, tmp_path):
    """A SQLite database (each host's own, migrated on each) and a database server's (migrated once)
    in one group: one command cannot do both; refused, naming the settings, nothing changed."""
    one, two = lab_pair.servers
    configure(lab_pair, make_build(tmp_path, "v1"))
    assert lab_pair.fab("deploy").returncode == 0
    live = (current(one), current(two))
    databases = [
        {"name": "shop", "kind": "sqlite", "path": "shared/db/shop.sqlite"},
        {"name": "orders", "kind": "mariadb", "database": "orders", "credentials": "/etc/cutover-test/none.cnf"},
    ]
    configure(lab_pair, make_build(tmp_path, "v2"), migrate={"command": "true"}, backups={"databases": databases})
    refused = lab_pair.fab("deploy", "--migrate")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.splitlines()[0] == (
        "cutover: error: --migrate on a group of 2 hosts whose backups.databases names a SQLite database (shop, "
        "each host's own: migrated on every host) and a database server's (orders: migrated once, on migrate.host)"
    ), refused.stderr
    assert "upload" not in refused.stdout
    assert (current(one), current(two)) == live


def test_a_migration_failing_on_one_host_of_a_sqlite_group_switches_none_and_keeps_maintenance_on(lab_pair, tmp_path):
    one, two = lab_pair.servers
    shop = {"databases": [{"name": "shop", "kind": "sqlite", "path": "shared/db/shop.sqlite"}], "hold": 0}
    configure(lab_pair, make_build(tmp_path, "v1"), backups=shop, shared=["db"])
    assert lab_pair.fab("deploy").returncode == 0
    before = (current(one), current(two))
    failing = {"command": f'test "$DEPLOY_TO" != {two.deploy_to} || exit 9; python3 migrations/migrate.py'}
    configure(lab_pair, make_build(tmp_path, "v2"), migrate=failing, backups=shop, shared=["db"])
    result = lab_pair.fab("deploy", "--migrate")
    assert result.returncode == 8, result.stdout + result.stderr
    assert f"lab2: migration {failing['command']!r} exited 9" in result.stderr, result.stderr
    assert "maintenance mode stays ON" in result.stderr and "the migration ran or runs on" not in result.stderr
    assert "fab restore --backup" in result.stderr
    assert (current(one), current(two)) == before
    assert schema(Path(one.deploy_to, "shared", "db", "shop.sqlite"))[1] == ["001_orders"]
    for server in (one, two):
        assert Path(server.deploy_to, "maintenance", "index.html").exists()
        assert get(server)[0] == 503
