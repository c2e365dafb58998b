"""The fault suite, upload side: each scenario breaks something under a running daemon and
checks what the ledger says (state, reason) and what S3 holds (the file's bytes, nothing
half-uploaded) once the fault is gone.

Faults come from real things: PostgreSQL made read-only, stopped (fast and immediate) and
its sessions terminated; the S3 server behind a loopback proxy that refuses, resets,
answers 500, stalls or swallows connections; kill -9 and SIGTERM; FIFOs; a second daemon in
its own UTS namespace (another host); a trigger endpoint that trickles its answer.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from faultkit import (
    TricklingEndpoint,
    daemon_threads,
    idle_connections,
)
from pytest_httpserver import HTTPServer

from devstack import (
    DaemonProcess,
    FaultProxy,
    PostgresCluster,
    PostgresReplica,
    S3Server,
    can_name_hosts,
    failover_dsn,
    free_port,
    metric,
    wait_for,
)
from uploaderd.ledger import schema
from uploaderd.ledger.store import Ledger, NewVersion
from uploaderd.policy.settle import Candidate, Signature

Sql = Callable[..., list[tuple[Any, ...]]]
MiB = 1024 * 1024
PAUSED = "released: the job's uploads are paused after S3 failures"


def lab_job(root: Path, bucket: str, **sections: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"paths": [str(root)], "settle": "0.3s", "rescan": "1h"},
        "destination": {"bucket": bucket, "key": "in/${relpath}"},
        "retry": {"max_attempts": 8, "backoff": {"initial": "0.2s", "max": "1s"}},
    }
    for section, values in sections.items():
        spec.setdefault(section, {}).update(values)
    return spec


def s3_block(endpoint_url: str, **extra: str) -> dict[str, str]:
    return {"endpoint_url": endpoint_url, "region": "us-east-1", **extra}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def states(sql: Sql) -> dict[str, tuple[str, str | None]]:
    """relpath → (state, last_error) of each path's newest version."""
    rows = sql(
        "SELECT DISTINCT ON (relpath) relpath, state, last_error FROM file_versions "
        "ORDER BY relpath, id DESC"
    )
    return {relpath: (state, error) for relpath, state, error in rows}


