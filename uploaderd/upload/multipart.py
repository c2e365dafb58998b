"""Multipart uploads that survive a crash: resumed from the parts already in S3.

s3transfer cannot resume, so large files go up here: parts are read in order (hashed on the
way, so the whole-file SHA-256 is checked against the first pass before completing), sent
by a few threads, and the upload id is handed to the caller as soon as it exists so the
ledger can record it. A later attempt with that id lists the parts S3 already holds, keeps
each one whose checksum matches the bytes on disk, and sends only the rest. If the file
changed, the upload is aborted, never completed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from uploaderd.policy.settle import Signature
from uploaderd.policy.transfers import NO_PROGRESS, CountingBody, FileProgress

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1024 * 1024
MAX_PARTS = 10_000


class FileChanged(Exception):
    """The file no longer matches the version that was queued."""


class KeyTaken(Exception):
    """Completing "only if absent" found an object at the key (written meanwhile)."""


def check_unchanged(file: io.RawIOBase, expected: Signature) -> None:
    now = Signature.of(os.fstat(file.fileno()))
    if now != expected:
        raise FileChanged(f"the file changed since it was queued (now {now.size} bytes)")


def part_size_for(size: int, preferred: int) -> int:
    """The preferred size, grown in whole MiB when the file would need over 10,000 parts."""
    needed = -(-size // MAX_PARTS)
    return max(preferred, -(-needed // MiB) * MiB)


@dataclass(frozen=True)
class Resume:
    upload_id: str
    part_size: int


class MultipartUpload:
    """One large object: create or resume, send the missing parts, verify, complete."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        *,
        checksums: bool,
        concurrency: int,
        on_started: Callable[[str, int], None],
        throttle: Callable[[int], None],
        progress: FileProgress = NO_PROGRESS,
    ) -> None:
        self.throttle = throttle
        self.progress = progress
        self.client = client
        self.bucket = bucket
        self.key = key
        self.checksums = checksums
        self.concurrency = concurrency
        self.on_started = on_started
        self.parts_sent = 0
        self.parts_kept = 0
        self.bytes_sent = 0  # by this attempt: what the metrics count
        self.bytes_kept = 0  # parts an earlier attempt sent, kept
        self._count_lock = threading.Lock()

    def run(
        self,
        file: io.RawIOBase,
        expected: Signature,
        sha: str,
        args: dict[str, Any],
        part_size: int,
        resume: Resume | None,
        *,
        if_absent: bool = False,
    ) -> str:
        """Upload the file (already hashed to ``sha``); returns the object's ETag.

        ``if_absent`` completes with ``If-None-Match: *`` (``overwrite: never``): a store that
        supports it refuses to replace an object written since we looked (``KeyTaken``).
        """
        held = self._held_parts(resume) if resume else None
        if resume is not None and held is not None:
            upload_id, part_size = resume.upload_id, resume.part_size
        else:
            upload_id, held = self._create(args), {}
            self.on_started(upload_id, part_size)
        try:
            parts = self._send_parts(file, expected, sha, upload_id, part_size, held)
        except FileChanged:
            abort(self.client, self.bucket, self.key, upload_id)
            raise
        condition: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            response = self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                **condition,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "PreconditionFailed":
                raise
            abort(self.client, self.bucket, self.key, upload_id)
            raise KeyTaken(self.key) from exc
        return str(response.get("ETag", ""))

    def _create(self, args: dict[str, Any]) -> str:
        extra: dict[str, Any] = {"ChecksumAlgorithm": "SHA256"} if self.checksums else {}
        response = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=self.key, **args, **extra
        )
        return response["UploadId"]

    def _held_parts(self, resume: Resume) -> dict[int, dict[str, Any]] | None:
        """The parts S3 holds for an earlier attempt, or None when that upload is gone."""
        held: dict[int, dict[str, Any]] = {}
        marker = 0
        try:
            while True:
                page = self.client.list_parts(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=resume.upload_id,
                    PartNumberMarker=marker,
                )
                for part in page.get("Parts", []):
                    held[part["PartNumber"]] = dict(part)
                if not page.get("IsTruncated"):
                    return held
                marker = page["NextPartNumberMarker"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchUpload", "404"):
                return None
            raise

    def _send_parts(
        self,
        file: io.RawIOBase,
        expected: Signature,
        sha: str,
        upload_id: str,
        part_size: int,
        held: dict[int, dict[str, Any]],
    ) -> list[dict[str, Any]]:
        digest = hashlib.sha256()
        done: dict[int, dict[str, Any]] = {}
        in_flight: set[Future[dict[str, Any]]] = set()
        file.seek(0)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="part") as pool:
            for number in range(1, max(1, -(-expected.size // part_size)) + 1):
                data = read_exactly(file, min(part_size, expected.size - (number - 1) * part_size))
                digest.update(data)
                kept = _matching(held.get(number), data, self.checksums)
                if kept is not None:
                    done[number] = kept
                    self.parts_kept += 1
                    self.progress.kept(len(data))
                    self.bytes_kept += len(data)
                    continue
                self.throttle(len(data))
                if len(in_flight) >= self.concurrency:  # bound the parts held in memory
                    finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    done.update((p["PartNumber"], p) for p in (f.result() for f in finished))
                in_flight.add(pool.submit(self._send_part, upload_id, number, data))
            for future in in_flight:
                part = future.result()
                done[part["PartNumber"]] = part
        check_unchanged(file, expected)
        if digest.hexdigest() != sha:
            raise FileChanged("the file changed during its upload")
        return [done[n] for n in sorted(done)]

    def _send_part(self, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        extra: dict[str, Any] = {"ChecksumSHA256": _b64_sha256(data)} if self.checksums else {}
        body = CountingBody(data, self.progress.sent)
        response = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
            **extra,
        )
        body.finish()
        with self._count_lock:  # part threads finish concurrently
            self.parts_sent += 1
            self.bytes_sent += len(data)
        part = {"PartNumber": number, "ETag": response["ETag"]}
        if self.checksums:
            part["ChecksumSHA256"] = extra["ChecksumSHA256"]
        return part


def abort(client: S3Client, bucket: str, key: str, upload_id: str) -> None:
    """Abort a multipart upload; one that is already gone counts as aborted."""
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "404"):
            raise


def _matching(held: dict[str, Any] | None, data: bytes, checksums: bool) -> dict[str, Any] | None:
    """A part S3 already has, if it holds exactly these bytes (by SHA-256, else by MD5)."""
    if held is None or held.get("Size") != len(data):
        return None
    if held.get("ChecksumSHA256"):
        if held["ChecksumSHA256"] != _b64_sha256(data):
            return None
        return {
            "PartNumber": held["PartNumber"],
            "ETag": held["ETag"],
            "ChecksumSHA256": held["ChecksumSHA256"],
        }
    # Without a checksum the ETag of a part is its MD5 (not under SSE-KMS: then re-send).
    if held["ETag"].strip('"') != hashlib.md5(data, usedforsecurity=False).hexdigest():
        return None
    kept = {"PartNumber": held["PartNumber"], "ETag": held["ETag"]}
    if checksums:
        # An upload created with a checksum needs one for every part on completion, and some
        # stores (SeaweedFS) list none: these are the bytes, so theirs is ours.
        kept["ChecksumSHA256"] = _b64_sha256(data)
    return kept


def read_exactly(file: io.RawIOBase, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining > 0:
        chunk = file.read(remaining)
        if not chunk:
            raise FileChanged("the file is shorter than when it was queued")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()
