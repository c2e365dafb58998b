"""How uploaderd behaves on a big ledger: start-up, memory, idle load, timer queries, scans.

Why this shape: uploaderd must cost what the work in flight costs, not what the history
behind it costs (issue 8). So the benchmark builds synthetic histories of 1 M, 5 M (and on
request 20 M) file versions with SQL, runs the real daemon on each and reports, per size:
time to READY=1, the daemon's RSS, the time until a file dropped in right after READY is
queued and uploaded, the CPU the idle daemon and PostgreSQL burn, the median time of every
query the daemon runs on a timer or per batch (and whether its plan scans a history table),
``uploaderd status``, the start-up scan rate of a big watched tree (all known, all new) and,
once ``uploaderd prune`` exists, what a prune costs the uploads running beside it.

The synthetic ledger is built after ``uploaderd migrate`` so its schema is the real one, and
new schema features are detected (``to_regproc``/``to_regclass``) rather than assumed, so the
same script measures the schema before and after a migration. ``--keep DIR`` keeps the
cluster, ``--reuse DIR`` measures it again (running ``uploaderd migrate`` first, timed: the
upgrade of a populated ledger).

    .venv/bin/python bench/ledger_scale.py --sizes 1M 5M [--tree 100000] [--keep /tmp/ls]
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, cast

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql as pgsql

import uploaderd
from bench.throughput import (
    BenchError,
    NotifySocket,
    _interrupt,
    credentials_env,
    postgres_cpu,
    process_cpu,
    tail,
    terminate,
)
from devstack import REGION, S3_SERVERS, PostgresCluster, S3Server
from uploaderd.ledger.store import Ledger, queries

BUCKET = "lab-raw"
JOBS = ("scope-a", "scope-b", "scope-c")  # session trigger; delete + marker; plain keep
TREE_JOB = "tree"
STREAM_JOB = "stream"
MARKER = "RunComplete.txt"
HISTORY_TABLES = ("file_versions", "upload_attempts", "trigger_calls", "sessions", "triggers")
SHUTDOWN_GRACE = 10.0
READY_TIMEOUT = 180.0
POLL_SECONDS = 0.05
# uploaderd's subprocesses run from / so that `python -m uploaderd` imports the uploaderd on
# PYTHONPATH (or installed), never the checkout in the current directory.
NEUTRAL_CWD = "/"
MB = 1024 * 1024
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([kKmM]?)$")
_BYTES = re.compile(r"\s+")

# The targets, printed beside each figure; the benchmark does not assert them.
TARGETS = {
    "ready_s": "<= 5 s",
    "rss_mb": "<= 200 MB",
    "tree_rss_mb": "<= 300 MB (1 M files)",
    "idle_cpu": "<= 2 % total",
    "query_ms": "<= 10 ms, no history seq scan",
    "status_ms": "<= 300 ms",
    "scan_rate": ">= 20,000 files/s",
    "prune": "uploads within 20 %, no claim waits",
}


def parse_size(text: str) -> int:
    """``200k``, ``1M``, ``5M``, ``20M`` or a plain number of versions."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected e.g. 200k, 1M, 5M: {text!r}")
    scale = {"": 1, "k": 1_000, "K": 1_000, "m": 1_000_000, "M": 1_000_000}[match.group(2)]
    return int(float(match.group(1)) * scale)


def size_label(count: int) -> str:
    if count % 1_000_000 == 0:
        return f"{count // 1_000_000}M"
    if count % 1_000 == 0:
        return f"{count // 1_000}k"
    return str(count)


# --- the synthetic ledger --------------------------------------------------------------------


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

    @property
    def days(self) -> float:
        return self.versions / self.per_day


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


def _feature(cursor: psycopg2.extensions.cursor, kind: str, name: str) -> bool:
    """Whether the schema has ``name``: kind is ``regproc`` (a function) or ``regclass``."""
    cursor.execute(f"SELECT to_{kind}(%s) IS NOT NULL", (name,))  # kind: a fixed literal
    row = cursor.fetchone()
    return bool(row and row[0])


def _column(cursor: psycopg2.extensions.cursor, table: str, column: str) -> bool:
    """Whether ``table`` has ``column`` (a schema before or after a migration)."""
    cursor.execute(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns "
        "WHERE table_name = %s AND column_name = %s)",
        (table, column),
    )
    row = cursor.fetchone()
    return bool(row and row[0])


def generate_ledger(dsn: str, shape: Shape, roots: Sequence[str], with_triggers: bool) -> float:
    """Fill a freshly migrated database with ``shape``; seconds spent.

    Without ``with_triggers`` the bulk insert runs with ``session_replication_role =
    replica``: no foreign-key checks (the data is consistent by construction) and no
    user triggers, whose incremental counters ``ledger_recount()`` rebuilds afterwards.
    """
    started = time.perf_counter()
    params = {
        "n": shape.versions,
        "ps": shape.per_session,
        "pending": shape.pending,
        "sessions": shape.sessions,
        "step": 86400.0 / shape.per_day,
        "host": shape.host,
        "jobs": list(JOBS),
        "roots": list(roots),
        "bucket": BUCKET,
        "marker": MARKER,
        "job": JOBS[0],
    }
    conn = psycopg2.connect(dsn, application_name="bench generate")
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("SET maintenance_work_mem = '1GB'")
            cursor.execute("SET work_mem = '256MB'")
            if not with_triggers:
                cursor.execute("SET session_replication_role = replica")
            # Referenced rows first, so that foreign keys hold with --with-triggers too.
            steps = (
                ("sessions", GENERATE_SESSIONS),
                ("triggers", GENERATE_TRIGGERS),
                ("trigger_calls", GENERATE_TRIGGER_CALLS),
                ("file_versions", GENERATE_VERSIONS),
                ("upload_attempts", GENERATE_ATTEMPTS),
            )
            for table, sql in steps:
                step_started = time.perf_counter()
                cursor.execute(sql, params)
                print(
                    f"    {table}: {cursor.rowcount:,} rows in "
                    f"{time.perf_counter() - step_started:.1f}s",
                    flush=True,
                )
            for table in HISTORY_TABLES:
                cursor.execute(SYNC_SEQUENCES.format(table=table), {"table": table})
            if not with_triggers:
                cursor.execute("SET session_replication_role = DEFAULT")
            recount(cursor)
        vacuum(conn)
    finally:
        conn.close()
    return time.perf_counter() - started


def recount(cursor: psycopg2.extensions.cursor) -> None:
    """After a bulk change: the new schema's counters rebuilt from file_versions."""
    if _feature(cursor, "regproc", "ledger_recount"):
        step_started = time.perf_counter()
        cursor.execute("SELECT ledger_recount()")
        print(f"    ledger_recount(): {time.perf_counter() - step_started:.1f}s", flush=True)


def vacuum(conn: psycopg2.extensions.connection) -> None:
    """VACUUM ANALYZE now, so autovacuum does not run inside a later idle window."""
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            started = time.perf_counter()
            cursor.execute("VACUUM (ANALYZE)")
            print(f"    VACUUM (ANALYZE): {time.perf_counter() - started:.1f}s", flush=True)
    finally:
        conn.autocommit = False


def ledger_footprint(dsn: str) -> dict[str, int]:
    """Bytes on disk (table + indexes + toast) of each table of the schema."""
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
        )
        return {name: int(size) for name, size in cursor.fetchall()}


# --- the daemon ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where one ledger's jobs look: one (empty) watched directory per synthetic job."""

    work: Path
    tree: Path

    def root(self, job: str) -> Path:
        return self.work / "watched" / job

    @property
    def sentinel(self) -> Path:
        return self.work / "sentinel"

    @property
    def stream(self) -> Path:
        return self.work / "watched" / STREAM_JOB

    def roots(self) -> list[str]:
        return [str(self.root(job)) for job in JOBS]


def closed_day() -> str:
    """A weekday that is not today nor tomorrow: the tree job's upload window, so the
    new-tree scan queues its files and never uploads them (queueing goes on)."""
    return (datetime.now() + timedelta(days=3)).strftime("%a")