def run_sql(dsn: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    """``query`` on a fresh autocommit connection to ``dsn``."""
    with contextlib.closing(psycopg2.connect(dsn)) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(query, params)
            return cursor.fetchall() if cursor.description else []


def wait_states(sql: Sql, expected: dict[str, str], timeout: float = 60.0) -> None:
    wait_for(
        lambda: {p: s for p, (s, _) in states(sql).items() if p in expected} == expected,
        timeout=timeout,
        message=f"states {expected}",
    )


def assert_in_s3(s3: S3Server, bucket: str, objects: dict[str, bytes]) -> None:
    """Each key holds exactly the file's bytes and SHA-256; no multipart upload is left."""
    client = s3.client()
    for key, data in objects.items():
        response = client.get_object(Bucket=bucket, Key=key)
        metadata = {k.lower(): v for k, v in response["Metadata"].items()}
        assert response["Body"].read() == data, f"{key}: S3 holds other bytes than the file"
        assert metadata["sha256"] == sha(data)
    wait_for(
        lambda: client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == [],
        timeout=30,
        message="no multipart upload left half done",
    )


def write(root: Path, relpath: str, data: bytes) -> bytes:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def healthy(daemon: DaemonProcess) -> None:
    """Alive, and no component ever reported dead."""
    assert daemon.alive(), daemon.log()
    assert "unhealthy" not in daemon.log(), daemon.log()


def queue_directly(
    dsn: str,
    bucket: str,
    root: Path,
    files: dict[str, os.stat_result],
    session_id: int | None = None,
) -> None:
    """Queue versions as discovery queued them (``files``: relpath → the stat it saw), for
    files whose fate the test decided before a worker opens them (replaced by a FIFO,
    deleted)."""
    host = socket.gethostname()
    ledger = Ledger(dsn).connect()
    try:
        ledger.enqueue(
            "lab",
            scope=host,
            host=host,
            bucket=bucket,
            versions=[
                NewVersion.of(
                    Candidate(str(root), relpath, Signature.of(seen)),
                    key=f"in/{relpath}",
                    session_id=session_id,
                )
                for relpath, seen in files.items()
            ],
        )
    finally:
        ledger.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "watched"
    path.mkdir()
    return path


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    port = int(s3_server.endpoint_url.rsplit(":", 1)[1])
    fault_proxy = FaultProxy(port)
    yield fault_proxy
    fault_proxy.close()


def start_lab(
    make: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    settings: dict[str, Any] | None = None,
    **sections: Any,
) -> DaemonProcess:
    daemon = make(**(settings or {}))
    daemon.write_job("lab", lab_job(root, bucket, **sections))
    return daemon.start()


# --- the database --------------------------------------------------------------------------


def test_read_only_failover_is_an_outage_and_everything_uploads_after(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
    migrated_dsn: str,
) -> None:
    """Item 2: a demoted primary (read-only, sessions terminated) stops nothing for good."""
    daemon = start_lab(make_daemon, root, bucket)
    files = {"before.txt": write(root, "before.txt", b"before the failover")}
    wait_states(sql, {"before.txt": "uploaded"})
    database = sql("SELECT current_database()")[0][0]
    sql(f"ALTER DATABASE {database} SET default_transaction_read_only = on")
    sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name LIKE 'uploaderd%%'"
    )
    for i in range(3):
        files[f"during-{i}.txt"] = write(root, f"during-{i}.txt", f"read-only {i}".encode())
    wait_for(
        lambda: "read-only transaction" in daemon.log(),
        timeout=30,
        message="the read-only database noticed",
    )
    assert daemon.notes is not None
    daemon.notes.wait_prefix("STATUS=", "database unreachable", timeout=30)
    with contextlib.closing(psycopg2.connect(migrated_dsn)) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:  # this session was born read-only too
            cursor.execute("SET default_transaction_read_only = off")
            cursor.execute(f"ALTER DATABASE {database} RESET default_transaction_read_only")
    files["after.txt"] = write(root, "after.txt", b"writable again")
    wait_states(sql, dict.fromkeys(files, "uploaded"), timeout=90)
    daemon.notes.wait_prefix("STATUS=", "database ok", timeout=30)
    healthy(daemon)
    assert_in_s3(s3_server, bucket, {f"in/{name}": data for name, data in files.items()})


