"""``uploaderd run`` under the constraints of its systemd unit that can be had without systemd.

- ``ProtectSystem=strict``: the config directory and the watched folders are read-only. As
  root, file modes constrain nothing, so the daemon runs in a private mount namespace
  (``unshare -m``) where those paths are read-only bind mounts — what systemd does too.
  A job with ``after_upload: {move_to: ...}`` whose source is read-only still uploads; the
  move fails with a clear error in the log, and the daemon goes on.
- ``LoadCredential=``: the secrets come from ``$CREDENTIALS_DIRECTORY``, with
  ``PGPASSFILE`` and ``AWS_SHARED_CREDENTIALS_FILE`` pointing into it as the unit sets them,
  and nothing else: no AWS keys in the environment, and a role that needs its password.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from devstack import ACCESS_KEY, SECRET_KEY, DaemonProcess, PostgresCluster, S3Server, wait_for

Sql = Callable[..., list[tuple[Any, ...]]]

# Binds each path onto itself read-only, then runs the daemon; exec keeps the pid, so the
# harness's signals reach the daemon itself.
_READ_ONLY = (
    'set -e; while [ "$1" != -- ]; do mount --bind "$1" "$1"; '
    'mount -o remount,bind,ro "$1"; shift; done; shift; exec "$@"'
)


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    proc = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    return proc.returncode == 0


class ConstrainedDaemon(DaemonProcess):
    """The harness's daemon, started in a mount namespace where ``read_only`` paths are."""

    read_only: tuple[Path, ...] = ()

    def command(self) -> list[str]:
        return [
            "unshare",
            "-m",
            "--",
            "sh",
            "-c",
            _READ_ONLY,
            "sh",
            *map(str, self.read_only),
            "--",
            *super().command(),
        ]


@pytest.fixture
def constrained(
    tmp_path_factory: pytest.TempPathFactory, migrated_dsn: str, s3_server: S3Server
) -> Iterator[Callable[..., ConstrainedDaemon]]:
    made: list[ConstrainedDaemon] = []

    def make(*, dsn: str = migrated_dsn, **settings: object) -> ConstrainedDaemon:
        daemon = ConstrainedDaemon(
            tmp_path_factory.mktemp("daemon"), dsn, s3_server.endpoint_url, **settings
        )
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.cleanup()


def job(root: Path, bucket: str, **extra: Any) -> dict[str, Any]:
    return {
        "source": {"paths": [str(root)], "settle": "1s", "rescan": "1h"},
        "destination": {"bucket": bucket, "key": "in/${relpath}"},
        "retry": {"max_attempts": 3, "backoff": {"initial": "1s", "max": "2s"}},
        **extra,
    }


def uploaded(sql: Sql) -> set[str]:
    return {row[0] for row in sql("SELECT relpath FROM file_versions WHERE state = 'uploaded'")}


needs_unshare = pytest.mark.skipif(
    not _can_unshare(), reason="needs root and unshare -m (a private mount namespace)"
)


@needs_unshare
def test_read_only_source_with_move_to_uploads_and_reports_the_move(
    constrained: Callable[..., ConstrainedDaemon],
    tmp_path: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
) -> None:
    source = tmp_path / "instrument"
    (source / "run-1").mkdir(parents=True)
    done = tmp_path / "done"
    data = source / "run-1" / "image.tif"
    data.write_bytes(b"pixels\n")
    daemon = constrained()
    daemon.write_job("scope", job(source, bucket, after_upload={"move_to": str(done)}))
    # As the unit without a ReadWritePaths= drop-in: the config directory (uploaderd.yaml
    # and jobs.d) and the watched folder are read-only.
    daemon.read_only = (daemon.workdir, source)
    daemon.start()

    wait_for(lambda: uploaded(sql) == {"run-1/image.tif"}, timeout=60, message="the upload")
    body = s3_server.client().get_object(Bucket=bucket, Key="in/run-1/image.tif")["Body"].read()
    assert body == b"pixels\n"

    expected = (
        f"job scope: after_upload move of {data} failed: Read-only file system "
        "(retried every sweep)"
    )
    wait_for(lambda: expected in daemon.log(), timeout=45, message="the move's error in the log")
    assert daemon.alive()
    assert data.read_bytes() == b"pixels\n"  # still where it was
    assert "Traceback" not in daemon.log()
    # Across mounts the move copies first: the copy is taken back, never left behind.
    assert not (done / "run-1" / "image.tif").exists()

    # A reload reads the read-only config directory and needs nothing else from it.
    daemon.signal(signal.SIGHUP)
    daemon.wait_ready(nth=2)
    assert daemon.stop() == 0


@needs_unshare
def test_a_writable_move_to_target_with_a_read_only_config_directory(
    constrained: Callable[..., ConstrainedDaemon],
    tmp_path: Path,
    bucket: str,
    sql: Sql,
) -> None:
    """The drop-in's ReadWritePaths= (source and target writable) is all a move needs."""
    source = tmp_path / "instrument"
    source.mkdir()
    done = tmp_path / "done"
    (source / "a.txt").write_bytes(b"a\n")
    daemon = constrained()
    daemon.write_job("scope", job(source, bucket, after_upload={"move_to": str(done)}))
    daemon.read_only = (daemon.workdir,)
    daemon.start()
    wait_for(lambda: (done / "a.txt").exists(), timeout=60, message="the move")
    assert not (source / "a.txt").exists()
    assert uploaded(sql) == {"a.txt"}
    assert daemon.stop() == 0


