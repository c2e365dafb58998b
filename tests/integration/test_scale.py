"""Cost follows live work: plans on a generated history, incremental counts, retention.

The plans are checked on a ledger of ~100,000 generated versions (98 % history) after
ANALYZE, with the planner's real choice: a query that would read the whole history at a
site's size reads it here too, as a Seq Scan on a history table.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from devstack import wait_for
from uploaderd.commands.explain import explain
from uploaderd.config.settings import Retention, S3Settings, parse_job_text
from uploaderd.discovery.discovery import Discovery
from uploaderd.ledger.retention import Pruner
from uploaderd.ledger.store import PREPARED, Ledger, NewVersion, Outcome, State, prepared, queries
from uploaderd.policy.settle import Candidate, Signature

Sql = Callable[..., list[tuple[Any, ...]]]
HISTORY = {
    "file_versions",
    "upload_attempts",
    "sessions",
    "triggers",
    "trigger_calls",
    "path_signatures",
}
SHA = "a" * 64
# Indexes over every row of a history table (the partial ones hold live work only).
WHOLE_HISTORY_INDEXES = {
    "file_versions_pkey",
    "file_versions_one_row_per_version",
    "file_versions_by_session",
    "file_versions_by_trigger",
    "upload_attempts_pkey",
    "sessions_pkey",
    "triggers_pkey",
}
JOBS = ["scope-a", "scope-b", "scope-c"]

# 100,000 versions over 50 days in 3 jobs, 50 per session (and the signatures of 50,000
# pruned ones): 98 % uploaded (with an attempt
# row each), 1 % superseded, some failed, pending and uploading; scope-a registers its
# sessions, scope-b deletes its files after upload, the others keep them and, as on a site
# upgraded from before migration 0005, their uploaded rows were never marked kept.
GENERATE = """
INSERT INTO sessions (id, job, host, origin, group_key, state, opened_at, last_activity_at,
                      completed_at, closed_reason, marker_seen)
SELECT s, (%(jobs)s::text[])[1 + s %% 3], 'host-a', 'daemon', 'run-' || s,
       CASE WHEN s > 1995 THEN 'open' ELSE 'complete' END,
       now() - make_interval(days => 50) + s * interval '36 minutes', now() - interval '1 hour',
       CASE WHEN s > 1995 THEN NULL
            ELSE now() - make_interval(days => 50) + s * interval '36 minutes' END,
       CASE WHEN s > 1995 THEN NULL ELSE 'idle' END, false
FROM generate_series(1, 2000) s;
SELECT setval('sessions_id_seq', 2000);
INSERT INTO triggers (id, job, session_id, state, attempts, created_at, sent_at)
SELECT s, 'scope-a', s, 'sent', 1, now() - make_interval(days => 50) + s * interval '36 minutes',
       now() - make_interval(days => 50) + s * interval '36 minutes'
FROM generate_series(1, 1995) s WHERE s %% 3 = 0;
SELECT setval('triggers_id_seq', 2000);
INSERT INTO trigger_calls (trigger_id, attempt, host, started_at, finished_at, status)
SELECT id, 1, 'host-a', created_at, sent_at, 200 FROM triggers;
INSERT INTO file_versions (job, scope, host, root, relpath, size, mtime_ns, inode, ctime_ns,
                           bucket, key, state, attempts, sha256, session_id, discovered_at,
                           first_attempt_at, uploaded_at, updated_at, trigger_id,
                           registered_at, disposed_at, disposition, last_error)
SELECT (%(jobs)s::text[])[1 + (i / 50) %% 3], 'host-a', 'host-a', '/data',
       'run-' || (i / 50) || '/f' || i, 1000 + i %% 5000, i, i,
       CASE WHEN i %% 2 = 0 THEN i END,  -- half of them from before migration 0008
       'lab-raw', 'k/' || i,
       st, 1, CASE WHEN st = 'uploaded' THEN %(sha)s END, i / 50, at, at,
       CASE WHEN st = 'uploaded' THEN at END, at,
       CASE WHEN st = 'uploaded' AND (i / 50) %% 3 = 0 AND i / 50 <= 1995 THEN i / 50 END,
       CASE WHEN st = 'uploaded' AND (i / 50) %% 3 = 0 AND i / 50 <= 1995 THEN at END,
       CASE WHEN st = 'uploaded' AND (i / 50) %% 3 = 1 THEN at END,
       CASE WHEN st = 'uploaded' AND (i / 50) %% 3 = 1 THEN 'deleted' END,
       CASE WHEN st = 'failed' THEN 'AccessDenied' END
