"""The daemon as operators run it: a subprocess, a notify socket, real PostgreSQL and S3."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack import DaemonProcess, PostgresCluster, S3Server, free_port, metric, wait_for

Sql = Callable[..., list[tuple[Any, ...]]]
MiB = 1024 * 1024


def job(root: Path, bucket: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"paths": [str(root)], "settle": "1s", "rescan": "1h"},
        "destination": {"bucket": bucket, "key": "in/${relpath}"},
        "retry": {"max_attempts": 3, "backoff": {"initial": "1s", "max": "2s"}},
    }
    for section, values in overrides.items():
        spec.setdefault(section, {}).update(values)
    return spec


def start_lab(
    make: Callable[..., DaemonProcess], root: Path, bucket: str, **overrides: Any
) -> DaemonProcess:
    """A started daemon with one job, "lab", watching ``root`` into ``bucket``."""
    daemon = make()
    daemon.write_job("lab", job(root, bucket, **overrides))
    return daemon.start()


def uploaded(sql: Sql) -> dict[str, str]:
    """relpath → sha256 of every uploaded version."""
    rows = sql("SELECT relpath, sha256 FROM file_versions WHERE state = 'uploaded'")
    return dict(rows)


def wait_uploaded(sql: Sql, relpaths: set[str], timeout: float = 60.0) -> dict[str, str]:
    wait_for(
        lambda: relpaths <= set(uploaded(sql)),
        timeout=timeout,
        message=f"{len(relpaths)} files uploaded",
    )
    return uploaded(sql)


def object_body(s3: S3Server, bucket: str, key: str) -> tuple[bytes, dict[str, str]]:
    response = s3.client().get_object(Bucket=bucket, Key=key)
    return response["Body"].read(), response["Metadata"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "watched"
    path.mkdir()
    return path


def test_dropped_files_reach_s3_with_their_sha256(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
) -> None:
    daemon = start_lab(make_daemon, root, bucket)
    files = {
        "top.txt": b"hello\n",
        "nested/deeper/data.csv": b"a,b\n1,2\n",
        "mit Leerzeichen/ünïcödé файл.txt": "ünï\n".encode(),
        "empty.dat": b"",
        "big/multipart.bin": os.urandom(17 * MiB),  # above the 16 MiB multipart threshold
    }
    for relpath, data in files.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(data)
    (root / "skipped.tmp").write_bytes(b"temporary")
    (root / ".hidden").write_bytes(b"dotfile")

    shas = wait_uploaded(sql, set(files))
    for relpath, data in files.items():
        body, metadata = object_body(s3_server, bucket, f"in/{relpath}")
        assert body == data, relpath
        assert metadata["sha256"] == sha(data) == shas[relpath]
    relpaths = {row[0] for row in sql("SELECT relpath FROM file_versions")}
    assert relpaths == set(files), "temp names and dotfiles are never queued"
    assert daemon.notes is not None
    assert daemon.notes.wait_prefix("STATUS=", "1 job, 1 root watched")
    assert daemon.stop() == 0


def test_slow_writer_is_uploaded_only_when_complete(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
) -> None:
    start_lab(make_daemon, root, bucket, source={"settle": "2s"})
    chunks = [os.urandom(64 * 1024) for _ in range(8)]
    with (root / "acquisition.raw").open("wb") as out:
        for chunk in chunks:  # pauses shorter than settle: the file is still being written
            out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
            time.sleep(0.4)  # the writer under test, not a wait for the daemon
    wait_uploaded(sql, {"acquisition.raw"})
    sizes = sql("SELECT size, state FROM file_versions WHERE relpath = 'acquisition.raw'")
    assert sizes == [(sum(map(len, chunks)), "uploaded")], "no half-written version was queued"
    body, _ = object_body(s3_server, bucket, "in/acquisition.raw")
    assert body == b"".join(chunks)


def test_temp_name_renamed_into_place(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
) -> None:
    start_lab(make_daemon, root, bucket)
    (root / "run1.dat.part").write_bytes(b"partial then complete")
    os.rename(root / "run1.dat.part", root / "run1.dat")
    wait_uploaded(sql, {"run1.dat"})
    assert [r[0] for r in sql("SELECT relpath FROM file_versions")] == ["run1.dat"]
    assert object_body(s3_server, bucket, "in/run1.dat")[0] == b"partial then complete"


def test_moved_in_directory_and_symlinks_out_of_the_root(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    tmp_path: Path,
    bucket: str,
    sql: Sql,
) -> None:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text("not for upload")
    (outside / "dir" / "also-secret.txt").write_text("not for upload")
    daemon = start_lab(make_daemon, root, bucket, source={"follow_symlinks": True})
    (root / "link-to-file").symlink_to(outside / "secret.txt")
    (root / "link-to-dir").symlink_to(outside / "dir")
    staged = tmp_path / "staged-run"
    (staged / "sub").mkdir(parents=True)
    (staged / "sub" / "frame-001.tif").write_bytes(b"frame")
    os.rename(staged, root / "run-7")  # a whole directory moved in at once
    wait_uploaded(sql, {"run-7/sub/frame-001.tif"})
    # The start-up scan must not take the links either; it finishes before the sentinel settles.
    assert daemon.stop() == 0
    daemon.start()
    (root / "sentinel.txt").write_text("after the restart")
    wait_uploaded(sql, {"sentinel.txt"})
    relpaths = {r[0] for r in sql("SELECT relpath FROM file_versions")}
    assert relpaths == {"run-7/sub/frame-001.tif", "sentinel.txt"}


def test_changed_file_becomes_a_new_version(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
) -> None:
    start_lab(make_daemon, root, bucket)
    target = root / "config.json"
    target.write_bytes(b'{"v": 1}')
    wait_uploaded(sql, {"config.json"})
    target.write_bytes(b'{"v": 2, "longer": true}')
    wait_for(
        lambda: len(sql("SELECT 1 FROM file_versions WHERE state = 'uploaded'")) == 2,
        timeout=30,
        message="the second version uploaded",
    )
    versions = sql("SELECT size, sha256 FROM file_versions ORDER BY id")
    assert versions == [(8, sha(b'{"v": 1}')), (24, sha(b'{"v": 2, "longer": true}'))]
    assert object_body(s3_server, bucket, "in/config.json")[0] == b'{"v": 2, "longer": true}'


def test_kill9_in_a_burst_then_restart_loses_nothing(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
) -> None:
    daemon = start_lab(make_daemon, root, bucket, source={"settle": "0.2s"})
    contents = {f"burst/{i:04d}.dat": os.urandom(512 + i) for i in range(400)}
    writer = threading.Thread(target=_write_all, args=(root, contents))
    writer.start()
    wait_for(lambda: len(uploaded(sql)) >= 40, timeout=60, message="the burst under way")
    daemon.kill9()
    writer.join()
    assert len(uploaded(sql)) < len(contents), "the kill must land mid-burst"
    daemon.start()
    shas = wait_uploaded(sql, set(contents), timeout=120)
    for relpath, data in contents.items():
        body, metadata = object_body(s3_server, bucket, f"in/{relpath}")
        assert body == data and metadata["sha256"] == sha(data) == shas[relpath]
    per_path = sql("SELECT relpath FROM file_versions GROUP BY relpath HAVING count(*) > 1")
    assert per_path == [], "each file is one version, uploaded once"
    assert sql("SELECT count(*) FROM file_versions WHERE state <> 'uploaded'") == [(0,)]


def _write_all(root: Path, contents: dict[str, bytes]) -> None:
    (root / "burst").mkdir(exist_ok=True)
    for relpath, data in contents.items():
        (root / relpath).write_bytes(data)


def test_files_created_while_down_are_found_at_start(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    sql: Sql,
) -> None:
    daemon = start_lab(make_daemon, root, bucket)
    assert daemon.stop() == 0
    for i in range(5):
        (root / f"offline-{i}.txt").write_text(f"written while uploaderd was down {i}")
    daemon.start()
    wait_uploaded(sql, {f"offline-{i}.txt" for i in range(5)})


def test_postgres_outage_under_the_running_daemon(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
    pg_cluster: PostgresCluster,
) -> None:
    daemon = start_lab(make_daemon, root, bucket)
    (root / "before.txt").write_text("before the outage")
    wait_uploaded(sql, {"before.txt"})
    pg_cluster.stop()
    try:
        (root / "during.txt").write_text("written while PostgreSQL is down")
        assert daemon.notes is not None
        daemon.notes.wait_prefix("STATUS=", "database unreachable", timeout=30)
        wait_for(
            lambda: "discovery: cannot connect" in daemon.log(),
            timeout=30,
            message="discovery meeting the outage",
        )
        assert daemon.alive()
    finally:
        pg_cluster.start()
    (root / "after.txt").write_text("after the outage")
    wait_uploaded(sql, {"before.txt", "during.txt", "after.txt"}, timeout=90)
    daemon.notes.wait_prefix("STATUS=", "database ok", timeout=30)
    assert object_body(s3_server, bucket, "in/during.txt")[0] == b"written while PostgreSQL is down"
    # Issue 25: after "PostgreSQL is back" came "connection already closed" (a stale pooled
    # connection) and "is back" again: one outage logged as two.
    log = daemon.log()
    after = log[log.index("PostgreSQL is back") :]
    assert "connection already closed" not in log
    assert after.count("PostgreSQL is back") == 1 and "ERROR" not in after, after


def test_sighup_with_a_broken_job_file_keeps_the_previous_version(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    bucket: str,
    sql: Sql,
) -> None:
    roots = {name: tmp_path / name for name in ("alpha", "beta", "gamma")}
    for path in roots.values():
        path.mkdir()
    port = free_port()
    daemon = make_daemon(metrics={"listen": f"127.0.0.1:{port}"})
    daemon.write_job("alpha", job(roots["alpha"], bucket, destination={"key": "a/${relpath}"}))
    daemon.write_job("beta", job(roots["beta"], bucket, destination={"key": "b/${relpath}"}))
    daemon.start()
    broken = daemon.write_job("beta", "source:\n  paths: [relative/path]\n  settel: 10s\n")
    daemon.write_job("gamma", job(roots["gamma"], bucket, destination={"key": "g/${relpath}"}))
    daemon.signal(signal.SIGHUP)
    assert daemon.notes is not None
    daemon.notes.wait_prefix("RELOADING=1")
    assert daemon.notes.wait_prefix("MONOTONIC_USEC=").split("=")[1].isdigit()
    daemon.wait_ready(nth=2)
    for name, path in roots.items():
        (path / f"{name}.txt").write_text(name)
    wait_uploaded(sql, {"alpha.txt", "beta.txt", "gamma.txt"})
    keys = {r[0] for r in sql("SELECT key FROM file_versions")}
    assert keys == {"a/alpha.txt", "b/beta.txt", "g/gamma.txt"}
    log = daemon.log()
    assert f"{broken}:2: source.paths.0: 'relative/path' is not an absolute path" in log
    assert f"{broken}:3: source.settel: unknown key; did you mean 'settle'?" in log
    assert "job beta: keeping the previous version" in log
    assert metric(port, "uploaderd_job_files_not_loaded") == 1
    status = subprocess.run(daemon.cli("status"), capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "job files not loaded" in status.stdout
    assert f"{broken}:3: source.settel: unknown key" in status.stdout
    assert daemon.alive()


def test_sigterm_stops_cleanly_and_hands_back_claims(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    sql: Sql,
) -> None:
    daemon = make_daemon()
    daemon.write_job("lab", job(root, bucket))
    daemon.extra_env["WATCHDOG_USEC"] = "1000000"
    daemon.start()
    assert daemon.notes is not None
    daemon.notes.wait_line("WATCHDOG=1", nth=2, timeout=15)
    for i in range(30):
        (root / f"f{i}.bin").write_bytes(os.urandom(100_000))
    wait_for(
        lambda: sql("SELECT count(*) FROM file_versions")[0][0] == 30,
        timeout=30,
        message="all queued",
    )
    assert daemon.stop() == 0
    assert "STOPPING=1" in daemon.notes.lines()
    assert sql("SELECT count(*) FROM file_versions WHERE state = 'uploading'") == [(0,)]
    assert sql("SELECT count(*) FROM upload_attempts WHERE finished_at IS NULL") == [(0,)]
    daemon.start()  # what was handed back is uploaded by the next run
    wait_uploaded(sql, {f"f{i}.bin" for i in range(30)})


def test_ready_waits_for_postgres(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    sql: Sql,
    pg_cluster: PostgresCluster,
) -> None:
    daemon = make_daemon()
    daemon.write_job("lab", job(root, bucket))
    (root / "early.txt").write_text("there before the database")
    pg_cluster.stop()
    try:
        daemon.start(wait_ready=False)
        assert daemon.notes is not None
        daemon.notes.wait_prefix("STATUS=waiting for PostgreSQL", timeout=30)
        assert "READY=1" not in daemon.notes.lines() and daemon.alive()
    finally:
        pg_cluster.start()
    daemon.wait_ready()
    wait_uploaded(sql, {"early.txt"})


def test_run_refuses_an_unmigrated_database(
    make_daemon: Callable[..., DaemonProcess],
    pg_cluster: PostgresCluster,
    root: Path,
    bucket: str,
) -> None:
    name = f"unmigrated_{os.getpid()}"
    daemon = make_daemon(dsn=pg_cluster.create_database(name))
    daemon.write_job("lab", job(root, bucket))
    daemon.start(wait_ready=False)
    assert daemon.proc is not None and daemon.proc.wait(timeout=30) == 2
    assert "the database schema is not up to date" in daemon.log()
    assert "run `uploaderd migrate`" in daemon.log()
    assert daemon.notes is not None and "READY=1" not in daemon.notes.lines()
    pg_cluster.drop_database(name)


def test_polling_observer_for_network_style_roots(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    sql: Sql,
) -> None:
    daemon = start_lab(make_daemon, root, bucket, source={"polling": True})
    (root / "polled").mkdir()
    (root / "polled" / "file.txt").write_text("seen by polling")
    wait_uploaded(sql, {"polled/file.txt"})
    assert "using the polling observer" not in daemon.log(), "forced, not detected"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("rclone", marks=pytest.mark.rclone),
        pytest.param("seaweedfs", marks=pytest.mark.seaweedfs),
    ],
)
def test_core_flow_on_the_other_s3_servers(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    sql: Sql,
    name: str,
    request: pytest.FixtureRequest,
) -> None:
    """rclone and SeaweedFS end to end: small, empty and multipart files."""
    server: S3Server = request.getfixturevalue(f"{name}_server")
    server.start()
    bucket = f"e2e-{name}-{os.getpid()}-{abs(hash(request.node.name)) % 10**6}"
    server.create_bucket(bucket)
    daemon = make_daemon(endpoint_url=server.endpoint_url)
    daemon.write_job("lab", job(root, bucket))
    daemon.start()
    files = {"a.txt": b"alpha", "empty": b"", "dir/big.bin": os.urandom(17 * MiB)}
    for relpath, data in files.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(data)
    shas = wait_uploaded(sql, set(files))
    for relpath, data in files.items():
        body, metadata = object_body(server, bucket, f"in/{relpath}")
        lowered = {k.lower(): v for k, v in metadata.items()}
        assert body == data and lowered["sha256"] == sha(data) == shas[relpath]


def test_kill9_during_a_multipart_upload_resumes_it(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
) -> None:
    daemon = start_lab(make_daemon, root, bucket)
    data = os.urandom(80 * MiB)  # five 16 MiB parts
    (root / "movie.raw").write_bytes(data)
    wait_for(
        lambda: sql("SELECT multipart_upload_id FROM file_versions")[0][0],
        timeout=60,
        message="the multipart upload recorded",
        ignore=(IndexError,),
    )
    daemon.kill9()
    assert sql("SELECT state FROM file_versions") == [("uploading",)], "killed mid-upload"
    daemon.start()
    wait_uploaded(sql, {"movie.raw"}, timeout=120)
    body, metadata = object_body(s3_server, bucket, "in/movie.raw")
    assert body == data and metadata["sha256"] == sha(data)
    assert sql("SELECT multipart_upload_id FROM file_versions") == [(None,)]
    outcomes = sql("SELECT outcome FROM upload_attempts ORDER BY attempt")
    assert outcomes == [("expired",), ("uploaded",)], "the dead attempt reclaimed at start"


def test_an_abandoned_multipart_upload_is_aborted_when_its_version_moves_on(
    make_daemon: Callable[..., DaemonProcess],
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
) -> None:
    daemon = start_lab(make_daemon, root, bucket)
    target = root / "movie.raw"
    target.write_bytes(os.urandom(80 * MiB))
    wait_for(
        lambda: sql("SELECT multipart_upload_id FROM file_versions")[0][0],
        timeout=60,
        message="the multipart upload recorded",
        ignore=(IndexError,),
    )
    daemon.kill9()
    assert sql("SELECT state FROM file_versions") == [("uploading",)], "killed mid-upload"
    data = os.urandom(20 * MiB)
    target.write_bytes(data)  # while the daemon is down: the first version is gone
    daemon.start()
    wait_for(
        lambda: (
            sql("SELECT state FROM file_versions ORDER BY id") == [("superseded",), ("uploaded",)]
        ),
        timeout=120,
        message="the new version uploaded",
    )
    assert object_body(s3_server, bucket, "in/movie.raw")[0] == data
    client = s3_server.client()
    wait_for(
        lambda: client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == [],
        timeout=30,
        message="no multipart upload left behind",
    )
