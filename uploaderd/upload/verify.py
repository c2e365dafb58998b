"""``uploaderd verify``: does the bucket hold what the ledger says was uploaded?

Every object the ledger records as uploaded (the newest version per key) is HEADed: missing,
a different size, or a ``sha256`` metadata value that is not the one computed while streaming
is a problem. The bucket is listed under the job's key prefix to find objects the ledger
knows nothing about (extra). Metadata names are compared case-insensitively: they are HTTP
headers, and some stores (rclone) return ``Sha256``.

Every uploaded version of a key is compared too: when more than one file (two hosts' files at
one relative path, or two paths a key template maps to one key) uploaded different content to
the same key, only the last one is in S3 (collision).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from uploaderd.config.settings import Job
from uploaderd.errors import StorageUnavailable
from uploaderd.ledger.store import Ledger
from uploaderd.policy.keys import KeyTemplate

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PROBE_PREFIX = ".uploaderd-check/"  # `check --connect` writes and deletes these
_NOT_FOUND = ("404", "NoSuchKey", "NotFound")


@dataclass(frozen=True)
class Problem:
    kind: str  # missing | extra | size | checksum | collision
    bucket: str
    key: str
    detail: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass
class VerifyReport:
    job: str
    prefix: str
    checked: int = 0  # ledger objects HEADed
    listed: int = 0  # objects found under the prefix
    problems: list[Problem] = field(default_factory=list)
    # (bucket, key) -> the ledger's newest uploaded version there: what --repair re-sends.
    versions: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "prefix": self.prefix,
            "checked": self.checked,
            "listed": self.listed,
            "problems": [asdict(p) for p in self.problems],
        }

    def lines(self) -> Iterator[str]:
        for problem in self.problems:
            yield f"{problem.kind:<9} {problem.url}: {problem.detail}"
        kinds = [p.kind for p in self.problems]
        counts = ", ".join(
            f"{kinds.count(k)} {k}" for k in ("missing", "extra", "size", "checksum", "collision")
        )
        yield (
            f"job {self.job}: {self.checked} objects in the ledger, {self.listed} listed "
            f"under {self.prefix!r}: {counts}"
        )


def listing_prefix(template: KeyTemplate, job: str) -> str:
    """The start every key of the job shares: the template's literal text up to its first
    variable, reading ``${job}`` as the job's name (constant for the job, so jobs sharing a
    bucket under ``${job}/...`` do not see each other's objects as extra)."""
    prefix = ""
    for is_variable, value in template.parts:
        if is_variable and value != "job":
            break
        prefix += job if is_variable else value
    return prefix


def verify(job: Job, ledger: Ledger, client: S3Client, *, workers: int) -> VerifyReport:
    report = VerifyReport(job.name, listing_prefix(job.destination.key, job.name))
    expected = ledger.uploaded_objects(job.name)
    report.versions = {(row["bucket"], row["key"]): row for row in expected}
    report.problems += [
        Problem(
            "collision",
            row["bucket"],
            row["key"],
            f"{row['contents']} different contents uploaded from {', '.join(row['files'])}; "
            "S3 holds only the last",
        )
        for row in ledger.key_collisions(job.name)
    ]
    buckets = sorted({job.destination.bucket} | {row["bucket"] for row in expected})
    try:
        for bucket in buckets:
            listed = list(_list(client, bucket, report.prefix))
            report.listed += len(listed)
            known = ledger.uploaded_keys_under(bucket, report.prefix)
            report.problems += [
                Problem("extra", bucket, key, f"{size} bytes, not in the ledger")
                for key, size in listed
                if key not in known
            ]
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for problems in pool.map(lambda row: check_object(client, row), expected):
                report.problems += problems
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise StorageUnavailable(
            f"S3: {error.get('Code')} {error.get('Message', '')}".rstrip()
        ) from exc
    except BotoCoreError as exc:
        raise StorageUnavailable(f"cannot reach S3: {exc}") from exc
    report.checked = len(expected)
    report.problems.sort(key=lambda p: (p.kind, p.bucket, p.key))
    return report