FROM (SELECT i, now() - make_interval(days => 50) + i * interval '43 seconds' AS at,
             CASE WHEN i > 99850 THEN 'pending' WHEN i > 99840 THEN 'uploading'
                  WHEN i %% 500 = 7 THEN 'failed' WHEN i %% 100 = 3 THEN 'superseded'
                  ELSE 'uploaded' END AS st
      FROM generate_series(50, 100049) i) g;
UPDATE file_versions SET claimed_by = 'host-a:1:w', lease_expires_at = now() + interval '1 hour'
WHERE state = 'uploading';
INSERT INTO upload_attempts (file_version_id, attempt, host, worker, started_at, finished_at,
                             outcome, bytes)
SELECT id, 1, 'host-a', 'host-a:1:w', discovered_at, discovered_at,
       CASE WHEN state = 'uploading' THEN NULL WHEN state = 'failed' THEN 'failed'
            WHEN state = 'superseded' THEN 'changed' ELSE 'uploaded' END, size
FROM file_versions WHERE state <> 'pending';
INSERT INTO path_signatures (job, scope, root, relpath, size, mtime_ns, inode, version_id)
SELECT (%(jobs)s::text[])[1 + i %% 3], 'host-a', '/data', 'old/f' || i, i, i, i, i
FROM generate_series(1, 50000) i;
"""


@pytest.fixture
def history(migrated_dsn: str, sql: Sql) -> str:
    with psycopg2.connect(migrated_dsn) as conn, conn.cursor() as cursor:
        cursor.execute(GENERATE, {"jobs": JOBS, "sha": SHA})
    sql("VACUUM ANALYZE")
    # A job that started after the last ANALYZE: 20,000 versions the statistics do not know
    # about, so the planner takes the job for a tiny one (what a fresh tree's start-up scan,
    # or a new job on an old ledger, looks like to it).
    sql(
        "INSERT INTO file_versions (job, scope, host, root, relpath, size, mtime_ns, inode, "
        "bucket, key, state, uploaded_at) SELECT 'fresh', 'host-a', 'host-a', '/data', "
        "'new/f' || i, i, i, i, 'lab-raw', 'k/new/' || i, 'uploaded', now() "
        "FROM generate_series(1, 20000) i"
    )
    return migrated_dsn


def timer_queries() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every query the daemon runs on a timer or per batch, with typical parameters."""
    now = datetime.now(UTC)
    jobs, scopes = JOBS, ["host-a", ""]
    yield (
        "claim_batch",
        {
            "worker": "host-a:1:w",
            "host": "host-a",
            "jobs": jobs,
            "scopes": scopes,
            "limit": 16,
            "lease_seconds": 60,
            "pending": "pending",
        },
    )
    claimed = {"worker": "host-a:1:w", "uploading": "uploading", "ids": [99800]}
    yield "renew_leases", {**claimed, "lease_seconds": 60}
    yield (
        "complete_batch",
        {
            **claimed,
            "keeping": ["scope-a", "scope-c"],
            "attempts": [1],
            "states": ["uploaded"],
            "outcomes": ["uploaded"],
            "sha256s": [SHA],
            "etags": ["e"],
            "errors": [None],
            "delays": [None],
            "bytes": [1],
        },
    )
    yield "release_claims", {**claimed, "reason": "daemon stopping"}
    batch = range(50, 50 + 2000 * 3, 3)  # a discovery batch of scope-a's paths
    yield (
        "known_paths",
        {
            "job": "scope-a",
            "scope": "host-a",
            "roots": ["/data"] * 2000,
            "relpaths": [f"run-{i // 50}/f{i}" for i in batch],
            "sizes": [1000 + i for i in batch],
            "mtimes": list(batch),
            "inodes": list(batch),
            "ctimes": list(batch),
        },
    )
    yield (
        "adopt_ctimes",
        {
            "job": "scope-a",
            "scope": "host-a",
            "ids": [50, 53],
            "ctimes": [1, 2],
            "roots": ["/data"],
            "relpaths": ["old/f1"],
            "signature_ctimes": [3],
        },
    )
    yield "open_sessions", {"job": "scope-a", "host": "host-a", "group_keys": ["run-9"]}
    yield "notify_work", {"job": "fresh", "host": "host-a"}
    yield (
        "enqueue_versions",
        {
            "job": "fresh",
            "scope": "host-a",
            "host": "host-a",
            "bucket": "lab-raw",
            "marker": "DONE",
            # A discovery batch of 500 new files next to an old one.
            "roots": ["/data"] * 500,
            "relpaths": ["run-1/f50"] + [f"run-1999/new{i}" for i in range(499)],
            "sizes": [1050] + [1] * 499,
            "mtimes": [50] + [1] * 499,
            "inodes": [50, *range(10**6, 10**6 + 499)],
            "ctimes": [50] + [1] * 499,
            "keys": ["k/a"] * 500,
            "sessions": [1998] * 500,
            "errors": [None] * 500,
        },
    )
    # status's, and top's every second.
    yield "job_counts", {"job": None}
    yield "registration_counts", {"job": None}
    yield "paused_destinations", {"job": None}
    yield "recent_errors", {"job": None, "limit": 10}
    yield "compact_counts", {}
    yield "abandoned_uploads", {"limit": 100}
    yield "notify_due_retries", {}
    yield "workers_on_host", {"prefix": "host-a:%"}
    yield "reclaim_leases", {"dead_workers": ["host-a:2:x"]}
    for job in jobs:
        yield "remember_markers", {"job": job, "marker": "DONE"}
        yield (
            "complete_sessions",
            {"job": job, "idle_seconds": 600.0, "marker": "DONE", "register": True},
        )
        yield "batch_uploaded_files", {"job": job, "batch_size": 500}
        yield "due_triggers", {"job": job, "limit": 50, "session_id": None}
        yield (
            "undisposed_files",
            {"job": job, "scopes": scopes, "registered_only": False, "limit": 500},
        )
    yield "open_session_summaries", {"job": None}
    yield "session_progress", {"session_id": 1998}
    selection = {"session_id": None, "job": None, "all": False, "jobs": jobs, "scopes": scopes}
    yield "selection_progress", selection | {"session_id": 1998}
    yield "selection_progress", selection | {"job": "scope-a"}
    yield "selection_progress", selection | {"all": True}
    yield (
        "path_versions",
        {"job": "scope-a", "scope": "host-a", "root": "/data", "relpath": "run-1/f50"},
    )
    yield "list_files", {"job": None, "state": "failed", "session_id": None, "limit": 1000}
    old = now - timedelta(days=49)  # an hourly prune's share: the oldest day of 50
    yield (
        "prune_versions",
        {
            "after": 0,
            "cutoff": old,
            "jobs": jobs,
            "keeping": ["scope-a", "scope-c"],
            "registering": ["scope-a"],
            "limit": 2000,
            "dry_run": False,
        },
    )
    yield (
        "prune_attempts",
        {"after": 0, "cutoff": old, "jobs": jobs, "limit": 2000, "dry_run": False},
    )
    yield "prune_triggers", {"cutoff": old, "jobs": jobs, "limit": 2000}
    yield "prune_sessions", {"cutoff": old, "jobs": jobs, "limit": 2000}


