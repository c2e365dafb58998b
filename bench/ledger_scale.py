"""How uploaderd behaves on a big ledger: start-up, memory, idle load, timer queries, scans.

uploaderd must cost what the work in flight costs, not what the history behind it costs
(issue 8): the real daemon runs on histories of millions of versions, generated with SQL
after ``uploaderd migrate``. bench/README.md lists what is measured.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from argparse import ArgumentParser, ArgumentTypeError, Namespace
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2.extensions import connection as Connection

from bench import common
from bench.common import BenchError, Spent, postgres_cpu, process_cpu, scalar
from devstack import S3_SERVERS, DaemonProcess, DevstackError, PostgresCluster, S3Server, wait_for
from devstack.process import terminate
from uploaderd.ledger.store import Ledger
from uploaderd.policy.settle import Candidate, Signature

BUCKET = "lab-raw"
JOBS = ("scope-a", "scope-b", "scope-c")  # session trigger; delete + marker; plain keep
TREE_JOB = "tree"
STREAM_JOB = "stream"
MARKER = "RunComplete.txt"
HISTORY_TABLES = ("file_versions", "upload_attempts", "trigger_calls", "sessions", "triggers")
LOCK_WAITS = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'uploaderd%%' "
    "AND application_name <> 'uploaderd prune' AND wait_event_type = 'Lock'"
)
_COUNT = re.compile(r"^(\d+(?:\.\d+)?)([kKmM]?)$")


def parse_count(text: str) -> int:
    """``200k``, ``1M``, ``5M``, ``20M`` or a plain number of versions."""
    match = _COUNT.match(text)
    if not match:
        raise ArgumentTypeError(f"expected e.g. 200k, 1M, 5M: {text!r}")
    scale = {"": 1, "k": 1_000, "K": 1_000, "m": 1_000_000, "M": 1_000_000}[match.group(2)]
    return int(float(match.group(1)) * scale)


def size_label(count: int) -> str:
    if count % 1_000_000 == 0:
        return f"{count // 1_000_000}M"
    if count % 1_000 == 0:
        return f"{count // 1_000}k"
    return str(count)


@dataclass(frozen=True)
class Shape:
    """What the synthetic history looks like (see bench/README.md for the reasoning)."""

    versions: int
    per_session: int = 1500  # one run directory of an instrument
    per_day: int = 100_000  # files a day over all jobs: 5 M versions ~ 50 days
    pending: int = 300  # waiting for a retry (not due during the run)
    host: str = field(default_factory=socket.gethostname)

    @property
    def sessions(self) -> int:
        return math.ceil(self.versions / self.per_session)


# Version i (0-based) is file j = i % per_session of session k = i / per_session + 1, whose
# job is JOBS[(k - 1) % 3]. Ids are i + 1, so id order is time order, as with bigserial.
# Open sessions: every 40th one (it holds failed files, which keep a session open) and the
# last three (in progress). Trigger and trigger_call ids equal their session's id.
_PARAMS_CTE = """
WITH p AS (
    SELECT %(n)s::bigint AS n, %(ps)s::bigint AS ps, %(pending)s::bigint AS pending,
           %(sessions)s::bigint AS s, %(step)s::float8 AS step, %(host)s::text AS host,
           %(jobs)s::text[] AS jobs, %(roots)s::text[] AS roots,
           date_trunc('second', now()) - interval '1 hour' AS t_end
)
"""

GENERATE_SESSIONS = (
    _PARAMS_CTE
    + """
INSERT INTO sessions (id, job, host, origin, group_key, state, opened_at, last_activity_at,
                      completed_at, closed_reason)
SELECT k, p.jobs[(k - 1) %% 3 + 1], p.host, 'daemon',
       'run-' || lpad(((k - 1) / 3)::text, 6, '0'),
       CASE WHEN open THEN 'open' ELSE 'complete' END,
       p.t_end - (p.n - first_i) * p.step * interval '1 second',
       p.t_end - (p.n - last_i) * p.step * interval '1 second',
       CASE WHEN open THEN NULL
            ELSE p.t_end - (p.n - last_i) * p.step * interval '1 second'
                 + CASE WHEN (k - 1) %% 3 = 1 THEN interval '5 seconds'
                        ELSE interval '10 minutes' END END,
       CASE WHEN open THEN NULL WHEN (k - 1) %% 3 = 1 THEN 'marker' ELSE 'idle' END
FROM p, generate_series(1, p.s) AS k,
     LATERAL (SELECT (k - 1) * p.ps AS first_i, least(p.n, k * p.ps) - 1 AS last_i,
                     k %% 40 = 17 OR k > p.s - 3 AS open) AS x
"""
)

GENERATE_VERSIONS = (
    _PARAMS_CTE
    + """
INSERT INTO file_versions (id, job, scope, host, root, relpath, size, mtime_ns, inode, bucket,
                           key, state, attempts, next_attempt_at, last_error, sha256, etag,
                           session_id, discovered_at, first_attempt_at, uploaded_at, updated_at,
                           trigger_id, registered_at, disposed_at, disposition)
