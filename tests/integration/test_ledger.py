"""The ledger's queries on a real PostgreSQL: queueing, claims, leases, fencing, migrations."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest

from devstack import PostgresCluster, PostgresReplica, failover_dsn
from uploaderd.errors import DatabaseUnavailable
from uploaderd.ledger import schema
from uploaderd.ledger.store import (
    PREPARED,
    Ledger,
    NewVersion,
    Outcome,
    State,
    connection_budget,
    prepared,
    queries,
)
from uploaderd.policy.settle import Candidate, Signature
from uploaderd.upload.workers import dead_workers

Sql = Callable[..., list[tuple[Any, ...]]]


def version(relpath: str, size: int = 10, inode: int = 1, error: str | None = None) -> NewVersion:
    return NewVersion(
        "/data",
        relpath,
        size,
        1_700_000_000_000_000_000,
        inode,
        key=f"k/{relpath}",
        session_id=None,
        error=error,
    )


def enqueue(ledger: Ledger, *versions: NewVersion, scope: str = "host-a") -> tuple[int, int]:
    return ledger.enqueue("lab", scope=scope, host="host-a", bucket="b", versions=versions)


def claim(
    ledger: Ledger,
    worker: str = "host-a:1:w",
    limit: int = 10,
    lease: float = 60.0,
    scopes: tuple[str, ...] = ("host-a", ""),
) -> list[Any]:
    return ledger.claim(
        worker=worker,
        host="host-a",
        jobs=["lab"],
        scopes=list(scopes),
        limit=limit,
        lease_seconds=lease,
    )


def test_migrate_is_idempotent_and_safe_in_parallel(database_dsn: str) -> None:
    results: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(schema.migrate(database_dsn)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = [m.name for m in schema.available()]
    # Each file applied by exactly one runner (they may share the list), each in its order.
    assert sorted(name for applied in results for name in applied) == names
    assert all(applied == sorted(applied) for applied in results)
    assert schema.migrate(database_dsn) == []


def test_every_connection_has_no_jit_and_one_plan_per_prepared_statement_so_a_clone_too(
    ledger: Ledger,
) -> None:
    # A prune batch's estimate grows with the table; on 20 M versions JIT took 400 ms a batch.
    twin = ledger.clone("uploaderd test twin").connect()
    try:
        for each in (ledger, twin):
            with each.transaction() as cursor:
                cursor.execute(
                    "SELECT current_setting('jit'), current_setting('plan_cache_mode'), "
                    "current_setting('application_name')"
                )
                assert cursor.fetchone() == ("off", "force_generic_plan", each.application_name)
    finally:
        twin.close()


def prepared_here(ledger: Ledger) -> set[str]:
    with ledger.transaction() as cursor:
        cursor.execute("SELECT name FROM pg_prepared_statements")
        return {row[0] for row in cursor.fetchall()}


def test_the_daemons_statements_are_prepared_once_per_connection(ledger: Ledger) -> None:
    assert enqueue(ledger, version("a")) == (1, 0)
    assert enqueue(ledger, version("b")) == (1, 0)
    assert prepared_here(ledger) == {"uploaderd_enqueue_versions", "uploaderd_notify_work"}
    # A statement that fails rolls its transaction back, not the session's statements.
    with pytest.raises(psycopg2.Error):
        ledger.claim(
            worker="w", host="h", jobs=["lab"], scopes=["host-a"], limit=-1, lease_seconds=60
        )
    assert "uploaderd_claim_batch" in prepared_here(ledger)
    # A session that lost them (a pooler's other server session) is replaced, once.
    with ledger.transaction() as cursor:
        cursor.execute("DEALLOCATE ALL")
    with pytest.raises(DatabaseUnavailable, match="does not exist"):
        enqueue(ledger, version("c"))
    assert enqueue(ledger, version("c")) == (1, 0)
    assert prepared_here(ledger) == {"uploaderd_enqueue_versions", "uploaderd_notify_work"}
    twin = ledger.clone("uploaderd test twin").connect()
    try:
        assert prepared_here(twin) == set()
    finally:
        twin.close()


def test_every_prepared_statement_is_a_query_of_its_own() -> None:
    assert set(queries()) >= PREPARED
    for name in PREPARED:
        statement = prepared(name)
        assert statement.prepare.startswith(f"PREPARE uploaderd_{name} AS ")
        assert "%(" not in statement.prepare and "%%" not in statement.prepare
    notify = prepared("notify_work")
    assert notify.prepare.endswith(
        "SELECT pg_notify('uploaderd_work', json_build_object('job', $1::text, 'host', $2::text)"
        "::text);"
    )
    assert notify.execute == "EXECUTE uploaderd_notify_work (%(job)s, %(host)s)"
    # Numbered in order of first use; a parameter used twice keeps its number.
    renew = prepared("renew_leases")
    assert renew.execute == (
        "EXECUTE uploaderd_renew_leases (%(lease_seconds)s, %(ids)s, %(worker)s, %(uploading)s)"
    )
    assert "make_interval(secs => $1)" in renew.prepare and "claimed_by = $3" in renew.prepare


def test_enqueue_is_one_statement_for_a_batch_and_ignores_known_versions(ledger: Ledger) -> None:
    batch = [version(f"f{i}") for i in range(300)]
    assert enqueue(ledger, *batch) == (300, 0)
    assert enqueue(ledger, *batch) == (0, 0)
    seen = [
        Candidate("/data", "f7", Signature(10, 1_700_000_000_000_000_000, 1)),
        Candidate("/data", "f8", Signature(11, 1_700_000_000_000_000_000, 1)),
        Candidate("/data", "new", Signature(10, 1_700_000_000_000_000_000, 1)),
    ]
    assert ledger.known_paths("lab", "host-a", seen) == {("/data", "f7")}
    assert ledger.known_paths("lab", "other-host", seen) == set()


# Names that mean something in an array literal, sent as the literal the ledger builds.
AWKWARD_NAMES = [
    'quote"d',
    "back\\slash\\",
    "{braces},comma",
    "NULL",
    "",
    "  spaced  ",
    "tab\tand\nnewline",
    "ünïcödé ✓",
]


def test_awkward_names_are_queued_and_looked_up_exactly(ledger: Ledger, sql: Sql) -> None:
    versions = [
        NewVersion("/da\\ta", name, i, 1, 2, key=f'k"{name}', session_id=None, ctime_ns=3)
        for i, name in enumerate(AWKWARD_NAMES)
    ]
    versions.append(NewVersion("/data", "err", 9, 1, 2, key="", session_id=None, error='a "b"'))
    assert enqueue(ledger, *versions) == (len(versions), 0)
    rows = sql(
        "SELECT root, relpath, size, key, last_error, ctime_ns FROM file_versions ORDER BY id"
    )
    assert rows == [(v.root, v.relpath, v.size, v.key, v.error, v.ctime_ns) for v in versions]
    seen = [Candidate(v.root, v.relpath, Signature(v.size, 1, 2, 3)) for v in versions[:-1]]
    assert ledger.known_paths("lab", "host-a", seen) == {(v.root, v.relpath) for v in versions[:-1]}


def test_a_new_version_supersedes_the_pending_one(ledger: Ledger, sql: Sql) -> None:
    enqueue(ledger, version("a", size=1))
    assert enqueue(ledger, version("a", size=2)) == (1, 1)
    assert sql("SELECT size, state FROM file_versions ORDER BY id") == [
        (1, "superseded"),
        (2, "pending"),
    ]


def test_unsafe_key_is_recorded_failed_at_once(ledger: Ledger, sql: Sql) -> None:
    enqueue(ledger, version("bad\x01name", error="unsafe key: control character"))
    assert sql("SELECT state, last_error FROM file_versions") == [
        ("failed", "unsafe key: control character")
    ]
    assert claim(ledger) == []


def test_concurrent_claims_never_share_a_row(migrated_dsn: str, ledger: Ledger) -> None:
    enqueue(ledger, *[version(f"f{i}") for i in range(200)])
    claimed: list[list[int]] = [[], [], [], []]

    def drain(slot: int) -> None:
        mine = Ledger(migrated_dsn).connect()
        while batch := claim(mine, worker=f"host-a:{slot}:w", limit=7):
            claimed[slot].extend(c.id for c in batch)
        mine.close()

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [i for ids in claimed for i in ids]
    assert len(everything) == len(set(everything)) == 200


def test_claims_take_the_oldest_due_across_jobs_and_fill_past_locked_rows(
    migrated_dsn: str, ledger: Ledger, sql: Sql
) -> None:
    """Per job and scope the claim looks at twice its limit: one other claimer holding the
    first rows leaves it a full batch, in due order across jobs; other jobs are not taken."""
    for job in ("lab", "night", "other"):
        ledger.enqueue(
            job,
            scope="host-a",
            host="host-a",
            bucket="b",
            versions=[version(f"{job}-{i}") for i in range(6)],
        )
    # Due order interleaves the jobs: lab-0, other-0, lab-1, other-1, ...
    sql(
        "UPDATE file_versions SET next_attempt_at = now() - interval '1 hour' "
        "+ (substring(relpath from '[0-9]+$')::int * 2 + (job = 'other')::int) * interval '1 s'"
    )
    ordered = [f"{job}-{i}" for i in range(6) for job in ("lab", "other")]
    with contextlib.closing(psycopg2.connect(migrated_dsn)) as other:
        with other.cursor() as cursor:  # another claimer, mid-claim: the first two held
            cursor.execute(
                "SELECT id FROM file_versions WHERE relpath IN ('lab-0', 'other-0') FOR UPDATE"
            )
        batch = ledger.claim(
            worker="host-a:1:w",
            host="host-a",
            jobs=["lab", "other"],
            scopes=["host-a", ""],
            limit=4,
            lease_seconds=60,
        )
    assert sorted(c.relpath for c in batch) == sorted(ordered[2:6])


def reclaim_once_expired(ledger: Ledger, deadline: float = 5.0) -> int:
    """Reclaim until a 1 ms lease is past: the database clock decides, not a sleep."""
    give_up = time.monotonic() + deadline
    while (count := ledger.reclaim_leases([])) == 0 and time.monotonic() < give_up:
        pass
    return count


def test_completion_is_fenced_on_claimer_and_attempt(ledger: Ledger, sql: Sql) -> None:
    enqueue(ledger, version("a"))
    [first] = claim(ledger, worker="host-a:1:old", lease=0.001)
    assert reclaim_once_expired(ledger) == 1, "the expired lease goes back to pending"
    [second] = claim(ledger, worker="host-a:2:new")
    assert (first.attempt, second.attempt) == (1, 2)
    late = Outcome(first, State.UPLOADED, "uploaded", "0" * 64)
    assert ledger.complete("host-a:1:old", [late]) == set(), "the old claimer is fenced out"
    done = Outcome(second, State.UPLOADED, "uploaded", "1" * 64, bytes=10)
    assert ledger.complete("host-a:2:new", [done]) == {second.id}
    assert sql("SELECT state, sha256, attempts FROM file_versions") == [("uploaded", "1" * 64, 2)]
    assert sql("SELECT attempt, outcome FROM upload_attempts ORDER BY attempt") == [
        (1, "expired"),
        (2, "uploaded"),
    ]


def test_failed_attempt_waits_for_its_backoff(ledger: Ledger, sql: Sql) -> None:
    enqueue(ledger, version("a"))
    [held] = claim(ledger)
    ledger.complete(
        "host-a:1:w", [Outcome(held, State.PENDING, "failed", error="S3 Slow", retry_in=3600)]
    )
    assert claim(ledger) == [], "not due for an hour"
    assert sql(
        "SELECT state, last_error, next_attempt_at > now() + interval '59 minutes' "
        "FROM file_versions"
    ) == [("pending", "S3 Slow", True)]


def test_release_hands_back_without_charging_an_attempt(ledger: Ledger, sql: Sql) -> None:
    enqueue(ledger, version("a"))
    [held] = claim(ledger)
    ledger.release("host-a:1:w", [held.id], "daemon stopping")
    assert sql("SELECT state, attempts, claimed_by FROM file_versions") == [("pending", 0, None)]
    assert sql("SELECT outcome FROM upload_attempts") == [("released",)]
    assert claim(ledger)[0].attempt == 1


def test_dead_workers_on_this_host_are_reclaimed_before_their_lease_ends(
    ledger: Ledger,
) -> None:
    enqueue(ledger, version("a"), version("b"))
    claim(ledger, worker="host-a:999999999:gone", limit=1)
    claim(ledger, worker="host-a:1:alive", limit=1)
    assert sorted(ledger.workers_on_host("host-a")) == ["host-a:1:alive", "host-a:999999999:gone"]
    assert ledger.reclaim_leases(["host-a:999999999:gone"]) == 1
    assert len(claim(ledger)) == 1


def test_scopes_keep_hosts_apart_unless_the_root_is_shared(ledger: Ledger) -> None:
    enqueue(ledger, version("local"), scope="host-b")
    enqueue(ledger, version("shared"), scope="")
    assert [c.relpath for c in claim(ledger)] == ["shared"]


def test_sessions_are_shared_per_group(ledger: Ledger) -> None:
    first = ledger.open_sessions("lab", "host-a", ["run-1", "run-2"])
    again = ledger.open_sessions("lab", "host-b", ["run-2"])
    assert again["run-2"] == first["run-2"] and first["run-1"] != first["run-2"]


def test_dead_workers_are_those_whose_process_is_gone_on_this_host() -> None:
    holders = [
        "host-a:999999999:gone",
        f"host-a:{os.getppid()}:alive",
        "host-b:999999999:far",
        f"host-a:{os.getpid()}:me",
        f"host-a:{os.getpid()}:before",
    ]
    dead = dead_workers("host-a", holders, me=f"host-a:{os.getpid()}:me")
    # Our own pid with another token is a predecessor whose pid we inherited (a container).
    assert dead == ["host-a:999999999:gone", f"host-a:{os.getpid()}:before"]


def test_a_version_whose_worker_dies_three_times_fails(ledger: Ledger, sql: Sql) -> None:
    enqueue(ledger, version("poison"))
    for attempt in range(1, 4):
        [held] = claim(ledger, worker=f"host-a:{attempt}:w")
        assert held.attempt == attempt
        assert ledger.reclaim_leases([f"host-a:{attempt}:w"]) == 1
    assert sql("SELECT state, last_error FROM file_versions") == [
        ("failed", "the worker died or lost its lease during 3 attempts")
    ]
    assert claim(ledger) == []


# --- migration 0008: the ctime in the signature ---------------------------------------------


def _migrate_through(dsn: str, last: int) -> None:
    ledger = Ledger(dsn).connect()
    try:
        for migration in schema.available():
            if migration.version <= last:
                ledger.apply_migration(migration.version, migration.name, migration.sql)
    finally:
        ledger.close()


def _old_daemon_row(dsn: str, relpath: str, sig: Signature, state: str) -> None:
    """A version as a daemon before migration 0008 recorded it: no ctime."""
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute(
            "INSERT INTO file_versions (job, scope, host, root, relpath, size, mtime_ns, inode, "
            "bucket, key, state) VALUES ('lab', 'host-a', 'host-a', '/data', %s, %s, %s, %s, "
            "'b', %s, %s)",
            (relpath, sig.size, sig.mtime_ns, sig.inode, f"k/{relpath}", state),
        )
    conn.close()


def test_versions_from_before_0008_match_their_unchanged_files(database_dsn: str) -> None:
    _migrate_through(database_dsn, 7)
    on_disk = Signature(10, 1_700_000_000_000_000_000, 1, ctime_ns=1_700_000_001_000_000_000)
    _old_daemon_row(database_dsn, "uploaded.dat", on_disk, "uploaded")
    _old_daemon_row(database_dsn, "pending.dat", on_disk, "pending")
    import psycopg2

    with psycopg2.connect(database_dsn) as conn, conn.cursor() as cursor:  # pruned before
        cursor.execute(
            "INSERT INTO path_signatures (job, scope, root, relpath, size, mtime_ns, "
            "inode, version_id) VALUES ('lab', 'host-a', '/data', 'pruned.dat', "
            "%s, %s, %s, 1)",
            (on_disk.size, on_disk.mtime_ns, on_disk.inode),
        )
    conn.close()
    assert schema.migrate(database_dsn)[0] == "0008_ctime_in_signature.sql"

    ledger = Ledger(database_dsn).connect()
    try:
        names = ("uploaded.dat", "pending.dat", "pruned.dat")
        unchanged = [Candidate("/data", name, on_disk) for name in names]
        assert ledger.known_paths("lab", "host-a", unchanged) == {
            ("/data", name) for name in names
        }, "no upload again after the upgrade"
        assert enqueue(
            ledger,
            *(
                NewVersion.of(c, key="k", session_id=None)
                for c in unchanged
                if c.relpath != "pruned.dat"
            ),
        ) == (0, 0)
        [claimed] = claim(ledger)
        assert claimed.relpath == "pending.dat" and claimed.ctime_ns == on_disk.ctime_ns, (
            "the first look gave the old rows the ctime of their unchanged file"
        )
        assert on_disk.ctime_ns is not None
        rewritten = Candidate(
            "/data",
            "uploaded.dat",
            Signature(10, on_disk.mtime_ns, 1, ctime_ns=on_disk.ctime_ns + 1),
        )
        pruned_rewrite = Candidate("/data", "pruned.dat", rewritten.signature)
        assert ledger.known_paths("lab", "host-a", [rewritten, pruned_rewrite]) == set(), (
            "from then on a rewrite that puts the mtime back is a new version"
        )
    finally:
        ledger.close()


def test_the_0008_index_can_be_built_beforehand_concurrently(database_dsn: str) -> None:
    import psycopg2

    _migrate_through(database_dsn, 7)
    conn = psycopg2.connect(database_dsn)
    conn.autocommit = True  # CREATE INDEX CONCURRENTLY runs outside a transaction
    with conn.cursor() as cursor:
        cursor.execute("ALTER TABLE file_versions ADD COLUMN IF NOT EXISTS ctime_ns bigint")
        cursor.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY file_versions_one_row_per_version_0008 "
            "ON file_versions (job, scope, root, relpath, size, mtime_ns, inode, "
            "ctime_ns)"
        )
    assert schema.migrate(database_dsn)[0] == "0008_ctime_in_signature.sql"
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'file_versions'::regclass AND contype = 'u'"
        )
        assert cursor.fetchall() == [
            (
                "file_versions_one_row_per_version",
                "UNIQUE (job, scope, root, relpath, size, mtime_ns, inode, ctime_ns)",
            )
        ]
    conn.close()


def test_a_promoted_standby_is_a_new_server_and_a_restart_is_not() -> None:
    """What makes the daemon rescan after a failover (``server_identity``): a new timeline
    on the same cluster, not a restart of the same primary."""
    changes: list[tuple[str, str]] = []
    with contextlib.ExitStack() as stack:
        primary = PostgresCluster()
        stack.callback(primary.cleanup)
        primary.start()
        standby = PostgresReplica(primary)
        stack.callback(standby.cleanup)
        standby.start()
        dsn = failover_dsn((primary.port, standby.port), "postgres")
        budget = connection_budget(
            dsn, 1, "uploaderd", on_new_server=lambda *seen: changes.append(seen)
        )
        stack.callback(budget.close)

        def reconnect() -> None:
            budget.close()
            with budget.connection():
                pass

        reconnect()
        primary.stop()
        primary.start()
        reconnect()
        assert changes == []
        primary.stop(mode="immediate")
        standby.promote()
        reconnect()
        [(before, now)] = changes
        assert before.split("/")[0] == now.split("/")[0]  # the same cluster
        assert (before.split("/")[1], now.split("/")[1]) == ("00000001", "00000002")


def test_new_work_wakes_the_enqueuing_host_at_once_and_a_retry_every_host(
    migrated_dsn: str, sql: Sql
) -> None:
    """A shared job's batch wakes only the host that enqueued it (the others claim at their
    poll, not one claim per host per batch); a retry coming due wakes every host."""
    writer = Ledger(migrated_dsn)
    here, there = Ledger(migrated_dsn), Ledger(migrated_dsn)
    for ledger in (here, there):
        ledger.listen()
    enqueue(writer, version("a.bin"), scope="")
    assert here.wait_for_notify(30, host="host-a")
    # host-b heard the same notification and does not count it as work; whatever else
    # arrived, it returns as soon as it has read it or at the deadline.
    assert not there.wait_for_notify(1, host="host-b")
    sql("UPDATE file_versions SET attempts = 1, next_attempt_at = now() - interval '1 s'")
    assert writer.notify_due_retries() == 1
    assert here.wait_for_notify(30, host="host-a")
    assert there.wait_for_notify(30, host="host-b")
    for ledger in (writer, here, there):
        ledger.close()


def test_through_a_transaction_pooler_nothing_is_kept_in_a_session(migrated_dsn: str) -> None:
    budget = connection_budget(migrated_dsn, 2, "uploaderd", pool_mode="transaction")
    writer = Ledger(migrated_dsn, budget=budget, pool_mode="transaction")
    waiter = Ledger(migrated_dsn, budget=budget, pool_mode="transaction")
    waiter.listen()  # nothing to subscribe to: no LISTEN through a transaction pooler
    enqueue(writer, version("a.bin"))
    assert waiter.wait_for_notify(30)  # this process's new work: heard through the bell
    assert not waiter.wait_for_notify(0)
    [held] = claim(writer)  # a statement the daemon prepares elsewhere, run as text here
    assert held.relpath == "a.bin"
    with writer.transaction() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM pg_prepared_statements), current_setting('jit'),"
            " (SELECT count(*) FROM pg_listening_channels())"
        )
        assert cursor.fetchone() == (0, "on", 0)  # no statement, setting or LISTEN left
    budget.close()
