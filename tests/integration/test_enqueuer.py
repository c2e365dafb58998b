"""The discovery writer: chunks written in order on a connection of its own, and none written
after an outage until discovery resumes it (an older version must never supersede a newer)."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uploaderd.config.settings import S3Settings, parse_job_text
from uploaderd.discovery.enqueuer import Chunk, Enqueuer, Written
from uploaderd.errors import DatabaseUnavailable
from uploaderd.ledger.store import Ledger
from uploaderd.policy.settle import Candidate, Signature

Sql = Callable[..., list[tuple[Any, ...]]]
DEADLINE = 10.0


class _OutageOnce(Ledger):
    """PostgreSQL away for the first write, back for every later one."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.outages = 1

    def enqueue(self, job: str, **kwargs: Any) -> tuple[int, int]:
        if self.outages:
            self.outages -= 1
            raise DatabaseUnavailable("PostgreSQL is away (test)")
        return super().enqueue(job, **kwargs)


def _chunk(tmp_path: Path, relpath: str, inode: int) -> Chunk:
    job = parse_job_text(
        f"source: {{paths: [{tmp_path}]}}\ndestination: {{bucket: lab-raw}}\n",
        name="lab",
        defaults=S3Settings(),
    )
    candidate = Candidate(str(tmp_path), relpath, Signature(1, 1, inode, 1))
    return Chunk(job, [(candidate, "scan")], owner=None)


def _next(results: queue.SimpleQueue[Written]) -> Written:
    return results.get(timeout=DEADLINE)


def test_after_an_outage_nothing_is_written_until_resumed_then_in_order(
    migrated_dsn: str, tmp_path: Path, sql: Sql
) -> None:
    results: queue.SimpleQueue[Written] = queue.SimpleQueue()
    writer = Enqueuer(_OutageOnce(migrated_dsn), host="host-a", report=results.put)
    writer.start()
    try:
        older, newer = _chunk(tmp_path, "a.dat", 1), _chunk(tmp_path, "a.dat", 2)
        writer.submit(older)
        writer.submit(newer)
        first, second = _next(results), _next(results)
        assert (first.chunk, first.written) == (older, [])
        assert isinstance(first.outage, DatabaseUnavailable)
        # The database is back, but the writer holds what follows an outage.
        assert (second.chunk, second.written, second.outage) == (newer, [], first.outage)
        assert sql("SELECT count(*) FROM file_versions") == [(0,)]
        writer.resume()  # discovery: nothing in flight any more; the chunks again, in order
        writer.submit(older)
        writer.submit(newer)
        assert [_next(results).written for _ in range(2)] == [older.items, newer.items]
    finally:
        writer.stop(time.monotonic() + DEADLINE)
    assert sql("SELECT inode, state FROM file_versions ORDER BY id") == [
        (1, "superseded"),
        (2, "pending"),
    ]
