"""Discovery without the watcher: a rescan alone finds what no event reported, and rescans
of one job neither pile up nor hold back another job's."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import wait_for
from uploaderd.config.settings import S3Settings, parse_job_text
from uploaderd.discovery import discovery as discovery_module
from uploaderd.discovery.discovery import SCAN_SLICE, Discovery
from uploaderd.discovery.scanner import scan
from uploaderd.ledger.store import Ledger
from uploaderd.policy.settle import Candidate

Sql = Callable[..., list[tuple[Any, ...]]]


def test_rescan_queues_what_events_missed_in_one_batch(
    migrated_dsn: str, tmp_path: Path, sql: Sql
) -> None:
    root = tmp_path / "root"
    (root / "run-1").mkdir(parents=True)
    for i in range(1200):
        (root / "run-1" / f"f{i:04d}.dat").write_bytes(b"x" * i)
    (root / "run-1" / "skip.part").write_bytes(b"partial")
    job = parse_job_text(
        f"source: {{paths: [{root}], settle: 0s}}\n"
        "destination: {bucket: lab-raw, key: '${job}/${session}/${relpath}'}\n"
        "session: {group_by: top_dir}\n",
        name="lab",
        defaults=S3Settings(),
    )
    discovery = Discovery(Ledger(migrated_dsn), host="host-a")
    discovery.start()
    try:
        discovery.set_jobs({"lab": job})  # a new job is scanned at once
        wait_for(
            lambda: sql("SELECT count(*) FROM file_versions")[0][0] == 1200,
            timeout=30,
            message="every file queued",
        )
        wait_for(discovery.settled, timeout=10, message="discovery idle")
        (root / "run-1" / "late.dat").write_bytes(b"no event announced me")
        discovery.request_scan("lab")
        wait_for(
            lambda: sql("SELECT count(*) FROM file_versions")[0][0] == 1201,
            timeout=30,
            message="the rescan found the new file",
        )
    finally:
        discovery.stop(time.monotonic() + 10)
    [(session_id, group_key)] = sql("SELECT id, group_key FROM sessions")
    assert group_key == "run-1"
    keys = {
        row[0]
        for row in sql(
            "SELECT DISTINCT key ~ ('^lab/' || %s || '/run-1/') FROM file_versions", str(session_id)
        )
    }
    assert keys == {True}, "the key renders ${session} as the session id"
    assert sql("SELECT count(*) FROM file_versions WHERE relpath LIKE '%%.part'") == [(0,)]


def test_rescans_asked_for_again_are_one_and_jobs_take_turns(
    migrated_dsn: str, tmp_path: Path, sql: Sql, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overflow storm asked for thousands of rescans of one tree, each queued behind the
    last, and another job's scan waited behind them all. A rescan asked for while one of the
    same tree has not begun is that one; scans take turns a slice at a time."""
    lab, outbox = tmp_path / "lab", tmp_path / "outbox"
    for i in range(3 * SCAN_SLICE):
        (lab / f"d{i % 30:02d}").mkdir(parents=True, exist_ok=True)
        (lab / f"d{i % 30:02d}" / f"f{i:05d}").write_bytes(b"x")
    outbox.mkdir()
    jobs = {
        name: parse_job_text(
            f"source: {{paths: [{root}], settle: 0s}}\ndestination: {{bucket: lab-raw}}\n",
            name=name,
            defaults=S3Settings(),
        )
        for name, root in (("lab", lab), ("outbox", outbox))
    }
    began: list[str] = []  # the job of each scan added
    found: list[str] = []  # the job of each file a scan yields, in order

    def watched_scan(root: str, *args: Any, **kwargs: Any) -> Iterator[Candidate]:
        job = "lab" if root == str(lab) else "outbox"
        began.append(job)
        for candidate in scan(root, *args, **kwargs):
            found.append(job)
            yield candidate

    monkeypatch.setattr(discovery_module, "scan", watched_scan)
    discovery = Discovery(Ledger(migrated_dsn), host="host-a")
    discovery.start()
    try:
        discovery.set_jobs(jobs)
        wait_for(
            lambda: sql("SELECT count(*) FROM file_versions")[0][0] == 3 * SCAN_SLICE,
            timeout=30,
            message="the lab tree queued",
        )
        wait_for(discovery.settled, timeout=10, message="discovery idle")
        began.clear()
        found.clear()
        (outbox / "report.txt").write_bytes(b"another job's file")
        for _ in range(40):
            discovery.request_scan("lab")
        discovery.request_scan("outbox")
        wait_for(
            lambda: sql("SELECT count(*) FROM file_versions WHERE job = 'outbox'") == [(1,)],
            timeout=30,
            message="the outbox file queued",
        )
        wait_for(discovery.settled, timeout=30, message="discovery idle")
    finally:
        discovery.stop(time.monotonic() + 10)
    assert began.count("lab") <= 2, "forty requests, at most one scan begun and one waiting"
    assert began.count("outbox") == 1
    assert found.index("outbox") <= SCAN_SLICE, "the outbox scan's turn came after one slice"


def test_a_jobs_own_roots_are_scanned_in_order_while_jobs_take_turns(
    migrated_dsn: str, tmp_path: Path, sql: Sql, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Turns are between jobs: a job's second root waits for its first to be scanned
    (a sentinel listed in the last root means the whole job was seen)."""
    first, second = tmp_path / "first", tmp_path / "second"
    for i in range(3 * SCAN_SLICE):
        (first / f"d{i % 30:02d}").mkdir(parents=True, exist_ok=True)
        (first / f"d{i % 30:02d}" / f"f{i:05d}").write_bytes(b"x")
    second.mkdir()
    (second / "sentinel").write_bytes(b"last")
    found: list[str] = []  # the root of each file a scan yields, in order

    def watched_scan(root: str, *args: Any, **kwargs: Any) -> Iterator[Candidate]:
        for candidate in scan(root, *args, **kwargs):
            found.append(root)
            yield candidate

    monkeypatch.setattr(discovery_module, "scan", watched_scan)
    job = parse_job_text(
        f"source: {{paths: [{first}, {second}], settle: 0s}}\ndestination: {{bucket: lab-raw}}\n",
        name="lab",
        defaults=S3Settings(),
    )
    discovery = Discovery(Ledger(migrated_dsn), host="host-a")
    discovery.start()
    try:
        discovery.set_jobs({"lab": job})
        wait_for(
            lambda: sql("SELECT count(*) FROM file_versions")[0][0] == 3 * SCAN_SLICE + 1,
            timeout=30,
            message="both roots queued",
        )
    finally:
        discovery.stop(time.monotonic() + 10)
    assert found == [str(first)] * (3 * SCAN_SLICE) + [str(second)]