def test_failover_to_a_promoted_standby_that_lost_the_last_commits(
    make_daemon: Callable[..., DaemonProcess], root: Path, bucket: str, s3_server: S3Server
) -> None:
    """Issue 24: the primary dies holding commits its asynchronous standby never received,
    and the standby is promoted. The daemon follows its multi-host DSN to the new primary by
    itself, finds again the files whose records were lost, and every file ends uploaded with
    its bytes in S3 (an object already there with the same bytes is no failure)."""
    with contextlib.ExitStack() as stack:
        primary = PostgresCluster()
        stack.callback(primary.cleanup)
        primary.start()
        schema.migrate(primary.create_database("ledger"))
        standby = PostgresReplica(primary)
        stack.callback(standby.cleanup)
        standby.start()
        dsn = failover_dsn((primary.port, standby.port), "ledger")
        sql = functools.partial(run_sql, dsn)
        port = free_port()
        metrics = {"listen": f"127.0.0.1:{port}"}
        daemon = start_lab(make_daemon, root, bucket, {"dsn": dsn, "metrics": metrics})
        files = {
            f"kept-{i}.txt": write(root, f"kept-{i}.txt", b"replicated %d" % i) for i in range(3)
        }
        wait_states(sql, dict.fromkeys(files, "uploaded"))
        caught_up = f"SELECT pg_last_wal_replay_lsn() >= '{primary.wal_lsn()}'"
        wait_for(
            lambda: standby.query(caught_up) == "t", timeout=30, message="the standby's replay"
        )
        standby.detach()
        lost = {
            f"lost-{i}.txt": write(root, f"lost-{i}.txt", b"not replicated %d" % i)
            for i in range(3)
        }
        wait_states(sql, dict.fromkeys(lost, "uploaded"))
        files |= lost
        # The ledger goes back in time: the standby never heard of the lost files.
        never_heard = "SELECT count(*) FROM file_versions WHERE relpath LIKE 'lost-%'"
        assert standby.query(never_heard, "ledger") == "0"
        primary.stop(mode="immediate")
        standby.promote()
        files["after.txt"] = write(root, "after.txt", b"written after the failover")
        wait_states(sql, dict.fromkeys(files, "uploaded"), timeout=90)
        assert "PostgreSQL is another server than before" in daemon.log()
        assert (metric(port, "uploaderd_db_server_changes_total") or 0) >= 1
        assert_in_s3(s3_server, bucket, {f"in/{name}": data for name, data in files.items()})
        healthy(daemon)
        daemon.stop()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_stops_mid_multipart_upload(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
    pg_cluster: PostgresCluster,
    mode: str,
) -> None:
    """PostgreSQL stopped (fast or immediate) while a large file goes up; the outcome waits in
    memory and a file written during the outage is queued after it."""
    # The test cluster runs with synchronous_commit off, which an immediate stop turns into
    # lost commits; production keeps it on, and so does this database.
    database = sql("SELECT current_database()")[0][0]
    sql(f"ALTER DATABASE {database} SET synchronous_commit = on")
    daemon = start_lab(make_daemon, root, bucket, destination={"bandwidth": "8MiB/s"})
    big = write(root, "big.raw", os.urandom(40 * MiB))
    wait_for(
        lambda: sql("SELECT multipart_upload_id FROM file_versions")[0][0],
        timeout=30,
        message="the multipart upload recorded",
        ignore=(IndexError,),
    )
    pg_cluster.stop(mode)
    try:
        during = write(root, "during.txt", b"written while PostgreSQL is down")
        assert daemon.notes is not None
        daemon.notes.wait_prefix("STATUS=", "database unreachable", timeout=30)
        healthy(daemon)
    finally:
        pg_cluster.start()
    wait_states(sql, {"big.raw": "uploaded", "during.txt": "uploaded"}, timeout=90)
    healthy(daemon)
    assert_in_s3(s3_server, bucket, {"in/big.raw": big, "in/during.txt": during})


# --- the files -----------------------------------------------------------------------------


def test_queued_files_replaced_by_fifos_never_block_the_workers(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
    migrated_dsn: str,
) -> None:
    """Item 3: twice as many FIFOs as workers, each where a queued file was: every FIFO's
    version ends gone with its reason, the regular files upload."""
    start_lab(make_daemon, root, bucket, settings={"workers": 2})
    queued = tmp_path / "queued"
    for i in range(4):
        write(queued, f"fifo-{i}.dat", b"was a file")
        write(queued, f"file-{i}.dat", f"regular {i}".encode())
    seen = {path.name: path.stat() for path in queued.iterdir()}
    for i in range(4):  # each FIFO replaces a file that discovery saw and queued
        (queued / f"fifo-{i}.dat").unlink()
        os.mkfifo(queued / f"fifo-{i}.dat")
    queue_directly(migrated_dsn, bucket, queued, seen)
    expected = {
        **{f"fifo-{i}.dat": "gone" for i in range(4)},
        **{f"file-{i}.dat": "uploaded" for i in range(4)},
    }
    wait_states(sql, expected, timeout=30)
    for i in range(4):
        assert "FIFO" in (states(sql)[f"fifo-{i}.dat"][1] or "")
    assert_in_s3(s3_server, bucket, {f"in/file-{i}.dat": f"regular {i}".encode() for i in range(4)})
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert not any("fifo" in key for key in keys)


