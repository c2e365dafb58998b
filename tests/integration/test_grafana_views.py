"""Every grafana_* view on a database filled through the real ledger API.

Dashboards break silently when a view loses a column or counts the wrong rows, so each
view is run, its columns compared with what docs/observability.md and the dashboard use,
and a few values checked against what the ledger calls wrote. They also slow down
silently as the history grows, so every dashboard query is EXPLAINed on a generated
ledger spread over months: none may read the history tables outside its time window.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import pytest

from devstack import PostgresCluster
from uploaderd.ledger.store import Ledger, NewVersion, Outcome, State

REPO = Path(__file__).parents[2]
MIGRATIONS = REPO / "sql" / "migrations"
DASHBOARD = REPO / "monitoring" / "grafana" / "dashboards" / "uploaderd.json"
READER_SQL = REPO / "monitoring" / "postgres" / "grafana_reader.sql"
HOST = "host-a"
WORKER = "host-a:1:w"

COLUMNS = {
    "grafana_throughput_hourly": ["hour", "job", "files", "bytes"],
    "grafana_queue_by_state": [
        "job",
        "state",
        "files",
        "bytes",
        "oldest_discovered_at",
        "oldest_age_seconds",
    ],
    "grafana_upload_latency_hourly": [
        "hour",
        "job",
        "files",
        "p50_seconds",
        "p90_seconds",
        "p99_seconds",
        "max_seconds",
    ],
    "grafana_failures": [
        "job",
        "state",
        "reason",
        "files",
        "bytes",
        "max_attempts",
        "first_seen",
        "last_seen",
    ],
    "grafana_attempts_hourly": ["hour", "job", "outcome", "attempts", "bytes"],
    "grafana_sessions": [
        "session_id",
        "job",
        "host",
        "origin",
        "group_key",
        "state",
        "closed_reason",
        "opened_at",
        "last_activity_at",
        "completed_at",
        "duration_seconds",
        "files",
        "bytes",
        "uploaded",
        "pending",
        "failed",
        "trigger_state",
    ],
    "grafana_triggers": [
        "trigger_id",
        "job",
        "session_id",
        "state",
        "attempts",
        "last_status",
        "last_error",
        "created_at",
        "sent_at",
        "delay_seconds",
        "files",
        "calls",
    ],
    "grafana_trigger_calls_hourly": ["hour", "job", "result", "calls"],
    "grafana_destination_health": [
        "job",
        "host",
        "kind",
        "consecutive_failures",
        "paused_until",
        "paused",
        "last_error",
        "updated_at",
    ],
    "grafana_job_summary": [
        "job",
        "pending",
        "uploading",
        "uploaded",
        "failed",
        "backlog_bytes",
        "oldest_pending_age_seconds",
        "last_uploaded_at",
    ],
}

Query = Callable[[str], list[dict[str, Any]]]


def version(relpath: str, size: int, session_id: int | None) -> NewVersion:
    return NewVersion(
        "/data",
        relpath,
        size,
        1_700_000_000_000_000_000,
        1,
        key=f"k/{relpath}",
        session_id=session_id,
    )


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
    ledger.enqueue(
        "lab",
        scope=HOST,
        host=HOST,
        bucket="b",
        versions=[
            version("run1/a", 100, sessions["run1"]),
            version("run1/b", 300, sessions["run1"]),
            version("run2/c", 50, sessions["run2"]),
            version("run2/d", 70, sessions["run2"]),
        ],
    )
    ledger.enqueue("other", scope=HOST, host=HOST, bucket="b", versions=[version("x", 5, None)])
    claims = {
        c.relpath: c
        for c in ledger.claim(
            worker=WORKER, host=HOST, jobs=["lab"], scopes=[HOST], limit=10, lease_seconds=60
        )
    }
    ledger.complete(
        WORKER,
        [
            Outcome(claims["run1/a"], State.UPLOADED, "uploaded", "a" * 64, bytes=100),
            Outcome(claims["run1/b"], State.UPLOADED, "uploaded", "b" * 64, bytes=300),
            Outcome(claims["run2/c"], State.FAILED, "failed", error="S3 NoSuchBucket: gone"),
            Outcome(
                claims["run2/d"], State.PENDING, "failed", error="S3 SlowDown: slow", retry_in=3600
            ),
        ],
    )
    with ledger.transaction() as cursor:  # quiet for a while: the sweep may close them
        cursor.execute("UPDATE sessions SET last_activity_at = now() - interval '1 minute'")
    assert ledger.complete_sessions("lab", idle_seconds=0, marker=None, register=True) == [
        sessions["run1"]
    ]
    [due] = ledger.due_triggers("lab", 10)
    started = ledger.start_trigger_call(due.id, HOST)
    assert started is not None
    ledger.finish_trigger_call(
        due.id, started[0], state="sent", status=201, error=None, excerpt="ok", retry_in=None
    )
    ledger.set_destination_health(
        "lab", HOST, "upload", failures=5, pause_seconds=600, error="S3 NoSuchBucket: gone"
    )
    return ledger


def test_every_view_of_the_migrations_is_covered_here() -> None:
    created = {
        name
        for path in MIGRATIONS.glob("*.sql")
        for name in re.findall(r"CREATE (?:OR REPLACE )?VIEW (grafana_\w+)", path.read_text())
    }
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
    queue = {
        (r["job"], r["state"]): (r["files"], r["bytes"]) for r in view("grafana_queue_by_state")
    }
    assert queue == {
        ("lab", "uploaded"): (2, 400),
        ("lab", "failed"): (1, 50),
        ("lab", "pending"): (1, 70),
        ("other", "pending"): (1, 5),
    }
    summary = {r["job"]: r for r in view("grafana_job_summary")}
    lab = summary["lab"]
    assert (lab["pending"], lab["uploading"], lab["uploaded"], lab["failed"]) == (1, 0, 2, 1)
    assert lab["backlog_bytes"] == 70 and lab["last_uploaded_at"] is not None
    assert lab["oldest_pending_age_seconds"] >= 0
    assert summary["other"]["last_uploaded_at"] is None


def test_failures_group_reasons_and_attempts_count_outcomes(
    populated: Ledger,
    view: Query,
) -> None:
    failures = {(r["state"], r["reason"]): r["files"] for r in view("grafana_failures")}
    assert failures == {("failed", "S3 NoSuchBucket: gone"): 1, ("pending", "S3 SlowDown: slow"): 1}
    attempts = {r["outcome"]: (r["attempts"], r["bytes"]) for r in view("grafana_attempts_hourly")}
    assert attempts == {"uploaded": (2, 400), "failed": (2, 0)}


def test_sessions_triggers_and_destinations(populated: Ledger, view: Query) -> None:
    sessions = {r["group_key"]: r for r in view("grafana_sessions")}
    run1, run2 = sessions["run1"], sessions["run2"]
    assert (run1["state"], run1["closed_reason"], run1["trigger_state"]) == (
        "complete",
        "idle",
        "sent",
    )
    assert (run1["files"], run1["bytes"], run1["uploaded"]) == (2, 400, 2)
    assert (run2["state"], run2["pending"], run2["failed"], run2["trigger_state"]) == (
        "open",
        1,
        1,
        None,
    )
    [trigger] = view("grafana_triggers")
    assert (trigger["state"], trigger["last_status"], trigger["files"], trigger["calls"]) == (
        "sent",
        201,
        2,
        1,
    )
    assert trigger["delay_seconds"] >= 0
    [calls] = view("grafana_trigger_calls_hourly")
    assert (calls["job"], calls["result"], calls["calls"]) == ("lab", "2xx", 1)
    [health] = view("grafana_destination_health")
    assert (health["kind"], health["paused"], health["consecutive_failures"]) == ("upload", True, 5)


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["rawSql"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "rawSql" in target
    ]


def test_every_dashboard_sql_query_runs(populated: Ledger, migrated_dsn: str) -> None:
    """The panels' SQL with Grafana's macros expanded as Grafana would."""
    queries = dashboard_queries()
    assert queries
    with contextlib.closing(psycopg2.connect(migrated_dsn)) as conn, conn.cursor() as cursor:
        for title, query in queries:
            query = re.sub(
                r"\$__timeFilter\((\w+)\)",
                r"\1 BETWEEN now() - interval '1 day' AND now() + interval '1 hour'",
                query,
            ).replace("${job:regex}", ".*")
            cursor.execute(query)
            assert cursor.fetchall(), title


def test_grafana_reader_reads_the_views_and_nothing_else(
    populated: Ledger,
    migrated_dsn: str,
    pg_cluster: PostgresCluster,
) -> None:
    def psql(*args: str) -> None:
        subprocess.run(
            [
                str(pg_cluster.bindir / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                "reader_password=s3cret",
                *args,
                "-d",
                migrated_dsn,
            ],
            check=True,
            capture_output=True,
            text=True,
        )

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


# --- at scale: every dashboard query reads its window or the live rows, through indexes ---

HISTORY_TABLES = {"file_versions", "upload_attempts", "trigger_calls", "sessions", "triggers"}
# The filter each view is read with on the dashboard: its time column, or none for the views
# of live work.
TIME_COLUMN = {
    "grafana_throughput_hourly": "hour",
    "grafana_queue_by_state": None,
    "grafana_upload_latency_hourly": "hour",
    "grafana_failures": None,
    "grafana_attempts_hourly": "hour",
    "grafana_sessions": "opened_at",
    "grafana_triggers": "created_at",
    "grafana_trigger_calls_hourly": "hour",
    "grafana_destination_health": None,
    "grafana_job_summary": None,
}

# Four months of a site: 3 jobs, sessions of 20 files closed and registered, one attempt per
# version; 97 % uploaded, 1 % failed, 1 % retrying, 1 % superseded, and the last half hour's
# files still queued. Bulk-inserted with the ledger's triggers off (as a restore
# would), then the counters are rebuilt once.
GENERATED_LEDGER = """
SET session_replication_role = replica;
INSERT INTO sessions (id, job, host, origin, group_key, state, closed_reason, opened_at,
                      last_activity_at, completed_at)