def seq_scans(plan: dict[str, Any]) -> Iterator[str]:
    """History tables read end to end: a Seq Scan, an index walked with no condition, or a
    hashed subplan (a hash table built from every matching row, for one probe per row)."""
    if plan.get("Subplan Name", "").startswith("hashed") and set(tables(plan)) & HISTORY:
        yield f"hashed {sorted(set(tables(plan)) & HISTORY)}"
    if plan.get("Node Type") == "Hash" and _reads_history_by_prefix(plan):
        yield f"hash of {sorted(set(tables(plan)) & HISTORY)}"
    table = plan.get("Relation Name")
    if table in HISTORY and plan.get("Node Type") == "Seq Scan":
        yield table
    if (
        table in HISTORY
        and plan.get("Node Type") in ("Index Scan", "Index Only Scan")
        and "Index Cond" not in plan
        and plan.get("Index Name") in WHOLE_HISTORY_INDEXES
    ):
        yield f"{table} (all of {plan['Index Name']})"
    for child in plan.get("Plans", []):
        yield from seq_scans(child)


def _reads_history_by_prefix(plan: dict[str, Any]) -> bool:
    """A hash built from a whole-history index: every row of a job, for one probe each."""
    for child in plan.get("Plans", []):
        if child.get("Relation Name") in HISTORY and (
            child.get("Index Name") in WHOLE_HISTORY_INDEXES or child["Node Type"] == "Seq Scan"
        ):
            return True
        if _reads_history_by_prefix(child):
            return True
    return False


