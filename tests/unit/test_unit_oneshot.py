"""The pure parts of the one-shot commands: the bounded settle wait (with a fake clock), the
progress arithmetic, the verify prefix and the one-line reasons of explain and trigger."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from uploaderd.commands.explain import version_why
from uploaderd.commands.oneshot import run_progress
from uploaderd.commands.registrar import describe_call
from uploaderd.config.settings import Job, S3Settings, parse_job_text
from uploaderd.discovery.collect import Clock, collect, settle_budget
from uploaderd.ledger.store import StateTally
from uploaderd.policy.keys import KeyTemplate
from uploaderd.policy.settle import Candidate, Signature
from uploaderd.upload.verify import listing_prefix

NOW = 1_700_000_000.0


class FakeTime:
    """A clock that moves only when the code under test sleeps; ``on_sleep`` acts meanwhile."""

    def __init__(self, on_sleep: object = None) -> None:
        self.now = 0.0
        self.slept = 0.0
        self.on_sleep = on_sleep

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds
        if callable(self.on_sleep):
            self.on_sleep()

    def clock(self) -> Clock:
        return Clock(monotonic=lambda: self.now, wall=lambda: NOW + self.now, sleep=self.sleep)


def job_for(root: Path, settle: str = "10s") -> Job:
    text = f"source: {{paths: [{root}], settle: {settle}}}\ndestination: {{bucket: lab-raw}}\n"
    return parse_job_text(text, name="lab", defaults=S3Settings())


def write(root: Path, relpath: str, data: bytes, mtime: float) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def nothing_known(seen: Sequence[Candidate]) -> set[tuple[str, str]]:
    return set()


def test_old_files_are_complete_at_the_second_look_without_waiting(tmp_path: Path) -> None:
    write(tmp_path, "a/old.txt", b"old", NOW - 3600)
    time = FakeTime()
    found = collect(job_for(tmp_path), nothing_known, clock=time.clock())
    assert [c.relpath for c in found.complete] == ["a/old.txt"]
    assert time.slept == 0 and not found.unsettled


def test_fresh_files_wait_for_settle(tmp_path: Path) -> None:
    write(tmp_path, "fresh.txt", b"new", NOW)
    time = FakeTime()
    waits: list[int] = []
    found = collect(
        job_for(tmp_path),
        nothing_known,
        clock=time.clock(),
        on_wait=lambda files, left: waits.append(files),
    )
    assert [c.relpath for c in found.complete] == ["fresh.txt"]
    assert 10 <= time.slept < settle_budget(10)
    assert set(waits) == {1}


def test_a_file_still_being_written_is_skipped_after_a_bounded_wait(tmp_path: Path) -> None:
    path = write(tmp_path, "growing.bin", b"x", NOW)
    write(tmp_path, "done.txt", b"done", NOW - 3600)
    time = FakeTime(on_sleep=lambda: path.write_bytes(path.read_bytes() + b"x"))
    found = collect(job_for(tmp_path), nothing_known, clock=time.clock())
    assert [c.relpath for c in found.complete] == ["done.txt"]
    assert [c.relpath for c in found.unsettled] == ["growing.bin"]
    assert time.slept == settle_budget(10)


def test_known_versions_are_skipped_and_vanished_files_dropped(tmp_path: Path) -> None:
    known = write(tmp_path, "known.txt", b"k", NOW - 3600)
    gone = write(tmp_path, "gone.txt", b"g", NOW)
    time = FakeTime(on_sleep=lambda: gone.unlink(missing_ok=True))
    signature = Signature.of(known.stat())
    asked: list[list[str]] = []

    def ledger_holds(seen: Sequence[Candidate]) -> set[tuple[str, str]]:
        asked.append(sorted(c.relpath for c in seen))
        return {
            (c.root, c.relpath)
            for c in seen
            if c.relpath == "known.txt" and c.signature == signature
        }

    found = collect(job_for(tmp_path), ledger_holds, clock=time.clock())
    assert (found.known, found.complete, found.unsettled) == (1, [], [])
    assert asked == [["gone.txt", "known.txt"]], "one question for the whole batch"


def test_progress_counts_what_this_run_finished() -> None:
    baseline = {"uploaded": StateTally(10, 1000, None), "pending": StateTally(3, 300, 0.0)}
    now = {
        "uploaded": StateTally(11, 1100, None),
        "failed": StateTally(1, 100, None),
        "pending": StateTally(1, 100, 4.0),
    }
    progress = run_progress(baseline, now)
    assert (progress.done_files, progress.total_files) == (2, 3)
    assert (progress.done_bytes, progress.total_bytes) == (200, 300)
    assert progress.status == "waiting 4s to retry"
    uploading = {**now, "uploading": StateTally(1, 100, None)}
    assert run_progress(baseline, uploading).status == "uploading"


def test_verify_lists_under_the_literal_prefix_with_the_job_name() -> None:
    assert listing_prefix(KeyTemplate.parse("raw/${job}/${yyyy}/${relpath}"), "lab") == "raw/lab/"
    assert listing_prefix(KeyTemplate.parse("${relpath}"), "lab") == ""
    assert listing_prefix(KeyTemplate.parse("a/${hostname}/${job}/${name}"), "lab") == "a/"


def test_the_why_of_each_version_state() -> None:
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    version = {
        "state": "uploaded",
        "uploaded_at": when,
        "bucket": "b",
        "key": "k/a.txt",
        "attempts": 2,
        "last_error": "S3 SlowDown: x",
        "next_attempt_at": datetime.now(UTC) + timedelta(seconds=90),
    }
    assert version_why(version) == "uploaded at 2024-05-01 12:00:00 UTC as s3://b/k/a.txt"
    assert version_why({**version, "state": "failed"}) == "failed after 2 attempts: S3 SlowDown: x"
    pending = version_why({**version, "state": "pending"})
    assert re.fullmatch(r"pending: next attempt in (89|90)s after S3 SlowDown: x", pending)


def test_a_registration_call_is_described_with_its_status() -> None:
    row = {"state": "sent", "last_status": 201, "last_error": None}
    assert describe_call(row) == "sent (HTTP 201)"
    assert (
        describe_call({**row, "state": "failed", "last_status": 400, "last_error": "HTTP 400"})
        == "failed (HTTP 400): HTTP 400"
    )
    assert describe_call(
        {"state": "pending", "last_status": None, "last_error": "no response: NewConnectionError"}
    ) == ("not sent: no response: NewConnectionError; queued for retry")
    assert describe_call(
        {
            "state": "pending",
            "last_status": None,
            "last_error": "configuration error: header A names ${env:T}, and "
            "the environment variable T is not set",
        }
    ) == (
        "not sent: configuration error: header A names ${env:T}, and the environment "
        "variable T is not set; queued for retry"
    )


def test_the_countdown_says_when_the_last_file_can_be_complete(tmp_path: Path) -> None:
    """Issue 25: the countdown said "up to 21 s left" (the whole budget) and was done in 8."""
    write(tmp_path, "fresh.txt", b"new", NOW)
    time = FakeTime()
    lefts: list[float] = []
    collect(
        job_for(tmp_path),
        nothing_known,
        clock=time.clock(),
        on_wait=lambda files, left: lefts.append(left),
    )
    assert lefts[0] == 10.0 and lefts == sorted(lefts, reverse=True)
    assert settle_budget(10) == 21.0


def test_no_settle_takes_fresh_files_at_the_second_look(tmp_path: Path) -> None:
    """Issue 25: `upload --no-settle`: the user knows the directory is complete."""
    write(tmp_path, "fresh.txt", b"new", NOW)
    time = FakeTime()
    found = collect(job_for(tmp_path, settle="0s"), nothing_known, clock=time.clock())
    assert [c.relpath for c in found.complete] == ["fresh.txt"] and time.slept == 0
