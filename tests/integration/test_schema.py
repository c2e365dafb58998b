"""sql/schema.sql creates exactly the schema that the migrations, applied in order, create.

A DBA reads sql/schema.sql; `uploaderd migrate` runs sql/migrations/. Both go to empty
databases and pg_dump --schema-only of each is compared, so a migration that is not
mirrored in schema.sql (or an edit of schema.sql alone) fails here with the diff. A second
test edits copies of schema.sql to show that the comparison sees a missing column, index,
constraint and trigger, and a changed view.
"""

from __future__ import annotations

import contextlib
import difflib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from devstack import PostgresCluster
from uploaderd.ledger.schema import migrate

SCHEMA_SQL = Path(__file__).parents[2] / "sql" / "schema.sql"
TIMEOUT = 60  # seconds per psql or pg_dump run; each takes well under one

# pg_dump's own comments, session settings and psql meta-commands (\restrict) vary between
# runs and versions and say nothing about the schema; the statements are already in
# pg_dump's deterministic order (by kind, then name, then dependencies).
_NOISE = ("--", "SET ", "SELECT pg_catalog.set_config(", "\\")


@contextlib.contextmanager
def _database(cluster: PostgresCluster) -> Iterator[str]:
    cluster.start()  # a previous test may have stopped it
    name = f"schema_{uuid.uuid4().hex[:16]}"
    dsn = cluster.create_database(name)
    try:
        yield dsn
    finally:
        cluster.drop_database(name)


def _schema_dump(cluster: PostgresCluster, dsn: str) -> list[str]:
    proc = subprocess.run(
        [
            str(cluster.bindir / "pg_dump"),
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            f"--dbname={dsn}",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    return [
        line for line in proc.stdout.splitlines() if line.strip() and not line.startswith(_NOISE)
    ]


def _recorded(dsn: str) -> list[tuple[int, str]]:
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT version, name FROM uploaderd_migrations ORDER BY version")
        return [(int(version), str(name)) for version, name in cursor.fetchall()]


def _apply(cluster: PostgresCluster, dsn: str, sql_file: Path) -> None:
    """As a DBA would: psql, one transaction, stop at the first error."""
    proc = subprocess.run(
        [
            str(cluster.bindir / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-1",
            "-f",
            str(sql_file),
            dsn,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"psql -f {sql_file} failed:\n{proc.stderr}"


def _diff(migrated: list[str], from_file: list[str]) -> list[str]:
    return list(
        difflib.unified_diff(
            migrated, from_file, "migrations 0001..", "sql/schema.sql", lineterm="", n=2
        )
    )


@pytest.fixture(scope="module")
def migrated(pg_cluster: PostgresCluster) -> tuple[list[str], list[tuple[int, str]]]:
    """The schema dump and the migrations recorded by `uploaderd migrate` on an empty database."""
    with _database(pg_cluster) as dsn:
        migrate(dsn)
        return _schema_dump(pg_cluster, dsn), _recorded(dsn)


def _from_file(cluster: PostgresCluster, sql_file: Path) -> list[str]:
    """The schema dump of an empty database after ``sql_file``."""
    with _database(cluster) as dsn:
        _apply(cluster, dsn, sql_file)
        return _schema_dump(cluster, dsn)


def test_schema_sql_equals_the_migrations_applied_in_order(
    pg_cluster: PostgresCluster,
    migrated: tuple[list[str], list[tuple[int, str]]],
) -> None:
    migrated_dump, migrated_recorded = migrated
    with _database(pg_cluster) as dsn:
        _apply(pg_cluster, dsn, SCHEMA_SQL)
        dump, recorded = _schema_dump(pg_cluster, dsn), _recorded(dsn)
        assert migrate(dsn) == [], "a database made from schema.sql must be up to date"
    diff = _diff(migrated_dump, dump)
    assert not diff, "sql/schema.sql differs from the migrations:\n" + "\n".join(diff)
    assert recorded == migrated_recorded, "schema.sql must record every migration, by name"


# Each edit of a copy of schema.sql, and a name the resulting diff must mention.
EDITS = {
    "column": (("    etag                text,\n", ""), "etag text"),
    "index": (
        (
            "CREATE INDEX file_versions_uploaded_key ON file_versions (bucket, key, id)\n"
            "    WHERE state = 'uploaded';\n",
            "",
        ),
        "file_versions_uploaded_key",
    ),
    "constraint": (("NOT NULL CHECK (size >= 0)", "NOT NULL"), "file_versions_size_check"),
    "trigger": (
        (
            "CREATE TRIGGER file_versions_count_deletes AFTER DELETE ON file_versions\n"
            "    REFERENCING OLD TABLE AS old_rows\n"
            "    FOR EACH STATEMENT EXECUTE FUNCTION ledger_count_changes();\n",
            "",
        ),
        "file_versions_count_deletes",
    ),
    "view": (
        (
            "WHERE last_error IS NOT NULL AND state IN ('failed', 'pending')",
            "WHERE last_error IS NOT NULL AND state IN ('failed')",
        ),
        "last_error IS NOT NULL",
    ),
}


@pytest.mark.parametrize("what", EDITS)
def test_the_comparison_sees_an_edit_of_schema_sql(
    what: str,
    tmp_path: Path,
    pg_cluster: PostgresCluster,
    migrated: tuple[list[str], list[tuple[int, str]]],
) -> None:
    (old, new), named = EDITS[what]
    text = SCHEMA_SQL.read_text("utf-8")
    assert text.count(old) == 1, f"the {what} edit no longer matches schema.sql: update EDITS"
    edited = tmp_path / "schema.sql"
    edited.write_text(text.replace(old, new), "utf-8")
    dump = _from_file(pg_cluster, edited)
    changed = [line for line in _diff(migrated[0], dump) if line[:1] in "+-"]
    assert any(named in line for line in changed), "\n".join(changed)