def test_a_vanished_file_ends_gone_and_its_session_completes_and_registers(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
    migrated_dsn: str,
    httpserver: HTTPServer,
) -> None:
    """Item 6: the session of a file deleted before its upload completes; the registration
    carries the uploaded files and names the one that is gone."""
    httpserver.expect_request("/register").respond_with_json({"ok": True})
    start_lab(
        make_daemon,
        root,
        bucket,
        session={"group_by": "top_dir", "complete_when": {"idle": "1s"}},
        trigger={"url": httpserver.url_for("/register"), "schedule": {"interval": "0.5s"}},
    )
    queued = tmp_path / "queued"
    kept = write(queued, "run-1/kept.dat", b"uploaded")
    write(queued, "run-1/vanished.dat", b"deleted before its upload")
    seen = {name: (queued / name).stat() for name in ("run-1/kept.dat", "run-1/vanished.dat")}
    (queued / "run-1/vanished.dat").unlink()
    ledger = Ledger(migrated_dsn).connect()
    session = ledger.open_sessions("lab", socket.gethostname(), ["run-1"])["run-1"]
    ledger.close()
    queue_directly(migrated_dsn, bucket, queued, seen, session_id=session)
    stat = seen["run-1/vanished.dat"]
    wait_states(sql, {"run-1/kept.dat": "uploaded", "run-1/vanished.dat": "gone"})
    assert states(sql)["run-1/vanished.dat"][1] == "the file is gone"
    wait_for(lambda: len(httpserver.log) == 1, timeout=30, message="the registration")
    assert sql("SELECT state, closed_reason FROM sessions") == [("complete", "idle")]
    body = json.loads(httpserver.log[0][0].data)
    assert [f["relpath"] for f in body["files"]] == ["run-1/kept.dat"]
    assert body["gone"] == [
        {"relpath": "run-1/vanished.dat", "size": stat.st_size, "reason": "the file is gone"}
    ]
    assert_in_s3(s3_server, bucket, {"in/run-1/kept.dat": kept})


# --- S3 through the proxy ------------------------------------------------------------------


@pytest.mark.slow
def test_s3_answering_500_pauses_the_job_and_releases_claims_for_that_reason(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
    proxy: FaultProxy,
) -> None:
    """500s trip the breaker; claims handed back say why (not "daemon stopping"); once S3
    answers, the probe and then every file go up."""
    proxy.mode = "http500"
    daemon = start_lab(
        make_daemon,
        root,
        bucket,
        settings={"workers": 2, "s3": s3_block(proxy.endpoint_url)},
        retry={"max_attempts": 20},
    )
    files = {f"f{i}.dat": write(root, f"f{i}.dat", os.urandom(1024)) for i in range(8)}
    wait_for(
        lambda: sql("SELECT count(*) FROM destination_health WHERE paused_until > now()") == [(1,)],
        timeout=60,
        message="the job paused",
    )
    wait_for(
        lambda: (
            sql(
                "SELECT count(*) FROM upload_attempts WHERE outcome = 'released' AND error = %s",
                PAUSED,
            )[0][0]
            > 0
        ),
        timeout=30,
        message="claims released because of the pause",
    )
    assert sql("SELECT count(*) FROM upload_attempts WHERE error LIKE 'daemon stopping%%'") == [
        (0,)
    ]
    failed = sql("SELECT DISTINCT error FROM upload_attempts WHERE outcome = 'failed'")
    assert failed and all("500" in error or "InternalError" in error for (error,) in failed)
    proxy.mode = "pass"
    wait_states(sql, dict.fromkeys(files, "uploaded"), timeout=90)
    healthy(daemon)
    assert_in_s3(s3_server, bucket, {f"in/{name}": data for name, data in files.items()})


