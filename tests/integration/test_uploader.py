"""Uploading one claimed version to real S3 servers: moto, rclone and SeaweedFS (which, like
production stores, verifies checksums and honours If-None-Match)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from prometheus_client import REGISTRY

from devstack import S3Server
from uploaderd.config.settings import S3Settings, parse_job_text
from uploaderd.ledger.store import Claim
from uploaderd.policy.bandwidth import Limiter
from uploaderd.policy.settle import Signature
from uploaderd.upload import uploader as uploader_module
from uploaderd.upload.storage import Storage
from uploaderd.upload.uploader import MiB, TransferSettings, Uploader

# Small enough to keep the test fast, large enough for a real multipart upload (5 MiB parts).
SMALL_MULTIPART = TransferSettings(multipart_threshold=6 * MiB, part_size=5 * MiB)


def make_job(root: Path, bucket: str, server: S3Server, **destination: Any) -> Any:
    extra = "".join(f"  {k}: {v}\n" for k, v in destination.items())
    text = (
        f"source:\n  paths: [{root}]\ndestination:\n  bucket: {bucket}\n"
        f"  key: 'up/${{relpath}}'\n  endpoint_url: {server.endpoint_url}\n{extra}"
    )
    return parse_job_text(text, name="lab", defaults=S3Settings(region="us-east-1"))


def claim_for(path: Path, root: Path, attempt: int = 1) -> Claim:
    sig = Signature.of(path.stat())
    relpath = str(path.relative_to(root))
    return Claim(
        1,
        "lab",
        str(root),
        relpath,
        sig.size,
        sig.mtime_ns,
        sig.inode,
        "",
        f"up/{relpath}",
        attempt,
        None,
        attempt,
    )


def with_bucket(claim: Claim, bucket: str) -> Claim:
    return Claim(
        claim.id,
        claim.job,
        claim.root,
        claim.relpath,
        claim.size,
        claim.mtime_ns,
        claim.inode,
        bucket,
        claim.key,
        claim.attempt,
        claim.session_id,
        claim.tries,
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.mark.parametrize("size", [0, 1000, 13 * MiB], ids=["empty", "small", "multipart"])
def test_upload_carries_content_and_sha256(
    root: Path, s3_backend: S3Server, backend_bucket: str, size: int
) -> None:
    data = os.urandom(size)
    (root / "sample.bin").write_bytes(data)
    job = make_job(
        root,
        backend_bucket,
        s3_backend,
        storage_class="STANDARD",
        metadata="{instrument: scope-a}",
        tags="{project: x}",
    )
    claim = with_bucket(claim_for(root / "sample.bin", root), backend_bucket)
    result = Uploader(Storage(4), SMALL_MULTIPART).upload(claim, job)
    digest = hashlib.sha256(data).hexdigest()
    assert (result.outcome, result.sha256, result.bytes) == ("uploaded", digest, size)
    got = s3_backend.client().get_object(Bucket=backend_bucket, Key="up/sample.bin")
    metadata = {k.lower(): v for k, v in got["Metadata"].items()}
    assert got["Body"].read() == data
    assert metadata == {"sha256": digest, "instrument": "scope-a"}


@pytest.mark.parametrize("checksum", ["when_supported", "when_required"])
def test_part_bodies_are_signed_over_http_unless_a_signed_checksum_covers_them(
    root: Path, s3_server: S3Server, bucket: str, checksum: str
) -> None:
    # Hashing each part once more for the signature was a third pass over a large file.
    (root / "big.bin").write_bytes(os.urandom(13 * MiB))
    job = make_job(root, bucket, s3_server, checksum=checksum)
    storage = Storage(4)
    sent: list[tuple[str, bool]] = []

    def record(request: Any, **_: Any) -> None:
        value = request.headers["X-Amz-Content-SHA256"]
        text = value.decode() if isinstance(value, bytes) else value
        sent.append((text, "x-amz-checksum-sha256" in request.headers))

    storage.client(job.destination.s3).meta.events.register("before-send.s3.UploadPart", record)
    claim = with_bucket(claim_for(root / "big.bin", root), bucket)
    assert Uploader(storage, SMALL_MULTIPART).upload(claim, job).outcome == "uploaded"
    assert len(sent) == 3
    if checksum == "when_supported":
        assert set(sent) == {("UNSIGNED-PAYLOAD", True)}
    else:
        assert all(re.fullmatch(r"[0-9a-f]{64}", value) and not summed for value, summed in sent)


def test_overwrite_never_refuses_different_content_and_accepts_its_own(
    root: Path, s3_backend: S3Server, backend_bucket: str
) -> None:
    (root / "a.txt").write_bytes(b"ours")
    job = make_job(root, backend_bucket, s3_backend, overwrite="never")
    claim = with_bucket(claim_for(root / "a.txt", root), backend_bucket)
    up = Uploader(Storage(4))
    assert up.upload(claim, job).outcome == "uploaded"
    assert up.upload(claim, job).outcome == "uploaded", "a re-run after a crash is idempotent"
    s3_backend.client().put_object(Bucket=backend_bucket, Key="up/a.txt", Body=b"theirs")
    result = up.upload(claim, job)
    assert (result.outcome, result.retryable) == ("failed", False)
    assert "overwrite is never" in (result.error or "")
    body = s3_backend.client().get_object(Bucket=backend_bucket, Key="up/a.txt")["Body"].read()
    assert body == b"theirs"


def test_if_changed_replaces_an_object_with_other_content(
    root: Path, s3_backend: S3Server, backend_bucket: str
) -> None:
    (root / "a.txt").write_bytes(b"new content")
    s3_backend.client().put_object(Bucket=backend_bucket, Key="up/a.txt", Body=b"old")
    job = make_job(root, backend_bucket, s3_backend)
    claim = with_bucket(claim_for(root / "a.txt", root), backend_bucket)
    assert Uploader(Storage(4)).upload(claim, job).outcome == "uploaded"
    body = s3_backend.client().get_object(Bucket=backend_bucket, Key="up/a.txt")["Body"].read()
    assert body == b"new content"


def test_a_file_changed_since_it_was_queued_is_not_uploaded(
    root: Path, s3_server: S3Server, bucket: str
) -> None:
    target = root / "a.txt"
    target.write_bytes(b"version one")
    claim = with_bucket(claim_for(target, root), bucket)
    target.write_bytes(b"version two, longer")
    result = Uploader(Storage(4)).upload(claim, make_job(root, bucket, s3_server))
    assert (result.outcome, result.retryable) == ("changed", False)
    listing = s3_server.client().list_objects_v2(Bucket=bucket)
    assert listing.get("Contents", []) == []


def test_a_file_changed_during_a_multipart_upload_is_aborted(
    root: Path, s3_backend: S3Server, backend_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = root / "big.bin"
    target.write_bytes(os.urandom(13 * MiB))
    claim = with_bucket(claim_for(target, root), backend_bucket)
    first_pass = uploader_module._hash_file

    def hash_then_tamper(file: Any, expected: Signature) -> str:
        """The writer strikes between the hash pass and the upload, keeping size and mtime."""
        digest = first_pass(file, expected)
        with target.open("r+b") as out:
            out.seek(7 * MiB)
            out.write(b"tampered")
        os.utime(target, ns=(expected.mtime_ns, expected.mtime_ns))
        return digest

    monkeypatch.setattr(uploader_module, "_hash_file", hash_then_tamper)
    job = make_job(root, backend_bucket, s3_backend)
    result = Uploader(Storage(4), SMALL_MULTIPART).upload(claim, job)
    assert result.outcome == "changed"
    client = s3_backend.client()
    assert client.list_objects_v2(Bucket=backend_bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=backend_bucket).get("Uploads", []) == []


def test_unreachable_endpoint_is_a_retryable_failure(root: Path, bucket: str) -> None:
    (root / "a.txt").write_bytes(b"x")

    class Nowhere:
        endpoint_url = "http://127.0.0.1:9"  # discard port: nothing listens

    job = make_job(root, bucket, Nowhere())  # type: ignore[arg-type]
    labels = {"op": "PutObject", "code": "error"}
    before = REGISTRY.get_sample_value("uploaderd_s3_requests_total", labels) or 0
    result = Uploader(Storage(4)).upload(with_bucket(claim_for(root / "a.txt", root), bucket), job)
    assert (result.outcome, result.retryable) == ("failed", True)
    after = REGISTRY.get_sample_value("uploaderd_s3_requests_total", labels)
    assert after == before + 3, "every HTTP attempt is counted, botocore's retries included"
    assert result.error and result.error.startswith("S3: Could not connect")


def test_an_interrupted_multipart_upload_resumes_from_its_parts(
    root: Path, s3_backend: S3Server, backend_bucket: str
) -> None:
    data = os.urandom(26 * MiB)  # six 5 MiB parts
    (root / "big.bin").write_bytes(data)
    job = make_job(root, backend_bucket, s3_backend)
    claim = with_bucket(claim_for(root / "big.bin", root), backend_bucket)

    def cut_off(request: Any, **_: Any) -> None:
        if re.search(r"partNumber=([4-9])\b", request.url):
            raise EndpointConnectionError(endpoint_url=request.url)

    broken = Storage(4)
    broken.client(job.destination.s3).meta.events.register("before-send.s3.UploadPart", cut_off)
    started: list[tuple[str, int]] = []
    first = Uploader(broken, SMALL_MULTIPART).upload(
        claim, job, lambda upload_id, part_size: started.append((upload_id, part_size))
    )
    assert (first.outcome, first.retryable) == ("failed", True)
    [(upload_id, part_size)] = started

    healthy = Storage(4)
    sent: list[str] = []
    healthy.client(job.destination.s3).meta.events.register(
        "before-send.s3.UploadPart", lambda request, **_: sent.append(request.url)
    )
    resumed = Claim(
        **{
            **claim.__dict__,
            "attempt": 2,
            "multipart_upload_id": upload_id,
            "multipart_part_size": part_size,
        }
    )
    second = Uploader(healthy, SMALL_MULTIPART).upload(resumed, job)
    assert second.outcome == "uploaded"
    numbers = [re.search(r"partNumber=(\d+)", url) for url in sent]
    assert sorted(int(found.group(1)) for found in numbers if found) == [4, 5, 6]
    assert len(numbers) == 3
    got = s3_backend.client().get_object(Bucket=backend_bucket, Key="up/big.bin")
    assert got["Body"].read() == data
    assert {k.lower(): v for k, v in got["Metadata"].items()}["sha256"] == (
        hashlib.sha256(data).hexdigest()
    )


def test_a_vanished_multipart_upload_starts_over(
    root: Path, s3_server: S3Server, bucket: str
) -> None:
    data = os.urandom(13 * MiB)
    (root / "big.bin").write_bytes(data)
    job = make_job(root, bucket, s3_server)
    claim = with_bucket(claim_for(root / "big.bin", root), bucket)
    gone = Claim(
        **{
            **claim.__dict__,
            "multipart_upload_id": "no-such-upload",
            "multipart_part_size": 5 * MiB,
        }
    )
    started: list[str] = []
    result = Uploader(Storage(4), SMALL_MULTIPART).upload(
        gone, job, lambda upload_id, _: started.append(upload_id)
    )
    assert result.outcome == "uploaded" and len(started) == 1
    body = s3_server.client().get_object(Bucket=bucket, Key="up/big.bin")["Body"].read()
    assert body == data


def test_bandwidth_cap_throttles_small_and_multipart_uploads(
    root: Path, s3_server: S3Server, bucket: str
) -> None:
    """The shared limiter sees every byte sent; a fake clock keeps the test from waiting."""
    slept: list[float] = []
    now = [0.0]

    def fake_limiter(rate: float) -> Limiter:
        def sleep(seconds: float) -> None:
            slept.append(seconds)
            now[0] += seconds

        return Limiter(rate, clock=lambda: now[0], sleep=sleep)

    sizes = {"small.bin": 3 * MiB, "large.bin": 13 * MiB}
    for name, size in sizes.items():
        (root / name).write_bytes(os.urandom(size))
    job = make_job(root, bucket, s3_server, bandwidth="1MiB/s")
    uploader = Uploader(Storage(4), SMALL_MULTIPART, limiter=fake_limiter)
    for name in sizes:
        claim = with_bucket(claim_for(root / name, root), bucket)
        assert uploader.upload(claim, job).outcome == "uploaded"
    # 16 MiB at 1 MiB/s with one second's allowance up front: 15 s of waiting.
    assert sum(slept) == pytest.approx(15.0)


def test_overwrite_never_completes_a_large_upload_only_if_the_key_is_still_free(
    root: Path, s3_backend: S3Server, backend_bucket: str
) -> None:
    """Another writer takes the key between our look and our completion (If-None-Match on
    completion; rclone ignores it, hence only the servers that honour it)."""
    if not s3_backend.honours_if_none_match:
        pytest.skip("this server ignores If-None-Match")
    data = os.urandom(13 * MiB)
    (root / "big.bin").write_bytes(data)
    job = make_job(root, backend_bucket, s3_backend, overwrite="never")
    storage = Storage(4)
    other = s3_backend.client()

    def race(**_: Any) -> None:
        other.put_object(Bucket=backend_bucket, Key="up/big.bin", Body=b"the other writer's")

    storage.client(job.destination.s3).meta.events.register(
        "before-call.s3.CompleteMultipartUpload", race
    )
    claim = with_bucket(claim_for(root / "big.bin", root), backend_bucket)
    result = Uploader(storage, SMALL_MULTIPART).upload(claim, job)
    assert (result.outcome, result.retryable) == ("failed", False)
    assert "overwrite is never" in (result.error or "")
    body = other.get_object(Bucket=backend_bucket, Key="up/big.bin")["Body"].read()
    assert body == b"the other writer's"
    assert other.list_multipart_uploads(Bucket=backend_bucket).get("Uploads", []) == []


def test_a_checksum_that_does_not_match_the_parts_is_refused_by_a_verifying_store(
    root: Path, s3_backend: S3Server, backend_bucket: str
) -> None:
    """Parts whose bytes differ from what uploaderd hashed never become the object where the
    store checks x-amz-checksum-sha256 (SeaweedFS, S3): the attempt fails and is retried.
    (Small files go through obstore: test_objectput damages their bodies in flight.)"""
    (root / "c.bin").write_bytes(os.urandom(13 * MiB))
    job = make_job(root, backend_bucket, s3_backend)
    storage = Storage(4)
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()

    def corrupt(request: Any, **_: Any) -> None:
        request.headers.replace_header("x-amz-checksum-sha256", wrong)  # signed with it

    storage.client(job.destination.s3).meta.events.register("before-sign.s3.UploadPart", corrupt)
    claim = with_bucket(claim_for(root / "c.bin", root), backend_bucket)
    result = Uploader(storage, SMALL_MULTIPART).upload(claim, job)
    client = s3_backend.client()
    stored = client.list_objects_v2(Bucket=backend_bucket).get("KeyCount", 0)
    if s3_backend.verifies_checksums:
        assert (result.outcome, result.retryable) == ("failed", True)
        assert "BadDigest" in (result.error or "")
        assert stored == 0
    else:
        assert (result.outcome, stored) == ("uploaded", 1), "stored whatever the checksum says"
