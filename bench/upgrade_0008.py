"""What migration 0008 (the ctime in the signature) costs on a populated ledger.

Builds a ledger of N uploaded versions at schema 0006 twice, on a private PostgreSQL cluster
(fsync on, as in production), and times: the migration as it comes (a full unique-index
build), and the documented alternative: the column and the index built beforehand with
CREATE INDEX CONCURRENTLY, then the migration (docs/install.md, "Upgrading a large ledger").

    .venv/bin/python bench/upgrade_0008.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import time

import psycopg2

from devstack import PostgresCluster
from uploaderd.ledger import schema
from uploaderd.ledger.store import Ledger

GENERATE = """
INSERT INTO file_versions (job, scope, host, root, relpath, size, mtime_ns, inode, bucket, key,
                           state, attempts, sha256, discovered_at, uploaded_at)
SELECT 'scope-' || (i %% 3), 'acq-host-0' || (i %% 3), 'acq-host-0' || (i %% 3),
       '/data/instrument-' || (i %% 3),
       'run-' || lpad((i / 2000)::text, 5, '0') || '/img/frame-' || lpad(i::text, 8, '0')
           || '.tif',
       1000000 + i %% 5000000, 1700000000000000000 + i * 1000000000::bigint, i, 'lab-raw',
       'scope/run-' || (i / 2000) || '/frame-' || i || '.tif', 'uploaded', 1,
       repeat('ab', 32), now() - interval '300 days' + i * interval '25 seconds', now()
FROM generate_series(1, %(rows)s) i
"""
PREBUILD = (
    "CREATE UNIQUE INDEX CONCURRENTLY file_versions_one_row_per_version_0008 ON "
    "file_versions (job, scope, root, relpath, size, mtime_ns, inode, ctime_ns)"
)


def ledger_at_0006(cluster: PostgresCluster, name: str, rows: int) -> str:
    dsn = cluster.create_database(name)
    ledger = Ledger(dsn).connect()
    with ledger.migration_lock():
        for migration in schema.available():
            if migration.version <= 6:
                ledger.apply_migration(migration.version, migration.name, migration.sql)
    ledger.close()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute(GENERATE, {"rows": rows})
    conn.close()
    run(dsn, "VACUUM ANALYZE file_versions")
    return dsn


def run(dsn: str, statement: str) -> float:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True  # CONCURRENTLY and VACUUM run outside a transaction
    started = time.monotonic()
    with conn.cursor() as cursor:
        cursor.execute(statement)
    conn.close()
    return time.monotonic() - started


def timed_migrate(dsn: str) -> float:
    started = time.monotonic()
    assert schema.migrate(dsn) == ["0008_ctime_in_signature.sql"]
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    rows = parser.parse_args().rows
    cluster = PostgresCluster(fast=False)
    cluster.start()
    try:
        dsn = ledger_at_0006(cluster, "as_it_comes", rows)
        print(f"{rows:,} versions: migration 0008 as it comes: {timed_migrate(dsn):.2f}s")
        dsn = ledger_at_0006(cluster, "prebuilt", rows)
        added = run(dsn, "ALTER TABLE file_versions ADD COLUMN ctime_ns bigint")
        built = run(dsn, PREBUILD)
        print(
            f"{rows:,} versions: add column {added:.3f}s, index built concurrently "
            f"{built:.2f}s, migration afterwards {timed_migrate(dsn):.2f}s"
        )
    finally:
        cluster.cleanup()


if __name__ == "__main__":
    main()
