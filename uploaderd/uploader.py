"""Uploading one claimed file version to S3, with its SHA-256, exactly as it was when queued.

Small files are read once into memory, hashed and sent with one PutObject that carries the
SHA-256 both as ``x-amz-meta-sha256`` and (where the endpoint supports it) as the S3
checksum the server verifies. Large files need the hash in the metadata before the first
part is sent, so they are hashed once, then streamed through s3transfer's multipart upload
while being hashed again; if the second hash or the file's stat differs at the last byte,
the read raises and s3transfer aborts the multipart upload, so a file that changed during
its upload is never completed as an object and never marked uploaded.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from uploaderd.config import Destination, Job
from uploaderd.ledger import Claim
from uploaderd.settle import Signature
from uploaderd.storage import Storage

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1024 * 1024
MULTIPART_THRESHOLD = 16 * MiB
_READ_SIZE = 1 * MiB
_MAX_PARTS = 10_000


class FileChanged(Exception):
    """The file no longer matches the version that was queued."""


@dataclass(frozen=True)
class UploadResult:
    outcome: str  # uploaded | changed | vanished | failed
    sha256: str | None = None
    etag: str | None = None
    error: str | None = None
    retryable: bool = True
    bytes: int = 0
    destination: bool = False  # S3 failed (not the file): counts toward pausing the job


@dataclass(frozen=True)
class TransferSettings:
    """Tuning for large files, in one place (s3transfer's TransferConfig)."""

    multipart_threshold: int = MULTIPART_THRESHOLD
    part_size: int = 16 * MiB
    concurrency_per_file: int = 4

    def config_for(self, size: int) -> TransferConfig:
        part = max(self.part_size, -(-size // _MAX_PARTS))  # S3 allows at most 10,000 parts
        return TransferConfig(
            multipart_threshold=self.multipart_threshold, multipart_chunksize=part,
            max_concurrency=self.concurrency_per_file, use_threads=True,
        )


class Uploader:
    def __init__(self, storage: Storage, transfer: TransferSettings | None = None) -> None:
        self.storage = storage
        self.transfer = transfer or TransferSettings()

    def upload(self, claim: Claim, job: Job) -> UploadResult:
        path = os.path.join(claim.root, claim.relpath)
        expected = Signature(claim.size, claim.mtime_ns, claim.inode)
        flags = os.O_RDONLY | (0 if job.source.follow_symlinks else os.O_NOFOLLOW)
        try:
            with os.fdopen(os.open(path, flags), "rb", buffering=0) as file:
                _check_unchanged(file, expected)
                if claim.size <= self.transfer.multipart_threshold:
                    return self._put_small(file, expected, claim, job.destination)
                return self._put_large(file, expected, claim, job.destination)
        except FileNotFoundError:
            return UploadResult("vanished", error="the file is gone", retryable=False)
        except FileChanged as exc:
            return UploadResult("changed", error=str(exc), retryable=False)
        except OSError as exc:
            return UploadResult("failed", error=f"cannot read the file: {exc.strerror}")
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "?")
            return UploadResult("failed", error=f"S3 {code}: {error.get('Message', '')}"[:300],
                                destination=True)
        except BotoCoreError as exc:
            return UploadResult("failed", error=f"S3: {exc}"[:300], destination=True)

    def _put_small(
        self, file: io.RawIOBase, expected: Signature, claim: Claim, destination: Destination
    ) -> UploadResult:
        data = _read_all(file, claim.size)
        _check_unchanged(file, expected)  # the bytes we hold are exactly the queued version
        digest = hashlib.sha256(data)
        sha = digest.hexdigest()
        client = self.storage.client(destination.s3)
        args = _put_arguments(destination, sha)
        if destination.s3.checksum == "when_supported":
            args["ChecksumSHA256"] = base64.b64encode(digest.digest()).decode()
        put: Callable[..., Any] = client.put_object
        if destination.overwrite == "never":
            # Some stores (rclone) ignore If-None-Match, so "never" looks before it writes.
            existing = _existing(client, claim, destination, sha)
            if existing is not None:
                return existing
        if destination.overwrite != "always":
            # One request in the common case: create only if absent; decide on a conflict.
            try:
                response = put(Bucket=claim.bucket, Key=claim.key, Body=data, IfNoneMatch="*",
                               **args)
                return UploadResult("uploaded", sha, response.get("ETag"), bytes=len(data))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "PreconditionFailed":
                    raise
            existing = _existing(client, claim, destination, sha)
            if existing is not None:
                return existing
        response = put(Bucket=claim.bucket, Key=claim.key, Body=data, **args)
        return UploadResult("uploaded", sha, response.get("ETag"), bytes=len(data))

    def _put_large(
        self, file: io.RawIOBase, expected: Signature, claim: Claim, destination: Destination
    ) -> UploadResult:
        sha = _hash_file(file, expected)
        client = self.storage.client(destination.s3)
        if destination.overwrite != "always":
            existing = _existing(client, claim, destination, sha)
            if existing is not None:
                return existing
        args = _put_arguments(destination, sha)
        if destination.s3.checksum == "when_supported":
            args["ChecksumAlgorithm"] = "SHA256"  # every part carries a checksum S3 verifies
        file.seek(0)
        reader = _VerifyingReader(file, expected, sha)
        client.upload_fileobj(cast(IO[bytes], reader), claim.bucket, claim.key, ExtraArgs=args,
                              Config=self.transfer.config_for(claim.size))
        head = client.head_object(Bucket=claim.bucket, Key=claim.key)
        return UploadResult("uploaded", sha, head.get("ETag"), bytes=claim.size)


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
            "failed", sha, error="the key holds a different object and overwrite is never",
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


def _check_unchanged(file: io.RawIOBase, expected: Signature) -> None:
    now = Signature.of(os.fstat(file.fileno()))
    if now != expected:
        raise FileChanged(f"the file changed since it was queued (now {now.size} bytes)")


def _read_all(file: io.RawIOBase, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining > 0:
        chunk = file.read(min(remaining, 8 * MiB))
        if not chunk:
            raise FileChanged("the file is shorter than when it was queued")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _hash_file(file: io.RawIOBase, expected: Signature) -> str:
    digest = hashlib.sha256()
    while chunk := file.read(_READ_SIZE):
        digest.update(chunk)
    _check_unchanged(file, expected)
    return digest.hexdigest()


class _VerifyingReader(io.RawIOBase):
    """A file as s3transfer reads it, part after part, hashed on the way.

    At end of file it checks the hash and the stat against the first pass; raising there
    makes s3transfer abort the multipart upload instead of completing it.
    """

    def __init__(self, file: io.RawIOBase, expected: Signature, sha: str) -> None:
        self._file = file
        self._expected = expected
        self._sha = sha
        self._digest = hashlib.sha256()
        self._position = 0
        self._sequential = True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        start = self._file.tell()
        data = self._file.read(size) or b""
        if start != self._position:
            self._sequential = False  # a re-read: the streaming hash no longer proves anything
        else:
            self._digest.update(data)
            self._position += len(data)
        if start + len(data) >= self._expected.size:
            self._verify()
        return data

    def _verify(self) -> None:
        _check_unchanged(self._file, self._expected)
        if not self._sequential or self._digest.hexdigest() != self._sha:
            raise FileChanged("the file changed during its upload")