SELECT s, 'job-' || mod(s, 3), 'host-a', 'daemon', 'run-' || s,
       CASE WHEN open THEN 'open' ELSE 'complete' END,
       CASE WHEN open THEN NULL ELSE 'idle' END,
       t, t + interval '5 minutes', CASE WHEN open THEN NULL ELSE t + interval '15 minutes' END
FROM generate_series(1, %(sessions)s) s,
     LATERAL (SELECT now() - %(days)s * interval '1 day' * (1 - (s - 1)::float8 / %(sessions)s)
                         AS t,
                     s > %(sessions)s - 3 AS open) o;
INSERT INTO triggers (id, job, session_id, state, attempts, last_status, created_at, sent_at,
                      updated_at)
SELECT id, job, id, 'sent', 1, 201, completed_at, completed_at + interval '2 seconds',
       completed_at
FROM sessions WHERE state = 'complete';
INSERT INTO trigger_calls (trigger_id, attempt, host, started_at, finished_at, status)
SELECT id, 1, 'host-a', created_at, sent_at, 201 FROM triggers;
INSERT INTO file_versions (id, job, scope, host, root, relpath, size, mtime_ns, inode, bucket,
                           key, state, attempts, last_error, session_id, discovered_at,
                           first_attempt_at, uploaded_at, updated_at, trigger_id)