# --- credentials through $CREDENTIALS_DIRECTORY ---------------------------------------------------


@pytest.fixture
def password_role(pg_cluster: PostgresCluster, migrated_dsn: str) -> Iterator[tuple[str, str]]:
    """A role that must give its password (scram) over TCP; the rest of the cluster trusts."""
    name = f"udcred_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    hba = pg_cluster.data_dir / "pg_hba.conf"
    original = hba.read_text()
    rule = f"host all {name} 127.0.0.1/32 scram-sha-256\n"

    def admin(query: str, *params: str) -> None:
        with contextlib.closing(psycopg2.connect(pg_cluster.dsn())) as conn:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(query, params)

    admin(f"CREATE ROLE {name} LOGIN SUPERUSER PASSWORD '{password}'")
    hba.write_text(rule + original)  # first match wins; keeps the file's owner
    admin("SELECT pg_reload_conf()")
    try:
        yield name, password
    finally:
        hba.write_text(hba.read_text().replace(rule, ""))
        admin("SELECT pg_reload_conf()")
        with contextlib.suppress(psycopg2.Error):
            admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", name)
            admin(f"DROP ROLE {name}")


@pytest.fixture
def credentials(
    tmp_path: Path,
    password_role: tuple[str, str],
    pg_cluster: PostgresCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A credentials directory as LoadCredential= makes it, and an environment with no keys."""
    directory = tmp_path / "credentials"
    directory.mkdir(mode=0o700)
    name, password = password_role
    (directory / "pgpass").write_text(f"127.0.0.1:{pg_cluster.port}:*:{name}:{password}\n")
    (directory / "aws-credentials").write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    for file in directory.iterdir():
        file.chmod(0o400)  # as systemd hands them over
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PGPASSWORD", "PGPASSFILE"):
        monkeypatch.delenv(variable, raising=False)
    return directory


def credential_env(directory: Path) -> dict[str, str]:
    # Environment=PGPASSFILE=%d/pgpass and AWS_SHARED_CREDENTIALS_FILE=%d/aws-credentials.
    return {
        "CREDENTIALS_DIRECTORY": str(directory),
        "PGPASSFILE": str(directory / "pgpass"),
        "AWS_SHARED_CREDENTIALS_FILE": str(directory / "aws-credentials"),
    }


def role_dsn(migrated_dsn: str, role: str) -> str:
    return migrated_dsn.replace("postgresql://postgres@", f"postgresql://{role}@", 1)


def test_the_daemon_runs_on_the_credentials_directory_alone(
    make_daemon: Callable[..., DaemonProcess],
    credentials: Path,
    password_role: tuple[str, str],
    migrated_dsn: str,
    tmp_path: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
) -> None:
    dsn = role_dsn(migrated_dsn, password_role[0])
    # Without the password file the role cannot log in: the password really comes from it.
    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(dsn, passfile=os.devnull).close()

    source = tmp_path / "instrument"
    source.mkdir()
    daemon = make_daemon(dsn=dsn)
    daemon.write_job("scope", job(source, bucket))
    daemon.extra_env = credential_env(credentials)
    daemon.start()  # READY=1 needs the database: libpq read PGPASSFILE
    (source / "a.txt").write_bytes(b"with credentials\n")
    wait_for(lambda: uploaded(sql) == {"a.txt"}, timeout=60, message="the upload")
    body = s3_server.client().get_object(Bucket=bucket, Key="in/a.txt")["Body"].read()
    assert body == b"with credentials\n"  # boto3 signed with the credentials file's keys
    assert password_role[1] not in daemon.log()
    assert daemon.stop() == 0


@pytest.mark.parametrize("missing", ["pgpass", "aws-credentials"])
def test_a_missing_credential_file_stops_the_daemon_with_a_clear_error(
    make_daemon: Callable[..., DaemonProcess],
    credentials: Path,
    password_role: tuple[str, str],
    migrated_dsn: str,
    tmp_path: Path,
    bucket: str,
    missing: str,
) -> None:
    (credentials / missing).unlink()
    daemon = make_daemon(dsn=role_dsn(migrated_dsn, password_role[0]))
    daemon.write_job("scope", job(tmp_path, bucket))
    daemon.extra_env = credential_env(credentials)
    daemon.start(wait_ready=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=30) == 2  # a config error: RestartPreventExitStatus=2
    variable = {"pgpass": "PGPASSFILE", "aws-credentials": "AWS_SHARED_CREDENTIALS_FILE"}[missing]
    assert (
        f"uploaderd: {credentials / missing}: {variable}: the file {variable} names does "
        f"not exist; under systemd check the unit's LoadCredential={missing}:"
        f"/etc/uploaderd/credentials/{missing}"
    ) in daemon.log()
