"""All access to PostgreSQL: the durable queue and the ledger of every file version.

One ``Ledger`` wraps one connection and is used by one thread. Each method runs named
queries from ``sql/queries.sql`` and commits before it returns, so no transaction is ever
held across an upload. Every error that means "not now" (the connection lost, a read-only
database after a failover, an administrator's shutdown, a serialization failure, too many
connections) surfaces as ``DatabaseUnavailable``, mapped in one place (``_not_now``); the
caller decides whether to back off and reconnect (the daemon) or to exit 3 (a command).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from uploaderd.config.settings import DaemonConfig
from uploaderd.errors import DatabaseUnavailable, SchemaMissing
from uploaderd.ledger.connections import Budget
from uploaderd.policy.settle import Candidate, Signature

NOTIFY_CHANNEL = "uploaderd_work"
SWEEP_LEASE_SECONDS = 60.0  # a sweep's turn; a holder that dies elsewhere frees it this late
_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


class State(StrEnum):
    PENDING = "pending"
    UPLOADING = "uploading"
    UPLOADED = "uploaded"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    GONE = "gone"  # the queued file vanished (or is no longer a regular file): final


# States that the claim and the statements over a worker's own claims re-check as bound
# parameters, never literals: from a literal the planner can prove a partial index's
# predicate and walk that whole index for a few ids (queries.sql, claim_batch and
# renew_leases).
_STATES = {"pending": str(State.PENDING), "uploading": str(State.UPLOADING)}


# SQLSTATE classes and codes that mean "not now, try again": the server or the connection is
# in trouble, not the statement. 08 connection exception, 25006 read-only transaction (a
# demoted primary), 40 transaction rollback (serialization failure, deadlock), 53
# insufficient resources (too many connections, disk full), 57 operator intervention
# (admin or crash shutdown, cannot connect now, a cancelled statement), 58 system error
# (I/O), 55P03 lock not available, 55006 object in use, 26000 a prepared statement the
# session no longer has (a pooler handed us another server session): a new connection
# prepares it again.
_NOT_NOW_CLASSES = ("08", "40", "53", "57", "58")
_NOT_NOW_CODES = ("25006", "55P03", "55006", "26000")


def texts(values: Iterable[str | None]) -> str:
    """``values`` as one PostgreSQL array literal, for a ``%(name)s::text[]`` parameter.

    psycopg2 adapts a list one element at a time, about 1 µs each, holding the GIL:
    discovery's batches (nine columns of 500 files to queue, six of 2,000 to look up) cost
    4 µs a file that way, a fifth of that as one literal
    (bench/results/2026-12-02-stop-18.md); the dispatcher's outcomes have nine columns too.
    Every element is quoted, so none can read as NULL or end the array; the literal itself is
    still a bound parameter.
    """
    return "{" + ",".join("NULL" if v is None else _quoted(v) for v in values) + "}"


def numbers(values: Iterable[float | None]) -> str:
    """``values`` as one PostgreSQL array literal, for a ``%(name)s::bigint[]`` (or
    ``int[]``, ``float8[]``) parameter."""
    return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Candidates per known_paths() call: one round trip answers this many "already known?".
LOOKUP_BATCH = 2000


@dataclass(frozen=True)
class NewVersion:
    """A complete file version found by discovery, with its rendered key."""

    root: str
    relpath: str
    size: int
    mtime_ns: int
    inode: int
    key: str
    session_id: int | None
    error: str | None = None  # set when the version can never upload (an unsafe key)
    ctime_ns: int | None = None  # always set by discovery; None only in hand-made rows

    @classmethod
    def of(
        cls, candidate: Candidate, *, key: str, session_id: int | None, error: str | None = None
    ) -> NewVersion:
        sig = candidate.signature
        return cls(
            candidate.root,
            candidate.relpath,
            sig.size,
            sig.mtime_ns,
            sig.inode,
            key=key,
            session_id=session_id,
            error=error,
            ctime_ns=sig.ctime_ns,
        )


@dataclass(frozen=True)
class Claim:
    """A file version this worker holds a lease on, for exactly one attempt."""

    id: int
    job: str
    root: str
    relpath: str
    size: int
    mtime_ns: int
    inode: int
    bucket: str
    key: str
    attempt: int  # the attempt number in the history (upload_attempts)
    session_id: int | None
    tries: int  # attempts since the last manual retry: what the retry policy counts
    multipart_upload_id: str | None = None  # an earlier attempt's upload, to resume
    multipart_part_size: int | None = None
    ctime_ns: int | None = None  # None for versions queued before migration 0008
    # The newest upload of another file (host:relpath) to the same bucket and key, and its
    # SHA-256: this version must not overwrite it with different content.
    holder_sha256: str | None = None
    holder: str | None = None
    repair: bool = False  # requeued by `verify --repair` since its last upload

    @property
    def signature(self) -> Signature:
        """The queued version's signature: the file must still have it to be uploaded."""
        return Signature(self.size, self.mtime_ns, self.inode, self.ctime_ns)