SELECT i, 'job-' || mod(sid, 3), 'host-a', 'host-a', '/data', 'run-' || sid || '/f' || i,
       1000 + mod(i, 5000), i, i, 'b', 'k/' || i,
       st, CASE WHEN st = 'pending' AND mod(i, 100) <> 11 THEN 0 ELSE 1 END,
       CASE WHEN st = 'failed' OR mod(i, 100) = 11 THEN 'S3 SlowDown: slow' END,
       sid, t, t + interval '1 second',
       CASE WHEN st = 'uploaded' THEN t + mod(i, 50) * interval '1 second' END,
       t + mod(i, 50) * interval '1 second',
       CASE WHEN st = 'uploaded' THEN (SELECT id FROM triggers WHERE session_id = sid) END
FROM generate_series(1, %(versions)s) i,
     LATERAL (SELECT (i - 1) / (%(versions)s / %(sessions)s) + 1 AS sid,
                     now() - %(days)s * interval '1 day' * (1 - i::float8 / %(versions)s) AS t,
                     CASE WHEN i > %(versions)s * (1 - 1 / (48.0 * %(days)s))  -- 30 minutes
                               THEN CASE WHEN mod(i, 10) = 0 THEN 'uploading' ELSE 'pending' END
                          WHEN mod(i, 100) = 7 THEN 'failed'
                          WHEN mod(i, 100) = 11 THEN 'pending'
                          WHEN mod(i, 100) = 13 THEN 'superseded'
                          ELSE 'uploaded' END AS st) o;
INSERT INTO upload_attempts (file_version_id, attempt, host, worker, started_at, finished_at,
                             outcome, error, bytes)
SELECT id, 1, 'host-a', 'host-a:1:w', first_attempt_at,
       CASE WHEN state <> 'uploading' THEN updated_at END,
       CASE state WHEN 'uploaded' THEN 'uploaded' WHEN 'uploading' THEN NULL
                  WHEN 'superseded' THEN 'changed' ELSE 'failed' END,
       last_error, CASE WHEN state = 'uploaded' THEN size END
