"""The upload pool against real PostgreSQL and S3: leases, retries, failure after max attempts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from devstack import FaultProxy, S3Server, wait_for
from uploaderd.config.settings import Job, S3Settings, parse_job_text
from uploaderd.ledger.store import Claim, Ledger, NewVersion, Outcome
from uploaderd.policy.health import Breaker
from uploaderd.policy.settle import Candidate, Signature
from uploaderd.upload.storage import Storage
from uploaderd.upload.uploader import Uploader, UploadResult
from uploaderd.upload.workers import UploadPool

Sql = Callable[..., list[tuple[Any, ...]]]


class HeldUploader(Uploader):
    """A real uploader whose uploads wait for the test's go: a slow transfer, on demand."""

    def __init__(self) -> None:
        super().__init__(Storage(4))
        self.go = threading.Event()
        self.started = threading.Event()

    def upload(self, claim: Claim, job: Job, *args: Any) -> UploadResult:
        self.started.set()
        self.go.wait(timeout=60)
        return super().upload(claim, job, *args)


def make_job(root: Path, bucket: str, server: S3Server | FaultProxy, max_attempts: int = 3) -> Job:
    text = (
        f"source:\n  paths: [{root}]\ndestination:\n  bucket: {bucket}\n"
        f"  endpoint_url: {server.endpoint_url}\n"
        f"retry:\n  max_attempts: {max_attempts}\n"
        "  backoff: {initial: 0.05s, max: 0.1s, jitter: false}\n"
    )
    return parse_job_text(text, name="lab", defaults=S3Settings(region="us-east-1"))


def queue_files(dsn: str, root: Path, files: dict[str, bytes], bucket: str) -> None:
    """Write the files and queue them in one statement: one claim can take them all."""
    versions = []
    for name, data in files.items():
        path = root / name
        path.write_bytes(data)
        candidate = Candidate(str(root), name, Signature.of(path.stat()))
        versions.append(NewVersion.of(candidate, key=f"lab/{name}", session_id=None))
    ledger = Ledger(dsn).connect()
    ledger.enqueue("lab", scope="host-a", host="host-a", bucket=bucket, versions=versions)
    ledger.close()


def queue_file(dsn: str, root: Path, name: str, data: bytes, bucket: str) -> None:
    queue_files(dsn, root, {name: data}, bucket)


def uploaded(sql: Sql) -> int:
    """How many versions are uploaded."""
    return int(sql("SELECT count(*) FROM file_versions WHERE state = 'uploaded'")[0][0])