@dataclass(frozen=True)
class MultipartStarted:
    """An attempt created a multipart upload: worth recording before its parts go up."""

    claim: Claim
    upload_id: str
    part_size: int


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt, as the dispatcher writes it back."""

    claim: Claim
    state: State
    outcome: str  # uploaded | failed | changed
    sha256: str | None = None
    etag: str | None = None
    error: str | None = None
    retry_in: float | None = None  # seconds until the next attempt, when state is pending
    bytes: int = 0
    seconds: float = 0.0  # how long the attempt took (for the log)


@cache
def queries() -> dict[str, str]:
    """The named blocks of ``queries.sql``, loaded once."""
    text = resources.files("uploaderd.sql").joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


_PARAMETER = re.compile(r"%\((\w+)\)s")

# What the daemon runs per batch or on a timer, prepared once per connection: PostgreSQL then
# plans each once (its generic plan: session_settings asks for it) instead of at every call.
# Planning these was a third of PostgreSQL's CPU for files arriving one by one. Commands,
# migrations and the hourly prune run their statements as plain text.
PREPARED = frozenset(
    {
        "claim_batch",
        "renew_leases",
        "complete_batch",
        "release_claims",
        "known_paths",
        "open_sessions",
        "enqueue_versions",
        "notify_work",
        "job_counts",
        "compact_counts",
        "abandoned_uploads",
        "notify_due_retries",
        "remember_markers",
        "complete_sessions",
        "batch_uploaded_files",
        "due_triggers",
        "undisposed_files",
    }
)


@dataclass(frozen=True)
class Prepared:
    """A named query as a prepared statement: its parameters numbered in order of first use."""

    name: str
    prepare: str  # PREPARE name AS the query (run once per connection)
    execute: str  # EXECUTE name (...), its arguments bound by psycopg2


@cache
def prepared(name: str) -> Prepared:
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in order:
            order.append(match[1])
        return f"${order.index(match[1]) + 1}"

    # Run without arguments, the PREPARE is not interpolated: a literal % is written once.
    body = _PARAMETER.sub(number, queries()[name]).replace("%%", "%")
    statement = f"uploaderd_{name}"
    arguments = f" ({', '.join(f'%({p})s' for p in order)})" if order else ""
    return Prepared(statement, f"PREPARE {statement} AS {body}", f"EXECUTE {statement}{arguments}")


@cache
def _holder_of(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}"


def lease_holder() -> str:
    """This process as the holder of a lease: host:pid:token, like a worker's claims (so
    its host's next daemon sees when it died)."""
    return _holder_of(os.getpid())


def describe_dsn(dsn: str) -> str:
    """The DSN without any password, for messages and logs."""
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        return "<unparsable DSN>"
    params.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in sorted(params.items()))


@contextmanager
def _mapped(session: psycopg2.extensions.connection) -> Iterator[None]:
    """The one error mapping: driver errors that mean "not now" become
    ``DatabaseUnavailable`` and close the connection, so the next transaction opens a new
    one (a session of a demoted primary stays read-only until it ends)."""
    try:
        yield
    except psycopg2.errors.UndefinedTable as exc:
        raise SchemaMissing(
            f"the database has no uploaderd schema ({_first_line(exc)}): run `uploaderd migrate`"
        ) from exc
    except psycopg2.Error as exc:
        if not _not_now(exc):
            raise
        session.close()
        raise DatabaseUnavailable(f"PostgreSQL: {_first_line(exc)}") from exc


def wanted_notice(payload: str, host: str | None) -> bool:
    """Whether a new-work notification should wake the pool of ``host`` (None: any).

    Work is announced by the host that enqueued it (``notify_work``). Another host's work
    is either its own scope, which no one else may claim, or a shared job's, which that host
    claims at once: the others find what it leaves at their next poll instead of every host
    running a claim for every batch (the fan-out that made a shared file's cost grow with
    the hosts). A payload without a host (the retry sweep's, or an older daemon's)
    wakes everyone.
    """
    if host is None or not payload.startswith("{"):
        return True
    try:
        announced = json.loads(payload).get("host")
    except (ValueError, AttributeError):
        return True
    return announced is None or announced == host