FROM file_versions WHERE attempts > 0;
SELECT setval(pg_get_serial_sequence(name, 'id'), (SELECT max(id) FROM sessions))
FROM unnest(ARRAY['sessions', 'triggers']) name;
SELECT setval(pg_get_serial_sequence('file_versions', 'id'), %(versions)s);
RESET session_replication_role;
SELECT ledger_recount();
ANALYZE;
"""


def grafana_sql(query: str, start: datetime, end: datetime) -> str:
    """A panel's SQL with its macros expanded as Grafana's PostgreSQL datasource does."""
    window = f"BETWEEN '{start:%Y-%m-%dT%H:%M:%SZ}' AND '{end:%Y-%m-%dT%H:%M:%SZ}'"
    return re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 {window}", query).replace("${job:regex}", ".*")


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def history_reads(cursor: Any, query: str) -> list[str]:
    """What in the planner's real choice for ``query`` reads a history table whole: a
    sequential scan, or a scan of a full (not partial) index with no condition on it."""
    cursor.execute("EXPLAIN (FORMAT JSON) " + query)
    [explained] = cursor.fetchone()[0]
    cursor.execute(
        "SELECT indexrelid::regclass::text FROM pg_index"
        " WHERE indrelid::regclass::text = ANY(%s) AND indpred IS NULL",
        (sorted(HISTORY_TABLES),),
    )
    whole = {name for (name,) in cursor.fetchall()}  # the full indexes of history tables
    found = []
    for node in plan_nodes(explained["Plan"]):
        table, index = node.get("Relation Name"), node.get("Index Name")
        if node["Node Type"] == "Seq Scan" and table in HISTORY_TABLES:
            found.append(f"Seq Scan on {table}")
        elif index in whole and "Index Cond" not in node:
            found.append(f"{node['Node Type']} on the whole of {index}")
    return found


@pytest.fixture
def generated_ledger(migrated_dsn: str) -> str:
    """40,000 versions over 120 days on this test's database, ANALYZEd."""
    with contextlib.closing(psycopg2.connect(migrated_dsn)) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(GENERATED_LEDGER, {"versions": 40_000, "sessions": 2_000, "days": 120})
    return migrated_dsn


def test_dashboard_queries_read_only_their_window_or_live_rows(generated_ledger: str) -> None:
    """The planner's own choice on realistic statistics: no enable_seqscan games."""
    end = datetime.now(UTC)
    start = end - timedelta(hours=6)
    queries = {
        f"panel {title!r}": grafana_sql(sql, start, end) for title, sql in dashboard_queries()
    }
    for name, column in TIME_COLUMN.items():
        where = "" if column is None else f" WHERE $__timeFilter({column})"
        queries[name] = grafana_sql(
            f"SELECT * FROM {name}{where}",  # noqa: S608 - our names
            start,
            end,
        )
    with contextlib.closing(psycopg2.connect(generated_ledger)) as conn, conn.cursor() as cursor:
        reads = {
            name: found
            for name, query in queries.items()
            if (found := history_reads(cursor, query))
        }
    assert not reads, "reads the history outside its window:\n" + "\n".join(
        f"{name}: {'; '.join(found)}" for name, found in reads.items()
    )


def test_views_at_scale_agree_with_the_tables(generated_ledger: str) -> None:
    """What the views read from counters and indexes equals a count of the table itself."""

    def rows(cursor: Any, query: str) -> set[tuple[Any, ...]]:
        cursor.execute(query)
        return set(cursor.fetchall())

    with contextlib.closing(psycopg2.connect(generated_ledger)) as conn, conn.cursor() as cursor:
        assert rows(cursor, "SELECT job, state, files, bytes FROM grafana_queue_by_state") == rows(
            cursor, "SELECT job, state, count(*), sum(size) FROM file_versions GROUP BY 1, 2"
        )
        assert rows(
            cursor,
            "SELECT job, pending, uploading, uploaded, failed, backlog_bytes,"
            " last_uploaded_at FROM grafana_job_summary",
        ) == rows(
            cursor,
            """
            SELECT job, count(*) FILTER (WHERE state = 'pending'),
                   count(*) FILTER (WHERE state = 'uploading'),
                   count(*) FILTER (WHERE state = 'uploaded'),
                   count(*) FILTER (WHERE state = 'failed'),
                   coalesce(sum(size) FILTER (WHERE state IN ('pending', 'uploading')), 0),
                   max(uploaded_at)
            FROM file_versions GROUP BY job""",
        )
        assert rows(
            cursor,
            "SELECT session_id, files, bytes, uploaded, pending, failed FROM grafana_sessions",
        ) == rows(
            cursor,
            """
            SELECT s.id, count(f.id), coalesce(sum(f.size), 0),
                   count(f.id) FILTER (WHERE f.state = 'uploaded'),
                   count(f.id) FILTER (WHERE f.state IN ('pending', 'uploading')),
                   count(f.id) FILTER (WHERE f.state = 'failed')
            FROM sessions s LEFT JOIN file_versions f ON f.session_id = s.id GROUP BY s.id""",
        )
        assert rows(
            cursor, "SELECT hour, job, files, bytes FROM grafana_throughput_hourly"
        ) == rows(
            cursor,
            """
            SELECT date_trunc('hour', uploaded_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', job,
                   count(*), sum(size)
            FROM file_versions WHERE state = 'uploaded' GROUP BY 1, 2""",
        )