def write_config(
    work: Path,
    dsn: str,
    s3: S3Server | None,
    layout: Layout,
    *,
    tree: bool,
    stream: bool,
    log_level: str,
    workers: int,
) -> Path:
    """The daemon config and its jobs: the three synthetic ones, and the tree or stream job."""
    jobs = work / "jobs.d"
    shutil.rmtree(jobs, ignore_errors=True)
    jobs.mkdir(parents=True)
    endpoint = s3.endpoint_url if s3 is not None else "http://127.0.0.1:9"
    config = work / "uploaderd.yaml"
    config.write_text(
        f"database:\n  dsn: {dsn}\n"
        f"jobs_dir: {json.dumps(str(jobs))}\n"
        f"workers: {workers}\n"
        'metrics:\n  listen: ""\n'
        f"s3:\n  endpoint_url: {endpoint}\n  region: {REGION}\n"
        f"log:\n  level: {log_level}\n  format: text\n"
        f"shutdown_grace: {SHUTDOWN_GRACE:.0f}s\n"
    )
    common = "  settle: 1s\n  rescan: 1d\n"
    specs = {
        "scope-a": (
            "session:\n  group_by: top_dir\n  complete_when: {idle: 10m}\n"
            "trigger:\n  url: http://127.0.0.1:9/register\n  on: session_complete\n"
            "  schedule: {interval: 1m}\n"
        ),
        "scope-b": (
            f"session:\n  group_by: top_dir\n  complete_when: {{marker: {MARKER}}}\n"
            "after_upload: delete\n"
        ),
        "scope-c": "session:\n  group_by: top_dir\n  complete_when: {idle: 10m}\n",
    }
    for name, extra in specs.items():
        layout.root(name).mkdir(parents=True, exist_ok=True)
        (jobs / f"{name}.yaml").write_text(
            f"name: {name}\nsource:\n  paths: [{json.dumps(str(layout.root(name)))}]\n{common}"
            f'destination:\n  bucket: {BUCKET}\n  key: "{name}/${{relpath}}"\n{extra}'
        )
    if tree:
        # The sentinel root is listed after the tree: scans run root after root, so its
        # one new file reaches the ledger once the tree's scan is done.
        layout.sentinel.mkdir(parents=True, exist_ok=True)
        paths = json.dumps([str(layout.tree), str(layout.sentinel)])
        (jobs / f"{TREE_JOB}.yaml").write_text(
            f"name: {TREE_JOB}\nsource:\n  paths: {paths}\n{common}"
            f'destination:\n  bucket: {BUCKET}\n  key: "{TREE_JOB}/${{relpath}}"\n'
            f'  windows: ["{closed_day()}"]\n'
            "session:\n  group_by: top_dir\n  complete_when: {idle: 10m}\n"
        )
    if stream:
        layout.stream.mkdir(parents=True, exist_ok=True)
        (jobs / f"{STREAM_JOB}.yaml").write_text(
            f"name: {STREAM_JOB}\nsource:\n  paths: [{json.dumps(str(layout.stream))}]\n"
            f'{common}destination:\n  bucket: {BUCKET}\n  key: "{STREAM_JOB}/${{relpath}}"\n'
        )
    return config


def rss_mb(pid: int | None, field_name: str = "VmRSS") -> float:
    """VmRSS (or VmHWM, the peak) of a live process in MiB; 0 when it is gone."""
    if pid is None:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Daemon:
    """One ``uploaderd run`` on one ledger, started and stopped as systemd would."""

    def __init__(self, work: Path, config: Path, env: dict[str, str]) -> None:
        self.work = work
        self.config = config
        self.env = env
        self.log_path = work / "uploaderd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._notify: NotifySocket | None = None
        self._log: IO[bytes] | None = None
        self.started = 0.0
        self.ready_seconds = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> float:
        """Start and wait for READY=1; seconds from the process start to READY."""
        self._notify = NotifySocket(self.work / "notify.sock")
        self._log = self.log_path.open("ab")
        self._log.write(f"\n=== start {time.strftime('%H:%M:%S')}\n".encode())
        self._log.flush()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uploaderd", "run", "-c", str(self.config)],
            env=self.env | {"NOTIFY_SOCKET": str(self._notify.path)},
            cwd=NEUTRAL_CWD,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._notify.wait_ready(self.proc, READY_TIMEOUT)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{tail(self.log_path)}") from None
        self.ready_seconds = time.perf_counter() - self.started
        return self.ready_seconds

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"uploaderd died ({self.proc.returncode}):\n{tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, SHUTDOWN_GRACE + 30.0)
            self.proc = None
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        if self._log is not None:
            self._log.close()
            self._log = None


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    daemon: Daemon,
    poll: float = POLL_SECONDS,
) -> float:
    """Poll ``predicate``; seconds it took. The daemon dying or the timeout stops the run."""
    started = time.perf_counter()
    while not predicate():
        daemon.check_alive()
        if time.perf_counter() - started > timeout:
            raise BenchError(f"{what}: not done after {timeout:.0f}s\n{tail(daemon.log_path)}")
        time.sleep(poll)
    return time.perf_counter() - started


def scalar(conn: psycopg2.extensions.connection, sql: str, params: Any = None) -> Any:
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return row[0] if row else None


# --- timing the daemon's queries directly ----------------------------------------------------


class _Recorder:
    """A cursor that remembers each statement it runs (with its parameters bound)."""

    def __init__(self, cursor: psycopg2.extensions.cursor, sink: list[bytes]) -> None:
        self._cursor = cursor
        self._sink = sink

    def execute(self, query: str, params: Any = None) -> None:
        self._sink.append(self._cursor.mogrify(query, params))
        self._cursor.execute(query, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class ProbeLedger(Ledger):
    """The daemon's own Ledger methods, each call rolled back so the ledger never changes
    (a session sweep or a claim timed here closes or claims nothing for good)."""

    recording: list[bytes] | None = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg2.extensions.cursor]:
        conn = self.connection
        cursor = conn.cursor()
        try:
            if self.recording is not None:
                yield cast(psycopg2.extensions.cursor, _Recorder(cursor, self.recording))
            else:
                yield cursor
        finally:
            cursor.close()
            conn.rollback()


@dataclass(frozen=True)
class ProbeContext:
    host: str
    roots: dict[str, str]
    sample_relpath: str
    open_session: int
    worker: str
    candidates: list[Any]  # scanner.Candidate: 250 known paths and 250 unknown
    cutoff: datetime


def _path_args(method: Callable[..., object], c: ProbeContext) -> list[str]:
    """``(job, [scope,] root, relpath)``: the scope argument came with issue 8."""
    with_scope = "scope" in inspect.signature(method).parameters
    return ["scope-c", *([c.host] if with_scope else []), c.roots["scope-c"], c.sample_relpath]


@dataclass(frozen=True)
class Probe:
    label: str
    when: str  # how often the daemon runs it, or which command does
    method: str  # the Ledger method; probes whose method is missing are skipped
    call: Callable[[Any, ProbeContext], object]
    repeat: bool = True  # False: once (a start-up query, possibly slow)


def _complete_sessions(job: str) -> Callable[[Any, ProbeContext], object]:
    """scope-b closes on its marker file; the others after 10 idle minutes."""
    marker = MARKER if job == "scope-b" else None
    idle = None if marker else 600.0
    return lambda lg, c: lg.complete_sessions(
        job, idle_seconds=idle, marker=marker, register=job == "scope-a"
    )


