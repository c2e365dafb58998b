"""Discovery without the watcher: a rescan alone finds what no event reported."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack import wait_for
from uploaderd.config.settings import S3Settings, parse_job_text
from uploaderd.discovery.discovery import Discovery
from uploaderd.ledger.store import Ledger

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
