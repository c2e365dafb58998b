"""Uploading one claimed file version to S3, with its SHA-256, exactly as it was when queued.

Small files are read once into memory, hashed and sent with one PutObject that carries the
SHA-256 both as ``x-amz-meta-sha256`` and (where the endpoint supports it) as the S3
checksum the server verifies. Large files need the hash in the metadata before the first
part is sent, so they are hashed once, then sent by ``multipart`` while being hashed again;
a file that changed in between is never completed as an object and never marked uploaded.

The file is opened without blocking and without following a symlink, and must still be a
regular file: a queued file replaced by a FIFO (or a socket, a device) would otherwise hold
a worker for ever. A file that is gone, or no longer a regular file, ends its version as
``gone``.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from botocore.exceptions import BotoCoreError, ClientError

from uploaderd.config.settings import Destination, Job
from uploaderd.errors import s3_error_text
from uploaderd.ledger.store import Claim
from uploaderd.observe import metrics
from uploaderd.policy.bandwidth import Limiter
from uploaderd.policy.inflight import Budget
from uploaderd.policy.settle import Signature
from uploaderd.policy.transfers import NO_PROGRESS, CountingBody, FileProgress
from uploaderd.upload.multipart import (
    FileChanged,
    KeyTaken,
    MultipartUpload,
    Resume,
    check_unchanged,
    part_size_for,
    read_exactly,
)
from uploaderd.upload.objectput import Target, fits
from uploaderd.upload.storage import Storage

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MULTIPART_THRESHOLD = 16 * MiB
_READ_SIZE = 1 * MiB

# Called with (upload id, part size) when a multipart upload is created, to record it.
MultipartStarted = Callable[[str, int], None]


@dataclass(frozen=True)
class UploadResult:
    outcome: str  # uploaded | changed | gone | failed
    sha256: str | None = None
    etag: str | None = None
    error: str | None = None
    retryable: bool = True
    bytes: int = 0
    destination: bool = False  # S3 failed (not the file): counts toward pausing the job
    code: str | None = None  # S3's error code, when S3 answered with one


@dataclass(frozen=True)
class TransferSettings:
    """Tuning for large files, in one place."""

    multipart_threshold: int = MULTIPART_THRESHOLD
    part_size: int = 16 * MiB
    concurrency_per_file: int = 4

    @property
    def held_per_large_file(self) -> int:
        """The parts in flight and the one being read."""
        return self.part_size * (self.concurrency_per_file + 1)


class Uploader:
    def __init__(
        self,
        storage: Storage,
        transfer: TransferSettings | None = None,
        *,
        limiter: Callable[[float], Limiter] = Limiter,
        memory: Budget | None = None,
    ) -> None:
        self.storage = storage
        self.transfer = transfer or TransferSettings()
        self.memory = memory or Budget()
        self._new_limiter = limiter
        self._limiters: dict[tuple[str, float], Limiter] = {}
        self._limiters_lock = threading.Lock()

    def _throttle(self, job: Job) -> Callable[[int], None]:
        """The job's shared bandwidth limiter (a no-op without a cap)."""
        rate = job.destination.bandwidth
        if rate is None:
            return lambda _: None
        with self._limiters_lock:
            limiter = self._limiters.get((job.name, rate))
            if limiter is None:
                limiter = self._limiters[(job.name, rate)] = self._new_limiter(rate)
        return limiter.consume

    def upload(
        self,
        claim: Claim,
        job: Job,
        on_multipart: MultipartStarted = lambda *_: None,
        progress: FileProgress = NO_PROGRESS,
    ) -> UploadResult:
        path = os.path.join(claim.root, claim.relpath)
        expected = claim.signature
        try:
            with os.fdopen(
                _open_regular(path, job.source.follow_symlinks), "rb", buffering=0
            ) as file:
                check_unchanged(file, expected)
                throttle = self._throttle(job)
                if claim.size <= self.transfer.multipart_threshold:
                    with self.memory.hold(claim.size):
                        return self._put_small(
                            file, expected, claim, job.destination, throttle, progress
                        )
                with self.memory.hold(self.transfer.held_per_large_file):
                    return self._put_large(
                        file, expected, claim, job.destination, on_multipart, throttle, progress
                    )
        except FileNotFoundError:
            return UploadResult("gone", error="the file is gone", retryable=False)
        except NotRegular as exc:
            return UploadResult("gone", error=str(exc), retryable=False)
        except FileChanged as exc:
            return UploadResult("changed", error=str(exc), retryable=False)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "?")
            return UploadResult(
                "failed",
                error=s3_error_text(code, error.get("Message", "")),
                destination=True,
                code=code,
            )
        except BotoCoreError as exc:
            # Before OSError: botocore's timeouts are OSErrors too, and they are S3's trouble.
            return UploadResult("failed", error=f"S3: {exc}"[:300], destination=True)
        except OSError as exc:
            return UploadResult("failed", error=f"cannot read the file: {exc.strerror or exc}")

    def _put_small(
        self,
        file: io.RawIOBase,
        expected: Signature,
        claim: Claim,
        destination: Destination,
        throttle: Callable[[int], None],
        progress: FileProgress,
    ) -> UploadResult:
        data = read_exactly(file, claim.size)
        check_unchanged(file, expected)  # the bytes we hold are exactly the queued version
        throttle(len(data))
        digest = hashlib.sha256(data)
        sha = digest.hexdigest()
        taken = _key_taken(claim, destination, sha)
        if taken is not None:
            return taken
        client = self.storage.client(destination.s3)
        args = _put_arguments(destination, sha)
        if destination.s3.checksum == "when_supported":
            args["ChecksumSHA256"] = base64.b64encode(digest.digest()).decode()

        def put(**kwargs: Any) -> Any:
            if fits(claim.key):
                # obstore, off the GIL: the body's bytes are counted once it is sent.
                target = Target(
                    destination.s3, claim.bucket, destination.sse, destination.kms_key_id
                )
                sent = self.storage.puts.putter(target)(Body=data, **kwargs)
                progress.sent(len(data))
                return sent
            # boto3, for the keys obstore would rewrite: counted as botocore sends them.
            body = CountingBody(data, progress.sent)
            response = client.put_object(Body=body, **kwargs)
            body.finish()
            return response

        if destination.overwrite == "never":
            # Some stores (rclone) ignore If-None-Match, so "never" looks before it writes.
            existing = _existing(client, claim, destination, sha)
            if existing is not None:
                return existing
        if destination.overwrite != "always":
            # One request in the common case: create only if absent; decide on a conflict.
            try:
                response = put(Bucket=claim.bucket, Key=claim.key, IfNoneMatch="*", **args)
                return UploadResult("uploaded", sha, response.get("ETag"), bytes=len(data))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "PreconditionFailed":
                    raise
            existing = _existing(client, claim, destination, sha)
            if existing is not None:
                return existing
        response = put(Bucket=claim.bucket, Key=claim.key, **args)
        return UploadResult("uploaded", sha, response.get("ETag"), bytes=len(data))

    def _put_large(
        self,
        file: io.RawIOBase,
        expected: Signature,
        claim: Claim,
        destination: Destination,
        on_multipart: MultipartStarted,
        throttle: Callable[[int], None],
        progress: FileProgress,
    ) -> UploadResult:
        sha = _hash_file(file, expected)
        taken = _key_taken(claim, destination, sha)
        if taken is not None:
            return taken
        client = self.storage.client(destination.s3)
        if destination.overwrite != "always":
            existing = _existing(client, claim, destination, sha)
            if existing is not None:
                return existing
        upload = MultipartUpload(
            client,
            claim.bucket,
            claim.key,
            checksums=destination.s3.checksum == "when_supported",
            concurrency=self.transfer.concurrency_per_file,
            on_started=on_multipart,
            throttle=throttle,
            progress=progress,
        )
        resume = (
            Resume(claim.multipart_upload_id, claim.multipart_part_size)
            if claim.multipart_upload_id and claim.multipart_part_size
            else None
        )
        try:
            etag = upload.run(
                file,
                expected,
                sha,
                _put_arguments(destination, sha),
                part_size_for(claim.size, self.transfer.part_size),
                resume,
                if_absent=destination.overwrite == "never",
            )
        except KeyTaken:
            # Someone wrote the key since we looked: ours if it holds our content, else refused.
            return _existing(client, claim, destination, sha) or UploadResult(
                "failed",
                sha,
                error="the key holds a different object and overwrite is never",
                retryable=False,
            )
        if upload.parts_kept:
            metrics.multipart_resumes.labels(claim.job).inc()
            metrics.multipart_kept_bytes.labels(claim.job).inc(upload.bytes_kept)
            log.info(
                "job %s: %s: resumed multipart upload %s: kept %d parts (%d bytes) from "
                "an earlier attempt, sent %d (%d bytes)",
                claim.job,
                claim.relpath,
                claim.multipart_upload_id,
                upload.parts_kept,
                upload.bytes_kept,
                upload.parts_sent,
                upload.bytes_sent,
            )
        return UploadResult("uploaded", sha, etag, bytes=upload.bytes_sent)