PROBES: tuple[Probe, ...] = (
    Probe("job_counts", "15 s gauges; status", "job_counts", lambda lg, c: lg.job_counts()),
    Probe(
        "job_counts(scope-c)", "status --job", "job_counts", lambda lg, c: lg.job_counts("scope-c")
    ),
    Probe("recent_errors", "status", "recent_errors", lambda lg, c: lg.recent_errors()),
    Probe(
        "open_session_summaries",
        "status",
        "open_session_summaries",
        lambda lg, c: lg.open_session_summaries(),
    ),
    Probe(
        "paused_destinations",
        "status",
        "paused_destinations",
        lambda lg, c: lg.paused_destinations(),
    ),
    Probe(
        "abandoned_uploads", "10 s sweep", "abandoned_uploads", lambda lg, c: lg.abandoned_uploads()
    ),
    Probe(
        "notify_due_retries",
        "10 s sweep",
        "notify_due_retries",
        lambda lg, c: lg.notify_due_retries(),
    ),
    Probe(
        "workers_on_host",
        "30 s lease reaper",
        "workers_on_host",
        lambda lg, c: lg.workers_on_host(c.host),
    ),
    Probe(
        "reclaim_leases", "30 s lease reaper", "reclaim_leases", lambda lg, c: lg.reclaim_leases([])
    ),
    *(
        Probe(
            f"complete_sessions({job}{', marker' if job == 'scope-b' else ''})",
            "5 s per job",
            "complete_sessions",
            _complete_sessions(job),
        )
        for job in JOBS
    ),
    Probe(
        "batch_uploaded_files(scope-a)",
        "trigger interval (file_uploaded)",
        "batch_uploaded_files",
        lambda lg, c: lg.batch_uploaded_files("scope-a", 500),
    ),
    Probe(
        "batch_uploaded_files(scope-c)",
        "trigger interval (file_uploaded)",
        "batch_uploaded_files",
        lambda lg, c: lg.batch_uploaded_files("scope-c", 500),
    ),
    Probe(
        "due_triggers(scope-a)",
        "trigger interval",
        "due_triggers",
        lambda lg, c: lg.due_triggers("scope-a", 100),
    ),
    Probe(
        "undisposed_files(scope-b)",
        "10 s per disposing job",
        "undisposed_files",
        lambda lg, c: lg.undisposed_files("scope-b", [c.host], registered_only=False),
    ),
    Probe(
        "claim",
        "per batch",
        "claim",
        lambda lg, c: lg.claim(
            worker=c.worker,
            host=c.host,
            jobs=list(JOBS),
            scopes=[c.host],
            limit=16,
            lease_seconds=300,
        ),
    ),
    Probe(
        "selection_progress(job)",
        "retry --auto-retry poll",
        "selection_progress",
        lambda lg, c: lg.selection_progress(jobs=list(JOBS), scopes=[c.host], job="scope-c"),
    ),
    Probe(
        "selection_progress(session)",
        "upload progress poll",
        "selection_progress",
        lambda lg, c: lg.selection_progress(
            jobs=list(JOBS), scopes=[c.host], session_id=c.open_session
        ),
    ),
    Probe(
        "path_versions",
        "explain",
        "path_versions",
        lambda lg, c: lg.path_versions(*_path_args(lg.path_versions, c)),
    ),
    Probe(
        "path_signature",
        "explain",
        "path_signature",
        lambda lg, c: lg.path_signature(*_path_args(lg.path_signature, c)),
    ),
    Probe(
        "list_files(failed)",
        "files --state failed",
        "list_files",
        lambda lg, c: lg.list_files(job="scope-c", state="failed"),
    ),
    # New in issue 8 (a TypeError reports "signature changed"; add or fix a line here).
    Probe(
        "known_paths(500 candidates)",
        "per discovery batch",
        "known_paths",
        lambda lg, c: lg.known_paths("scope-c", c.host, c.candidates),
    ),
    Probe("compact_counts", "counters' timer", "compact_counts", lambda lg, c: lg.compact_counts()),
    Probe(
        "prune_versions(dry run, 1000)",
        "prune batch",
        "prune_versions",
        lambda lg, c: lg.prune_versions(
            after=0,
            cutoff=c.cutoff,
            jobs=list(JOBS),
            keeping=["scope-a", "scope-c"],
            registering=["scope-a"],
            limit=1000,
            dry_run=True,
        ),
    ),
    Probe(
        "known_versions(scope-c)",
        "discovery start-up",
        "known_versions",
        lambda lg, c: lg.known_versions("scope-c", c.host),
        repeat=False,
    ),
)
# Ledger methods that are not timer or per-batch queries, or that change state for good.
NOT_PROBED = {
    "connect",
    "close",
    "transaction",
    "ping",
    "migration_lock",
    "applied_migrations",
    "apply_migration",
    "listen",
    "wait_for_notify",
    "enqueue",
    "open_sessions",
    "renew_leases",
    "complete",
    "record_multipart",
    "forget_upload",
    "release",
    "session",
    "session_progress",
    "session_triggers",
    "version_attempts",
    "uploaded_objects",
    "open_run_session",
    "complete_run_session",
    "start_trigger_call",
    "trigger_manifest",
    "finish_trigger_call",
    "create_session_trigger",
    "reset_trigger",
    "named_lock",
    "requeue_failed",
    "mark_disposed",
    "set_destination_health",
    "uploaded_keys_under",
    "connection",
}


@dataclass
class QueryResult:
    label: str
    when: str
    median_ms: float | None
    calls: int
    seq_scans: list[str]
    note: str = ""


def probe_context(dsn: str, host: str, roots: dict[str, str]) -> ProbeContext:
    from uploaderd.policy.settle import Candidate, Signature

    with contextlib.closing(psycopg2.connect(dsn)) as conn:
        relpath = (
            scalar(
                conn,
                "SELECT relpath FROM file_versions WHERE job = 'scope-c' "
                "AND state = 'uploaded' ORDER BY id DESC LIMIT 1",
            )
            or "x"
        )
        session = scalar(conn, "SELECT max(id) FROM sessions WHERE state = 'open'") or 0
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT root, relpath, size, mtime_ns, inode FROM file_versions "
                "WHERE job = 'scope-c' AND id % 997 = 0 LIMIT 250"
            )
            rows = cursor.fetchall()
    known = [
        Candidate(root, rel, Signature(size, mtime, inode))
        for root, rel, size, mtime, inode in rows
    ]
    unknown = [
        Candidate(roots["scope-c"], f"new-run/img-{i:06d}.tif", Signature(1, 1, i))
        for i in range(500 - len(known))
    ]
    cutoff = datetime.now().astimezone() - timedelta(days=7)
    return ProbeContext(
        host, roots, relpath, int(session), f"{host}:1:bench", known + unknown, cutoff
    )


def seq_scans(plan: Any) -> list[str]:
    """History tables read by a Seq Scan anywhere in an EXPLAIN (FORMAT JSON) plan."""
    found: list[str] = []
    if isinstance(plan, dict):
        if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in HISTORY_TABLES:
            found.append(str(plan["Relation Name"]))
        for value in plan.values():
            found += seq_scans(value)
    elif isinstance(plan, list):
        for item in plan:
            found += seq_scans(item)
    return found


def explain(conn: psycopg2.extensions.connection, statements: Sequence[bytes]) -> list[str]:
    """Plan every statement a call ran (rolled back: EXPLAIN without ANALYZE runs nothing).

    The daemon's prepared statements are prepared here too, and their EXECUTE explained
    with the one plan the daemon uses (``plan_cache_mode = force_generic_plan``).
    """
    tables: list[str] = []
    with conn.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        for statement in statements:
            text = statement.decode()
            if text.lstrip().upper().startswith(("LISTEN", "SET", "SHOW")):
                continue
            if text.startswith("PREPARE "):
                try:
                    cursor.execute(text)  # the session's, whatever the rollback below
                except psycopg2.errors.DuplicatePreparedStatement:
                    pass  # prepared by an earlier probe's call
                finally:
                    conn.rollback()
                continue
            try:
                cursor.execute("EXPLAIN (FORMAT JSON) " + text)
                row = cursor.fetchone()
                tables += seq_scans(row[0] if row else [])
            except psycopg2.Error as exc:
                tables.append(f"?({str(exc).splitlines()[0][:40]})")
            finally:
                conn.rollback()
    return sorted(set(tables))


def time_queries(dsn: str, context: ProbeContext, repeat: int, budget: float) -> list[QueryResult]:
    """Each probe: one warm-up call (recorded and EXPLAINed), then up to ``repeat`` timed
    calls within ``budget`` seconds; the median in ms."""
    ledger = ProbeLedger(dsn, application_name="bench probe")
    results = []
    try:
        conn = ledger.connect().connection
        with conn.cursor() as cursor:
            cursor.execute("SET statement_timeout = '120s'")
        conn.commit()
        planner = psycopg2.connect(dsn, application_name="bench explain")
        for probe in PROBES:
            results.append(_run_probe(ledger, planner, probe, context, repeat, budget))
            print(f"    {_query_line(results[-1])}", flush=True)
        planner.close()
        missing = sorted(
            name
            for name in dir(Ledger)
            if not name.startswith("_")
            and callable(getattr(Ledger, name))
            and name not in NOT_PROBED
            and name not in {p.method for p in PROBES}
        )
        if missing:
            results.append(
                QueryResult(
                    "(not probed: " + ", ".join(missing) + ")",
                    "",
                    None,
                    0,
                    [],
                    "add a Probe in bench/ledger_scale.py",
                )
            )
    finally:
        ledger.close()
    return results


