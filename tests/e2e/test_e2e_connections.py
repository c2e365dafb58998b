"""The daemon within its connection budget (database.connections): every component makes
progress at a budget of one, a burst never holds more than the budget, an idle daemon holds
one connection. Through PgBouncer in both pooling modes; and hosts sharing a job, whose
files one of them discovers."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from devstack import (
    DaemonProcess,
    PgBouncer,
    PostgresCluster,
    S3Server,
    can_name_hosts,
    free_port,
    metric,
    wait_for,
)

Sql = Callable[..., list[tuple[Any, ...]]]


def daemon_connections(sql: Sql) -> int:
    """The daemon's connections now (its budget's, not the start-up probe's)."""
    rows = sql(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'uploaderd'"
    )
    return int(rows[0][0])


class Peak:
    """The most connections the daemon held, sampled until stopped."""

    def __init__(self, sql: Sql) -> None:
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(sql,), daemon=True)
        self._thread.start()

    def _sample(self, sql: Sql) -> None:
        while not self._stop.wait(0.02):
            self.most = max(self.most, daemon_connections(sql))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.most


@pytest.fixture
def peak(sql: Sql) -> Iterator[Peak]:
    sampler = Peak(sql)
    yield sampler
    sampler.stop()


def lab_job(root: Path, bucket: str, trigger_url: str) -> dict[str, Any]:
    return {
        "source": {"paths": [str(root)], "settle": "0.5s", "rescan": "1h"},
        "destination": {"bucket": bucket, "key": "in/${relpath}"},
        "after_upload": "delete",
        "session": {"group_by": "top_dir", "complete_when": {"marker": "DONE"}},
        "trigger": {"url": trigger_url, "schedule": {"interval": "0.5s"}},
    }


def start(
    make_daemon: Callable[..., DaemonProcess],
    dsn: str,
    connections: int,
    spec: dict[str, Any],
    pool_mode: str = "session",
) -> DaemonProcess:
    """A started daemon with the job "lab" and a budget of ``connections`` on ``dsn``."""
    daemon = make_daemon(database={"dsn": dsn, "connections": connections, "pool_mode": pool_mode})
    daemon.write_job("lab", spec)
    return daemon.start()


def uploaded(sql: Sql) -> int:
    return int(sql("SELECT count(*) FROM file_versions WHERE state = 'uploaded'")[0][0])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "watched"
    path.mkdir()
    return path


def write_run(root: Path, run: str, files: int) -> None:
    (root / run).mkdir(parents=True)
    for i in range(files):
        (root / run / f"f{i}.bin").write_bytes(f"{run}/{i}".encode())
    (root / run / "DONE").write_bytes(b"")


def runs_registered_and_deleted(root: Path, httpserver: HTTPServer, runs: int, files: int) -> None:
    """Write ``runs`` runs of ``files`` files and a marker; wait until each is registered
    and every source file deleted after its upload."""
    for n in range(1, runs + 1):
        write_run(root, f"run-{n}", files)
    wait_for(lambda: len(httpserver.log) == runs, timeout=90, message=f"{runs} registrations")
    wait_for(
        lambda: not any(p.is_file() for p in root.rglob("*")),
        timeout=60,
        message="every source file deleted after its upload",
    )


