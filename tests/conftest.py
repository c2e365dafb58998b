"""Fixtures for the real services that unit, integration and e2e tests share.

PostgreSQL and the S3 servers are started once per session (and only if some
test asks for them); each test gets its own database and bucket, so tests
never see each other's rows or objects.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
from debhost import OLD_COMMIT, REPO, build_deb
from nspawn import debian_root, unavailable

from devstack import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    DaemonProcess,
    DevstackError,
    MotoServer,
    PostgresCluster,
    RcloneS3Server,
    S3Server,
    SeaweedFSServer,
)
from uploaderd.ledger.store import Ledger

# What a whole run uses in TMPDIR at its peak, with room to spare: measured 1.7 GB on a
# 2.4 GB tmpfs /tmp (pytest's test directories 0.8 GB, moto's object bodies 0.5 GB,
# PostgreSQL up to 0.4 GB, rclone and SeaweedFS 0.1 GB each).
TMPDIR_NEEDED = 2 << 30


def pytest_sessionstart(session: pytest.Session) -> None:
    """Say what the suite needs up front, not as servers failing mid-run (a full TMPDIR)."""
    config = session.config
    whole = config.args_source == pytest.Config.ArgsSource.TESTPATHS and not (
        config.getoption("keyword") or config.getoption("markexpr")
    )
    tmpdir = tempfile.gettempdir()
    free = shutil.disk_usage(tmpdir).free
    if whole and free < TMPDIR_NEEDED:
        raise pytest.UsageError(
            f"TMPDIR ({tmpdir}) has {free >> 20} MiB free; the whole suite needs about "
            f"{TMPDIR_NEEDED >> 20} MiB there. Point TMPDIR at a larger filesystem, or run "
            "a part of the suite (-k, or a tests/ path)."
        )


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
    from uploaderd.ledger.schema import migrate

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


# What the session's SeaweedFS writes into TMPDIR, with room to grow: about 110 MiB of
# objects in a full run (of them 106 MiB by the seaweedfs-marked tests) and its log.
SEAWEEDFS_DISK_NEEDED = 256 << 20


@pytest.fixture(scope="session")
def seaweedfs_server() -> Iterator[SeaweedFSServer]:
    """Started once per session, on the first test that asks (about 4 s).

    Its buckets are kept until the session ends: each takes one of its 256 volumes (a
    count, whatever the free disk), and their objects about 110 MiB in all (measured).
    Less free space in TMPDIR than SEAWEEDFS_DISK_NEEDED plus the 64 MiB weed keeps free
    fails the start, saying so.
    """
    with SeaweedFSServer(disk_needed=SEAWEEDFS_DISK_NEEDED) as server:
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
        *,
        dsn: str = migrated_dsn,
        endpoint_url: str = s3_server.endpoint_url,
        hostname: str | None = None,
        **settings: object,
    ) -> DaemonProcess:
        workdir = tmp_path_factory.mktemp(hostname or "daemon")
        daemon = DaemonProcess(workdir, dsn, endpoint_url, **settings)
        daemon.hostname = hostname
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


# --- the system tier (tests/system/): the .deb under a real systemd ---------------------------
# Root, systemd-nspawn and debootstrap (./dev test installs them); skipped, saying why, elsewhere.
# The S3 server runs on the host (rclone); PostgreSQL is each container's own unit.


@pytest.fixture(scope="session")
def system_root() -> Path:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    return debian_root()


@pytest.fixture(scope="session")
def deb_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package of this tree, as packaging/build-deb makes it (once a session: the package
    tests and the system tier share it)."""
    return build_deb(REPO, tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def old_deb(system_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package of OLD_COMMIT, built from its own tree with its own build-deb."""
    cached = system_root.parent / f"uploaderd-{OLD_COMMIT}.deb"
    if cached.exists():
        return cached
    source = tmp_path_factory.mktemp(f"uploaderd-{OLD_COMMIT}")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", OLD_COMMIT], capture_output=True, check=False
    )
    if archive.returncode:
        pytest.skip(f"commit {OLD_COMMIT} is not in this clone's history (a shallow clone?)")
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    built = build_deb(source, source / "dist")
    built.rename(cached)
    return cached


@pytest.fixture(scope="session")
def host_s3(system_root: Path) -> Iterator[RcloneS3Server]:
    """The S3 server the containers reach on the host's 127.0.0.1."""
    with RcloneS3Server() as server:
        yield server