def _run_probe(
    ledger: ProbeLedger,
    planner: psycopg2.extensions.connection,
    probe: Probe,
    context: ProbeContext,
    repeat: int,
    budget: float,
) -> QueryResult:
    if not hasattr(ledger, probe.method):
        return QueryResult(probe.label, probe.when, None, 0, [], "no such method")
    statements: list[bytes] = []
    ledger.recording = statements
    times: list[float] = []
    try:
        started = time.perf_counter()
        probe.call(ledger, context)
        times.append(time.perf_counter() - started)
        ledger.recording = None
        deadline = time.perf_counter() + budget
        while probe.repeat and len(times) < repeat + 1 and time.perf_counter() < deadline:
            started = time.perf_counter()
            probe.call(ledger, context)
            times.append(time.perf_counter() - started)
    except TypeError as exc:
        return QueryResult(probe.label, probe.when, None, 0, [], f"signature changed: {exc}")
    finally:
        ledger.recording = None
    timed = times[1:] or times  # the first call warms the cache; alone, it is all there is
    return QueryResult(
        probe.label,
        probe.when,
        statistics.median(timed) * 1000,
        len(timed),
        explain(planner, statements),
    )


def _query_line(result: QueryResult) -> str:
    ms = f"{result.median_ms:10.1f}" if result.median_ms is not None else f"{'-':>10}"
    scans = ",".join(result.seq_scans) or "-"
    return f"{result.label:<38} {ms} {result.calls:>5}  {scans:<28} {result.when}" + (
        f"  [{result.note}]" if result.note else ""
    )


# --- pg_stat_statements: what the idle daemon actually ran ------------------------------------


def enable_pg_stat_statements(pg: PostgresCluster) -> bool:
    """Preload pg_stat_statements (ALTER SYSTEM survives --reuse); restart when it changed."""
    with contextlib.closing(psycopg2.connect(pg.dsn())) as conn, conn.cursor() as cursor:
        conn.autocommit = True
        cursor.execute(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_stat_statements'"
        )
        row = cursor.fetchone()
        if not (row and row[0]):
            return False
        cursor.execute("SHOW shared_preload_libraries")
        row = cursor.fetchone()
        if row and "pg_stat_statements" in row[0]:
            return True
        cursor.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    pg.stop()
    pg.start()
    return True


def _statement_names() -> list[tuple[str, str]]:
    """(prefix of the normalised text, query name) for every named block of queries.sql."""
    names = []
    for name, body in queries().items():
        text = _normalise(body)
        if text:
            names.append((text[:60], name))
    return names


def _normalise(sql: str) -> str:
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    text = _BYTES.sub(" ", " ".join(lines)).strip()
    # pg_stat_statements shows every constant as $n: parameters and literals alike.
    return re.sub(r"%\(\w+\)s|\$\d+|'(?:[^']|'')*'|\b\d+\b", "?", text)


def statements_since_reset(
    conn: psycopg2.extensions.connection, limit: int = 12
) -> list[dict[str, Any]]:
    """The daemon's statements by total time since the last reset, named where possible."""
    names = _statement_names()
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT query, calls, total_exec_time, mean_exec_time, shared_blks_hit "
            "+ shared_blks_read FROM pg_stat_statements s JOIN pg_database d "
            "ON d.oid = s.dbid WHERE d.datname = current_database() "
            "AND query NOT ILIKE '%%pg_stat_statements%%' "
            "ORDER BY total_exec_time DESC LIMIT %s",
            (limit,),
        )
        rows = cursor.fetchall()
    out = []
    for query, calls, total, mean, blocks in rows:
        text = _normalise(query)
        name = next((n for prefix, n in names if text.startswith(prefix)), text[:50])
        out.append(
            {
                "query": name,
                "calls": int(calls),
                "total_ms": float(total),
                "mean_ms": float(mean),
                "blocks_per_call": int(blocks) // max(1, calls),
            }
        )
    return out


# --- the measurements of one ledger ----------------------------------------------------------


@dataclass
class SizeResult:
    versions: int
    generate_seconds: float | None = None
    migrate_seconds: float | None = None
    migrated: list[str] = field(default_factory=list)
    bytes_per_version: float | None = None
    table_bytes: dict[str, int] = field(default_factory=dict)
    ready_seconds: float | None = None
    rss_ready_mb: float | None = None
    rss_idle_mb: float | None = None
    rss_peak_mb: float | None = None
    first_file_queued_s: float | None = None
    first_file_uploaded_s: float | None = None
    idle_seconds: float | None = None
    idle_daemon_cpu_pct: float | None = None
    idle_pg_cpu_pct: float | None = None
    idle_pg_daemon_backends_pct: float | None = None
    idle_statements: list[dict[str, Any]] = field(default_factory=list)
    queries: list[QueryResult] = field(default_factory=list)
    status_ms: float | None = None
    tree_files: int | None = None
    scan_known_rate: float | None = None
    scan_known_seconds: float | None = None
    scan_known_ready_s: float | None = None
    tree_rss_mb: float | None = None
    tree_rss_peak_mb: float | None = None
    scan_new_rate: float | None = None
    scan_new_seconds: float | None = None
    prune: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    idle: float
    tree: int
    repeat: int
    query_budget: float
    skip_idle: bool
    skip_queries: bool
    skip_status: bool
    skip_scan: bool
    skip_prune: bool
    prune_versions: int
    stream_files: int
    with_triggers: bool
    log_level: str
    workers: int
    timeout: float