def status_states(daemon: DaemonProcess) -> dict[str, int]:
    """Job lab's versions by state, as ``uploaderd status --json`` on the daemon's config
    shows them (through the daemon's DSN, a pooler's too)."""
    status = subprocess.run(
        daemon.cli("status", "--json"), capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stderr
    states: dict[str, int] = json.loads(status.stdout)["jobs"]["lab"]["states"]
    return states


@pytest.mark.parametrize("connections", [1, 2])
def test_every_component_progresses_within_the_budget(
    connections: int,
    make_daemon: Callable[..., DaemonProcess],
    migrated_dsn: str,
    root: Path,
    bucket: str,
    sql: Sql,
    httpserver: HTTPServer,
    peak: Peak,
) -> None:
    httpserver.expect_request("/register").respond_with_json({"ok": True})
    spec = lab_job(root, bucket, httpserver.url_for("/register"))
    daemon = start(make_daemon, migrated_dsn, connections, spec)
    # Discovery and its writer, the upload pool, the session sweep, the trigger sender and
    # the disposal sweep each had their turn: every run registered, every file deleted.
    runs_registered_and_deleted(root, httpserver, runs=3, files=40)
    assert sql("SELECT state, count(*) FROM file_versions GROUP BY state") == [("uploaded", 123)]
    registered = sorted(len(json.loads(request.data)["files"]) for request, _ in httpserver.log)
    assert registered == [41, 41, 41]
    assert peak.stop() <= connections
    assert daemon.stop() == 0


def test_an_idle_daemon_holds_one_connection(
    make_daemon: Callable[..., DaemonProcess],
    migrated_dsn: str,
    root: Path,
    bucket: str,
    sql: Sql,
) -> None:
    port = free_port()
    daemon = make_daemon(
        database={"dsn": migrated_dsn, "connections": 4}, metrics={"listen": f"127.0.0.1:{port}"}
    )
    source = {"paths": [str(root)], "settle": "0.5s", "rescan": "1h"}
    daemon.write_job("lab", {"source": source, "destination": {"bucket": bucket}})
    daemon.start()
    for i in range(200):
        (root / f"f{i}.bin").write_bytes(b"x")
    wait_for(lambda: uploaded(sql) == 200, timeout=60, message="the burst uploaded")
    # The sweeps keep borrowing every few seconds; the listener lends them its connection.
    wait_for(lambda: daemon_connections(sql) == 1, timeout=40, message="one connection idle")
    assert metric(port, "uploaderd_db_connections") == 1
    assert daemon.stop() == 0


def test_uploads_go_on_while_a_registration_waits_on_its_endpoint(
    make_daemon: Callable[..., DaemonProcess],
    migrated_dsn: str,
    root: Path,
    bucket: str,
    sql: Sql,
    httpserver: HTTPServer,
) -> None:
    # The trigger sweep holds its cluster-wide lease for the whole call, but no connection:
    # at a budget of one, the others go on meanwhile.
    answering = threading.Event()
    called = threading.Event()

    def slow(request: Request) -> Response:
        called.set()
        answering.wait(60)
        return Response('{"ok": true}', content_type="application/json")

    httpserver.expect_request("/register").respond_with_handler(slow)
    spec = lab_job(root, bucket, httpserver.url_for("/register"))
    spec["trigger"]["timeout"] = "5m"  # the call lasts as long as the test wants
    daemon = start(make_daemon, migrated_dsn, 1, spec)
    write_run(root, "run-1", 2)
    assert called.wait(60), "the registration of run-1 was never sent"
    try:
        write_run(root, "run-2", 20)
        wait_for(
            lambda: uploaded(sql) == 24,
            timeout=30,
            message="run-2 uploaded while run-1's registration waits on its endpoint",
        )
        assert len(httpserver.log) == 0  # run-1's call still waits for its answer
    finally:
        answering.set()
    wait_for(lambda: len(httpserver.log) == 2, timeout=60, message="both runs registered")
    assert daemon.stop() == 0


def test_the_daemon_and_its_commands_through_pgbouncer_in_session_mode(
    make_daemon: Callable[..., DaemonProcess],
    pg_cluster: PostgresCluster,
    migrated_dsn: str,
    root: Path,
    bucket: str,
    sql: Sql,
    httpserver: HTTPServer,
) -> None:
    # Session pooling keeps what the daemon puts in its sessions: prepared statements and
    # LISTEN; the commands go through it too.
    httpserver.expect_request("/register").respond_with_json({"ok": True})
    with PgBouncer(pg_cluster, pool_mode="session", pool_size=3) as bouncer:
        dsn = bouncer.dsn(migrated_dsn.rsplit("/", 1)[1])
        spec = lab_job(root, bucket, httpserver.url_for("/register"))
        daemon = start(make_daemon, dsn, 2, spec)
        runs_registered_and_deleted(root, httpserver, runs=2, files=20)
        assert sql("SELECT state, count(*) FROM file_versions GROUP BY state") == [("uploaded", 42)]
        assert status_states(daemon) == {"uploaded": 42}
        assert daemon.stop() == 0


def test_migrate_the_daemon_and_its_commands_through_pgbouncer_in_transaction_mode(
    make_daemon: Callable[..., DaemonProcess],
    pg_cluster: PostgresCluster,
    root: Path,
    bucket: str,
    httpserver: HTTPServer,
) -> None:
    # One server connection for everything: two `migrate` at once, the daemon's two
    # connections and a command each run their transactions on it, in turn. Anything kept
    # in a server session (a prepared statement, LISTEN, a session lock or setting) would
    # meet another client's transaction there.
    httpserver.expect_request("/register").respond_with_json({"ok": True})
    name = f"fresh_{uuid.uuid4().hex[:12]}"  # not migrated yet, unlike the test's own
    pg_cluster.create_database(name)
    try:
        with PgBouncer(pg_cluster, pool_mode="transaction", pool_size=1) as bouncer:
            dsn = bouncer.dsn(name)
            spec = lab_job(root, bucket, httpserver.url_for("/register"))
            daemon = make_daemon(dsn=dsn, database={"dsn": dsn, "pool_mode": "transaction"})
            daemon.write_job("lab", spec)
            migrations = [
                subprocess.Popen(daemon.cli("migrate"), stdout=subprocess.PIPE, text=True)
                for _ in range(2)
            ]
            outputs = [m.communicate(timeout=120)[0] for m in migrations]
            assert [m.returncode for m in migrations] == [0, 0], outputs
            assert sum(line.startswith("applied ") for out in outputs for line in out.splitlines())
            daemon.start()
            runs_registered_and_deleted(root, httpserver, runs=2, files=20)
            assert status_states(daemon) == {"uploaded": 42}
            assert daemon.stop() == 0
    finally:
        pg_cluster.drop_database(name)


@pytest.mark.skipif(not can_name_hosts(), reason="needs root and unshare -u for hostnames")
def test_three_hosts_upload_a_shared_burst_each_file_once_and_one_discovers_it(
    make_daemon: Callable[..., DaemonProcess],
    migrated_dsn: str,
    root: Path,
    bucket: str,
    sql: Sql,
    s3_server: S3Server,
) -> None:
    spec = {
        "source": {"paths": [str(root)], "settle": "0.5s", "rescan": "1h", "shared": True},
        "destination": {"bucket": bucket, "key": "in/${relpath}"},
    }
    hosts: dict[str, tuple[DaemonProcess, int]] = {}
    for name in ("host-a", "host-b", "host-c"):
        port = free_port()
        daemon = make_daemon(
            hostname=name,
            database={"dsn": migrated_dsn, "connections": 2},
            metrics={"listen": f"127.0.0.1:{port}"},
        )
        daemon.write_job("lab", spec)
        hosts[name] = (daemon.start(), port)

    def leaders() -> list[str]:
        return [
            name
            for name, (daemon, port) in hosts.items()
            if daemon.alive() and metric(port, "uploaderd_discovery_leading", job="lab") == 1
        ]

    wait_for(lambda: len(leaders()) == 1, timeout=30, message="one host discovers the job")
    for i in range(300):
        (root / f"f{i:03d}.bin").write_bytes(f"file {i}".encode())
    wait_for(lambda: uploaded(sql) == 300, timeout=90, message="300 shared files uploaded")
    # Each file once: one version, one successful attempt, one object.
    assert sql("SELECT count(*), count(DISTINCT relpath) FROM file_versions") == [(300, 300)]
    assert sql("SELECT count(*) FROM upload_attempts WHERE outcome = 'uploaded'") == [(300,)]
    hosts_uploading = {row[0] for row in sql("SELECT DISTINCT host FROM upload_attempts")}
    assert hosts_uploading <= set(hosts) and hosts_uploading
    listing = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="in/")
    assert listing["KeyCount"] == 300
    # One enqueue attempt per file, all by the discovering host: the other two neither
    # looked the files up nor offered them to the ledger.
    [leader] = leaders()
    offered = {
        name: sum(
            metric(port, "uploaderd_files_discovered_total", job="lab", source=source) or 0
            for source in ("watch", "scan")
        )
        for name, (daemon, port) in hosts.items()
    }
    assert offered == {name: 300 if name == leader else 0 for name in hosts}
    # Its host stops: another takes the discovery over, and finds what arrived meanwhile.
    assert hosts[leader][0].stop() == 0
    for i in range(300, 350):
        (root / f"f{i:03d}.bin").write_bytes(f"file {i}".encode())
    wait_for(lambda: uploaded(sql) == 350, timeout=90, message="50 more after the stop")
    assert len(leaders()) == 1 and leaders() != [leader]
    assert sql("SELECT count(*), count(DISTINCT relpath) FROM file_versions") == [(350, 350)]
    for daemon, _ in hosts.values():
        if daemon.alive():
            assert daemon.stop() == 0