def tables(plan: dict[str, Any]) -> Iterator[str]:
    if "Relation Name" in plan:
        yield plan["Relation Name"]
    for child in plan.get("Plans", []):
        yield from tables(child)


def history_reads(cursor: Any, statement: str, params: dict[str, Any]) -> list[str]:
    """What ``statement``'s plan reads of the history from end to end (see ``seq_scans``)."""
    cursor.execute("EXPLAIN (FORMAT JSON) " + statement, params)
    (plan,) = cursor.fetchone()[0]
    found = sorted(set(seq_scans(plan["Plan"])))
    return found + [table for init in plan.get("Plans", []) for table in seq_scans(init)]


def test_no_timer_query_reads_the_history(history: str) -> None:
    scans = {}
    with psycopg2.connect(history) as conn, conn.cursor() as cursor:
        for name, params in timer_queries():
            if found := history_reads(cursor, queries()[name], params):
                scans[name] = found
    assert scans == {}, "these read a history table from end to end:\n" + json.dumps(scans)


def test_no_prepared_statement_reads_the_history_in_its_generic_plan(history: str) -> None:
    """The daemon runs its prepared statements with one plan for all arguments (the generic
    plan, which knows none of them): that plan must not read the history either."""
    params = dict(timer_queries())
    assert set(params) >= PREPARED, "a prepared statement without a plan check"
    scans = {}
    with psycopg2.connect(history) as conn, conn.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        for name in sorted(PREPARED):
            statement = prepared(name)
            cursor.execute(statement.prepare)
            if found := history_reads(cursor, statement.execute, params[name]):
                scans[name] = found
    assert scans == {}, "these read a history table from end to end:\n" + json.dumps(scans)


def plan_now(cursor: Any, params: dict[str, dict[str, Any]]) -> None:
    """Prepare the daemon's statements on this connection, set up as the daemon's, and make
    their plans now (a generic plan is made at the first EXECUTE and kept)."""
    cursor.execute(queries()["session_settings"])
    for name in sorted(PREPARED & params.keys()):
        statement = prepared(name)
        cursor.execute(statement.prepare)
        cursor.execute("EXPLAIN " + statement.execute, params[name])
    cursor.connection.commit()


def test_plans_made_on_an_empty_ledger_still_read_no_history_once_it_is_full(
    migrated_dsn: str, sql: Sql
) -> None:
    """A connection plans each prepared statement once, maybe on a fresh install's empty
    ledger, and keeps the plan until an ANALYZE of its tables (autovacuum's is off here, as
    it may come late): filled with the history since, those plans must not read it."""
    tables = ", ".join(sorted(HISTORY))
    for table in sorted(HISTORY):
        sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    sql(f"ANALYZE {tables}")
    params = dict(timer_queries())
    scans = {}
    with psycopg2.connect(migrated_dsn) as conn, conn.cursor() as cursor:
        plan_now(cursor, params)
        with psycopg2.connect(migrated_dsn) as other, other.cursor() as filling:
            filling.execute(GENERATE, {"jobs": JOBS, "sha": SHA})
        for name in sorted(PREPARED):
            if found := history_reads(cursor, prepared(name).execute, params[name]):
                scans[name] = found
    assert scans == {}, "plans made on the empty ledger read the history:\n" + json.dumps(scans)


def test_the_check_catches_a_whole_history_aggregate(history: str) -> None:
    """The test above can fail: the pre-0005 job_counts is a Seq Scan here."""
    with psycopg2.connect(history) as conn, conn.cursor() as cursor:
        cursor.execute(
            "EXPLAIN (FORMAT JSON) SELECT job, state, count(*) FROM file_versions "
            "GROUP BY job, state"
        )
        (plan,) = cursor.fetchone()[0]
    assert list(seq_scans(plan["Plan"])) == ["file_versions"]


