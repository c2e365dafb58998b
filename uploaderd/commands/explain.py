"""``uploaderd explain PATH``: why one file was, or was not, uploaded.

Walks the same decisions the daemon makes, in order, and says where the file stopped: which
job's root holds it, the filters, links and the root boundary, whether its current content
has settled, and what the ledger knows: every version, its attempts, and a one-line "why".
"""

from __future__ import annotations

import argparse
import os
import socket
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from uploaderd.commands.common import Parsers, jobs_of, open_ledger, print_json, show
from uploaderd.config.settings import DaemonConfig, Job
from uploaderd.discovery.collect import rules_of
from uploaderd.discovery.scanner import check_path, not_utf8, relative_path
from uploaderd.discovery.versions import scope_of
from uploaderd.errors import EXIT_OK, UsageError
from uploaderd.ledger.store import Ledger, State
from uploaderd.policy.keys import file_date
from uploaderd.policy.settle import Signature
from uploaderd.policy.units import format_bytes, plural


@dataclass(frozen=True)
class Place:
    """Where a path sits in a job: its root and the path relative to it."""

    job: Job
    root: str
    relpath: str


def add_parser(parsers: Parsers) -> None:
    why = parsers.add(
        "explain",
        run_explain,
        "for one file: its job, filters, versions, attempts and why it was or was not uploaded",
        "explain /data/scope-a/run1/a.tif",
        json_help='{"path", "lines", "why"}',
    )
    why.add_argument(
        "path",
        metavar="PATH",
        help="the file, absolute or relative (e.g. /data/scope-a/run1/a.tif)",
    )


def run_explain(args: argparse.Namespace, config: DaemonConfig) -> int:
    absolute = os.path.abspath(args.path)
    if os.path.isdir(absolute):  # before any line about filters or settling a file
        raise UsageError(
            f"{absolute} is a directory: explain looks at one file "
            f"(e.g. uploaderd explain {os.path.join(absolute, 'FILE')})"
        )
    jobs = jobs_of(config)
    with open_ledger(config, "explain") as ledger:
        lines = list(explain(args.path, jobs, ledger))
    if args.json:
        print_json(
            {
                "path": args.path,
                "lines": lines,
                "why": [line.removeprefix("why: ") for line in lines if line.startswith("why: ")],
            }
        )
    else:
        show(*lines)
    if not os.path.lexists(absolute) and not any(line.startswith(_VERSION) for line in lines):
        raise UsageError(f"{absolute}: no such file, and the ledger holds no version of it")
    return EXIT_OK


# The lines that show the ledger knows the path: a version, or a pruned one's signature.
_VERSION = ("version ", "versions: pruned")


def places(path: str, jobs: Mapping[str, Job]) -> list[Place]:
    """Every job root that contains ``path`` (absolute, no links resolved: a link's own
    location is what the scanner sees)."""
    found = []
    for job in sorted(jobs.values(), key=lambda j: j.name):
        for root in job.source.paths:
            relpath = relative_path(str(root), path)
            if relpath is not None:
                found.append(Place(job, str(root), relpath))
    return found


def explain(
    path: str, jobs: Mapping[str, Job], ledger: Ledger, *, host: str | None = None
) -> Iterator[str]:
    absolute = os.path.abspath(path)
    yield f"path: {absolute}"
    if not_utf8(absolute):
        yield (
            "why: its name is not valid UTF-8; uploaderd skips such files (S3 keys and the "
            "ledger take UTF-8 only): rename it and it is queued at the next look"
        )
        return
    found = places(absolute, jobs)
    if not found:
        yield "why: not under any job"
    for place in found:
        yield from explain_place(absolute, place, ledger, host=host or socket.gethostname())


def explain_place(path: str, place: Place, ledger: Ledger, *, host: str) -> Iterator[str]:
    job = place.job
    yield f"job: {job.name} (root {place.root}, relpath {place.relpath})"
    refusal = _filter_verdict(job, place.relpath)
    yield f"filter: {refusal or 'included'}"
    refusal = refusal or _file_verdict(path, place)
    current = _stat(path, follow=job.source.follow_symlinks)
    scope = scope_of(job, host)
    versions = ledger.path_versions(job.name, scope, place.root, place.relpath)
    settle_left = _settle_left(job, current)
    if current is not None:
        yield _describe_stat(job, current, settle_left)
    for version in versions:
        yield from _describe_version(version, ledger.version_attempts(version["id"]))
    if not versions:
        pruned = ledger.path_signature(job.name, scope, place.root, place.relpath)
        if pruned is not None:
            yield from _describe_pruned(pruned, current, refusal)
            return
        yield "versions: none in the ledger"
    yield f"why: {_why(refusal, current, versions, settle_left)}"


