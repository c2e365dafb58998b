"""What ``check --connect`` and a one-shot run reach before they trust a job: the database
and its schema, each bucket (a real write and delete, or a one-key listing) and each trigger
URL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import urllib3

from uploaderd import __version__
from uploaderd.commands.check import Finding
from uploaderd.config.settings import DaemonConfig, Job
from uploaderd.daemon.triggers import safe_url
from uploaderd.errors import S3_CONFIG_ERRORS, DatabaseUnavailable, StorageUnavailable
from uploaderd.ledger import schema
from uploaderd.ledger.store import Ledger, describe_dsn
from uploaderd.upload.storage import Storage, s3_errors


def connect_findings(config: DaemonConfig, jobs: dict[str, Job]) -> Iterator[Finding]:
    ledger = Ledger.of(config, "uploaderd check")
    try:
        ledger.connect().ping()
        missing = schema.pending(ledger)
        if missing:
            yield Finding(
                "error",
                "database",
                f"schema not up to date: run `uploaderd migrate` ({len(missing)} "
                "migrations pending)",
            )
        else:
            yield Finding("ok", "database", f"reachable ({describe_dsn(config.dsn)})")
    except DatabaseUnavailable as exc:
        yield Finding("unreachable", "database", str(exc))
    finally:
        ledger.close()
    storage = Storage(pool_connections=2)
    http = urllib3.PoolManager(retries=False)
    for job in jobs.values():
        yield bucket_finding(storage, job)
        if job.trigger is not None:
            yield trigger_finding(http, job)


def bucket_finding(storage: Storage, job: Job) -> Finding:
    """Write and delete a small object under the job's prefix: proves the credentials can."""
    destination = job.destination
    client = storage.client(destination.s3)
    key = f".uploaderd-check/{uuid.uuid4().hex}"
    subject = f"job {job.name}"
    try:
        with s3_errors():
            client.put_object(Bucket=destination.bucket, Key=key, Body=b"uploaderd check\n")
            client.delete_object(Bucket=destination.bucket, Key=key)
    except StorageUnavailable as exc:
        if exc.code is None:
            return Finding("unreachable", subject, f"cannot reach S3: {exc}")
        return Finding("unreachable", subject, f"cannot write to s3://{destination.bucket}: {exc}")
    return Finding("ok", subject, f"can write to s3://{destination.bucket}")


def bucket_preflight(storage: Storage, job: Job, prefix: str) -> Finding:
    """Before a one-shot run spends attempts: can these credentials reach the bucket? A
    one-key listing under the job's prefix tells a missing bucket and bad credentials
    (``error``: the configuration is wrong) from an endpoint that does not answer
    (``unreachable``) and from a policy that only lacks ``s3:ListBucket`` (``warning``:
    uploads may still be allowed)."""
    destination = job.destination
    subject = f"s3://{destination.bucket}"
    try:
        with s3_errors():
            storage.client(destination.s3).list_objects_v2(
                Bucket=destination.bucket, Prefix=prefix, MaxKeys=1
            )
    except StorageUnavailable as exc:
        if exc.code == "AccessDenied":
            return Finding("warning", subject, f"cannot list ({exc}); uploading anyway")
        if exc.code in S3_CONFIG_ERRORS:  # a missing bucket, refused credentials
            return Finding("error", subject, str(exc))
        return Finding("unreachable", subject, str(exc))
    return Finding("ok", subject, "reachable with these credentials")


def trigger_finding(http: urllib3.PoolManager, job: Job) -> Finding:
    """A bare HEAD to the trigger URL: any HTTP answer proves it is reachable. The job's
    headers are not sent: they carry secrets, and a probe needs none."""
    assert job.trigger is not None
    url = safe_url(job.trigger.url)
    try:
        response = http.request(
            "HEAD",
            job.trigger.url,
            redirect=False,
            headers={"User-Agent": f"uploaderd/{__version__} check"},
            timeout=urllib3.Timeout(total=min(job.trigger.timeout, 10.0)),
        )
    except urllib3.exceptions.HTTPError as exc:
        return Finding(
            "unreachable",
            f"job {job.name}",
            f"cannot reach the trigger URL {url}: {type(exc).__name__}",
        )
    return Finding(
        "ok", f"job {job.name}", f"the trigger URL {url} answers (HTTP {response.status} to HEAD)"
    )