# A job that may not upload now (its window is closed) with a backlog: 40,000 new files, and
# 10,000 tried once and waiting for their retry in an hour.
BACKLOG = """
INSERT INTO file_versions (job, scope, host, root, relpath, size, mtime_ns, inode, ctime_ns,
                           bucket, key, state, attempts, next_attempt_at, last_error)
SELECT 'night-only', 'host-a', 'host-a', '/night', 'f' || i, i, i, i, i, 'lab-raw',
       'night/' || i, 'pending', CASE WHEN i > 40000 THEN 1 ELSE 0 END,
       CASE WHEN i > 40000 THEN now() + interval '1 hour' ELSE now() END,
       CASE WHEN i > 40000 THEN 'SlowDown' END
FROM generate_series(1, 50000) i
"""
# Rows a timer query may read of file_versions: its batch (2,000 look-ups, say) and more,
# but far fewer than the backlog.
BATCH_READ = 10_000


def rows_read(plan: dict[str, Any]) -> int:
    """Rows of file_versions an analysed plan read: returned or filtered out, every loop."""
    read = 0
    if plan.get("Relation Name") == "file_versions":
        kept = plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)
        read = kept * plan.get("Actual Loops", 1)
    return read + sum(rows_read(child) for child in plan.get("Plans", []))


def backlog_reads(dsn: str, sql: Sql, backlog: str = BACKLOG) -> dict[str, int]:
    """Rows of file_versions each timer query reads beside ``backlog``, run the daemon's way:
    the prepared statements planned before the backlog arrived (a daemon's connection plans
    once, and a million pending files need not bring an ANALYZE: autovacuum waits for a
    tenth of the table), the others (commands') planned with the backlog known."""
    sql("ALTER TABLE file_versions SET (autovacuum_enabled = false)")
    read: dict[str, int] = {}
    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        plan_now(cursor, dict(timer_queries()))
        sql(backlog)
        runs = list(timer_queries())
        for name, arguments in runs:
            if name in PREPARED:
                read[name] = max(
                    read.get(name, 0), _read(cursor, prepared(name).execute, arguments)
                )
        sql("ANALYZE file_versions")  # replans the prepared ones: they are done
        for name, arguments in runs:
            if name not in PREPARED:
                read[name] = max(read.get(name, 0), _read(cursor, queries()[name], arguments))
    return read


def _read(cursor: Any, statement: str, arguments: dict[str, Any]) -> int:
    cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, arguments)
    (plan,) = cursor.fetchone()[0]
    cursor.connection.rollback()  # what it changed, and a claim's locks, go
    return rows_read(plan["Plan"])


def test_no_timer_query_reads_the_backlog_of_a_job_it_may_not_serve(history: str, sql: Sql) -> None:
    """A claim for the other jobs, the retry sweep and every other timer query read their
    own work only: not the 50,000 pending versions of a job waiting for its window, which
    arrived after the daemon planned its statements."""
    read = backlog_reads(history, sql)
    too_many = {name: rows for name, rows in read.items() if rows > BATCH_READ}
    assert too_many == {}, f"these read the backlog: {too_many}"
    assert read["claim_batch"] > 0, "the claim found the other jobs' pending versions"


# What the other hosts of a large cluster hold: 20,000 claims of another worker.
OTHER_CLAIMS = """
INSERT INTO file_versions (job, scope, host, root, relpath, size, mtime_ns, inode, ctime_ns,
                           bucket, key, state, attempts, claimed_by, lease_expires_at)
SELECT 'scope-b', 'host-b', 'host-b', '/other', 'f' || i, i, i, i, i, 'lab-raw', 'other/' || i,
       'uploading', 1, 'host-b:1:w', now() + interval '1 hour'
FROM generate_series(1, 20000) i
"""


def test_a_workers_batch_reads_its_own_claims_not_every_hosts(history: str, sql: Sql) -> None:
    """Outcomes, lease renewals and releases go by primary key to the worker's own rows, not
    through the claims every other host holds (which arrived after the daemon planned its
    statements). The lease sweep alone reads every claim: it looks for expired ones."""
    read = backlog_reads(history, sql, OTHER_CLAIMS)
    fenced = {name: read[name] for name in ("complete_batch", "renew_leases", "release_claims")}
    assert max(fenced.values()) <= 10, fenced