def test_resets_blackhole_and_stall_cost_attempts_then_the_file_uploads(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
    proxy: FaultProxy,
) -> None:
    """A connection reset, a blackholed endpoint and a stalled answer each end one attempt
    within the S3 timeouts (the stall is logged); then the file uploads, byte for byte."""
    proxy.mode = "reset"
    daemon = start_lab(
        make_daemon,
        root,
        bucket,
        settings={"s3": s3_block(proxy.endpoint_url, read_timeout="1s", connect_timeout="1s")},
    )
    data = write(root, "f.dat", os.urandom(4096))

    def failures(word: str = "") -> int:
        errors = sql("SELECT error FROM upload_attempts WHERE outcome = 'failed'")
        return sum(1 for (error,) in errors if word in error.lower())

    # reset: the connection closed at once ("Connection was closed" from boto3, "Could not
    # connect" from obstore's small PUT); blackhole: a read timeout; stall: the request
    # reached S3 but no answer came back (an attempt that fails after waiting).
    for word, next_mode in (("connect", "blackhole"), ("timeout", "stall"), ("", "pass")):
        count = failures(word) + 1 if next_mode == "pass" else 1
        wait_for(
            functools.partial(lambda w, n: failures(w) >= n, word, count),
            timeout=30,
            message=f"an attempt failed with {word!r} before {next_mode}",
        )
        proxy.mode = next_mode
        proxy.cut()  # pooled connections too
    wait_states(sql, {"f.dat": "uploaded"}, timeout=60)
    errors = [
        e
        for (e,) in sql(
            "SELECT error FROM upload_attempts WHERE outcome = 'failed' ORDER BY attempt"
        )
    ]
    assert len(errors) >= 3 and all(e.startswith("S3") for e in errors), errors
    took = sql("SELECT max(extract(epoch FROM finished_at - started_at)) FROM upload_attempts")
    assert took[0][0] < 20, "no attempt held a worker for long"
    assert "past its deadline" in daemon.log()
    healthy(daemon)
    assert_in_s3(s3_server, bucket, {"in/f.dat": data})


@pytest.mark.slow
def test_s3_down_for_30s(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
    proxy: FaultProxy,
) -> None:
    proxy.down()
    daemon = start_lab(
        make_daemon,
        root,
        bucket,
        settings={"s3": s3_block(proxy.endpoint_url, connect_timeout="1s")},
        retry={"max_attempts": 20},
    )
    began = time.monotonic()
    files = {f"f{i}.dat": write(root, f"f{i}.dat", os.urandom(2048)) for i in range(4)}
    wait_for(
        lambda: (
            time.monotonic() - began > 30
            and sql("SELECT count(*) FROM upload_attempts WHERE outcome = 'failed'")[0][0] > 0
        ),
        timeout=60,
        message="30 s of S3 refusing connections",
    )
    assert sql("SELECT count(*) FROM file_versions WHERE state = 'uploaded'") == [(0,)]
    proxy.up()
    wait_states(sql, dict.fromkeys(files, "uploaded"), timeout=90)
    healthy(daemon)
    assert_in_s3(s3_server, bucket, {f"in/{name}": data for name, data in files.items()})


# --- the process ---------------------------------------------------------------------------


