"""Every grafana_* view on a database filled through the real ledger API.

Dashboards break silently when a view loses a column or counts the wrong rows, so each
view is run, its columns compared with what docs/observability.md and the dashboard use,
and a few values checked against what the ledger calls wrote.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import pytest

from uploaderd.devstack import PostgresCluster
from uploaderd.ledger import Ledger, NewVersion, Outcome, State

REPO = Path(__file__).parents[2]
MIGRATION = REPO / "sql" / "migrations" / "0003_grafana_views.sql"
DASHBOARD = REPO / "monitoring" / "grafana" / "dashboards" / "uploaderd.json"
READER_SQL = REPO / "monitoring" / "postgres" / "grafana_reader.sql"
HOST = "host-a"
WORKER = "host-a:1:w"

COLUMNS = {
    "grafana_throughput_hourly": ["hour", "job", "files", "bytes"],
    "grafana_queue_by_state": ["job", "state", "files", "bytes", "oldest_discovered_at",
                               "oldest_age_seconds"],
    "grafana_upload_latency_hourly": ["hour", "job", "files", "p50_seconds", "p90_seconds",
                                      "p99_seconds", "max_seconds"],
    "grafana_failures": ["job", "state", "reason", "files", "bytes", "max_attempts",
                         "first_seen", "last_seen"],
    "grafana_attempts_hourly": ["hour", "job", "outcome", "attempts", "bytes"],
    "grafana_sessions": ["session_id", "job", "host", "origin", "group_key", "state",
                         "closed_reason", "opened_at", "last_activity_at", "completed_at",
                         "duration_seconds", "files", "bytes", "uploaded", "pending", "failed",
                         "trigger_state"],
    "grafana_triggers": ["trigger_id", "job", "session_id", "state", "attempts", "last_status",
                         "last_error", "created_at", "sent_at", "delay_seconds", "files",
                         "calls"],
    "grafana_trigger_calls_hourly": ["hour", "job", "result", "calls"],
    "grafana_destination_health": ["job", "host", "kind", "consecutive_failures",
                                   "paused_until", "paused", "last_error", "updated_at"],
    "grafana_job_summary": ["job", "pending", "uploading", "uploaded", "failed",
                            "backlog_bytes", "oldest_pending_age_seconds", "last_uploaded_at"],
}

Query = Callable[[str], list[dict[str, Any]]]


def version(relpath: str, size: int, session_id: int | None) -> NewVersion:
    return NewVersion("/data", relpath, size, 1_700_000_000_000_000_000, 1,
                      key=f"k/{relpath}", session_id=session_id)


@pytest.fixture
def view(migrated_dsn: str) -> Iterator[Query]:
    """SELECT * from a view, rows as dicts in the view's column order."""
    conn = psycopg2.connect(migrated_dsn)
    conn.autocommit = True

    def run(name: str) -> list[dict[str, Any]]:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
            cursor.execute(f"SELECT * FROM {name}")  # noqa: S608 - names from this file
            assert [c.name for c in cursor.description] == COLUMNS[name], name
            return [dict(row) for row in cursor.fetchall()]

    yield run
    conn.close()


@pytest.fixture
def populated(ledger: Ledger) -> Ledger:
    """lab: run1 (2 files uploaded, session closed and registered), run2 (1 failed for
    good, 1 retrying); other: 1 pending. lab's bucket is paused on host-a."""
    sessions = ledger.open_sessions("lab", HOST, ["run1", "run2"])
    ledger.enqueue("lab", scope=HOST, host=HOST, bucket="b", versions=[
        version("run1/a", 100, sessions["run1"]),
        version("run1/b", 300, sessions["run1"]),
        version("run2/c", 50, sessions["run2"]),
        version("run2/d", 70, sessions["run2"]),
    ])
    ledger.enqueue("other", scope=HOST, host=HOST, bucket="b",
                   versions=[version("x", 5, None)])
    claims = {c.relpath: c for c in ledger.claim(
        worker=WORKER, host=HOST, jobs=["lab"], scopes=[HOST], limit=10, lease_seconds=60)}
    ledger.complete(WORKER, [
        Outcome(claims["run1/a"], State.UPLOADED, "uploaded", "a" * 64, bytes=100),
        Outcome(claims["run1/b"], State.UPLOADED, "uploaded", "b" * 64, bytes=300),
        Outcome(claims["run2/c"], State.FAILED, "failed", error="S3 NoSuchBucket: gone"),
        Outcome(claims["run2/d"], State.PENDING, "failed", error="S3 SlowDown: slow",
                retry_in=3600),
    ])
    with ledger.transaction() as cursor:  # quiet for a while: the sweep may close them
        cursor.execute("UPDATE sessions SET last_activity_at = now() - interval '1 minute'")
    assert ledger.complete_sessions("lab", idle_seconds=0, marker=None,
                                    register=True) == [sessions["run1"]]
    [due] = ledger.due_triggers("lab", 10)
    started = ledger.start_trigger_call(due.id, HOST)
    assert started is not None
    ledger.finish_trigger_call(due.id, started[0], state="sent", status=201, error=None,
                               excerpt="ok", retry_in=None)
    ledger.set_destination_health("lab", HOST, "upload", failures=5, pause_seconds=600,
                                  error="S3 NoSuchBucket: gone")
    return ledger