class LedgerRun:
    """Everything measured on one ledger size, in one database of the cluster."""

    def __init__(
        self,
        pg: PostgresCluster,
        work: Path,
        shape: Shape,
        options: Options,
        s3: S3Server | None,
        pgss: bool,
        state: dict[str, Any],
    ) -> None:
        self.pg = pg
        self.shape = shape
        self.options = options
        self.s3 = s3
        self.pgss = pgss
        self.state = state  # the --keep/--reuse record of generated ledgers
        self.db = f"ledger_{size_label(shape.versions).lower()}"
        self.work = work / self.db
        self.work.mkdir(parents=True, exist_ok=True)
        self.layout = Layout(self.work, work / "tree")
        self.result = SizeResult(shape.versions)
        self.env = credentials_env(s3) if s3 is not None else dict(os.environ)
        self.dsn = pg.dsn(self.db)

    # --- the ledger ---

    def prepare(self) -> None:
        record = self.state.get(self.db)
        exists = self._database_exists()
        if record and exists and record.get("versions") == self.shape.versions:
            print(f"  reusing database {self.db} ({record.get('generated_at')})", flush=True)
            self.result.migrated, self.result.migrate_seconds = self._migrate()
            if self.result.migrated:
                print(
                    f"  migrated {', '.join(self.result.migrated)} in "
                    f"{self.result.migrate_seconds:.1f}s",
                    flush=True,
                )
        else:
            if exists:
                self.pg.drop_database(self.db)
            self.pg.create_database(self.db)
            self._migrate()
            print(
                f"  generating {self.shape.versions:,} versions "
                f"({self.shape.days:.0f} days of {self.shape.per_day:,} files)",
                flush=True,
            )
            self.result.generate_seconds = generate_ledger(
                self.dsn, self.shape, self.layout.roots(), self.options.with_triggers
            )
            self.state[self.db] = {
                "versions": self.shape.versions,
                "generated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                "host": self.shape.host,
            }
        if self.pgss:
            with contextlib.closing(psycopg2.connect(self.dsn)) as conn, conn.cursor() as cur:
                conn.autocommit = True
                cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.result.table_bytes = ledger_footprint(self.dsn)
        self.result.bytes_per_version = sum(self.result.table_bytes.values()) / max(
            1, self.shape.versions
        )

    def _database_exists(self) -> bool:
        with contextlib.closing(psycopg2.connect(self.pg.dsn())) as conn:
            return bool(
                scalar(conn, "SELECT count(*) FROM pg_database WHERE datname = %s", (self.db,))
            )

    def _migrate(self) -> tuple[list[str], float]:
        config = self._config(tree=False, stream=False)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "uploaderd", "migrate", "-c", str(config)],
            env=self.env,
            cwd=NEUTRAL_CWD,
            capture_output=True,
            text=True,
            check=False,
            timeout=self.options.timeout * 10,
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise BenchError(f"uploaderd migrate failed: {done.stderr.strip()}")
        applied = re.findall(r"\d{4}_[a-z0-9_]+\.sql", done.stdout + done.stderr)
        return applied, seconds

    def _config(self, *, tree: bool, stream: bool) -> Path:
        return write_config(
            self.work,
            self.dsn,
            self.s3,
            self.layout,
            tree=tree,
            stream=stream,
            log_level=self.options.log_level,
            workers=self.options.workers,
        )

    # --- the daemon idle on the ledger ---

    def measure_daemon(self) -> None:
        """READY, the first new file, RSS and the idle window, in one daemon run."""
        config = self._config(tree=False, stream=False)
        daemon = Daemon(self.work, config, self.env)
        conn = psycopg2.connect(self.dsn, application_name="bench")
        conn.autocommit = True
        try:
            self.result.ready_seconds = daemon.start()
            self.result.rss_ready_mb = rss_mb(daemon.pid)
            print(
                f"  READY after {self.result.ready_seconds:.2f}s, "
                f"RSS {self.result.rss_ready_mb:.0f} MB",
                flush=True,
            )
            self._first_file(daemon, conn)
            if not self.options.skip_idle:
                self._idle_window(daemon, conn)
            self.result.rss_peak_mb = rss_mb(daemon.pid, "VmHWM")
        finally:
            daemon.stop()
            conn.close()

    def _first_file(self, daemon: Daemon, conn: psycopg2.extensions.connection) -> None:
        """A file written into scope-c's root right after READY: seconds to queued and to
        uploaded (the job's settle is 1 s; with no S3 server only queued is measured)."""
        name = f"first-{int(time.time())}.tif"
        root = self.layout.root("scope-c")
        started = time.perf_counter()
        with (root / name).open("wb") as out:
            out.write(os.urandom(4096))
        query = (
            "SELECT state FROM file_versions WHERE job = 'scope-c' AND scope = %s "
            "AND root = %s AND relpath = %s ORDER BY id DESC LIMIT 1"
        )
        params = (self.shape.host, str(root), name)
        timeout = self.options.timeout
        wait_for(
            lambda: scalar(conn, query, params) is not None,
            timeout,
            "the first new file to be queued",
            daemon,
        )
        self.result.first_file_queued_s = time.perf_counter() - started
        if self.s3 is not None:
            wait_for(
                lambda: scalar(conn, query, params) in ("uploaded", "failed"),
                timeout,
                "the first new file to be uploaded",
                daemon,
            )
            if scalar(conn, query, params) == "uploaded":
                self.result.first_file_uploaded_s = time.perf_counter() - started
            else:
                self.result.notes.append("the first new file failed to upload")
        print(
            f"  first new file: queued after {self.result.first_file_queued_s:.2f}s, "
            f"uploaded after {_fmt(self.result.first_file_uploaded_s, '.2f')}s",
            flush=True,
        )
        (root / name).unlink(missing_ok=True)

    def _idle_window(self, daemon: Daemon, conn: psycopg2.extensions.connection) -> None:
        time.sleep(5.0)  # the start-up's first gauge and sweep runs are not "idle"
        daemon.check_alive()
        backends = self._daemon_backends(conn)
        if self.pgss:
            scalar(conn, "SELECT pg_stat_statements_reset()")
        before = (
            process_cpu(daemon.pid),
            postgres_cpu(self.pg),
            sum(process_cpu(pid) for pid in backends),
        )
        started = time.perf_counter()
        print(f"  idle window of {self.options.idle:.0f}s ...", flush=True)
        time.sleep(self.options.idle)
        daemon.check_alive()
        seconds = time.perf_counter() - started
        after = (
            process_cpu(daemon.pid),
            postgres_cpu(self.pg),
            sum(process_cpu(pid) for pid in backends),
        )
        self.result.idle_seconds = seconds
        self.result.idle_daemon_cpu_pct = (after[0] - before[0]) / seconds * 100
        self.result.idle_pg_cpu_pct = (after[1] - before[1]) / seconds * 100
        self.result.idle_pg_daemon_backends_pct = (after[2] - before[2]) / seconds * 100
        self.result.rss_idle_mb = rss_mb(daemon.pid)
        if self.pgss:
            self.result.idle_statements = statements_since_reset(conn)
        print(
            f"  idle CPU: daemon {self.result.idle_daemon_cpu_pct:.1f} %, PostgreSQL "
            f"{self.result.idle_pg_cpu_pct:.1f} % (daemon's backends "
            f"{self.result.idle_pg_daemon_backends_pct:.1f} %); RSS "
            f"{self.result.rss_idle_mb:.0f} MB",
            flush=True,
        )

    @staticmethod
    def _daemon_backends(conn: psycopg2.extensions.connection) -> list[int]:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name LIKE "
                "'uploaderd%%' AND datname = current_database()"
            )
            return [int(row[0]) for row in cursor.fetchall()]

    # --- queries and status, with no daemon running ---

    def measure_queries(self) -> None:
        print("  timing the daemon's queries (median ms, calls, seq scans of history)", flush=True)
        roots = {job: str(self.layout.root(job)) for job in JOBS}
        context = probe_context(self.dsn, self.shape.host, roots)
        self.result.queries = time_queries(
            self.dsn, context, self.options.repeat, self.options.query_budget
        )

    def measure_status(self) -> None:
        config = self._config(tree=False, stream=False)
        times = []
        for _ in range(3):
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "uploaderd", "status", "-c", str(config)],
                env=self.env,
                cwd=NEUTRAL_CWD,
                capture_output=True,
                text=True,
                check=False,
                timeout=self.options.timeout,
            )
            times.append(time.perf_counter() - started)
            if done.returncode not in (0, 1):
                raise BenchError(
                    f"uploaderd status exited {done.returncode}: {done.stderr.strip()}"
                )
        self.result.status_ms = statistics.median(times) * 1000
        print(f"  uploaderd status: {self.result.status_ms:.0f} ms (median of 3)", flush=True)

    # --- start-up scans of a big tree ---

    def measure_scans(self, tree_files: list[tuple[str, os.stat_result]]) -> None:
        self.result.tree_files = len(tree_files)
        with contextlib.closing(psycopg2.connect(self.dsn, application_name="bench")) as conn:
            conn.autocommit = True
            base_version, base_session = self._bases(conn)
            try:
                self._insert_known(conn, tree_files)
                self._scan_known(conn, len(tree_files))
            finally:
                self._forget_tree(conn, base_version, base_session)
            try:
                self._scan_new(conn, base_version, len(tree_files))
            finally:
                self._forget_tree(conn, base_version, base_session)

    @staticmethod
    def _bases(conn: psycopg2.extensions.connection) -> tuple[int, int]:
        return (
            int(scalar(conn, "SELECT coalesce(max(id), 0) FROM file_versions")),
            int(scalar(conn, "SELECT coalesce(max(id), 0) FROM sessions")),
        )

    def _insert_known(
        self, conn: psycopg2.extensions.connection, tree_files: list[tuple[str, os.stat_result]]
    ) -> None:
        """The tree's files as uploaded versions of the tree job (exact size, mtime, inode
        and, on a schema with migration 0008, ctime: as this daemon records them), one
        completed session per top directory and one attempt row each.

        Without the ctime every file would be a version recorded before 0008, and the scan
        would measure the one-time adoption of the ctimes (``adopt_ctimes``) instead."""
        started = time.perf_counter()
        buffer = io.StringIO()
        for relpath, info in tree_files:
            buffer.write(
                f"{relpath}\t{info.st_size}\t{info.st_mtime_ns}\t{info.st_ino}\t"
                f"{info.st_ctime_ns}\n"
            )
        buffer.seek(0)
        root = str(self.layout.tree)
        with conn.cursor() as cursor:
            cursor.execute(
                "CREATE TEMP TABLE tree_files (relpath text, size bigint, "
                "mtime_ns bigint, inode bigint, ctime_ns bigint)"
            )
            recorded = _column(cursor, "file_versions", "ctime_ns")
            ctime = pgsql.SQL("ctime_ns, " if recorded else "")
            t_ctime = pgsql.SQL("t.ctime_ns, " if recorded else "")
            cursor.copy_expert("COPY tree_files FROM STDIN", buffer)
            cursor.execute(
                "INSERT INTO sessions (job, host, origin, group_key, state, opened_at, "
                "last_activity_at, completed_at, closed_reason) "
                "SELECT DISTINCT %s, %s, 'daemon', split_part(relpath, '/', 1), 'complete', "
                "now() - interval '1 day', now() - interval '1 day', "
                "now() - interval '1 day', 'idle' FROM tree_files",
                (TREE_JOB, self.shape.host),
            )
            insert = pgsql.SQL(
                "INSERT INTO file_versions (job, scope, host, root, relpath, size, mtime_ns, "
                "inode, {ctime}bucket, key, state, attempts, sha256, etag, session_id, "
                "discovered_at, first_attempt_at, uploaded_at, updated_at) "
                "SELECT %(job)s, %(host)s, %(host)s, %(root)s, t.relpath, t.size, t.mtime_ns, "
                "t.inode, {t_ctime}%(bucket)s, %(job)s || '/' || t.relpath, 'uploaded', 1, "
                "md5(t.relpath) || md5(t.inode::text), md5(t.relpath), s.id, "
                "now() - interval '1 day', now() - interval '1 day', now() - interval '1 day', "
                "now() - interval '1 day' FROM tree_files t JOIN sessions s ON s.job = "
                "%(job)s AND s.group_key = split_part(t.relpath, '/', 1)"
            )
            cursor.execute(
                insert.format(ctime=ctime, t_ctime=t_ctime),
                {"job": TREE_JOB, "host": self.shape.host, "root": root, "bucket": BUCKET},
            )
            cursor.execute(
                "INSERT INTO upload_attempts (file_version_id, attempt, host, worker, "
                "started_at, finished_at, outcome, bytes) SELECT id, 1, host, host || ':1:w0', "
                "first_attempt_at, uploaded_at, 'uploaded', size FROM file_versions "
                "WHERE job = %s",
                (TREE_JOB,),
            )
            cursor.execute("DROP TABLE tree_files")
            cursor.execute("ANALYZE file_versions")
        print(
            f"  tree: {len(tree_files):,} known versions inserted in "
            f"{time.perf_counter() - started:.1f}s",
            flush=True,
        )

    def _forget_tree(
        self, conn: psycopg2.extensions.connection, base_version: int, base_session: int
    ) -> None:
        """Back to the generated ledger: the tree job's rows go (by id, above the bases)."""
        with conn.cursor() as cursor:
            cursor.execute(
                "DELETE FROM upload_attempts WHERE file_version_id > %s", (base_version,)
            )
            cursor.execute("DELETE FROM file_versions WHERE id > %s", (base_version,))
            cursor.execute("DELETE FROM sessions WHERE id > %s", (base_session,))
            for table in ("file_versions", "sessions", "upload_attempts"):
                cursor.execute(SYNC_SEQUENCES.format(table=table), {"table": table})
            cursor.execute("VACUUM (ANALYZE) file_versions")
            cursor.execute("VACUUM (ANALYZE) sessions")
            cursor.execute("VACUUM (ANALYZE) upload_attempts")
            if _feature(cursor, "regproc", "ledger_recount"):
                cursor.execute("SELECT ledger_recount()")

    def _sentinel(self) -> str:
        """A new file in the sentinel root, mtime an hour old (complete at second sight)."""
        shutil.rmtree(self.layout.sentinel, ignore_errors=True)
        self.layout.sentinel.mkdir(parents=True)
        name = f"sentinel-{time.time_ns()}.bin"
        path = self.layout.sentinel / name
        path.write_bytes(b"sentinel")
        old = time.time() - 3600
        os.utime(path, (old, old))
        return name

    def _sentinel_query(self, sentinel: str) -> tuple[str, tuple[str, ...]]:
        """Is the sentinel queued? Through the unique index, scope and all: without the
        scope the probe walked every version of the tree job, a million at each poll."""
        query = (
            "SELECT count(*) FROM file_versions "
            "WHERE job = %s AND scope = %s AND root = %s AND relpath = %s"
        )
        return query, (TREE_JOB, self.shape.host, str(self.layout.sentinel), sentinel)

    def _scan_known(self, conn: psycopg2.extensions.connection, count: int) -> None:
        """Start with the tree all known; seconds from process start to the sentinel queued."""
        sentinel = self._sentinel()
        daemon = Daemon(self.work, self._config(tree=True, stream=False), self.env)
        query, params = self._sentinel_query(sentinel)
        try:
            self.result.scan_known_ready_s = daemon.start()
            wait_for(
                lambda: bool(scalar(conn, query, params)),
                self._scan_timeout(count),
                "the scan of the known tree",
                daemon,
            )
            seconds = time.perf_counter() - daemon.started
            self.result.scan_known_seconds = seconds
            self.result.scan_known_rate = count / seconds
            time.sleep(5.0)
            self.result.tree_rss_mb = rss_mb(daemon.pid)
            self.result.tree_rss_peak_mb = rss_mb(daemon.pid, "VmHWM")
        finally:
            daemon.stop()
        print(
            f"  scan of {count:,} known files: {seconds:.1f}s from start "
            f"({self.result.scan_known_rate:,.0f} files/s); RSS "
            f"{self.result.tree_rss_mb:.0f} MB (peak {self.result.tree_rss_peak_mb:.0f})",
            flush=True,
        )

    def _scan_new(
        self, conn: psycopg2.extensions.connection, base_version: int, count: int
    ) -> None:
        """Start with the tree all new; seconds from process start until all are queued.

        The wait polls for the sentinel alone (a count of the new rows at each poll read up
        to a million index entries, PostgreSQL CPU taken from the scan it measured). The
        writer writes chunks in the order given, so once the sentinel is in, so is the
        tree; one count at the end checks that."""
        sentinel = self._sentinel()
        daemon = Daemon(self.work, self._config(tree=True, stream=False), self.env)
        query, params = self._sentinel_query(sentinel)
        try:
            daemon.start()
            wait_for(
                lambda: bool(scalar(conn, query, params)),
                self._scan_timeout(count),
                "the scan of the new tree",
                daemon,
            )
            seconds = time.perf_counter() - daemon.started
        finally:
            daemon.stop()
        queued = int(
            scalar(
                conn,
                "SELECT count(*) FROM file_versions WHERE id > %s AND job = %s",
                (base_version, TREE_JOB),
            )
        )
        if queued != count + 1:  # and the sentinel
            raise BenchError(f"the scan of the new tree queued {queued - 1:,} of {count:,} files")
        self.result.scan_new_seconds = seconds
        self.result.scan_new_rate = count / seconds
        print(
            f"  scan of {count:,} new files: {seconds:.1f}s from start "
            f"({self.result.scan_new_rate:,.0f} files/s)",
            flush=True,
        )

    def _scan_timeout(self, count: int) -> float:
        return max(self.options.timeout, count / 500)  # never below 500 files/s

    # --- prune while uploads run ---

    def measure_prune(self) -> None:
        """On a copy of the ledger: a small-file stream's upload rate alone and while
        ``uploaderd prune`` removes ~``prune_versions`` old versions; claim lock waits."""
        if self.s3 is None:
            self.result.notes.append("prune: needs an S3 server (--s3)")
            return
        copy = f"{self.db}_prune"
        self.pg.drop_database(copy)
        started = time.perf_counter()
        with contextlib.closing(psycopg2.connect(self.pg.dsn())) as conn:
            conn.autocommit = True
            for attempt in range(20):  # the last daemon's backends may still be exiting
                try:
                    with conn.cursor() as cursor:  # names from size_label: [a-z0-9_] only
                        cursor.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{self.db}"')
                    break
                except psycopg2.errors.ObjectInUse:
                    if attempt == 19:
                        raise
                    time.sleep(0.5)
        print(f"  prune: copied the ledger in {time.perf_counter() - started:.1f}s", flush=True)
        dsn, self.dsn = self.dsn, self.pg.dsn(copy)
        try:
            self._prune_on_copy()
        finally:
            self.dsn = dsn
            self.pg.drop_database(copy)

    def _prune_on_copy(self) -> None:
        config = self._config(tree=False, stream=True)
        days = max(
            1, math.floor((self.shape.versions - self.options.prune_versions) / self.shape.per_day)
        )
        older_than = f"{days}d"
        daemon = Daemon(self.work, config, self.env)
        conn = psycopg2.connect(self.dsn, application_name="bench")
        conn.autocommit = True
        prune: subprocess.Popen[bytes] | None = None
        try:
            daemon.start()
            alone = self._stream(conn, daemon, "alone")
            before = int(scalar(conn, "SELECT count(*) FROM file_versions"))
            log = (self.work / "prune.log").open("ab")
            started = time.perf_counter()
            prune = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uploaderd",
                    "prune",
                    "-c",
                    str(config),
                    "--older-than",
                    older_than,
                ],
                env=self.env,
                cwd=NEUTRAL_CWD,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            waits = _LockWaits(self.dsn)
            with waits.sampling():
                during = self._stream_while(conn, daemon, prune)
                code = prune.wait(self.options.timeout * 10)
            seconds = time.perf_counter() - started
            log.close()
            after = int(scalar(conn, "SELECT count(*) FROM file_versions"))
            self.result.prune = {
                "older_than": older_than,
                "seconds": seconds,
                "exit": code,
                "versions_removed": before - after,
                "stream_alone_files_s": alone,
                "stream_during_files_s": during,
                "claim_lock_waits_seen": waits.seen,
                "stream_files": self.options.stream_files,
            }
            print(
                f"  prune --older-than {older_than}: {before - after:,} versions in "
                f"{seconds:.1f}s (exit {code}); stream {alone:.0f} files/s alone, "
                f"{during:.0f} during; lock waits seen: {waits.seen}",
                flush=True,
            )
        finally:
            if prune is not None:
                terminate(prune, 10.0)
            daemon.stop()
            conn.close()

    def _stream_while(
        self, conn: psycopg2.extensions.connection, daemon: Daemon, prune: subprocess.Popen[bytes]
    ) -> float:
        """Stream batch after batch until the prune is over; files/s over all of them."""
        seconds, batches = 0.0, 0
        while True:
            seconds += self.options.stream_files / self._stream(conn, daemon, f"during{batches}")
            batches += 1
            if prune.poll() is not None:
                return batches * self.options.stream_files / seconds

    def _stream(self, conn: psycopg2.extensions.connection, daemon: Daemon, label: str) -> float:
        """``stream_files`` small files moved in at once; files/s until all are uploaded."""
        count = self.options.stream_files
        staging = self.work / f"staging-{label}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for index in range(count):
            (staging / f"{label}-{index:05d}.bin").write_bytes(os.urandom(4096))
        os.sync()
        base = int(scalar(conn, "SELECT coalesce(max(id), 0) FROM file_versions"))
        # A bounded id range: an open one let the planner read far more as the prune
        # changed the statistics (a fifth of a core, polling).
        query = (
            "SELECT count(*) FROM file_versions WHERE id > %s AND id <= %s AND job = %s "
            "AND state = 'uploaded'"
        )
        # Each batch in a directory of its own, so in a prefix of its own on the S3 server:
        # rclone serve s3's cost per PUT grows with the objects beside it, and the batches
        # during a long prune would otherwise be measured against an ever fuller directory.
        into = self.layout.stream / label
        into.mkdir()
        started = time.perf_counter()
        for path in staging.iterdir():
            os.utime(path)
            os.rename(path, into / path.name)
        wait_for(
            lambda: int(scalar(conn, query, (base, base + 2 * count, STREAM_JOB))) >= count,
            self.options.timeout,
            f"the {label} stream",
            daemon,
            poll=0.1,
        )
        seconds = time.perf_counter() - started
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(into, ignore_errors=True)
        return count / seconds