class NotRegular(OSError):
    """The path no longer holds a regular file (a FIFO, a socket, a device, a directory)."""


def _open_regular(path: str, follow_symlinks: bool) -> int:
    """A descriptor of the regular file at ``path``, in blocking mode.

    Opened with ``O_NONBLOCK`` (opening a FIFO with no writer would block for ever) and,
    unless the job follows symlinks, ``O_NOFOLLOW``; anything but a regular file is refused
    before a single read.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise NotRegular("the file was replaced by a symlink: nothing to upload") from exc
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegular(f"the file was replaced by a {_kind(mode)}: nothing to upload")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "device"),
        (stat.S_ISBLK, "device"),
        (stat.S_ISDIR, "directory"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


def _key_taken(claim: Claim, destination: Destination, sha: str) -> UploadResult | None:
    """Refused when another file already uploaded different content to this key.

    Two hosts running one job with the same relative path, or a key template that maps two
    paths to one key, would otherwise overwrite each other silently. ``overwrite: always``
    says overwriting is wanted.
    """
    if claim.holder_sha256 is None or claim.holder_sha256 == sha:
        return None
    if destination.overwrite == "always":
        return None
    return UploadResult(
        "failed",
        sha,
        retryable=False,
        error=(
            f"key collision: s3://{claim.bucket}/{claim.key} already holds different "
            f"content uploaded from {claim.holder}; give each host or path its own key "
            "(e.g. ${hostname} in destination.key) or set source.shared"
        ),
    )


def _existing(
    client: S3Client, claim: Claim, destination: Destination, sha: str
) -> UploadResult | None:
    """When the key already holds an object: done if it is our content, else per ``overwrite``."""
    try:
        head = client.head_object(Bucket=claim.bucket, Key=claim.key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    # Metadata names are case-insensitive HTTP headers; some stores return "Sha256".
    metadata = {name.lower(): value for name, value in head.get("Metadata", {}).items()}
    if metadata.get("sha256") == sha:
        return UploadResult("uploaded", sha, head.get("ETag"), bytes=0)
    if destination.overwrite == "never":
        return UploadResult(
            "failed",
            sha,
            error="the key holds a different object and overwrite is never",
            retryable=False,
        )
    return None


def _put_arguments(destination: Destination, sha: str) -> dict[str, Any]:
    args: dict[str, Any] = {"Metadata": {**destination.metadata, "sha256": sha}}
    if destination.storage_class:
        args["StorageClass"] = destination.storage_class
    if destination.sse:
        args["ServerSideEncryption"] = destination.sse
    if destination.kms_key_id:
        args["SSEKMSKeyId"] = destination.kms_key_id
    if destination.tags:
        args["Tagging"] = urlencode(destination.tags)
    return args


def _hash_file(file: io.RawIOBase, expected: Signature) -> str:
    digest = hashlib.sha256()
    while chunk := file.read(_READ_SIZE):
        digest.update(chunk)
    check_unchanged(file, expected)
    return digest.hexdigest()