def test_every_view_of_the_migration_is_covered_here() -> None:
    created = re.findall(r"CREATE VIEW (grafana_\w+)", MIGRATION.read_text())
    assert sorted(created) == sorted(COLUMNS)


def test_views_answer_on_an_empty_database(view: Query) -> None:
    for name in COLUMNS:
        assert view(name) == [], name


def test_throughput_and_latency_count_uploaded_files(populated: Ledger, view: Query) -> None:
    [hour] = view("grafana_throughput_hourly")
    assert (hour["job"], hour["files"], hour["bytes"]) == ("lab", 2, 400)
    [latency] = view("grafana_upload_latency_hourly")
    assert latency["files"] == 2 and latency["hour"] == hour["hour"]
    assert 0 <= latency["p50_seconds"] <= latency["p90_seconds"] <= latency["p99_seconds"]
    assert latency["p99_seconds"] <= latency["max_seconds"] < 60


def test_queue_and_job_summary(populated: Ledger, view: Query) -> None:
    queue = {(r["job"], r["state"]): (r["files"], r["bytes"])
             for r in view("grafana_queue_by_state")}
    assert queue == {("lab", "uploaded"): (2, 400), ("lab", "failed"): (1, 50),
                     ("lab", "pending"): (1, 70), ("other", "pending"): (1, 5)}
    summary = {r["job"]: r for r in view("grafana_job_summary")}
    lab = summary["lab"]
    assert (lab["pending"], lab["uploading"], lab["uploaded"], lab["failed"]) == (1, 0, 2, 1)
    assert lab["backlog_bytes"] == 70 and lab["last_uploaded_at"] is not None
    assert lab["oldest_pending_age_seconds"] >= 0
    assert summary["other"]["last_uploaded_at"] is None


def test_failures_group_reasons_and_attempts_count_outcomes(
    populated: Ledger, view: Query,
) -> None:
    failures = {(r["state"], r["reason"]): r["files"] for r in view("grafana_failures")}
    assert failures == {("failed", "S3 NoSuchBucket: gone"): 1,
                        ("pending", "S3 SlowDown: slow"): 1}
    attempts = {r["outcome"]: (r["attempts"], r["bytes"]) for r in view("grafana_attempts_hourly")}
    assert attempts == {"uploaded": (2, 400), "failed": (2, 0)}


def test_sessions_triggers_and_destinations(populated: Ledger, view: Query) -> None:
    sessions = {r["group_key"]: r for r in view("grafana_sessions")}
    run1, run2 = sessions["run1"], sessions["run2"]
    assert (run1["state"], run1["closed_reason"], run1["trigger_state"]) == (
        "complete", "idle", "sent")
    assert (run1["files"], run1["bytes"], run1["uploaded"]) == (2, 400, 2)
    assert (run2["state"], run2["pending"], run2["failed"], run2["trigger_state"]) == (
        "open", 1, 1, None)
    [trigger] = view("grafana_triggers")
    assert (trigger["state"], trigger["last_status"], trigger["files"], trigger["calls"]) == (
        "sent", 201, 2, 1)
    assert trigger["delay_seconds"] >= 0
    [calls] = view("grafana_trigger_calls_hourly")
    assert (calls["job"], calls["result"], calls["calls"]) == ("lab", "2xx", 1)
    [health] = view("grafana_destination_health")
    assert (health["kind"], health["paused"], health["consecutive_failures"]) == (
        "upload", True, 5)


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["rawSql"]) for panel in dashboard["panels"]
            for target in panel.get("targets", []) if "rawSql" in target]


def test_every_dashboard_sql_query_runs(populated: Ledger, migrated_dsn: str) -> None:
    """The panels' SQL with Grafana's macros expanded as Grafana would."""
    queries = dashboard_queries()
    assert queries
    with contextlib.closing(psycopg2.connect(migrated_dsn)) as conn, conn.cursor() as cursor:
        for title, query in queries:
            query = re.sub(r"\$__timeFilter\((\w+)\)",
                           r"\1 BETWEEN now() - interval '1 day' AND now() + interval '1 hour'",
                           query).replace("${job:regex}", ".*")
            cursor.execute(query)
            assert cursor.fetchall(), title


def test_grafana_reader_reads_the_views_and_nothing_else(
    populated: Ledger, migrated_dsn: str, pg_cluster: PostgresCluster,
) -> None:
    def psql(*args: str) -> None:
        subprocess.run([str(pg_cluster.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                        "-v", "reader_password=s3cret", *args, "-d", migrated_dsn],
                       check=True, capture_output=True, text=True)

    psql("-f", str(READER_SQL))
    psql("-f", str(READER_SQL))  # idempotent: run again after an upgrade adds views
    reader = psycopg2.extensions.make_dsn(migrated_dsn, user="grafana_reader")
    with contextlib.closing(psycopg2.connect(reader)) as conn, conn.cursor() as cursor:
        for name in COLUMNS:
            cursor.execute(f"SELECT count(*) FROM {name}")  # noqa: S608 - names from this file
        conn.rollback()
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cursor.execute("SELECT * FROM file_versions")
        conn.rollback()
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            cursor.execute("CREATE TEMP TABLE t (x int)")