class _LockWaits:
    """Samples pg_stat_activity: the most daemon backends seen waiting on a lock at once."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.seen = 0
        self._stop = threading.Event()

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join(5)

    def _sample(self) -> None:
        with contextlib.closing(psycopg2.connect(self.dsn, application_name="bench")) as conn:
            conn.autocommit = True
            while not self._stop.wait(0.1):
                waiting = scalar(
                    conn,
                    "SELECT count(*) FROM pg_stat_activity WHERE "
                    "application_name LIKE 'uploaderd%%' "
                    "AND application_name <> 'uploaderd prune' "
                    "AND wait_event_type = 'Lock'",
                )
                self.seen = max(self.seen, int(waiting or 0))


def prune_command_exists(env: dict[str, str]) -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "uploaderd", "prune", "--help"],
        env=env,
        cwd=NEUTRAL_CWD,
        capture_output=True,
        check=False,
        timeout=60,
    )
    return done.returncode == 0


# --- the watched tree ------------------------------------------------------------------------


def make_tree(tree: Path, count: int, per_dir: int = 1000) -> list[tuple[str, os.stat_result]]:
    """``count`` small files as ``run-NNNNNN/img-NNNNNN.tif`` (kept when it already holds
    exactly these), with an mtime an hour old; their (relpath, stat)."""
    marker = tree / ".bench-count"
    if not (marker.is_file() and marker.read_text() == str(count)):
        shutil.rmtree(tree, ignore_errors=True)
        started = time.perf_counter()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        payload = b"x" * 64
        for start in range(0, count, per_dir):
            directory = tree / f"run-{start // per_dir:06d}"
            directory.mkdir(parents=True)
            for index in range(start, min(count, start + per_dir)):
                fd = os.open(directory / f"img-{index:07d}.tif", flags, 0o644)
                os.write(fd, payload)
                os.close(fd)
        old = time.time() - 3600
        for directory in tree.iterdir():
            for path in directory.iterdir():
                os.utime(path, (old, old))
        marker.write_text(str(count))
        print(
            f"  tree: {count:,} files written in {time.perf_counter() - started:.1f}s", flush=True
        )
    files = []
    for directory in sorted(tree.iterdir()):
        if directory.is_dir():
            for entry in os.scandir(directory):
                files.append((f"{directory.name}/{entry.name}", entry.stat(follow_symlinks=False)))
    return files


# --- the report ------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "-"


def report(results: Sequence[SizeResult], command: str, load: tuple[float, float]) -> str:
    sizes = [size_label(r.versions) for r in results]
    width = 13
    rows: list[tuple[str, list[str], str]] = []

    def row(label: str, values: list[str], target: str = "") -> None:
        rows.append((label, values, target))

    row("generate ledger (s)", [_fmt(r.generate_seconds, ".0f") for r in results])
    row(
        "migrate on reuse (s)",
        [_fmt(r.migrate_seconds, ".1f") if r.migrated else "-" for r in results],
    )
    row("ledger bytes/version", [_fmt(r.bytes_per_version, ".0f") for r in results])
    row(
        "READY after start (s)", [_fmt(r.ready_seconds, ".2f") for r in results], TARGETS["ready_s"]
    )
    row("RSS after READY (MB)", [_fmt(r.rss_ready_mb, ".0f") for r in results], TARGETS["rss_mb"])
    row("RSS after idle (MB)", [_fmt(r.rss_idle_mb, ".0f") for r in results], TARGETS["rss_mb"])
    row("RSS peak (MB)", [_fmt(r.rss_peak_mb, ".0f") for r in results], TARGETS["rss_mb"])
    row(
        "first file queued (s)", [_fmt(r.first_file_queued_s, ".2f") for r in results], "settle 1 s"
    )
    row("first file uploaded (s)", [_fmt(r.first_file_uploaded_s, ".2f") for r in results])
    row("idle CPU daemon (%)", [_fmt(r.idle_daemon_cpu_pct, ".1f") for r in results])
    row("idle CPU PostgreSQL (%)", [_fmt(r.idle_pg_cpu_pct, ".1f") for r in results])
    row(
        "idle CPU total (%)",
        [
            _fmt((r.idle_daemon_cpu_pct or 0) + (r.idle_pg_cpu_pct or 0), ".1f")
            if r.idle_seconds
            else "-"
            for r in results
        ],
        TARGETS["idle_cpu"],
    )
    row("uploaderd status (ms)", [_fmt(r.status_ms, ".0f") for r in results], TARGETS["status_ms"])
    row("tree files", [f"{r.tree_files:,}" if r.tree_files else "-" for r in results])
    row(
        "scan, all known (files/s)",
        [_fmt(r.scan_known_rate, ",.0f") for r in results],
        TARGETS["scan_rate"],
    )
    row(
        "scan, all new (files/s)",
        [_fmt(r.scan_new_rate, ",.0f") for r in results],
        TARGETS["scan_rate"],
    )
    row(
        "RSS, tree known (MB)",
        [_fmt(r.tree_rss_mb, ".0f") for r in results],
        TARGETS["tree_rss_mb"],
    )
    row("RSS peak, tree known (MB)", [_fmt(r.tree_rss_peak_mb, ".0f") for r in results])
    if any(r.prune for r in results):
        row("prune seconds", [_fmt(r.prune.get("seconds"), ".1f") for r in results])
        row(
            "prune versions removed",
            [f"{r.prune['versions_removed']:,}" if r.prune else "-" for r in results],
        )
        row(
            "stream alone (files/s)",
            [_fmt(r.prune.get("stream_alone_files_s"), ".0f") for r in results],
        )
        row(
            "stream during prune (files/s)",
            [_fmt(r.prune.get("stream_during_files_s"), ".0f") for r in results],
            TARGETS["prune"],
        )
        row(
            "claims waiting on a lock",
            [str(r.prune.get("claim_lock_waits_seen", "-")) for r in results],
            "0",
        )
    header = f"{'measure':<30}" + "".join(f"{s:>{width}}" for s in sizes) + "   target"
    lines = [
        f"{os.cpu_count()} CPUs; 1-minute load average {load[0]:.2f} before, {load[1]:.2f} after",
        "",
        header,
        "-" * len(header),
    ]
    for label, values, target in rows:
        lines.append(
            f"{label:<30}"
            + "".join(f"{v:>{width}}" for v in values)
            + (f"   {target}" if target else "")
        )
    lines += _query_table(results)
    lines += _statements_table(results)
    for result in results:
        for note in result.notes:
            lines.append(f"note ({size_label(result.versions)}): {note}")
    lines += ["", f"reproduce: {command}"]
    return "\n".join(lines)


def _query_table(results: Sequence[SizeResult]) -> list[str]:
    if not any(r.queries for r in results):
        return []
    labels: list[str] = []
    for result in results:
        labels += [q.label for q in result.queries if q.label not in labels]
    header = (
        f"{'query (median ms; S = seq scan of history)':<44}"
        + "".join(f"{size_label(r.versions):>12}" for r in results)
        + "   runs"
    )
    lines = [
        "",
        f"timer and per-batch queries, target {TARGETS['query_ms']}",
        header,
        "-" * len(header),
    ]
    for label in labels:
        cells, when = [], ""
        for result in results:
            found = next((q for q in result.queries if q.label == label), None)
            if found is None or found.median_ms is None:
                cells.append(found.note[:11] if found and found.note else "-")
                when = found.when if found else when
                continue
            when = found.when
            cells.append(f"{found.median_ms:.1f}{' S' if found.seq_scans else '  '}")
        lines.append(f"{label:<44}" + "".join(f"{c:>12}" for c in cells) + f"   {when}")
    scans = {q.label: q.seq_scans for r in results for q in r.queries if q.seq_scans}
    for label, tables in scans.items():
        lines.append(f"  S {label}: Seq Scan on {', '.join(tables)}")
    return lines


def _statements_table(results: Sequence[SizeResult]) -> list[str]:
    lines = []
    for result in results:
        if not result.idle_statements:
            continue
        lines += [
            "",
            f"what the idle daemon ran at {size_label(result.versions)} "
            f"(pg_stat_statements over {result.idle_seconds:.0f}s)",
            f"{'statement':<52}{'calls':>7}{'mean ms':>10}{'total ms':>10}{'blocks':>10}",
        ]
        for row in result.idle_statements:
            lines.append(
                f"{row['query'][:51]:<52}{row['calls']:>7}{row['mean_ms']:>10.1f}"
                f"{row['total_ms']:>10.0f}{row['blocks_per_call']:>10}"
            )
    return lines


def results_json(results: Sequence[SizeResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        default=[1_000_000, 5_000_000],
        help="ledger sizes in versions, e.g. 200k 1M 5M 20M (default 1M 5M)",
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="build the cluster (and tree) in DIR and keep it"
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        metavar="DIR",
        help="reuse a cluster kept with --keep; ledgers of the same size are "
        "not generated again, `uploaderd migrate` runs (timed) first",
    )
    parser.add_argument(
        "--s3",
        choices=[*sorted(S3_SERVERS), "none"],
        default="rclone",
        help="S3 server for the uploads (default rclone; none: queue only)",
    )
    parser.add_argument("--idle", type=float, default=60.0, help="idle window seconds (60)")
    parser.add_argument(
        "--tree",
        type=int,
        default=100_000,
        help="files in the watched tree for the scan measurements (100000)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per query (5)")
    parser.add_argument(
        "--query-budget",
        type=float,
        default=20.0,
        help="seconds at most spent timing one query (20)",
    )
    parser.add_argument(
        "--prune-versions",
        type=int,
        default=1_000_000,
        help="old versions the prune measurement removes (1000000)",
    )
    parser.add_argument(
        "--stream",
        type=int,
        default=1000,
        help="4 KiB files in the upload stream beside the prune (1000)",
    )
    for name in ("idle", "queries", "status", "scan", "prune"):
        parser.add_argument(f"--skip-{name}", action="store_true", help=f"skip the {name} part")
    parser.add_argument(
        "--with-triggers", action="store_true", help="generate with user triggers enabled (slower)"
    )
    parser.add_argument("--workers", type=int, default=4, help="uploaderd workers (4)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds allowed per wait (default 300; scans scale with --tree)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="uploaderd's log level (info)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results")
    args = parser.parse_args(argv)
    if args.keep and args.reuse:
        parser.error("--keep and --reuse are exclusive (--reuse keeps the directory too)")
    if args.reuse and not (args.reuse / "postgres").is_dir():
        parser.error(f"--reuse {args.reuse}: no cluster there (create one with --keep)")
    return args


def options_of(args: argparse.Namespace) -> Options:
    return Options(
        args.idle,
        args.tree,
        args.repeat,
        args.query_budget,
        args.skip_idle,
        args.skip_queries,
        args.skip_status,
        args.skip_scan,
        args.skip_prune,
        args.prune_versions,
        args.stream,
        args.with_triggers,
        args.log_level,
        args.workers,
        args.timeout,
    )


@contextlib.contextmanager
def work_directory(args: argparse.Namespace) -> Iterator[Path]:
    """Under /tmp unless given: PostgreSQL runs as `postgres` when we are root."""
    kept = args.keep or args.reuse
    if kept:
        work = kept.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="uploaderd-ledger-"))
    work.chmod(0o755)
    try:
        yield work
    finally:
        if kept:
            print(f"kept {work} (rerun with --reuse {work})", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def measure_size(
    pg: PostgresCluster,
    work: Path,
    shape: Shape,
    options: Options,
    s3: S3Server | None,
    pgss: bool,
    state: dict[str, Any],
    tree_files: list[tuple[str, os.stat_result]] | None,
    prune: bool,
) -> SizeResult:
    print(f"\n== ledger of {shape.versions:,} versions", flush=True)
    run = LedgerRun(pg, work, shape, options, s3, pgss, state)
    run.prepare()
    (work / "ledgers.json").write_text(json.dumps(state, indent=2) + "\n")
    run.measure_daemon()
    if not options.skip_queries:
        run.measure_queries()
    if not options.skip_status:
        run.measure_status()
    if tree_files is not None:
        run.measure_scans(tree_files)
    if prune:
        run.measure_prune()
    return run.result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = options_of(args)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    load_before = os.getloadavg()[0]
    results: list[SizeResult] = []
    print(
        f"uploaderd ledger scale: {', '.join(size_label(s) for s in args.sizes)} versions; "
        f"{os.cpu_count()} CPUs; uploaderd from {Path(uploaderd.__file__).parent}",
        flush=True,
    )
    try:
        with work_directory(args) as work, contextlib.ExitStack() as stack:
            pg = PostgresCluster(work / "postgres")
            stack.callback(pg.stop)
            pg.start()
            pgss = enable_pg_stat_statements(pg)
            s3: S3Server | None = None
            if args.s3 != "none":
                s3 = S3_SERVERS[args.s3](work / "s3")
                stack.callback(s3.cleanup)
                s3.start()
                s3.create_bucket(BUCKET)
            state_file = work / "ledgers.json"
            state = json.loads(state_file.read_text()) if state_file.is_file() else {}
            tree_files = None if args.skip_scan else make_tree(work / "tree", args.tree)
            prune = not args.skip_prune and prune_command_exists(dict(os.environ))
            if not args.skip_prune and not prune:
                print("(no `uploaderd prune` command: the prune measurement is skipped)")
            for versions in args.sizes:
                results.append(
                    measure_size(
                        pg, work, Shape(versions), options, s3, pgss, state, tree_files, prune
                    )
                )
                if args.json:
                    args.json.write_text(
                        json.dumps(results_json(results), indent=2, default=str) + "\n"
                    )
    except (BenchError, psycopg2.Error) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    load = (load_before, os.getloadavg()[0])
    pythonpath = [f"PYTHONPATH={os.environ['PYTHONPATH']}"] if "PYTHONPATH" in os.environ else []
    command = shlex.join([*pythonpath, ".venv/bin/python", "bench/ledger_scale.py", *sys.argv[1:]])
    print("\n" + report(results, command, load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