@pytest.mark.slow
def test_kill9_mid_multipart_resumes_visibly_and_counts_only_bytes_sent(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
) -> None:
    port = free_port()
    daemon = start_lab(
        make_daemon,
        root,
        bucket,
        settings={"metrics": {"listen": f"127.0.0.1:{port}"}},
        destination={"bandwidth": "8MiB/s"},
    )
    data = write(root, "movie.raw", os.urandom(64 * MiB))  # four 16 MiB parts
    client = s3_server.client()

    def parts_held() -> int:
        rows = sql(
            "SELECT multipart_upload_id FROM file_versions WHERE multipart_upload_id IS NOT NULL"
        )
        if not rows:
            return 0
        return len(
            client.list_parts(Bucket=bucket, Key="in/movie.raw", UploadId=rows[0][0]).get(
                "Parts", []
            )
        )

    wait_for(lambda: parts_held() >= 2, timeout=60, message="two parts in S3")
    daemon.kill9()
    daemon.start()
    wait_states(sql, {"movie.raw": "uploaded"}, timeout=90)
    assert_in_s3(s3_server, bucket, {"in/movie.raw": data})
    (sent,) = sql("SELECT bytes FROM upload_attempts WHERE outcome = 'uploaded'")[0]
    assert 0 < sent <= len(data) - 2 * 16 * MiB, "only the missing parts were sent"
    assert "resumed multipart upload" in daemon.log()
    assert metric(port, "uploaderd_upload_bytes_total", job="lab") == sent
    assert metric(port, "uploaderd_multipart_resumes_total", job="lab") == 1
    assert sql("SELECT outcome FROM upload_attempts ORDER BY attempt") == [
        ("expired",),
        ("uploaded",),
    ]


def test_sigterm_mid_multipart_releases_it_and_the_restart_resumes(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
) -> None:
    daemon = start_lab(
        make_daemon,
        root,
        bucket,
        settings={"shutdown_grace": "1s"},
        destination={"bandwidth": "8MiB/s"},
    )
    data = write(root, "movie.raw", os.urandom(48 * MiB))
    wait_for(
        lambda: sql("SELECT multipart_upload_id FROM file_versions")[0][0],
        timeout=30,
        message="the multipart upload recorded",
        ignore=(IndexError,),
    )
    assert daemon.stop() == 0
    row = sql("SELECT state, multipart_upload_id IS NOT NULL FROM file_versions")
    assert row == [("pending", True)], "handed back, its multipart upload kept to resume"
    (error,) = sql("SELECT error FROM upload_attempts WHERE outcome = 'released'")[0]
    assert error.startswith("daemon stopping")
    daemon.start()
    wait_states(sql, {"movie.raw": "uploaded"}, timeout=60)
    assert_in_s3(s3_server, bucket, {"in/movie.raw": data})


def test_idle_connections_to_the_metrics_endpoint_cost_no_threads(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
) -> None:
    port = free_port()
    daemon = start_lab(
        make_daemon, root, bucket, settings={"metrics": {"listen": f"127.0.0.1:{port}"}}
    )
    assert daemon.proc is not None
    assert metric(port, "uploaderd_db_up") == 1
    before = daemon_threads(daemon.proc.pid)
    with idle_connections(port, 1000) as opened:
        assert opened >= 50
        assert daemon_threads(daemon.proc.pid) <= before + 4
    wait_for(
        lambda: metric(port, "uploaderd_db_up") == 1,
        timeout=30,
        message="a scrape once the idle connections are gone",
        ignore=(OSError,),
    )
    healthy(daemon)


# --- triggers ------------------------------------------------------------------------------