SELECT i + 1, job, p.host, p.host, p.roots[ji + 1], relpath,
       200000 + (i * 7919) %% 3000000,
       (extract(epoch FROM t) * 1e9)::bigint - 10000000000,
       10000000 + i, %(bucket)s, job || '/' || relpath, state, 1,
       CASE WHEN state = 'pending' THEN now() + interval '30 days' ELSE t END,
       CASE state WHEN 'failed' THEN 'AccessDenied: the bucket policy refuses PutObject'
                  WHEN 'superseded' THEN 'replaced by a newer version'
                  WHEN 'pending' THEN 'connection reset by peer; retrying' END,
       CASE WHEN state = 'uploaded' THEN md5(i::text) || md5((i + 1)::text) END,
       CASE WHEN state = 'uploaded' THEN md5(i::text) END,
       k, t, t + interval '2 seconds',
       CASE WHEN state = 'uploaded' THEN t + interval '3 seconds' END,
       t + interval '3 seconds',
       CASE WHEN ji = 0 AND state = 'uploaded' AND NOT open THEN k END,
       CASE WHEN ji = 0 AND state = 'uploaded' AND NOT open
            THEN p.t_end - (p.n - (least(p.n, k * p.ps) - 1)) * p.step * interval '1 second'
                 + interval '11 minutes' END,
       CASE WHEN ji = 1 AND state = 'uploaded' THEN t + interval '13 seconds' END,
       CASE WHEN ji = 1 AND state = 'uploaded' THEN 'deleted' END
FROM p, generate_series(0, p.n - 1) AS i,
     LATERAL (SELECT i / p.ps + 1 AS k, i %% p.ps AS j,
                     p.t_end - (p.n - i) * p.step * interval '1 second' AS t) AS a,
     LATERAL (SELECT (k - 1) %% 3 AS ji, p.jobs[(k - 1) %% 3 + 1] AS job,
                     k %% 40 = 17 OR k > p.s - 3 AS open) AS b,
     LATERAL (SELECT
        'run-' || lpad(((k - 1) / 3)::text, 6, '0') || '/' ||
        CASE WHEN ji = 1 AND j = p.ps - 1 THEN %(marker)s
             -- every 100th version rewrites the previous file: that one was superseded
             ELSE 'img-' || lpad((CASE WHEN i %% 100 = 50 THEN j - 1 ELSE j END)::text, 6, '0')
                  || '.tif' END AS relpath,
        CASE WHEN i >= p.n - p.pending THEN 'pending'
             WHEN i %% 100 = 49 AND j < p.ps - 1 THEN 'superseded'
             WHEN k %% 40 = 17 AND j %% 5 = 3 THEN 'failed'
             ELSE 'uploaded' END AS state) AS c
"""
)

GENERATE_ATTEMPTS = """
INSERT INTO upload_attempts (id, file_version_id, attempt, host, worker, started_at,
                             finished_at, outcome, error, bytes)
SELECT id, id, 1, host, host || ':4242:w' || (id %% 8), first_attempt_at,
       first_attempt_at + interval '1 second',
       CASE state WHEN 'uploaded' THEN 'uploaded' WHEN 'superseded' THEN 'changed'
                  ELSE 'failed' END,
       CASE state WHEN 'uploaded' THEN NULL
                  WHEN 'superseded' THEN 'the file changed during its upload'
                  ELSE last_error END,
       CASE WHEN state = 'uploaded' THEN size END
FROM file_versions
"""

GENERATE_TRIGGERS = """
INSERT INTO triggers (id, job, session_id, state, attempts, next_attempt_at, last_status,
                      created_at, sent_at, updated_at)
SELECT id, job, id, 'sent', 1, completed_at, 200, completed_at,
       completed_at + interval '1 minute', completed_at + interval '1 minute'
FROM sessions
WHERE job = %(job)s AND state = 'complete'
"""

GENERATE_TRIGGER_CALLS = """
INSERT INTO trigger_calls (id, trigger_id, attempt, host, started_at, finished_at, status,
                           response_excerpt)
SELECT id, id, 1, %(host)s, sent_at - interval '1 second', sent_at, 200, '{"registered": true}'
FROM triggers
"""

SYNC_SEQUENCES = """
SELECT setval(pg_get_serial_sequence(%(table)s, 'id'),
              greatest(1, (SELECT coalesce(max(id), 0) FROM {table})))