def _describe_pruned(
    pruned: Mapping[str, Any], current: os.stat_result | None, refusal: str | None
) -> Iterator[str]:
    """A path whose versions left the ledger under retention: only its signature is kept."""
    yield (
        f"versions: pruned by retention; the signature of version {pruned['version_id']} "
        f"({pruned['size']} bytes, uploaded) is kept"
    )
    if refusal is not None:
        yield f"why: {refusal}"
    elif current is not None and not _same(current, pruned):
        yield (
            "why: changed since the pruned version; complete but not queued yet: the "
            "daemon queues it at its next look, or run `uploaderd upload` for the job"
        )
    else:
        yield "why: uploaded (its history was pruned); unchanged, so it is not uploaded again"


def _filter_verdict(job: Job, relpath: str) -> str | None:
    if not job.source.recursive and "/" in relpath:
        return "in a subdirectory, and the job is not recursive"
    return job.source.filter.reason(relpath)


def _stat(path: str, *, follow: bool) -> os.stat_result | None:
    """The file as the scanner sees it (through a link only when the job follows links)."""
    try:
        return os.stat(path) if follow else os.lstat(path)
    except OSError:
        return None


def _file_verdict(path: str, place: Place) -> str | None:
    """Why the scanner would pass over this existing path (a link, not a file, outside)."""
    info = _stat(path, follow=False)
    if info is None or check_path(place.root, path, rules_of(place.job)) is not None:
        return None
    if stat.S_ISLNK(info.st_mode) and not place.job.source.follow_symlinks:
        return "a symlink, and the job has follow_symlinks: false"
    try:
        target = os.stat(path)
    except OSError:
        return "a symlink to nothing"
    if not stat.S_ISREG(target.st_mode):
        return "not a regular file"
    return "reached through a symlink that leads outside the root"


def _settle_left(job: Job, info: os.stat_result | None) -> float:
    if info is None:
        return 0.0
    age = datetime.now(UTC).timestamp() - info.st_mtime_ns / 1e9
    return max(0.0, job.source.settle - age)


def _describe_stat(job: Job, info: os.stat_result, settle_left: float) -> str:
    mtime = file_date(Signature.of(info).mtime_ns)
    when = _when(mtime) if mtime else "out of range (after 2262-04-11 or before 1677-09-21)"
    state = (
        f"not settled: {settle_left:.1f}s of settle {job.source.settle:g}s left"
        if settle_left
        else f"complete (unchanged for at least settle {job.source.settle:g}s)"
    )
    return (
        f"file: {format_bytes(info.st_size)} ({info.st_size} bytes), mtime "
        f"{when}, inode {info.st_ino}; {state}"
    )


def _describe_version(version: Mapping[str, Any], attempts: list[dict[str, Any]]) -> Iterator[str]:
    yield (
        f"version {version['id']}: {version['state']}, {plural(version['attempts'], 'attempt')}, "
        f"{version['size']} bytes, key s3://{version['bucket']}/{version['key']}, "
        f"session {version['session_id']}, discovered {_when(version['discovered_at'])}"
    )
    for attempt in attempts:
        error = f": {attempt['error']}" if attempt["error"] else ""
        yield (
            f"  attempt {attempt['attempt']} on {attempt['host']} at "
            f"{_when(attempt['started_at'])}: {attempt['outcome'] or 'running'}{error}"
        )


def _why(
    refusal: str | None,
    current: os.stat_result | None,
    versions: list[dict[str, Any]],
    settle_left: float,
) -> str:
    if refusal is not None:
        return refusal
    newest = versions[0] if versions else None
    if newest is not None and (current is None or _same(current, newest)):
        return version_why(newest)
    if current is None:
        return "the file does not exist, and the ledger has no version of it"
    if settle_left:
        return f"not settled yet ({settle_left:.1f}s left)"
    changed = "changed since the newest version; " if newest is not None else ""
    return (
        f"{changed}complete but not queued yet: the daemon queues it at its next look, "
        "or run `uploaderd upload` for the job"
    )


def version_why(version: Mapping[str, Any]) -> str:
    """The one-line reason for a version's state."""
    state = version["state"]
    if state == State.UPLOADED:
        return (
            f"uploaded at {_when(version['uploaded_at'])} as "
            f"s3://{version['bucket']}/{version['key']}"
        )
    if state == State.PENDING:
        wait = max(0.0, (version["next_attempt_at"] - datetime.now(UTC)).total_seconds())
        after = f" after {version['last_error']}" if version["last_error"] else ""
        return f"pending: next attempt in {wait:.0f}s{after}"
    if state == State.UPLOADING:
        return f"uploading now (attempt {version['attempts']})"
    if state == State.FAILED:
        return f"failed after {plural(version['attempts'], 'attempt')}: {version['last_error']}"
    if state == State.GONE:
        return f"gone before its upload: {version['last_error']}"
    return f"superseded: {version['last_error']}"


def _same(info: os.stat_result, version: Mapping[str, Any]) -> bool:
    return Signature.of(info) == Signature(
        version["size"], version["mtime_ns"], version["inode"], version["ctime_ns"]
    )


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"
