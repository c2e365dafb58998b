"""Log priorities and fields, the activity log's burst limit, the byte counter and the stats
lines (issue 11), without services."""

from __future__ import annotations

import io
import json
import logging
import os
from typing import Any

import pytest

from uploaderd.commands.explain import version_why
from uploaderd.observe import logs
from uploaderd.observe.logs import ActivityLog, Attempt, JsonFormatter, PriorityFormatter
from uploaderd.observe.progress import RunProgress, StatsDisplay
from uploaderd.policy.transfers import Active, CountingBody, Transfers
from uploaderd.policy.units import plural


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(message: str, level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    entry = logging.LogRecord("uploaderd.activity", level, __file__, 1, message, (), None)
    entry.__dict__.update(extra)
    return entry


def test_journal_stream_is_recognised_by_device_and_inode() -> None:
    read, write = os.pipe()
    with os.fdopen(write, "w") as stream:
        info = os.fstat(stream.fileno())
        assert logs.journal_stream(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        assert not logs.journal_stream(stream, {"JOURNAL_STREAM": f"{info.st_dev}:1"})
        assert not logs.journal_stream(stream, {})
    os.close(read)


def test_every_line_of_a_record_gets_its_priority() -> None:
    formatter = PriorityFormatter(logging.Formatter("%(levelname)s %(message)s"))
    assert formatter.format(record("two\nlines", logging.ERROR)) == "<3>ERROR two\n<3>lines"
    assert formatter.format(record("w", logging.WARNING)).startswith("<4>")
    assert formatter.format(record("i")).startswith("<6>")
    assert formatter.format(record("d", logging.DEBUG)).startswith("<7>")
    assert formatter.format(record("c", logging.CRITICAL)).startswith("<2>")


def test_json_lines_carry_job_session_path_and_key_as_fields() -> None:
    line = json.loads(
        JsonFormatter().format(
            record("uploaded", **logs.fields("lab", 42, "run1/a.tif", "lab/run1/a.tif"))
        )
    )
    assert {k: line[k] for k in ("job", "session", "path", "key")} == {
        "job": "lab",
        "session": 42,
        "path": "run1/a.tif",
        "key": "lab/run1/a.tif",
    }


def attempt(index: int, error: str | None = None) -> Attempt:
    return Attempt(
        "lab",
        7,
        f"f{index}.bin",
        "b",
        f"lab/f{index}.bin",
        1024,
        0.5,
        1,
        error,
        30.0 if error else None,
    )


def test_a_burst_is_limited_per_job_then_summarised(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    activity = ActivityLog(clock)
    caplog.set_level(logging.INFO, logger="uploaderd.activity")
    for index in range(100_000):
        activity.record(attempt(index))
    activity.record(attempt(0, "S3 SlowDown: Please reduce your request rate."))
    activity.flush()
    assert len(caplog.records) == logs.BURST, "nothing summarised before its period is over"
    assert caplog.records[0].getMessage() == (
        "job lab: uploaded f0.bin as s3://b/lab/f0.bin (1.0 KiB in 0.5s, attempt 1)"
    )
    clock.now += logs.SUMMARY_SECONDS
    activity.flush()
    summary = caplog.records[-1]
    assert summary.getMessage() == (
        f"job lab: {100_000 - logs.BURST} more files uploaded "
        "(97.6 MiB) and 1 more failed attempt in the last 10s"
    )
    assert summary.levelno == logging.WARNING
    activity.record(attempt(1, "S3 SlowDown"))  # tokens came back with the time
    assert caplog.records[-1].getMessage() == (
        "job lab: attempt 1 of f1.bin to s3://b/lab/f1.bin failed after 0.5s (1.0 KiB): "
        "S3 SlowDown; retry in 30s"
    )


def test_a_body_counts_only_what_is_read_to_send_and_each_byte_once() -> None:
    transfers = Transfers()
    progress = transfers.begin(1, "lab", "big.bin", 10)
    body = CountingBody(b"0123456789", progress.sent)
    body.read()  # a checksum before the request is signed: not sent
    body.seek(0)
    body.signal_transferring()
    body.read(4)
    assert transfers.snapshot().active == (Active("lab", "big.bin", 4, 10),)
    body.seek(0)  # a retry resends from the start
    body.read(6)
    body.finish()
    snapshot = transfers.snapshot()
    assert (snapshot.sent_total, snapshot.active) == (10, (Active("lab", "big.bin", 10, 10),))
    progress.kept(5)  # a resumed part: done, not on the wire
    assert transfers.snapshot().sent_total == 10
    transfers.end([1])
    assert transfers.snapshot().active == ()


def test_stats_lines_come_every_interval_and_at_the_end() -> None:
    clock = Clock()
    stream = io.StringIO()
    display = StatsDisplay(stream, interval=10.0, clock=clock)
    moving = RunProgress(
        0,
        1,
        12 * 2**20,
        100 * 2**20,
        1,
        None,
        (Active("lab", "big.bin", 12 * 2**20, 100 * 2**20),),
        None,
        4 * 2**20,
    )
    display.update(moving)
    assert stream.getvalue() == ""
    clock.now += 10
    display.update(moving)
    waiting = RunProgress(0, 1, 0, 100, 0, 8.0, (), "big.bin: S3 SlowDown", None)
    display.update(waiting)
    display.close()
    assert stream.getvalue().splitlines() == [
        "stats: 12.0 MiB/100.0 MiB (12%), 4.0 MiB/s, ETA 0:00:22, 0/1 file; uploading big.bin "
        "(12.0 MiB/100.0 MiB)",
        "stats: 0 B/100 B (0%), -, ETA -, 0/1 file; waiting 8s to retry after big.bin: S3 SlowDown",
    ]


def test_counts_of_one_are_singular() -> None:
    """Issue 25: `1 attempts`, `1 files`, `1 more files`."""
    version = {"state": "failed", "attempts": 1, "last_error": "S3 NoSuchBucket"}
    assert version_why(version) == "failed after 1 attempt: S3 NoSuchBucket"
    assert version_why({**version, "attempts": 2}).startswith("failed after 2 attempts:")
    assert plural(1, "more file") == "1 more file" and plural(5, "more file") == "5 more files"