def test_trigger_timeout_is_a_deadline_and_a_slow_endpoint_holds_no_other_job(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    bucket: str,
    sql: Sql,
    httpserver: HTTPServer,
) -> None:
    """Item 7: an endpoint trickling its answer a byte a second is cut at ``timeout``; the
    other job's registrations go out meanwhile."""
    httpserver.expect_request("/fast").respond_with_json({"ok": True})
    trickle = TricklingEndpoint()
    try:
        daemon = make_daemon()
        for name, url in (("slow", trickle.url), ("fast", httpserver.url_for("/fast"))):
            spec = lab_job(
                tmp_path / name,
                bucket,
                trigger={
                    "url": url,
                    "on": "file_uploaded",
                    "timeout": "2s",
                    "schedule": {"interval": "0.5s"},
                },
            )
            spec["destination"]["key"] = name + "/${relpath}"
            write(tmp_path / name, "a.txt", name.encode())
            daemon.write_job(name, spec)
        daemon.start()
        wait_for(lambda: trickle.calls >= 1, timeout=30, message="the slow endpoint called")
        wait_for(
            lambda: len(httpserver.log) == 1,
            timeout=10,
            message="the other job's registration, while the slow one trickles",
        )
        wait_for(
            lambda: (
                sql(
                    "SELECT count(*) FROM trigger_calls WHERE finished_at IS NOT NULL "
                    "AND error IS NOT NULL"
                )[0][0]
                >= 1
            ),
            timeout=30,
            message="the slow call cut",
        )
        error, took = sql(
            "SELECT error, extract(epoch FROM finished_at - started_at) "
            "FROM trigger_calls WHERE error IS NOT NULL ORDER BY started_at"
        )[0]
        assert error == "no response within the 2s timeout"
        assert took < 4, f"the call took {took}s with timeout: 2s"
        assert sql("SELECT t.job, t.state FROM triggers t ORDER BY job")[0] == ("fast", "sent")
        healthy(daemon)
    finally:
        trickle.close()


# --- two hosts -----------------------------------------------------------------------------


@pytest.mark.skipif(not can_name_hosts(), reason="needs root and unshare -u")
def test_two_hosts_one_job_same_path_different_content_is_refused_and_verified(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
) -> None:
    """Item 4: host B may not overwrite host A's object with other content under the default
    key; with ``overwrite: always`` it may, and `verify` reports the collision."""
    roots = {name: tmp_path / name for name in ("a", "b")}
    for path in roots.values():
        path.mkdir()
    daemons = {name: make_daemon(hostname=f"host-{name}") for name in roots}
    for name, daemon in daemons.items():
        spec = lab_job(roots[name], bucket)
        del spec["destination"]["key"]  # the default: ${job}/${relpath}
        daemon.write_job("lab", spec)
        daemon.start()
    first = write(roots["a"], "x.dat", b"host A's x")
    wait_for(
        lambda: sql("SELECT state FROM file_versions WHERE host = 'host-a'") == [("uploaded",)],
        timeout=30,
        message="host A's upload",
    )
    write(roots["b"], "x.dat", b"host B's x, different")
    wait_for(
        lambda: sql("SELECT state FROM file_versions WHERE host = 'host-b'") == [("failed",)],
        timeout=30,
        message="host B refused",
    )
    (error,) = sql("SELECT last_error FROM file_versions WHERE host = 'host-b'")[0]
    assert error.startswith("key collision: s3://") and "host-a:x.dat" in error
    assert_in_s3(s3_server, bucket, {"lab/x.dat": first})

    spec = lab_job(roots["b"], bucket, destination={"overwrite": "always"})
    del spec["destination"]["key"]
    daemons["b"].write_job("lab", spec)
    daemons["b"].wait_ready(nth=2)
    write(roots["a"], "y.dat", b"host A's y")
    wait_for(
        lambda: (
            sql("SELECT count(*) FROM file_versions WHERE relpath = 'y.dat' AND state = 'uploaded'")
            == [(1,)]
        ),
        timeout=30,
        message="A's y",
    )
    second = write(roots["b"], "y.dat", b"host B's y, written over A's")
    wait_for(
        lambda: (
            sql("SELECT count(*) FROM file_versions WHERE relpath = 'y.dat' AND state = 'uploaded'")
            == [(2,)]
        ),
        timeout=30,
        message="B's y",
    )
    assert_in_s3(s3_server, bucket, {"lab/y.dat": second})
    verify = subprocess.run(
        [sys.executable, "-m", "uploaderd", "verify", "lab", "-c", str(daemons["b"].config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "collision s3://" in verify.stdout and "lab/y.dat" in verify.stdout
    assert "host-a:y.dat" in verify.stdout and "host-b:y.dat" in verify.stdout
    assert "1 collision" in verify.stdout
    for daemon in daemons.values():
        healthy(daemon)