def check_object(client: S3Client, row: dict[str, Any]) -> list[Problem]:
    """Compare one object with what the ledger recorded for it."""
    bucket, key = row["bucket"], row["key"]
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
            return [Problem("missing", bucket, key, "in the ledger as uploaded, not in S3")]
        raise
    problems = []
    if head.get("ContentLength") != row["size"]:
        problems.append(
            Problem(
                "size",
                bucket,
                key,
                f"S3 has {head.get('ContentLength')} bytes, the ledger {row['size']}",
            )
        )
    metadata = {name.lower(): value for name, value in head.get("Metadata", {}).items()}
    sha = metadata.get("sha256")
    if sha != row["sha256"]:
        problems.append(
            Problem(
                "checksum",
                bucket,
                key,
                f"S3 metadata sha256 {sha or 'absent'}, the ledger {row['sha256']}",
            )
        )
    return problems


def _list(client: S3Client, bucket: str, prefix: str) -> Iterable[tuple[str, int]]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if not item["Key"].startswith(PROBE_PREFIX):
                yield item["Key"], item["Size"]


# --- --repair --------------------------------------------------------------------------------

REPAIRABLE = ("missing", "size", "checksum")  # collisions and extras are the operator's call
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Repair:
    problem: Problem
    relpath: str
    reason: str  # why it is requeued, or why it cannot be


@dataclass
class RepairReport:
    requeued: list[Repair] = field(default_factory=list)
    cannot: list[Repair] = field(default_factory=list)  # the source no longer holds the bytes
    left: list[Problem] = field(default_factory=list)  # kinds --repair does not touch

    def as_json(self) -> dict[str, Any]:
        def rows(repairs: list[Repair]) -> list[dict[str, Any]]:
            return [
                {"key": r.problem.key, "relpath": r.relpath, "reason": r.reason} for r in repairs
            ]

        return {
            "requeued": rows(self.requeued),
            "cannot_repair": rows(self.cannot),
            "not_repaired": [asdict(p) for p in self.left],
        }

    def lines(self, *, dry_run: bool) -> Iterator[str]:
        verb = "would requeue" if dry_run else "requeued"
        for repair in self.requeued:
            yield f"{verb} {repair.relpath} for {repair.problem.url}"
        for repair in self.cannot:
            yield f"cannot repair {repair.problem.url}: {repair.reason}"
        for problem in self.left:
            yield f"not repaired: {problem.kind} {problem.url} (decide by hand)"


def repair_plan(report: VerifyReport) -> RepairReport:
    """Which problems a re-upload mends: the version's source file must still hold exactly
    the recorded bytes (size and SHA-256 checked now), or the upload would put other bytes
    under the version's name."""
    plan = RepairReport()
    seen: set[tuple[str, str]] = set()
    for problem in report.problems:
        where = (problem.bucket, problem.key)
        if problem.kind not in REPAIRABLE:
            plan.left.append(problem)
            continue
        if where in seen:  # a wrong size and a wrong checksum of one object: one repair
            continue
        seen.add(where)
        version = report.versions[where]
        why_not = source_differs(f"{version['root']}/{version['relpath']}", version)
        repair = Repair(
            problem, version["relpath"], why_not or f"repair: {problem.kind}: {problem.detail}"
        )
        (plan.cannot if why_not else plan.requeued).append(repair)
    return plan


def source_differs(path: str, version: dict[str, Any]) -> str | None:
    """Why the file at ``path`` is not the recorded version any more; None when it is."""
    try:
        with open(path, "rb", opener=_no_follow) as file:
            digest = hashlib.sha256()
            size = 0
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return "the source file is gone"
    except OSError as exc:
        return f"cannot read the source file: {exc.strerror or exc}"
    if size != version["size"] or digest.hexdigest() != version["sha256"]:
        return "the source file holds other bytes now (its newer version is a file of its own)"
    return None


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)  # a link in its place is not the file
