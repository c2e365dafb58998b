"""Fixtures for the real services that unit, integration and e2e tests share.

PostgreSQL and the S3 servers are started once per session (and only if some
test asks for them); each test gets its own database and bucket, so tests
never see each other's rows or objects.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable, Iterator

import psycopg2
import pytest
from daemon import DaemonProcess

from devstack import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    DevstackError,
    MotoServer,
    PostgresCluster,
    RcloneS3Server,
    S3Server,
    SeaweedFSServer,
)
from uploaderd.ledger import Ledger


@pytest.fixture(scope="session", autouse=True)
def _aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point every AWS client at the local servers' keys and away from any real AWS config."""
    empty = tmp_path_factory.mktemp("aws") / "empty"
    empty.touch()
    with pytest.MonkeyPatch.context() as env:
        for name in (
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_REGION",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ):
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        env.setenv("AWS_DEFAULT_REGION", REGION)
        env.setenv("AWS_CONFIG_FILE", str(empty))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        # Never let botocore probe the instance metadata service off this machine.
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One private PostgreSQL cluster for the whole session."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def database_dsn(pg_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh, empty database for this test; dropped afterwards."""
    pg_cluster.start()  # a previous test may have stopped it
    name = f"test_{uuid.uuid4().hex[:16]}"
    dsn = pg_cluster.create_database(name)
    yield dsn
    # The test may have stopped the cluster; its database then just waits for cleanup.
    with contextlib.suppress(DevstackError):
        pg_cluster.drop_database(name)


@pytest.fixture
def migrated_dsn(database_dsn: str) -> Iterator[str]:
    """A fresh database with uploaderd's schema applied.

    Afterwards the incremental counts must equal a recount of the rows, whatever the test
    did (every state transition of every test checks them).
    """
    from uploaderd.schema import migrate

    migrate(database_dsn)
    yield database_dsn
    assert count_mismatches(database_dsn) == [], "ledger counts differ from the rows"


def count_mismatches(dsn: str) -> list[tuple[object, ...]]:
    try:
        conn = psycopg2.connect(dsn, connect_timeout=3)
    except psycopg2.OperationalError:
        return []  # the test stopped PostgreSQL or dropped its database: nothing to compare
    with contextlib.closing(conn), conn.cursor() as cursor:
        cursor.execute("SELECT * FROM ledger_count_mismatches()")
        rows: list[tuple[object, ...]] = cursor.fetchall()
        return rows


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def rclone_server() -> Iterator[RcloneS3Server]:
    with RcloneS3Server() as server:
        yield server


@pytest.fixture(scope="session")
def seaweedfs_server() -> Iterator[SeaweedFSServer]:
    """Started once per session, on the first test that asks (about 4 s)."""
    with SeaweedFSServer() as server:
        yield server


@pytest.fixture
def s3_server(moto_server: MotoServer) -> S3Server:
    """The default S3 server (moto), running (a previous test may have stopped it)."""
    moto_server.start()
    return moto_server


@pytest.fixture(
    params=[
        "moto",
        pytest.param("rclone", marks=pytest.mark.rclone),
        pytest.param("seaweedfs", marks=pytest.mark.seaweedfs),
    ]
)
def s3_backend(request: pytest.FixtureRequest) -> S3Server:
    """Each S3 implementation in turn, for tests that must hold on all three."""
    server: S3Server = request.getfixturevalue(f"{request.param}_server")
    server.start()
    return server


def _new_bucket(server: S3Server, request: pytest.FixtureRequest) -> str:
    # Readable in server logs, unique across the session, a valid S3 name.
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    name = f"{stem}-{uuid.uuid4().hex[:12]}".lstrip("-")
    server.create_bucket(name)
    return name


@pytest.fixture
def bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A new empty bucket on ``s3_server``."""
    return _new_bucket(s3_server, request)


@pytest.fixture
def backend_bucket(s3_backend: S3Server, request: pytest.FixtureRequest) -> str:
    """A new empty bucket on ``s3_backend``."""
    return _new_bucket(s3_backend, request)


@pytest.fixture
def make_daemon(
    tmp_path_factory: pytest.TempPathFactory, migrated_dsn: str, s3_server: S3Server
) -> Iterator[Callable[..., DaemonProcess]]:
    """Build ``uploaderd run`` subprocesses on this test's database and the moto server."""
    made: list[DaemonProcess] = []

    def make(
        *, dsn: str = migrated_dsn, endpoint_url: str = s3_server.endpoint_url, **settings: object
    ) -> DaemonProcess:
        workdir = tmp_path_factory.mktemp("daemon")
        daemon = DaemonProcess(workdir, dsn, endpoint_url, **settings)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.cleanup()


@pytest.fixture
def ledger(migrated_dsn: str) -> Iterator[Ledger]:
    """A connected ledger on this test's database."""
    led = Ledger(migrated_dsn).connect()
    yield led
    led.close()


@pytest.fixture
def sql(migrated_dsn: str) -> Iterator[Callable[..., list[tuple[object, ...]]]]:
    """Run a query on this test's database (a fresh connection each call, autocommit)."""

    def run(query: str, *params: object) -> list[tuple[object, ...]]:
        with contextlib.closing(psycopg2.connect(migrated_dsn)) as conn:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchall() if cursor.description else []

    yield run