def test_the_backlog_check_catches_a_claim_through_every_pending_version(
    history: str, sql: Sql
) -> None:
    """The test above can fail: the claim before migration 0010 read the whole backlog."""
    sql(BACKLOG)
    sql("ANALYZE file_versions")
    before_0010 = (
        "SELECT id FROM file_versions WHERE state = 'pending' AND next_attempt_at <= now() "
        "AND job = ANY(%(jobs)s) ORDER BY next_attempt_at, id LIMIT 16"
    )
    with psycopg2.connect(history) as conn, conn.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")  # the old index is gone: walk the new one
        assert _read(cursor, before_0010, {"jobs": JOBS}) > BATCH_READ


# --- incremental counts ------------------------------------------------------------------------


def recount(sql: Sql) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    jobs = set(
        sql("SELECT job, state, count(*), sum(size)::bigint FROM file_versions GROUP BY job, state")
    )
    sessions = set(
        sql(
            "SELECT session_id, state, count(*), sum(size)::bigint FROM file_versions "
            "WHERE session_id IS NOT NULL GROUP BY session_id, state"
        )
    )
    return jobs, sessions


def counted(sql: Sql) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    jobs = set(sql("SELECT job, state, files, bytes FROM ledger_job_counts WHERE files <> 0"))
    sessions = set(
        sql("SELECT session_id, state, files, bytes FROM ledger_session_counts WHERE files <> 0")
    )
    return jobs, sessions


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_counts_equal_a_recount_across_every_transition(
    ledger: Ledger, sql: Sql, seed: int
) -> None:
    rng = random.Random(seed)
    sessions = ledger.open_sessions("lab", "host-a", ["run-1", "run-2"])

    def enqueue() -> None:
        versions = [
            NewVersion(
                "/d",
                f"f{rng.randrange(30)}",
                rng.randrange(1, 100),
                1,
                rng.randrange(3),
                f"k{i}",
                rng.choice(list(sessions.values())),
            )
            for i in range(rng.randrange(1, 8))
        ]
        ledger.enqueue("lab", scope="host-a", host="host-a", bucket="b", versions=versions)

    def work() -> None:
        claims = ledger.claim(
            worker="host-a:1:w",
            host="host-a",
            jobs=["lab"],
            scopes=["host-a"],
            limit=rng.randrange(1, 6),
            lease_seconds=60,
        )
        outcomes = [
            Outcome(
                c,
                *rng.choice(
                    [
                        (State.UPLOADED, "uploaded", SHA),
                        (State.FAILED, "failed", None),
                        (State.PENDING, "failed", None),
                        (State.SUPERSEDED, "changed", None),
                    ]
                ),
            )
            for c in claims
        ]
        finished = [o for o in outcomes if rng.random() < 0.8]
        ledger.complete("host-a:1:w", finished, keeping=["lab"])
        ledger.release(
            "host-a:1:w", [o.claim.id for o in outcomes if o not in finished], "daemon stopping"
        )

    def retry() -> None:
        ledger.requeue_failed(job="lab")

    def prune() -> None:
        sql(
            "UPDATE file_versions SET uploaded_at = uploaded_at - interval '100 days', "
            "updated_at = updated_at - interval '100 days' WHERE id %% 3 = 0"
        )
        sql(
            "UPDATE sessions SET state = 'complete', completed_at = now() WHERE id = %s",
            sessions["run-1"],
        )
        Pruner(ledger, rest=lambda seconds: False).run(Retention(), {"lab": job("/d")})

    steps = [enqueue, work, work, retry, ledger.compact_counts, prune]
    for _ in range(60):
        rng.choice(steps)()
        assert counted(sql) == recount(sql)
    assert sql("SELECT count(*) FROM file_versions")[0][0] > 0


def test_recount_rebuilds_the_counts(ledger: Ledger, sql: Sql) -> None:
    ledger.enqueue(
        "lab", scope="h", host="h", bucket="b", versions=[NewVersion("/d", "a", 5, 1, 1, "k", None)]
    )
    ledger.compact_counts()
    sql("UPDATE job_state_counts SET files = 99")
    assert counted(sql) != recount(sql)
    sql("SELECT ledger_recount()")
    assert counted(sql) == recount(sql) == ({("lab", "pending", 1, 5)}, set())


# --- retention ---------------------------------------------------------------------------------


def job(root: str | Path, extra: str = "") -> Any:
    return parse_job_text(
        f"source: {{paths: [{root}], settle: 0s}}\ndestination: {{bucket: lab-raw}}\n{extra}",
        name="lab",
        defaults=S3Settings(),
    )