"""


def generate_ledger(dsn: str, shape: Shape, roots: Sequence[str]) -> float:
    """Fill a freshly migrated database with ``shape``; seconds spent. No foreign-key checks
    nor triggers (``replica``): the data is consistent, ``ledger_recount()`` sets the counters."""
    started = time.perf_counter()
    params: dict[str, Any] = {"n": shape.versions, "ps": shape.per_session}
    params["pending"] = shape.pending
    params |= {"sessions": shape.sessions, "step": 86400.0 / shape.per_day, "host": shape.host}
    params |= {"jobs": list(JOBS), "roots": list(roots), "bucket": BUCKET, "marker": MARKER}
    params["job"] = JOBS[0]  # the job with a session trigger
    with contextlib.closing(psycopg2.connect(dsn, application_name="bench generate")) as conn:
        with conn, conn.cursor() as cursor:
            cursor.execute("SET maintenance_work_mem = '1GB'")
            cursor.execute("SET work_mem = '256MB'")
            cursor.execute("SET session_replication_role = replica")
            for table, sql in (
                ("sessions", GENERATE_SESSIONS),
                ("triggers", GENERATE_TRIGGERS),
                ("trigger_calls", GENERATE_TRIGGER_CALLS),
                ("file_versions", GENERATE_VERSIONS),
                ("upload_attempts", GENERATE_ATTEMPTS),
            ):
                step = time.perf_counter()
                cursor.execute(sql, params)
                print(f"    {table}: {cursor.rowcount:,} rows in {time.perf_counter() - step:.1f}s")
            for table in HISTORY_TABLES:
                cursor.execute(SYNC_SEQUENCES.format(table=table), {"table": table})
            cursor.execute("SET session_replication_role = DEFAULT")
            cursor.execute("SELECT ledger_recount()")
        conn.autocommit = True  # VACUUM now, so autovacuum does not run in the idle window
        with conn.cursor() as cursor:
            cursor.execute("VACUUM (ANALYZE)")
    return time.perf_counter() - started


def rss_mb(pid: int | None, field_name: str = "VmRSS") -> float:
    """VmRSS (or VmHWM, the peak) of a live process in MiB; 0 when it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _RecordingCursor(psycopg2.extensions.cursor):  # type: ignore[misc]
    """Remembers each statement it runs, parameters bound, for EXPLAIN."""

    sink: list[bytes] | None = None

    def execute(self, query: Any, vars: Any = None) -> None:
        if self.sink is not None:
            self.sink.append(self.mogrify(query, vars))
        super().execute(query, vars)


class RolledBackLedger(Ledger):
    """The daemon's own Ledger, every transaction rolled back (each repetition finds the same
    work); statements are recorded while ``recording`` is set."""

    recording: list[bytes] | None = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg2.extensions.cursor]:
        with self.held() as session:
            cursor = session.cursor(cursor_factory=_RecordingCursor)
            cursor.sink = self.recording
            try:
                yield cursor
            finally:
                cursor.close()
                session.rollback()


@dataclass(frozen=True)
class ProbeContext:
    host: str
    root: str  # scope-c's
    relpath: str  # of a version of scope-c
    open_session: int
    candidates: list[Candidate]  # 250 known paths and 250 unknown, of scope-c
    cutoff: datetime


def probes(lg: Ledger, c: ProbeContext) -> dict[tuple[str, str], Callable[[], object]]:
    """(label, when the daemon runs it or which command does) -> the call, as it is made."""
    host, scopes = c.host, [c.host]
    sessions = functools.partial(lg.complete_sessions, idle_seconds=600.0, marker=None)
    progress = functools.partial(lg.selection_progress, jobs=JOBS, scopes=scopes)
    path = ("scope-c", host, c.root, c.relpath)
    prune = functools.partial(lg.prune_versions, after=0, cutoff=c.cutoff, jobs=JOBS)
    batch = functools.partial(lg.batch_uploaded_files, batch_size=500)
    claim = functools.partial(lg.claim, host=host, jobs=JOBS, scopes=scopes)
    uploaded_timer = "trigger interval (file_uploaded)"
    return {
        ("job_counts", "15 s gauges; status"): lg.job_counts,
        ("job_counts(scope-c)", "status --job"): lambda: lg.job_counts("scope-c"),
        ("recent_errors", "status"): lg.recent_errors,
        ("open_session_summaries", "status"): lg.open_session_summaries,
        ("paused_destinations", "status"): lg.paused_destinations,
        ("abandoned_uploads", "10 s sweep"): lg.abandoned_uploads,
        ("notify_due_retries", "10 s sweep"): lg.notify_due_retries,
        ("workers_on_host", "30 s lease reaper"): lambda: lg.workers_on_host(host),
        ("reclaim_leases", "30 s lease reaper"): lambda: lg.reclaim_leases([]),
        ("complete_sessions(scope-a)", "5 s per job"): lambda: sessions("scope-a", register=True),
        ("complete_sessions(scope-b, marker)", "5 s per job"): lambda: lg.complete_sessions(
            "scope-b", idle_seconds=None, marker=MARKER, register=False
        ),
        ("complete_sessions(scope-c)", "5 s per job"): lambda: sessions("scope-c", register=False),
        ("batch_uploaded_files(scope-a)", uploaded_timer): lambda: batch("scope-a"),
        ("batch_uploaded_files(scope-c)", uploaded_timer): lambda: batch("scope-c"),
        ("due_triggers(scope-a)", "trigger interval"): lambda: lg.due_triggers("scope-a", 100),
        ("undisposed_files(scope-b)", "10 s per disposing job"): lambda: lg.undisposed_files(
            "scope-b", scopes, registered_only=False
        ),
        ("claim", "per batch"): lambda: claim(
            worker=f"{host}:1:bench", limit=16, lease_seconds=300
        ),
        ("selection_progress(job)", "retry --auto-retry poll"): lambda: progress(job="scope-c"),
        ("selection_progress(session)", "upload progress poll"): lambda: progress(
            session_id=c.open_session
        ),
        ("path_versions", "explain"): lambda: lg.path_versions(*path),
        ("path_signature", "explain"): lambda: lg.path_signature(*path),
        ("list_files(failed)", "files --state failed"): lambda: lg.list_files(
            job="scope-c", state="failed"
        ),
        ("known_paths(500 candidates)", "per discovery batch"): lambda: lg.known_paths(
            "scope-c", host, c.candidates
        ),
        ("compact_counts", "counters' timer"): lg.compact_counts,
        ("prune_versions(dry run, 1000)", "prune batch"): lambda: prune(
            keeping=["scope-a", "scope-c"], registering=["scope-a"], limit=1000, dry_run=True
        ),
    }