class CountingLedger(Ledger):
    """A real ledger that also notes how many outcomes each write carried, each claim's
    size, and how often the dispatcher went to sleep."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.batches: list[int] = []
        self.claims: list[int] = []
        self.sleeps = 0

    def wait_for_notify(self, timeout: float, *extra_fds: int, host: str | None = None) -> bool:
        self.sleeps += 1
        return super().wait_for_notify(timeout, *extra_fds, host=host)

    def claim(self, **kwargs: Any) -> list[Claim]:
        claims = super().claim(**kwargs)
        self.claims.append(len(claims))
        return claims

    def complete(self, worker: str, outcomes: Sequence[Outcome], **kwargs: Any) -> set[int]:
        self.batches.append(len(outcomes))
        return super().complete(worker, outcomes, **kwargs)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def lab(root: Path, bucket: str, s3_server: S3Server) -> Job:
    """The job most tests upload for: ``root`` to ``bucket``, three attempts."""
    return make_job(root, bucket, s3_server)


@pytest.fixture
def start_pool(migrated_dsn: str) -> Iterator[Callable[..., UploadPool]]:
    pools: list[UploadPool] = []

    def start(
        job: Job, uploader: Uploader, lease_seconds: float = 60.0, **options: Any
    ) -> UploadPool:
        pool = UploadPool(
            options.pop("ledger", None) or Ledger(migrated_dsn),
            uploader,
            lambda: {job.name: job},
            workers=options.pop("workers", 2),
            host="host-a",
            lease_seconds=lease_seconds,
            **options,
        )
        pool.start()
        pools.append(pool)
        return pool

    yield start
    for pool in pools:
        pool.stop(time.monotonic() + 5)


def test_lease_is_renewed_while_a_long_upload_runs(
    migrated_dsn: str,
    root: Path,
    lab: Job,
    bucket: str,
    sql: Sql,
    start_pool: Callable[..., UploadPool],
) -> None:
    uploader = HeldUploader()
    start_pool(lab, uploader, lease_seconds=1.0)
    queue_file(migrated_dsn, root, "slow.bin", b"x" * 1000, bucket)
    assert uploader.started.wait(10)
    # For three lease lengths the lease must never lapse, so no reaper could take it back.
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        assert sql("SELECT lease_expires_at > now() FROM file_versions") == [(True,)]
        time.sleep(0.05)  # the sampling interval of the invariant, not a wait for an event
    reaper = Ledger(migrated_dsn).connect()
    assert reaper.reclaim_leases([]) == 0
    reaper.close()
    uploader.go.set()
    wait_for(
        lambda: sql("SELECT state, attempts FROM file_versions") == [("uploaded", 1)],
        timeout=10,
        message="uploaded on the first attempt",
    )


def test_outcomes_are_written_together_and_a_lone_one_at_once(
    migrated_dsn: str,
    root: Path,
    lab: Job,
    bucket: str,
    sql: Sql,
    start_pool: Callable[..., UploadPool],
) -> None:
    # No outcome waits for company that cannot come: with a linger far past the test's
    # deadlines, the eight are written once all eight are in, and a ninth on its own.
    ledger = CountingLedger(migrated_dsn)
    queue_files(migrated_dsn, root, {f"f{i}.txt": b"x" * i for i in range(8)}, bucket)
    start_pool(lab, Uploader(Storage(8)), ledger=ledger, workers=4, write_linger=3600.0)
    wait_for(
        lambda: uploaded(sql) == 8,
        message="eight uploaded",
    )
    assert ledger.batches == [8]
    queue_file(migrated_dsn, root, "alone.txt", b"alone", bucket)
    wait_for(
        lambda: uploaded(sql) == 9,
        message="the ninth uploaded",
    )
    assert ledger.batches == [8, 1]


def test_workers_wake_the_dispatcher_for_a_batch_not_for_each_upload(
    migrated_dsn: str,
    root: Path,
    lab: Job,
    bucket: str,
    sql: Sql,
    start_pool: Callable[..., UploadPool],
) -> None:
    # A wake-up per finished upload cost the dispatcher a round each (a sixth of the daemon's
    # CPU per small file). While it lingers over a batch, only the outcome that completes
    # the batch wakes it; the first after a write, which it would not see in time, does too.
    files = {f"f{i:03}.txt": b"x" * i for i in range(128)}
    ledger = CountingLedger(migrated_dsn)
    queue_files(migrated_dsn, root, files, bucket)
    start_pool(
        lab,
        Uploader(Storage(8)),
        ledger=ledger,
        workers=8,
        write_linger=3600.0,
        poll_seconds=3600.0,
    )
    wait_for(lambda: uploaded(sql) == len(files), message="every file uploaded")
    assert sum(ledger.batches) == len(files)
    # Each batch of claims (16 at most: twice the workers) takes the dispatcher to sleep
    # about twice: after its claim, and while it lingers over the batch's first outcomes.
    assert ledger.sleeps <= len(files) / 4, ledger.sleeps


def test_the_dispatcher_claims_on_news_not_on_every_finished_upload(
    migrated_dsn: str,
    root: Path,
    lab: Job,
    bucket: str,
    sql: Sql,
    start_pool: Callable[..., UploadPool],
) -> None:
    # With the poll out of the way, a claim follows a notification (or a full claim); a
    # worker finishing after a claim found the queue empty is no reason for another.
    ledger = CountingLedger(migrated_dsn)
    start_pool(lab, Uploader(Storage(4)), ledger=ledger, poll_seconds=3600.0)
    wait_for(lambda: ledger.claims == [0], message="the first claim, of an empty queue")

    for done, name in enumerate(("a.txt", "b.txt", "c.txt"), start=1):
        queue_file(migrated_dsn, root, name, name.encode(), bucket)
        wait_for(partial(lambda n: uploaded(sql) == n, done), message=f"{name} uploaded")
    # One claim per notification, each taking its file; none after the uploads finished.
    assert ledger.claims == [0, 1, 1, 1]


def test_a_finished_outcome_does_not_wait_for_a_long_upload(
    migrated_dsn: str,
    root: Path,
    lab: Job,
    bucket: str,
    sql: Sql,
    start_pool: Callable[..., UploadPool],
) -> None:
    class OneHeld(HeldUploader):
        def upload(self, claim: Claim, job: Job, *args: Any) -> UploadResult:
            if claim.relpath == "slow.bin":
                return super().upload(claim, job, *args)
            return Uploader.upload(self, claim, job, *args)

    uploader = OneHeld()
    queue_files(migrated_dsn, root, {"slow.bin": b"s" * 100, "quick.txt": b"q"}, bucket)
    start_pool(lab, uploader, write_linger=0.05)
    assert uploader.started.wait(10)
    wait_for(
        lambda: (
            sql("SELECT relpath, state FROM file_versions ORDER BY relpath")
            == [("quick.txt", "uploaded"), ("slow.bin", "uploading")]
        ),
        message="quick.txt written while slow.bin still runs",
    )
    uploader.go.set()
    wait_for(
        lambda: uploaded(sql) == 2,
        message="both uploaded",
    )


def test_failures_back_off_then_fail_with_the_reason(
    migrated_dsn: str,
    root: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
    start_pool: Callable[..., UploadPool],
    request: pytest.FixtureRequest,
) -> None:
    # S3 answering 500 (fewer times than pause a job): a missing bucket would pause it at once.
    proxy = FaultProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1]))
    proxy.mode = "http500"
    request.addfinalizer(proxy.close)
    uploader = Uploader(Storage(4))
    start_pool(make_job(root, bucket, proxy, max_attempts=3), uploader)
    queue_file(migrated_dsn, root, "doomed.txt", b"nowhere to go", bucket)
    wait_for(
        lambda: sql("SELECT state FROM file_versions") == [("failed",)],
        timeout=20,
        message="failed after max attempts",
    )
    [(attempts, error)] = sql("SELECT attempts, last_error FROM file_versions")
    assert attempts == 3 and error.startswith("S3 500"), error
    outcomes = sql("SELECT attempt, outcome FROM upload_attempts ORDER BY attempt")
    assert outcomes == [(1, "failed"), (2, "failed"), (3, "failed")]


def test_a_missing_bucket_pauses_the_job_at_its_first_failure_until_it_exists(
    migrated_dsn: str,
    root: Path,
    s3_server: S3Server,
    sql: Sql,
    start_pool: Callable[..., UploadPool],
    request: pytest.FixtureRequest,
) -> None:
    """Issue 25: NoSuchBucket is a configuration error, not an outage: the job pauses at
    once (not after five failures), says so, and resumes by itself once the bucket exists."""
    bucket = f"created-later-{abs(hash(request.node.name)) % 10**8}"
    job = make_job(root, bucket, s3_server, max_attempts=3)
    # The default threshold (5 failures in a row), pauses short enough for a test.
    start_pool(job, Uploader(Storage(4)), workers=1, breaker=lambda: Breaker(first_pause=1.0))
    for i in range(4):
        queue_file(migrated_dsn, root, f"f{i}.txt", b"x", bucket)
    wait_for(
        lambda: sql("SELECT last_error FROM destination_health WHERE paused_until > now()"),
        timeout=20,
        message="the job paused",
    )
    failed = "SELECT count(*) FROM upload_attempts WHERE outcome = 'failed'"
    assert sql(failed) == [(1,)], "paused at the first failure; the other claims released"
    misconfigured = ("uploaderd_destination_misconfigured", {"job": job.name})
    assert REGISTRY.get_sample_value(*misconfigured) == 1
    s3_server.create_bucket(bucket)
    wait_for(lambda: uploaded(sql) == 4, timeout=30, message="resumed and uploaded")
    wait_for(
        lambda: REGISTRY.get_sample_value(*misconfigured) == 0,
        timeout=5,
        message="the gauge back to 0",
    )


def test_a_repaired_version_uploads_again_and_is_counted(
    migrated_dsn: str,
    root: Path,
    lab: Job,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
    start_pool: Callable[..., UploadPool],
) -> None:
    """Issue 25: `verify --repair` requeues; the pool uploads it again, once, and counts it."""
    start_pool(lab, Uploader(Storage(4)))
    queue_file(migrated_dsn, root, "lost.txt", b"lost and found", bucket)
    wait_for(lambda: uploaded(sql) == 1, message="the first upload")
    repairs = ("uploaderd_repairs_total", {"job": lab.name})
    before = REGISTRY.get_sample_value(*repairs) or 0.0
    s3_server.client().delete_object(Bucket=bucket, Key="lab/lost.txt")
    [(version,)] = sql("SELECT id FROM file_versions")
    ledger = Ledger(migrated_dsn)
    reason = "repair: missing: in the ledger as uploaded, not in S3"
    assert ledger.requeue_for_repair("host-a", {version: reason}) == {version}
    assert ledger.requeue_for_repair("host-a", {version: reason}) == set(), "only once"
    ledger.close()
    wait_for(lambda: uploaded(sql) == 1, timeout=30, message="uploaded again")
    body = s3_server.client().get_object(Bucket=bucket, Key="lab/lost.txt")["Body"].read()
    assert body == b"lost and found"
    assert REGISTRY.get_sample_value(*repairs) == before + 1
    outcomes = sql("SELECT attempt, outcome FROM upload_attempts ORDER BY attempt")
    assert outcomes == [(1, "uploaded"), (2, "repair"), (3, "uploaded")]
    assert sql("SELECT last_error FROM file_versions") == [(None,)]


def test_a_sick_bucket_pauses_the_job_instead_of_burning_attempts(
    migrated_dsn: str,
    root: Path,
    s3_server: S3Server,
    sql: Sql,
    start_pool: Callable[..., UploadPool],
    request: pytest.FixtureRequest,
) -> None:
    bucket = f"appears-later-{abs(hash(request.node.name)) % 10**8}"
    job = make_job(root, bucket, s3_server, max_attempts=3)
    pool = UploadPool(
        Ledger(migrated_dsn),
        Uploader(Storage(4)),
        lambda: {job.name: job},
        workers=2,
        host="host-a",
        breaker=lambda: Breaker(threshold=2, first_pause=1.0, max_pause=1.0),
    )
    pool.start()
    try:
        for i in range(6):
            queue_file(migrated_dsn, root, f"f{i}.txt", b"x", bucket)
        wait_for(
            lambda: (
                sql("SELECT paused_until > now() FROM destination_health WHERE kind = 'upload'")
                == [(True,)]
            ),
            timeout=20,
            message="the job paused",
        )
        tried = sql("SELECT count(*) FROM file_versions WHERE attempts > 0")[0][0]
        assert tried < 6, "files behind the pause keep their attempts"
        s3_server.create_bucket(bucket)
        wait_for(
            lambda: uploaded(sql) == 6,
            timeout=30,
            message="resumed and uploaded",
        )
        assert sql("SELECT count(*) FROM file_versions WHERE state = 'failed'") == [(0,)]
        wait_for(
            lambda: sql("SELECT paused_until FROM destination_health") == [(None,)],
            timeout=5,
            message="the pause cleared",
        )
    finally:
        pool.stop(time.monotonic() + 5)