def age(sql: Sql, days: int = 200) -> None:
    sql(
        "UPDATE file_versions SET discovered_at = discovered_at - make_interval(days => %s), "
        "uploaded_at = uploaded_at - make_interval(days => %s), "
        "updated_at = updated_at - make_interval(days => %s)",
        days,
        days,
        days,
    )
    sql("UPDATE sessions SET completed_at = completed_at - make_interval(days => %s)", days)


def upload_everything(ledger: Ledger) -> None:
    while claims := ledger.claim(
        worker="host-a:1:w",
        host="host-a",
        jobs=["lab"],
        scopes=["host-a"],
        limit=100,
        lease_seconds=60,
    ):
        ledger.complete(
            "host-a:1:w",
            [Outcome(c, State.UPLOADED, "uploaded", SHA) for c in claims],
            keeping=["lab"],
        )


def discover(migrated_dsn: str, lab: Any, sql: Sql, expected: int) -> None:
    """Run discovery over the job's roots until it is idle; ``expected`` versions in all."""
    discovery = Discovery(Ledger(migrated_dsn), host="host-a")
    discovery.start()
    try:
        discovery.set_jobs({"lab": lab})
        wait_for(
            lambda: sql("SELECT count(*) FROM file_versions")[0][0] >= expected,
            timeout=30,
            message=f"{expected} versions",
        )
        wait_for(discovery.settled, timeout=30, message="discovery idle")
    finally:
        discovery.stop(time.monotonic() + 10)


def test_pruning_never_queues_an_unchanged_file_again(
    migrated_dsn: str, ledger: Ledger, sql: Sql, tmp_path: Path
) -> None:
    for name in ("same.dat", "changed.dat"):
        (tmp_path / name).write_bytes(b"first")
    lab = job(tmp_path)
    discover(migrated_dsn, lab, sql, expected=2)
    upload_everything(ledger)
    age(sql)
    report = Pruner(ledger, rest=lambda seconds: False).run(Retention(), {"lab": lab})
    assert (report.versions, report.attempts) == (2, 2)
    assert sql("SELECT count(*) FROM file_versions") == [(0,)]
    assert sql("SELECT relpath FROM path_signatures ORDER BY 1") == [
        ("changed.dat",),
        ("same.dat",),
    ]
    (tmp_path / "changed.dat").write_bytes(b"second, longer")
    discover(migrated_dsn, lab, sql, expected=1)
    assert sql("SELECT relpath, state FROM file_versions") == [("changed.dat", "pending")]
    same = Candidate(str(tmp_path), "same.dat", Signature.of((tmp_path / "same.dat").stat()))
    assert ledger.known_paths("lab", "host-a", [same]) == {(str(tmp_path), "same.dat")}


def test_pruning_keeps_live_work_unsent_registrations_and_open_sessions(
    ledger: Ledger, sql: Sql
) -> None:
    closed, still_open = ledger.open_sessions("lab", "host-a", ["closed", "open"]).values()
    ledger.enqueue(
        "lab",
        scope="host-a",
        host="host-a",
        bucket="b",
        versions=[
            NewVersion("/d", name, 1, 1, i, f"k/{name}", session)
            for i, (name, session) in enumerate(
                [
                    ("done", closed),
                    ("failed", closed),
                    ("pending", closed),
                    ("in-open", still_open),
                    ("undisposed", closed),
                    ("unregistered", closed),
                ]
            )
        ],
    )
    claims = {
        c.relpath: c
        for c in ledger.claim(
            worker="w", host="host-a", jobs=["lab"], scopes=["host-a"], limit=10, lease_seconds=60
        )
    }
    ledger.release("w", [claims.pop("pending").id], "daemon stopping")
    failed_upload = claims.pop("failed")
    ledger.complete(
        "w",
        [Outcome(c, State.UPLOADED, "uploaded", SHA) for c in claims.values()]
        + [Outcome(failed_upload, State.FAILED, "failed", error="AccessDenied")],
    )
    sql("UPDATE file_versions SET disposed_at = now() WHERE relpath <> 'undisposed'")
    # The closed session's registration was sent; "unregistered" waits in a failed one.
    sent = ledger.create_session_trigger("lab", closed)
    sql("UPDATE triggers SET state = 'sent', sent_at = now() WHERE id = %s", sent)
    sql("INSERT INTO triggers (job, state) VALUES ('lab', 'failed')")
    sql(
        "UPDATE file_versions SET trigger_id = (SELECT max(id) FROM triggers) "
        "WHERE relpath = 'unregistered'"
    )
    sql("UPDATE sessions SET state = 'complete', completed_at = now() WHERE id = %s", closed)
    age(sql)
    lab = job("/d", "trigger: {url: 'http://127.0.0.1:1/r'}\nafter_upload: delete\n")
    Pruner(ledger, rest=lambda seconds: False).run(Retention(), {"lab": lab})
    left: dict[str, str] = dict(sql("SELECT relpath, state FROM file_versions"))
    assert left == {
        "failed": "failed",
        "pending": "pending",
        "in-open": "uploaded",
        "undisposed": "uploaded",
        "unregistered": "uploaded",
    }
    assert sql("SELECT id FROM sessions ORDER BY id") == [(closed,), (still_open,)]
    assert sql("SELECT state FROM triggers ORDER BY id") == [("sent",), ("failed",)], (
        "the sent one still carries files of the closed session"
    )