@dataclass(frozen=True)
class QueryResult:
    label: str
    when: str
    median_ms: float
    calls: int
    seq_scans: list[str]


def probe_context(conn: Connection, host: str, root: str) -> ProbeContext:
    sql = "SELECT relpath FROM file_versions WHERE job = 'scope-c' AND state = 'uploaded' "
    relpath = scalar(conn, sql + "ORDER BY id DESC LIMIT 1")
    session = scalar(conn, "SELECT max(id) FROM sessions WHERE state = 'open'") or 0
    sql = "SELECT root, relpath, size, mtime_ns, inode FROM file_versions "
    sql += "WHERE job = 'scope-c' AND id %% 997 = 0 LIMIT 250"
    known = [Candidate(r, p, Signature(s, m, i)) for r, p, s, m, i in common.rows(conn, sql)]
    new = [
        Candidate(root, f"new/img-{i:06d}.tif", Signature(1, 1, i)) for i in range(500 - len(known))
    ]
    cutoff = datetime.now().astimezone() - timedelta(days=7)
    return ProbeContext(host, root, relpath or "x", session, known + new, cutoff)


def seq_scans(plan: Any) -> list[str]:
    """History tables read by a Seq Scan anywhere in an EXPLAIN (FORMAT JSON) plan."""
    found: list[str] = []
    if isinstance(plan, dict):
        if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in HISTORY_TABLES:
            found.append(str(plan["Relation Name"]))
        plan = list(plan.values())
    for item in plan if isinstance(plan, list | tuple) else ():
        found += seq_scans(item)
    return found


def explain(conn: Connection, statements: Sequence[bytes]) -> list[str]:
    """The history tables a Seq Scan reads in the plans of ``statements``; EXECUTEs of the
    daemon's prepared statements with its one plan (``force_generic_plan``)."""
    tables: list[str] = []
    with conn.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        for text in (statement.decode() for statement in statements):
            try:
                if text.startswith("PREPARE "):
                    with contextlib.suppress(psycopg2.errors.DuplicatePreparedStatement):
                        cursor.execute(text)  # the session's, whatever the rollback below
                elif not text.lstrip().upper().startswith(("LISTEN", "SET", "SHOW")):
                    cursor.execute("EXPLAIN (FORMAT JSON) " + text)
                    tables += seq_scans(cursor.fetchone())
            except psycopg2.Error as exc:
                tables.append(f"?({str(exc).splitlines()[0][:40]})")
            finally:
                conn.rollback()
    return sorted(set(tables))


def time_queries(dsn: str, context: ProbeContext, repeat: int, budget: float) -> list[QueryResult]:
    """Each probe: one warm-up call (recorded and EXPLAINed), then up to ``repeat`` timed
    calls within ``budget`` seconds; the median in ms."""
    results = []
    with (
        contextlib.closing(RolledBackLedger(dsn, application_name="bench probe")) as ledger,
        contextlib.closing(psycopg2.connect(dsn, application_name="bench explain")) as planner,
    ):
        with ledger.held() as session, session, session.cursor() as cursor:
            cursor.execute("SET statement_timeout = '120s'")
        for (label, when), call in probes(ledger, context).items():
            statements: list[bytes] = []
            ledger.recording = statements
            times: list[float] = []
            deadline = time.perf_counter() + budget
            while not times or (len(times) <= repeat and time.perf_counter() < deadline):
                started = time.perf_counter()
                call()
                times.append(time.perf_counter() - started)
                ledger.recording = None
            timed = times[1:] or times  # the first call warms the cache; alone, it is all
            ms = statistics.median(timed) * 1000
            scans = explain(planner, statements)
            results.append(QueryResult(label, when, ms, len(timed), scans))
            print(f"    {label:<38} {ms:10.1f} {len(timed):>5}  {','.join(scans) or '-'}")
    return results


# The report's rows: the figure's key, its label, format and the target.
ROWS = (
    ("generate_s", "generate ledger (s)", ".0f", ""),
    ("ready_s", "READY after start (s)", ".2f", "<= 5 s"),
    ("rss_ready_mb", "RSS after READY (MB)", ".0f", "<= 200 MB"),
    ("rss_idle_mb", "RSS after idle (MB)", ".0f", "<= 200 MB"),
    ("rss_peak_mb", "RSS peak (MB)", ".0f", "<= 200 MB"),
    ("idle_daemon_cpu", "idle CPU daemon (%)", ".1f", ""),
    ("idle_pg_cpu", "idle CPU PostgreSQL (%)", ".1f", ""),
    ("idle_cpu", "idle CPU total (%)", ".1f", "<= 2 % total"),
    ("status_ms", "uploaderd status (ms)", ".0f", "<= 300 ms"),
    ("tree_files", "tree files", ",", ""),
    ("scan_known_rate", "scan, all known (files/s)", ",.0f", ">= 20,000 files/s"),
    ("scan_new_rate", "scan, all new (files/s)", ",.0f", ">= 20,000 files/s"),
    ("tree_rss_mb", "RSS, tree known (MB)", ".0f", "<= 300 MB (1 M files)"),
    ("tree_rss_peak_mb", "RSS peak, tree known (MB)", ".0f", ""),
    ("prune_s", "prune seconds", ".1f", ""),
    ("prune_removed", "prune versions removed", ",", ""),
    ("stream_alone_rate", "stream alone (files/s)", ".0f", ""),
    ("stream_during_rate", "stream during prune (files/s)", ".0f", "within 20 % of alone"),
    ("claim_lock_waits", "claims waiting on a lock", "", "0"),
)
SESSION = {"group_by": "top_dir", "complete_when": {"idle": "10m"}}
REGISTER = {"url": "http://127.0.0.1:9/register", "on": "session_complete"}
JOB_SETTINGS: dict[str, dict[str, Any]] = {  # beside source and destination
    "scope-a": {"session": SESSION, "trigger": REGISTER | {"schedule": {"interval": "1m"}}},
    "scope-b": {
        "session": SESSION | {"complete_when": {"marker": MARKER}},
        "after_upload": "delete",
    },
    "scope-c": {"session": SESSION},
    TREE_JOB: {"session": SESSION},
    STREAM_JOB: {},
}


