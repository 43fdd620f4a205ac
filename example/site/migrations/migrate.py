"""The example shop's database migrations: apply each one once to shared/db/shop.sqlite.

Run by `fab deploy --migrate` inside the new release (migrate.command in hosts.yaml).
"""

import os
import sqlite3
import sys

MIGRATIONS = [
    ("001_orders", "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL, placed_at TEXT NOT NULL)"),
]


def main():
    db = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.environ["DEPLOY_TO"], "shared", "db", "shop.sqlite")
    os.makedirs(os.path.dirname(db), exist_ok=True)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    applied = {row[0] for row in con.execute("SELECT name FROM schema_migrations")}
    for name, sql in MIGRATIONS:
        if name in applied:
            continue
        with con:  # one transaction per migration: all of it or none
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations VALUES (?, datetime('now'))", (name,))
        print(f"applied {name}")
    print(f"{db}: up to date ({len(MIGRATIONS)} migration(s))")


if __name__ == "__main__":
    main()