class Session(psycopg2.extensions.connection):  # type: ignore[misc]  # psycopg2 has no stubs
    """A connection, and what this process set up on it: the statements prepared, whether
    it listens for new work."""

    def __init__(self, dsn: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(dsn, *args, **kwargs)
        self.prepared: set[str] = set()
        self.listening = False
        self.in_transaction = False


def open_session(dsn: str, application_name: str, *, settings: bool = True) -> Session:
    """A new connection with the session's settings (none through a transaction pooler,
    whose server sessions other clients share), or ``DatabaseUnavailable``."""
    try:
        session = psycopg2.connect(
            dsn,
            connection_factory=Session,
            application_name=application_name,
            connect_timeout=5,
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
    except psycopg2.Error as exc:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL ({describe_dsn(dsn)}): {_first_line(exc)}"
        ) from exc
    assert isinstance(session, Session)
    if settings:
        with _mapped(session), session, session.cursor() as cursor:
            cursor.execute(queries()["session_settings"])
    return session


def connection_budget(
    dsn: str,
    size: int,
    application_name: str,
    *,
    pool_mode: str = "session",
    on_new_server: Callable[[str, str], None] | None = None,
) -> Budget[Session]:
    """What the daemon's ledgers share: at most ``size`` connections.

    With ``on_new_server``, each new connection asks which server it reached, and a change
    from the one before (a standby promoted by a failover: ``server_identity``) is reported
    as ``(before, now)`` on the thread that opened it.
    """
    settings = pool_mode == "session"
    if on_new_server is None:
        return Budget(lambda: open_session(dsn, application_name, settings=settings), size)
    watch = _ServerWatch(on_new_server)

    def open_watched() -> Session:
        session = open_session(dsn, application_name, settings=settings)
        with _mapped(session), session, session.cursor() as cursor:
            cursor.execute(queries()["server_identity"])
            (identity,) = cursor.fetchone() or (None,)
        watch.saw(identity)
        return session

    return Budget(open_watched, size)


class _ServerWatch:
    """The last server identity a process's connections reported (None: a standby's, which
    no write reaches, is not compared)."""

    def __init__(self, on_change: Callable[[str, str], None]) -> None:
        self._on_change = on_change
        self._known: str | None = None
        self._lock = threading.Lock()

    def saw(self, identity: str | None) -> None:
        if identity is None:
            return
        with self._lock:
            before, self._known = self._known, identity
        if before is not None and before != identity:
            self._on_change(before, identity)


class Ledger:
    """Ledger operations for one thread, on a connection of its own or borrowed, one
    transaction at a time, from a budget it shares with the process's other ledgers.

    With ``pool_mode="transaction"`` (PgBouncer's transaction pooling, where consecutive
    transactions may run in different server sessions) it keeps nothing in a session:
    statements run as text, not prepared; no session settings; no LISTEN, so a waiter polls
    and hears this process's own new work through the budget's bell.
    """

    def __init__(
        self,
        dsn: str,
        *,
        application_name: str = "uploaderd",
        budget: Budget[Session] | None = None,
        pool_mode: str = "session",
    ) -> None:
        self.dsn = dsn
        self.application_name = application_name
        self._sessions = pool_mode == "session"
        self._shared = budget is not None
        self._budget = budget or self._own_budget()
        self._sweep_lease: str | None = None  # held by this thread's sweep: renewed as it works
        self._renew_at = 0.0

    @classmethod
    def of(
        cls, config: DaemonConfig, application_name: str, budget: Budget[Session] | None = None
    ) -> Ledger:
        """A ledger on the daemon configuration's database (its DSN and pool mode)."""
        return cls(
            config.dsn, application_name=application_name, budget=budget, pool_mode=config.pool_mode
        )

    def _own_budget(self) -> Budget[Session]:
        settings = self._sessions
        return Budget(
            lambda: open_session(self.dsn, self.application_name, settings=settings),
            1,
            idle_close=None,
        )

    # --- connection ------------------------------------------------------------------------

    def connect(self) -> Ledger:
        """Open a connection now (or reuse a free one): a DSN that does not work fails here."""
        with self._budget.connection():
            return self

    def clone(self, application_name: str) -> Ledger:
        """The same ledger (same class and DSN) for another thread: on a connection of its
        own, or on the same budget when it shares one."""
        twin = copy.copy(self)
        twin.application_name = application_name
        if not self._shared:
            twin._budget = twin._own_budget()
        return twin

    def close(self) -> None:
        """Close this ledger's own connection; a shared budget's belong to the process."""
        if not self._shared:
            self._budget.close()

    @contextmanager
    def held(self) -> Iterator[Session]:
        """A connection held for the block, for a caller that runs its own transactions."""
        with self._budget.connection() as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor in a transaction that commits on success; "not now" → unavailable."""
        with self.held() as session:
            if session.in_transaction:
                raise RuntimeError("a ledger transaction inside another on the same thread")
            session.in_transaction = True
            try:
                with _mapped(session), session, session.cursor() as cursor:
                    self._renew_sweep_lease(cursor)
                    yield cursor
            finally:
                session.in_transaction = False

    def _execute(
        self, cursor: psycopg2.extensions.cursor, name: str, params: dict[str, Any]
    ) -> None:
        """Run a named query; one of ``PREPARED`` through its prepared statement."""
        if name not in PREPARED or not self._sessions:
            cursor.execute(queries()[name], params)
            return
        statement = prepared(name)
        session = cursor.connection
        assert isinstance(session, Session)
        if statement.name not in session.prepared:
            cursor.execute(statement.prepare)  # outlives a rollback: it is the session's
            session.prepared.add(statement.name)
        cursor.execute(statement.execute, params)

    def _all(self, name: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self.transaction() as cursor:
            self._execute(cursor, name, params or {})
            return cursor.fetchall() if cursor.description else []

    def ping(self) -> None:
        self._all("ping")

    # --- schema ----------------------------------------------------------------------------

    def applied_migrations(self) -> set[int]:
        if not self._all("migrations_table_exists")[0][0]:
            return set()
        return {row[0] for row in self._all("applied_migrations")}

    def apply_migration(self, version: int, name: str, sql: str) -> bool:
        """One migration file and its record, in one transaction under the migrations' lock;
        False when another host applied it first."""
        with self.transaction() as cursor:
            cursor.execute(queries()["lock_migrations"])
            cursor.execute(queries()["create_migrations_table"])
            cursor.execute(queries()["applied_migrations"])
            if version in {row[0] for row in cursor.fetchall()}:
                return False
            cursor.execute(sql)
            cursor.execute(queries()["record_migration"], {"version": version, "name": name})
            return True

    # --- discovery -------------------------------------------------------------------------

    def known_paths(
        self, job: str, scope: str, candidates: Sequence[Candidate]
    ) -> set[tuple[str, str]]:
        """The (root, relpath) of ``candidates`` whose exact signature the ledger holds."""
        if not candidates:
            return set()
        params = {
            "job": job,
            "scope": scope,
            "roots": texts(c.root for c in candidates),
            "relpaths": texts(c.relpath for c in candidates),
            "sizes": numbers(c.signature.size for c in candidates),
            "mtimes": numbers(c.signature.mtime_ns for c in candidates),
            "inodes": numbers(c.signature.inode for c in candidates),
            "ctimes": numbers(c.signature.ctime_ns for c in candidates),
        }
        with self.transaction() as cursor:
            self._execute(cursor, "known_paths", params)
            rows = cursor.fetchall()
            unstamped = [row for row in rows if row[2] is not None and (row[3] or row[4])]
            if unstamped:
                signatures = [row for row in unstamped if row[4]]
                cursor.execute(
                    queries()["adopt_ctimes"],
                    {
                        "job": job,
                        "scope": scope,
                        "ids": [row[3] for row in unstamped if row[3]],
                        "ctimes": [row[2] for row in unstamped if row[3]],
                        "roots": [row[0] for row in signatures],
                        "relpaths": [row[1] for row in signatures],
                        "signature_ctimes": [row[2] for row in signatures],
                    },
                )
        return {(root, relpath) for root, relpath, *_ in rows}

    def open_sessions(self, job: str, host: str, group_keys: Sequence[str]) -> dict[str, int]:
        params = {"job": job, "host": host, "group_keys": list(group_keys)}
        rows = self._all("open_sessions", params)
        return {group_key: session_id for session_id, group_key in rows}

    def enqueue(
        self,
        job: str,
        *,
        scope: str,
        host: str,
        bucket: str,
        versions: Sequence[NewVersion],
        marker: str | None = None,
    ) -> tuple[int, int]:
        """Insert new versions in one statement and wake the workers; (inserted, superseded).

        A version named ``marker`` marks its session as having seen its marker file.
        """
        params = {
            "job": job,
            "scope": scope,
            "host": host,
            "bucket": bucket,
            "marker": marker,
            "roots": texts(v.root for v in versions),
            "relpaths": texts(v.relpath for v in versions),
            "sizes": numbers(v.size for v in versions),
            "mtimes": numbers(v.mtime_ns for v in versions),
            "inodes": numbers(v.inode for v in versions),
            "ctimes": numbers(v.ctime_ns for v in versions),
            "keys": texts(v.key for v in versions),
            "sessions": numbers(v.session_id for v in versions),
            "errors": texts(v.error for v in versions),
        }
        with self.transaction() as cursor:
            self._execute(cursor, "enqueue_versions", params)
            inserted, superseded = cursor.fetchone() or (0, 0)
            if inserted:
                self._execute(cursor, "notify_work", {"job": job, "host": host})
        if inserted:
            self._budget.ring()  # this process's waiter, when it cannot listen
        return int(inserted), int(superseded)

    # --- the upload queue ------------------------------------------------------------------

    def listen(self) -> None:
        """Make the connection the next wait will most likely get (the one returned last)
        listen for new work (through a transaction pooler: hang the bell this process's
        writers ring instead)."""
        if not self._sessions:
            self._budget.hang_bell()
            return
        with self._budget.connection() as session:
            if not session.listening:
                self._listen(session)

    def wait_for_notify(self, timeout: float, *extra_fds: int, host: str | None = None) -> bool:
        """Block until new work is announced, ``extra_fds`` are readable, another thread
        needs the connection, or ``timeout``. True on an announcement, and when the wait
        had to start listening (what was announced before is lost: look for work). Given
        ``host``, work another host enqueued is no announcement (see ``wanted_notice``). With
        every connection of a shared budget lent out, it waits without one until one comes
        back (a listening connection keeps what arrived meanwhile), then waits on that.
        Through a transaction pooler it waits on this process's bell instead, without a
        connection."""
        if not self._sessions:
            return self._budget.wait_for_ring(timeout, extra_fds)
        deadline = time.monotonic() + timeout
        while True:
            with self._budget.listening() as (session, wake):
                left = max(0.0, deadline - time.monotonic())
                if session is not None:
                    return self._wait_on(session, wake, left, extra_fds, host)
                ready, _, _ = select.select([wake, *extra_fds], [], [], left)
                if ready != [wake] or time.monotonic() >= deadline:
                    return False
            # A connection came back: wait on it for what is left of the timeout.

    def _wait_on(
        self,
        session: Session,
        wake: int,
        timeout: float,
        extra_fds: Sequence[int],
        host: str | None,
    ) -> bool:
        if not session.listening:
            self._listen(session)
            return True
        # A notification can also arrive with the result of any statement (a claim, a lent
        # connection's work), and then the socket has nothing more to read.
        if not session.notifies:
            watched: list[Any] = [session, wake, *extra_fds]
            ready, _, _ = select.select(watched, [], [], timeout)
            if session not in ready:
                return False
            with _mapped(session):
                session.poll()
        notified = any(wanted_notice(n.payload, host) for n in session.notifies)
        session.notifies.clear()
        return notified

    @staticmethod
    def _listen(session: Session) -> None:
        """Subscribe the connection to new-work notifications (autocommit, for LISTEN)."""
        session.autocommit = True
        try:
            with _mapped(session), session.cursor() as cursor:
                cursor.execute(queries()["listen_work"])
            session.listening = True
        finally:
            if not session.closed:
                session.autocommit = False

    def claim(
        self,
        *,
        worker: str,
        host: str,
        jobs: Sequence[str],
        scopes: Sequence[str],
        limit: int,
        lease_seconds: float,
    ) -> list[Claim]:
        rows = self._all(
            "claim_batch",
            {
                "worker": worker,
                "host": host,
                "jobs": list(jobs),
                "scopes": list(scopes),
                "limit": limit,
                "lease_seconds": lease_seconds,
                **_STATES,
            },
        )
        return [Claim(*row) for row in rows]

    def renew_leases(self, worker: str, ids: Sequence[int], lease_seconds: float) -> None:
        self._all(
            "renew_leases",
            {**_STATES, "worker": worker, "ids": list(ids), "lease_seconds": lease_seconds},
        )

    def complete(
        self, worker: str, outcomes: Sequence[Outcome], *, keeping: Sequence[str] = ()
    ) -> set[int]:
        """Write outcomes back; returns the ids that were still ours (the rest were fenced).

        Uploaded versions of the jobs in ``keeping`` (after_upload: keep) are marked kept.
        """
        rows = self._all(
            "complete_batch",
            {
                **_STATES,
                "worker": worker,
                "keeping": list(keeping),
                "ids": numbers(o.claim.id for o in outcomes),
                "attempts": numbers(o.claim.attempt for o in outcomes),
                "states": texts(o.state for o in outcomes),
                "outcomes": texts(o.outcome for o in outcomes),
                "sha256s": texts(o.sha256 for o in outcomes),
                "etags": texts(o.etag for o in outcomes),
                "errors": texts(o.error for o in outcomes),
                "delays": numbers(o.retry_in for o in outcomes),
                "bytes": numbers(o.bytes for o in outcomes),
            },
        )
        return {row[0] for row in rows}

    def record_multipart(self, worker: str, started: MultipartStarted) -> None:
        self._all(
            "record_multipart",
            {
                "id": started.claim.id,
                "worker": worker,
                "attempt": started.claim.attempt,
                "upload_id": started.upload_id,
                "part_size": started.part_size,
            },
        )

    def abandoned_uploads(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._dicts("abandoned_uploads", {"limit": limit})

    def forget_upload(self, version_id: int, upload_id: str) -> None:
        self._all("forget_upload", {"id": version_id, "upload_id": upload_id})

    def release(self, worker: str, ids: Sequence[int], reason: str) -> None:
        """Hand claims back without charging an attempt; ``reason`` goes to the attempt row."""
        self._all(
            "release_claims",
            {**_STATES, "worker": worker, "ids": list(ids), "reason": reason},
        )

    def workers_on_host(self, host: str) -> list[str]:
        return [row[0] for row in self._all("workers_on_host", {"prefix": f"{host}:%"})]

    def reclaim_leases(self, dead_workers: Sequence[str]) -> int:
        rows = self._all("reclaim_leases", {"dead_workers": list(dead_workers)})
        return int(rows[0][0]) if rows else 0

    # --- reading ---------------------------------------------------------------------------

    def job_counts(self, job: str | None = None) -> list[JobStateCount]:
        return [JobStateCount(*row) for row in self._all("job_counts", {"job": job})]

    def compact_counts(self) -> int:
        """Fold the counters' deltas into their tables; the number of delta rows folded."""
        return int(self._all("compact_counts")[0][0])

    def recent_errors(self, job: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        return self._dicts("recent_errors", {"job": job, "limit": limit})

    def list_files(
        self,
        *,
        job: str | None = None,
        state: str | None = None,
        session_id: int | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        return self._dicts(
            "list_files", {"job": job, "state": state, "session_id": session_id, "limit": limit}
        )

    def paused_destinations(self, job: str | None = None) -> list[dict[str, Any]]:
        return self._dicts("paused_destinations", {"job": job})

    def open_session_summaries(self, job: str | None = None) -> list[dict[str, Any]]:
        return self._dicts("open_session_summaries", {"job": job})

    def session(self, session_id: int) -> dict[str, Any] | None:
        rows = self._dicts("session", {"id": session_id})
        return rows[0] if rows else None

    def session_progress(self, session_id: int) -> dict[str, tuple[int, int]]:
        """state → (files, bytes) for one session."""
        rows = self._all("session_progress", {"session_id": session_id})
        return {state: (files, size) for state, files, size in rows}

    def session_triggers(self, session_id: int) -> list[dict[str, Any]]:
        return self._dicts("session_triggers", {"session_id": session_id})

    def registration_counts(self, job: str | None = None) -> list[dict[str, Any]]:
        return self._dicts("registration_counts", {"job": job})

    def unsent_triggers(self, job: str, limit: int = 1000) -> list[dict[str, Any]]:
        return self._dicts("unsent_triggers", {"job": job, "limit": limit})

    def triggers_by_id(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        return self._dicts("triggers_by_id", {"ids": list(ids)})

    def path_versions(self, job: str, scope: str, root: str, relpath: str) -> list[dict[str, Any]]:
        return self._dicts(
            "path_versions", {"job": job, "scope": scope, "root": root, "relpath": relpath}
        )

    def path_signature(
        self, job: str, scope: str, root: str, relpath: str
    ) -> dict[str, Any] | None:
        rows = self._dicts(
            "path_signature", {"job": job, "scope": scope, "root": root, "relpath": relpath}
        )
        return rows[0] if rows else None

    def version_attempts(self, version_id: int) -> list[dict[str, Any]]:
        return self._dicts("version_attempts", {"id": version_id})

    def uploaded_objects(self, job: str) -> list[dict[str, Any]]:
        return self._dicts("uploaded_objects", {"job": job})

    def requeue_for_repair(self, host: str, reasons: Mapping[int, str]) -> set[int]:
        """Put uploaded versions (id → why) back in the queue; the ids it requeued."""
        params = {"host": host, "ids": list(reasons), "reasons": list(reasons.values())}
        with self.transaction() as cursor:
            self._execute(cursor, "requeue_for_repair", params)
            requeued = {int(row[0]) for row in cursor.fetchall()}
        if requeued:
            self._budget.ring()
        return requeued

    def key_collisions(self, job: str) -> list[dict[str, Any]]:
        return self._dicts("key_collisions", {"job": job})

    def session_gone_files(self, trigger_id: int) -> list[dict[str, Any]]:
        return self._dicts("session_gone_files", {"id": trigger_id})

    # --- sessions and the trigger outbox ----------------------------------------------------

    def open_run_session(self, job: str, host: str) -> int:
        return int(self._all("open_run_session", {"job": job, "host": host})[0][0])

    def drop_empty_run_session(self, session_id: int) -> None:
        self._all("drop_empty_run_session", {"session_id": session_id})

    def complete_sessions(
        self, job: str, *, idle_seconds: float | None, marker: str | None, register: bool
    ) -> list[int]:
        params = {"job": job, "idle_seconds": idle_seconds, "marker": marker, "register": register}
        with self.transaction() as cursor:
            if marker is not None:
                self._execute(cursor, "remember_markers", params)
            self._execute(cursor, "complete_sessions", params)
            return [row[0] for row in cursor.fetchall()]

    def complete_run_session(self, session_id: int, *, register: bool) -> bool:
        rows = self._all("complete_run_session", {"session_id": session_id, "register": register})
        return bool(rows and rows[0][0])

    def batch_uploaded_files(self, job: str, batch_size: int) -> int:
        """Put the next batch of unregistered uploads in the outbox; the number batched."""
        return len(self._all("batch_uploaded_files", {"job": job, "batch_size": batch_size}))

    def due_triggers(self, job: str, limit: int, session_id: int | None = None) -> list[DueTrigger]:
        params = {"job": job, "limit": limit, "session_id": session_id}
        return [DueTrigger(*row) for row in self._all("due_triggers", params)]

    def start_trigger_call(self, trigger_id: int, host: str) -> tuple[int, int] | None:
        """(attempt, tries) of a new call, or None if the trigger is no longer pending."""
        rows = self._all("start_trigger_call", {"id": trigger_id, "host": host})
        return (rows[0][0], rows[0][1]) if rows else None

    def trigger_manifest(self, trigger_id: int) -> list[dict[str, Any]]:
        return self._dicts("trigger_manifest", {"id": trigger_id})

    def finish_trigger_call(
        self,
        trigger_id: int,
        attempt: int,
        *,
        state: str,
        status: int | None,
        error: str | None,
        excerpt: str | None,
        retry_in: float | None,
    ) -> None:
        self._all(
            "finish_trigger_call",
            {
                "id": trigger_id,
                "attempt": attempt,
                "state": state,
                "status": status,
                "error": error,
                "excerpt": excerpt,
                "delay": retry_in,
            },
        )

    def create_session_trigger(self, job: str, session_id: int) -> int | None:
        rows = self._all("create_session_trigger", {"job": job, "session_id": session_id})
        return int(rows[0][0]) if rows else None

    def reset_trigger(self, trigger_id: int) -> None:
        self._all("reset_trigger", {"id": trigger_id})

    # --- sweeps ----------------------------------------------------------------------------

    @contextmanager
    def named_lock(self, name: str) -> Iterator[bool]:
        """A cluster-wide turn for one sweep: yields False when another process has it. A
        lease row (``SWEEP_LEASE_SECONDS``), dropped when the block ends: a sweep that
        outlives it may overlap another host's, which the sweeps' own row-level claims
        make harmless."""
        held = self.take_lease(name, SWEEP_LEASE_SECONDS)
        if held:
            self._sweep_lease = name
            self._renew_at = time.monotonic() + SWEEP_LEASE_SECONDS / 3
        try:
            yield held
        finally:
            if held:
                self._sweep_lease = None
                with contextlib.suppress(DatabaseUnavailable):  # it expires by itself
                    self.drop_lease(name)

    def _renew_sweep_lease(self, cursor: psycopg2.extensions.cursor) -> None:
        """Within a sweep's transaction, a third of the way through its lease: renew it, so a
        sweep that keeps working keeps its turn (one that hangs longer than the lease on an
        endpoint or a file loses it)."""
        if self._sweep_lease is None or time.monotonic() < self._renew_at:
            return
        cursor.execute(queries()["take_lease"], self._lease_params(self._sweep_lease, True))
        self._renew_at = time.monotonic() + SWEEP_LEASE_SECONDS / 3

    def take_lease(self, name: str, seconds: float, *, renew: bool = False) -> bool:
        """Take the lease ``name`` for ``seconds`` if it is free or expired (or, with
        ``renew``, already this process's); whether this process now holds it."""
        return bool(self._all("take_lease", self._lease_params(name, renew, seconds)))

    @staticmethod
    def _lease_params(
        name: str, renew: bool, seconds: float = SWEEP_LEASE_SECONDS
    ) -> dict[str, Any]:
        return {"name": name, "holder": lease_holder(), "seconds": seconds, "renew": renew}

    def drop_lease(self, name: str) -> None:
        self._all("drop_lease", {"name": name, "holder": lease_holder()})

    def lease_holders_on(self, host: str) -> list[str]:
        return [row[0] for row in self._all("lease_holders_on_host", {"host": host})]

    def drop_leases_of(self, holders: Sequence[str]) -> None:
        self._all("drop_leases_of", {"holders": list(holders)})

    def notify_due_retries(self) -> int:
        """Wake the workers of every job with retries due; the number of such jobs."""
        return len(self._all("notify_due_retries"))

    def requeue_failed(
        self, *, session_id: int | None = None, job: str | None = None, everything: bool = False
    ) -> tuple[int, int]:
        """(files, registrations) put back in the queue with a fresh set of attempts."""
        rows = self._all(
            "requeue_failed", {"session_id": session_id, "job": job, "all": everything}
        )
        return int(rows[0][0]), int(rows[0][1])

    def undisposed_files(
        self, job: str, scopes: Sequence[str], *, registered_only: bool, limit: int = 500
    ) -> list[dict[str, Any]]:
        return self._dicts(
            "undisposed_files",
            {
                "job": job,
                "scopes": list(scopes),
                "registered_only": registered_only,
                "limit": limit,
            },
        )

    def mark_disposed(self, dispositions: dict[int, str]) -> None:
        self._all(
            "mark_disposed",
            {"ids": list(dispositions), "dispositions": list(dispositions.values())},
        )

    def set_destination_health(
        self,
        job: str,
        host: str,
        kind: str,
        *,
        failures: int,
        pause_seconds: float | None,
        error: str | None,
    ) -> None:
        self._all(
            "set_destination_health",
            {
                "job": job,
                "host": host,
                "kind": kind,
                "failures": failures,
                "pause_seconds": pause_seconds,
                "error": error,
            },
        )

    # --- retention ---------------------------------------------------------------------------

    def prune_versions(
        self,
        *,
        after: int,
        cutoff: datetime,
        jobs: Sequence[str],
        keeping: Sequence[str],
        registering: Sequence[str],
        limit: int,
        dry_run: bool,
    ) -> PruneBatch:
        row = self._all(
            "prune_versions",
            {
                "after": after,
                "cutoff": cutoff,
                "jobs": list(jobs),
                "keeping": list(keeping),
                "registering": list(registering),
                "limit": limit,
                "dry_run": dry_run,
            },
        )[0]
        return PruneBatch(*row)

    def prune_attempts(
        self, *, after: int, cutoff: datetime, jobs: Sequence[str], limit: int, dry_run: bool
    ) -> PruneBatch:
        row = self._all(
            "prune_attempts",
            {
                "after": after,
                "cutoff": cutoff,
                "jobs": list(jobs),
                "limit": limit,
                "dry_run": dry_run,
            },
        )[0]
        return PruneBatch(*row)

    def prune_progress(self, what: str) -> int:
        return int(self._all("prune_progress", {"what": what})[0][0])

    def set_prune_progress(self, what: str, last_id: int) -> None:
        self._all("set_prune_progress", {"what": what, "last_id": last_id})

    def prune_triggers(self, *, cutoff: datetime, jobs: Sequence[str], limit: int) -> int:
        return int(
            self._all("prune_triggers", {"cutoff": cutoff, "jobs": list(jobs), "limit": limit})[0][
                0
            ]
        )

    def prune_sessions(self, *, cutoff: datetime, jobs: Sequence[str], limit: int) -> int:
        return int(
            self._all("prune_sessions", {"cutoff": cutoff, "jobs": list(jobs), "limit": limit})[0][
                0
            ]
        )

    # --- one-shot commands -------------------------------------------------------------------

    def selection_progress(
        self,
        *,
        jobs: Sequence[str],
        scopes: Sequence[str],
        session_id: int | None = None,
        job: str | None = None,
        everything: bool = False,
    ) -> dict[str, StateTally]:
        """state → files, bytes (and for pending: seconds to the next attempt that ``scopes``
        may claim) of a selection."""
        rows = self._all(
            "selection_progress",
            {
                "session_id": session_id,
                "job": job,
                "all": everything,
                "jobs": list(jobs),
                "scopes": list(scopes),
            },
        )
        return {state: StateTally(files, size, next_in) for state, files, size, next_in in rows}

    def uploaded_keys_under(self, bucket: str, prefix: str) -> set[str]:
        rows = self._all("uploaded_keys_under", {"bucket": bucket, "prefix": prefix})
        return {row[0] for row in rows}

    def _dicts(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self.transaction() as cursor:
            self._execute(cursor, name, params)
            columns = [c.name for c in cursor.description]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


@dataclass(frozen=True)
class DueTrigger:
    id: int
    session_id: int | None
    idempotency_key: str
    attempts: int


@dataclass(frozen=True)
class JobStateCount:
    job: str
    state: str
    files: int
    bytes: int
    oldest_age_seconds: float | None
    last_uploaded_at: datetime | None


@dataclass(frozen=True)
class PruneBatch:
    """One batch of a retention walk over the id order."""

    last_id: int | None  # the highest id read; None once the walk is past the last row
    newest: datetime | None  # the latest discovery time among the rows read
    eligible: int
    deleted: int


@dataclass(frozen=True)
class StateTally:
    files: int
    bytes: int
    next_in: float | None  # seconds until the earliest next attempt (pending only)


def _not_now(exc: psycopg2.Error) -> bool:
    """Whether ``exc`` is the database's trouble (retry later), not the statement's."""
    code = exc.pgcode or ""
    if not code:
        # No SQLSTATE: the client lost the connection (or never had one).
        return isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError)
    return code in _NOT_NOW_CODES or code[:2] in _NOT_NOW_CLASSES


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