@dataclass
class SizeResult:
    versions: int
    figures: dict[str, float] = field(default_factory=dict)  # by the keys of ROWS
    queries: list[QueryResult] = field(default_factory=list)


class LedgerRun:
    """Everything measured on one ledger size, in one database of the cluster."""

    def __init__(
        self, pg: PostgresCluster, s3: S3Server | None, work: Path, shape: Shape, args: Namespace
    ) -> None:
        self.pg = pg
        self.shape = shape
        self.args = args
        self.s3 = s3
        self.db = f"ledger_{size_label(shape.versions).lower()}"
        self.dsn = pg.dsn(self.db)
        self.work = work / self.db
        self.tree = work / "tree"
        self.sentinel = self.work / "sentinel"
        self.result = SizeResult(shape.versions)
        self.figures = self.result.figures

    def root(self, job: str) -> Path:
        return self.work / "watched" / job

    def daemon(self, *jobs: str) -> DaemonProcess:
        """The daemon on this ledger: the three synthetic jobs and ``jobs`` (tree, stream). The
        tree job's sentinel root is scanned after the tree; its upload window is never open."""
        endpoint = self.s3.endpoint_url if self.s3 is not None else "http://127.0.0.1:9"
        level, workers = self.args.log_level, self.args.workers
        daemon = common.bench_daemon(self.work, self.dsn, endpoint, self.s3, level, workers=workers)
        shutil.rmtree(daemon.jobs_dir)
        daemon.jobs_dir.mkdir()
        for name in (*JOBS, *jobs):
            paths = [self.tree, self.sentinel] if name == TREE_JOB else [self.root(name)]
            for path in paths:
                path.mkdir(parents=True, exist_ok=True)
            source = {"paths": [str(p) for p in paths], "settle": "1s", "rescan": "1d"}
            destination: dict[str, Any] = {"bucket": BUCKET, "key": f"{name}/${{relpath}}"}
            if name == TREE_JOB:
                destination["windows"] = [(datetime.now() + timedelta(days=3)).strftime("%a")]
            job = {"source": source, "destination": destination, **JOB_SETTINGS[name]}
            daemon.write_job(name, job)
        return daemon

    def prepare(self) -> None:
        """A fresh database, migrated, then the synthetic ledger."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.pg.drop_database(self.db)
        self.pg.create_database(self.db)
        common.command(self.daemon(), "migrate", timeout=self.args.timeout)
        n, per_day = self.shape.versions, self.shape.per_day
        print(f"  generating {n:,} versions ({n / per_day:.0f} days of {per_day:,} files)")
        roots = [str(self.root(job)) for job in JOBS]
        self.figures["generate_s"] = generate_ledger(self.dsn, self.shape, roots)

    def measure_daemon(self) -> None:
        """READY, RSS and the idle window, in one daemon run."""
        daemon = self.daemon()
        with common.running(daemon) as ready:
            pid = common.pid_of(daemon)
            self.figures |= {"ready_s": ready, "rss_ready_mb": rss_mb(pid)}
            print(f"  READY after {ready:.2f}s, RSS {rss_mb(pid):.0f} MB")
            if not self.args.skip_idle:
                time.sleep(5.0)  # the start-up's first gauge and sweep runs are not "idle"
                print(f"  idle window of {self.args.idle:.0f}s ...")
                with Spent(lambda: process_cpu(pid), lambda: postgres_cpu(self.pg)) as idle:
                    time.sleep(self.args.idle)
                    if not daemon.alive():
                        log = daemon.log()[-3000:]
                        raise BenchError(f"uploaderd died in the idle window:\n{log}")
                ud, pg = idle.percent()
                self.figures |= {"idle_daemon_cpu": ud, "idle_pg_cpu": pg, "idle_cpu": ud + pg}
                self.figures["rss_idle_mb"] = rss = rss_mb(pid)
                print(f"  idle CPU: daemon {ud:.1f} %, PostgreSQL {pg:.1f} %; RSS {rss:.0f} MB")
            self.figures["rss_peak_mb"] = rss_mb(pid, "VmHWM")

    def measure_queries(self) -> None:
        print("  timing the daemon's queries (median ms, calls, seq scans of history)")
        with common.connect(self.dsn) as conn:
            context = probe_context(conn, self.shape.host, str(self.root("scope-c")))
        args = self.args
        self.result.queries = time_queries(self.dsn, context, args.repeat, args.query_budget)

    def measure_status(self) -> None:
        daemon, timeout = self.daemon(), self.args.timeout
        times = [common.command(daemon, "status", timeout=timeout, ok=(0, 1)) for _ in range(3)]
        self.figures["status_ms"] = statistics.median(times) * 1000
        print(f"  uploaderd status: {self.figures['status_ms']:.0f} ms (median of 3)")

    def measure_scans(self, tree_files: list[tuple[str, os.stat_result]]) -> None:
        """The daemon's start with the tree all known, then all new."""
        count = len(tree_files)
        self.figures["tree_files"] = count
        with common.connect(self.dsn) as conn:
            last = "SELECT coalesce(max(id), 0) FROM "
            bases = (scalar(conn, last + "file_versions"), scalar(conn, last + "sessions"))
            try:
                self._insert_known(conn, tree_files)
                self.figures["scan_known_rate"] = count / self._scan(conn, known=True)
            finally:
                self._forget_tree(conn, *bases)
            try:
                self.figures["scan_new_rate"] = count / self._scan(conn, known=False)
                sql = "SELECT count(*) FROM file_versions WHERE id > %s AND job = %s"
                queued = scalar(conn, sql, bases[0], TREE_JOB) - 1  # and the sentinel
                if queued != count:
                    raise BenchError(f"the scan of the new tree queued {queued:,} of {count:,}")
            finally:
                self._forget_tree(conn, *bases)

    def _insert_known(self, conn: Connection, tree_files: list[tuple[str, os.stat_result]]) -> None:
        """The tree's files as uploaded versions of the tree job, a session per top directory."""
        started = time.perf_counter()
        buffer = io.StringIO()
        for relpath, info in tree_files:
            sig = Signature.of(info)
            buffer.write(f"{relpath}\t{sig.size}\t{sig.mtime_ns}\t{sig.inode}\t{sig.ctime_ns}\n")
        buffer.seek(0)
        params = {"job": TREE_JOB, "host": self.shape.host, "bucket": BUCKET}
        params["root"] = str(self.tree)
        with conn.cursor() as cursor:
            cursor.execute(
                "CREATE TEMP TABLE tree_files (relpath text, size bigint, mtime_ns bigint, "
                "inode bigint, ctime_ns bigint)"
            )
            cursor.copy_expert("COPY tree_files FROM STDIN", buffer)
            cursor.execute(
                "INSERT INTO sessions (job, host, origin, group_key, state, opened_at, "
                "last_activity_at, completed_at, closed_reason) "
                "SELECT DISTINCT %(job)s, %(host)s, 'daemon', split_part(relpath, '/', 1), "
                "'complete', now() - interval '1 day', now() - interval '1 day', "
                "now() - interval '1 day', 'idle' FROM tree_files",
                params,
            )
            cursor.execute(
                "INSERT INTO file_versions (job, scope, host, root, relpath, size, mtime_ns, "
                "inode, ctime_ns, bucket, key, state, attempts, sha256, etag, session_id, "
                "discovered_at, first_attempt_at, uploaded_at, updated_at) "
                "SELECT %(job)s, %(host)s, %(host)s, %(root)s, t.relpath, t.size, t.mtime_ns, "
                "t.inode, t.ctime_ns, %(bucket)s, %(job)s || '/' || t.relpath, 'uploaded', 1, "
                "md5(t.relpath) || md5(t.inode::text), md5(t.relpath), s.id, d, d, d, d "
                "FROM tree_files t CROSS JOIN (SELECT now() - interval '1 day' AS d) AS day "
                "JOIN sessions s ON s.job = %(job)s "
                "AND s.group_key = split_part(t.relpath, '/', 1)",
                params,
            )
            cursor.execute(
                "INSERT INTO upload_attempts (file_version_id, attempt, host, worker, "
                "started_at, finished_at, outcome, bytes) SELECT id, 1, host, host || ':1:w0', "
                "first_attempt_at, uploaded_at, 'uploaded', size FROM file_versions "
                "WHERE job = %(job)s",
                params,
            )
            cursor.execute("DROP TABLE tree_files")
            cursor.execute("ANALYZE file_versions")
        seconds = time.perf_counter() - started
        print(f"  tree: {len(tree_files):,} known versions inserted in {seconds:.1f}s")

    def _forget_tree(self, conn: Connection, version: int, session: int) -> None:
        """Back to the generated ledger: the tree job's rows go (by id, above the bases)."""
        with conn.cursor() as cursor:
            cursor.execute("DELETE FROM upload_attempts WHERE file_version_id > %s", (version,))
            cursor.execute("DELETE FROM file_versions WHERE id > %s", (version,))
            cursor.execute("DELETE FROM sessions WHERE id > %s", (session,))
            for table in ("file_versions", "sessions", "upload_attempts"):
                cursor.execute(SYNC_SEQUENCES.format(table=table), {"table": table})
                cursor.execute(f"VACUUM (ANALYZE) {table}")
            cursor.execute("SELECT ledger_recount()")

    def _scan(self, conn: Connection, *, known: bool) -> float:
        """Seconds from the daemon's start until the sentinel, listed after the tree, is
        queued (polled alone, by the unique index: counting the tree would cost the scan)."""
        shutil.rmtree(self.sentinel, ignore_errors=True)
        self.sentinel.mkdir(parents=True)
        name = f"sentinel-{time.time_ns()}.bin"
        (self.sentinel / name).write_bytes(b"sentinel")
        old = time.time() - 3600  # complete at second sight
        os.utime(self.sentinel / name, (old, old))
        sql = "SELECT count(*) FROM file_versions WHERE job = %s AND scope = %s AND root = %s "
        sql += "AND relpath = %s"
        where = (TREE_JOB, self.shape.host, str(self.sentinel), name)
        queued = lambda: scalar(conn, sql, *where)  # noqa: E731
        what = "known" if known else "new"
        daemon = self.daemon(TREE_JOB)
        with common.running(daemon):
            timeout = max(self.args.timeout, self.args.tree / 500)  # never below 500 files/s
            common.wait_alive(daemon, queued, timeout, f"the scan of the {what} tree")
            seconds = time.perf_counter() - daemon.started
            if known:
                time.sleep(5.0)
                pid = common.pid_of(daemon)
                self.figures["tree_rss_mb"] = rss_mb(pid)
                self.figures["tree_rss_peak_mb"] = rss_mb(pid, "VmHWM")
        rate = self.args.tree / seconds
        print(f"  scan of {self.args.tree:,} {what} files: {seconds:.1f}s ({rate:,.0f} files/s)")
        return seconds

    def measure_prune(self) -> None:
        """On a copy of the ledger: a small-file stream's upload rate alone and while
        ``uploaderd prune`` removes ~``--prune-versions`` old versions; claim lock waits."""
        copy, dsn = f"{self.db}_prune", self.dsn
        self.pg.drop_database(copy)
        create = lambda: self.pg.create_database(copy, template=self.db)  # noqa: E731
        # The last daemon's backends may still be exiting.
        self.dsn = wait_for(create, 10, 0.5, f"a copy of {self.db}", ignore=(DevstackError,))
        try:
            self._prune_on_copy()
        finally:
            self.dsn = dsn
            self.pg.drop_database(copy)

    def _prune_on_copy(self) -> None:
        kept_days = (self.shape.versions - self.args.prune_versions) / self.shape.per_day
        older_than = f"{max(1, math.floor(kept_days))}d"
        daemon = self.daemon(STREAM_JOB)
        count = "SELECT count(*) FROM file_versions"
        with (
            common.running(daemon),
            common.connect(self.dsn) as conn,
            (self.work / "prune.log").open("ab") as log,
        ):
            alone = self._stream(conn, daemon, "alone")
            before = scalar(conn, count)
            started = time.perf_counter()
            prune = subprocess.Popen(
                daemon.cli("prune", "--older-than", older_than),
                env=daemon.environment(),
                cwd=daemon.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.figures["claim_lock_waits"] = 0
            try:
                seconds, batches = 0.0, 0  # batch after batch until the prune is over
                while not batches or prune.poll() is None:
                    label = f"during{batches}"
                    seconds += self.args.stream / self._stream(conn, daemon, label, locks=True)
                    batches += 1
                code = prune.wait(self.args.timeout * 10)
            finally:
                terminate(prune, 10.0)
            during = batches * self.args.stream / seconds
            self.figures["prune_s"] = time.perf_counter() - started
            self.figures["prune_removed"] = before - scalar(conn, count)
            self.figures |= {"stream_alone_rate": alone, "stream_during_rate": during}
        print(
            f"  prune --older-than {older_than}: {self.figures['prune_removed']:,} versions in "
            f"{self.figures['prune_s']:.1f}s (exit {code}); stream {alone:.0f} files/s alone, "
            f"{during:.0f} during; claims waiting on a lock: {self.figures['claim_lock_waits']}"
        )

    def _stream(
        self, conn: Connection, daemon: DaemonProcess, label: str, locks: bool = False
    ) -> float:
        """``--stream`` 4 KiB files moved in at once; files/s until all are uploaded. With
        ``locks``, the most backends of the daemon seen waiting on a lock at once."""
        count = self.args.stream
        staging = self.work / f"staging-{label}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for index in range(count):
            (staging / f"{label}-{index:05d}.bin").write_bytes(os.urandom(4096))
        os.sync()
        base = scalar(conn, "SELECT coalesce(max(id), 0) FROM file_versions")
        # A bounded id range: with an open one the planner read far more during the prune.
        sql = "SELECT count(*) FROM file_versions WHERE id > %s AND id <= %s AND job = %s "
        sql += "AND state = 'uploaded'"
        # A prefix of its own for each batch: rclone serve s3's PUT costs more in a fuller one.
        into = self.root(STREAM_JOB) / label
        into.mkdir()
        started = time.perf_counter()
        for path in staging.iterdir():
            os.utime(path)
            os.rename(path, into / path.name)

        def done() -> bool:
            if locks:
                waits = max(self.figures["claim_lock_waits"], scalar(conn, LOCK_WAITS))
                self.figures["claim_lock_waits"] = waits
            return bool(scalar(conn, sql, base, base + 2 * count, STREAM_JOB) >= count)

        common.wait_alive(daemon, done, self.args.timeout, f"the {label} stream", 0.1)
        seconds = time.perf_counter() - started
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(into, ignore_errors=True)
        return float(count / seconds)


def make_tree(tree: Path, count: int, per_dir: int = 1000) -> list[tuple[str, os.stat_result]]:
    """``count`` small files as ``run-NNNNNN/img-NNNNNNN.tif`` (kept when it already holds
    exactly these), with an mtime an hour old; their (relpath, stat)."""
    marker = tree / ".bench-count"
    if not (marker.is_file() and marker.read_text() == str(count)):
        shutil.rmtree(tree, ignore_errors=True)
        started, old = time.perf_counter(), time.time() - 3600
        for index in range(count):
            path = tree / f"run-{index // per_dir:06d}" / f"img-{index:07d}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * 64)
            os.utime(path, (old, old))
        marker.write_text(str(count))
        print(f"  tree: {count:,} files written in {time.perf_counter() - started:.1f}s")
    return [
        (f"{directory.name}/{entry.name}", entry.stat(follow_symlinks=False))
        for directory in sorted(tree.iterdir())
        if directory.is_dir()
        for entry in os.scandir(directory)
    ]


def report(results: Sequence[SizeResult]) -> str:
    """One column per ledger size; a row only where some size has a figure."""
    header = f"{'measure':<30}" + "".join(f"{size_label(r.versions):>13}" for r in results)
    lines = [header + "   target", "-" * (len(header) + 9)]
    for key, label, spec, target in ROWS:
        values = [r.figures.get(key) for r in results]
        if any(v is not None for v in values):
            cells = "".join(f"{format(v, spec) if v is not None else '-':>13}" for v in values)
            lines.append(f"{label:<30}{cells}" + (f"   {target}" if target else ""))
    if any(r.queries for r in results):
        sizes = "".join(f"{size_label(r.versions):>12}" for r in results)
        header = f"{'query (median ms; S = seq scan of history)':<44}{sizes}   runs"
        lines += ["", "timer and per-batch queries, target <= 10 ms, no history seq scan", header]
        lines.append("-" * len(header))
        for index, probe in enumerate(next(r.queries for r in results if r.queries)):
            cells = "".join(
                f"{q.median_ms:>10.1f}{' S' if q.seq_scans else '  '}" if q else f"{'-':>12}"
                for q in (r.queries[index] if r.queries else None for r in results)
            )
            lines.append(f"{probe.label:<44}{cells}   {probe.when}")
        lines += [
            f"  S {q.label} ({size_label(r.versions)}): Seq Scan on {', '.join(q.seq_scans)}"
            for r in results
            for q in r.queries
            if q.seq_scans
        ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> Namespace:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    sizes = "ledger sizes in versions, e.g. 200k 1M 5M 20M (default 1M 5M)"
    add("--sizes", nargs="+", type=parse_count, default=[1_000_000, 5_000_000], help=sizes)
    add("--keep", type=Path, metavar="DIR", help="build the cluster and the tree in DIR, keep it")
    s3 = "S3 server of the uploads (default rclone; none: queue only, no prune)"
    add("--s3", choices=[*sorted(S3_SERVERS), "none"], default="rclone", help=s3)
    add("--idle", type=float, default=60.0, help="idle window seconds (60)")
    add("--tree", type=int, default=100_000, help="files in the watched tree to scan (100000)")
    add("--repeat", type=int, default=5, help="timed calls per query (5)")
    add("--query-budget", type=float, default=20.0, help="seconds at most per query (20)")
    add("--prune-versions", type=int, default=1_000_000, help="versions to prune (1000000)")
    add("--stream", type=int, default=1000, help="4 KiB files per upload batch beside the prune")
    for name in ("idle", "queries", "status", "scan", "prune"):
        add(f"--skip-{name}", action="store_true", help=f"skip the {name} part")
    add("--workers", type=int, default=4, help="uploaderd workers (4)")
    add("--timeout", type=float, default=300.0, help="seconds per wait (300; scans: >= 500/s)")
    add("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    add("--json", type=Path, metavar="FILE", help="also write the results")
    args = parser.parse_args(argv)
    args.skip_prune |= args.s3 == "none"  # the stream beside the prune uploads
    return args


def measure(args: Namespace) -> str:
    results: list[SizeResult] = []
    with (
        common.workspace("uploaderd-ledger-", args.keep) as (work, pg),
        contextlib.ExitStack() as stack,
    ):
        s3: S3Server | None = None
        if args.s3 != "none":
            s3 = stack.enter_context(S3_SERVERS[args.s3](work / "s3"))
            s3.create_bucket(BUCKET)
        tree_files = None if args.skip_scan else make_tree(work / "tree", args.tree)
        for versions in args.sizes:
            print(f"\n== ledger of {versions:,} versions")
            run = LedgerRun(pg, s3, work, Shape(versions), args)
            run.prepare()
            run.measure_daemon()
            if not args.skip_queries:
                run.measure_queries()
            if not args.skip_status:
                run.measure_status()
            if tree_files is not None:
                run.measure_scans(tree_files)
            if not args.skip_prune:
                run.measure_prune()
            results.append(run.result)
            if args.json:
                args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return report(results)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    title = f"uploaderd ledger scale: {', '.join(size_label(s) for s in args.sizes)} versions"
    command = common.reproduce("ledger_scale.py", sys.argv[1:] if argv is None else argv)
    return common.run(title, lambda: measure(args), command)


if __name__ == "__main__":
    sys.exit(main())