def test_a_dry_run_changes_nothing_and_a_job_not_configured_is_left_alone(
    ledger: Ledger, sql: Sql
) -> None:
    ledger.enqueue(
        "other",
        scope="host-a",
        host="host-a",
        bucket="b",
        versions=[NewVersion("/d", "x", 1, 1, 1, "k/x", None)],
    )
    ledger.enqueue(
        "lab",
        scope="host-a",
        host="host-a",
        bucket="b",
        versions=[NewVersion("/d", "y", 1, 1, 1, "k/y", None)],
    )
    while claims := ledger.claim(
        worker="w",
        host="host-a",
        jobs=["lab", "other"],
        scopes=["host-a"],
        limit=10,
        lease_seconds=60,
    ):
        ledger.complete(
            "w",
            [Outcome(c, State.UPLOADED, "uploaded", SHA) for c in claims],
            keeping=["lab", "other"],
        )
    age(sql)
    pruner = Pruner(ledger, rest=lambda seconds: False)
    dry = pruner.run(Retention(), {"lab": job("/d")}, dry_run=True)
    assert (dry.versions, dry.attempts) == (1, 1)
    assert sql("SELECT count(*) FROM file_versions") == [(2,)]
    assert sql("SELECT count(*) FROM upload_attempts") == [(2,)]
    pruner.run(Retention(), {"lab": job("/d")})
    assert sql("SELECT job FROM file_versions") == [("other",)]


def test_explain_tells_a_pruned_path_from_a_changed_one(
    migrated_dsn: str, ledger: Ledger, sql: Sql, tmp_path: Path
) -> None:
    (tmp_path / "a.dat").write_bytes(b"first")
    lab = job(tmp_path)
    discover(migrated_dsn, lab, sql, expected=1)
    upload_everything(ledger)
    age(sql)
    Pruner(ledger, rest=lambda seconds: False).run(Retention(), {"lab": lab})
    lines = list(explain(str(tmp_path / "a.dat"), {"lab": lab}, ledger, host="host-a"))
    assert lines[-1] == (
        "why: uploaded (its history was pruned); unchanged, so it is not uploaded again"
    )
    assert any(line.startswith("versions: pruned by retention") for line in lines)
    (tmp_path / "a.dat").write_bytes(b"second, longer")
    lines = list(explain(str(tmp_path / "a.dat"), {"lab": lab}, ledger, host="host-a"))
    assert lines[-1].startswith("why: changed since the pruned version")


@pytest.mark.parametrize(("step", "expected"), [(0.25, 0.5), (5.0, 2.0)])
def test_the_prune_rests_twice_as_long_as_each_batch_took_at_most_2s(
    ledger: Ledger, step: float, expected: float
) -> None:
    ticks = iter(range(1000))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rests: list[float] = []

    def rest(seconds: float) -> bool:
        rests.append(seconds)
        return False

    pruner = Pruner(ledger, now=lambda: start + timedelta(seconds=step * next(ticks)), rest=rest)
    pruner.run(Retention(), {"lab": job("/d")})
    # One batch each: attempts, versions, registrations, sessions (an empty ledger).
    assert rests == [expected] * 4
