"""The scheduler's task table: one rescan per job, kept across reloads that do not change it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import free_port
from uploaderd.config.settings import Job, Retention, S3Settings, parse_job_text
from uploaderd.daemon.scheduler import Scheduler
from uploaderd.ledger.store import Ledger


def job_with_rescan(root: Path, rescan: str, name: str = "lab") -> Job:
    return parse_job_text(
        f"source: {{paths: [{root}], rescan: {rescan}}}\ndestination: {{bucket: lab-raw}}\n",
        name=name,
        defaults=S3Settings(),
    )


@pytest.fixture
def scheduler() -> Iterator[Scheduler]:
    # Nothing listens on that port: the database tasks fail fast and are logged.
    ledger = Ledger(f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    sched = Scheduler(
        ledger,
        lambda: ledger,
        ledger,
        host="h",
        me="h:1:x",
        rescan=lambda name: None,
        retention=Retention(),
    )
    sched.start()
    yield sched
    sched.stop(time.monotonic() + 5)


def test_reload_keeps_an_unchanged_rescan_timer(scheduler: Scheduler, tmp_path: Path) -> None:
    scheduler.apply({"lab": job_with_rescan(tmp_path, "15m")})
    first = scheduler.scheduler.get_job("rescan:lab").next_run_time
    scheduler.apply({"lab": job_with_rescan(tmp_path, "15m")})
    assert scheduler.scheduler.get_job("rescan:lab").next_run_time == first
    scheduler.apply({"lab": job_with_rescan(tmp_path, "1h")})
    assert scheduler.scheduler.get_job("rescan:lab").trigger.interval_length == 3600


def test_removed_jobs_lose_their_rescan(scheduler: Scheduler, tmp_path: Path) -> None:
    scheduler.apply(
        {"a": job_with_rescan(tmp_path, "1m", "a"), "b": job_with_rescan(tmp_path, "1m", "b")}
    )
    scheduler.apply({"b": job_with_rescan(tmp_path, "1m", "b")})
    rescans = sorted(t.id for t in scheduler.scheduler.get_jobs() if t.id.startswith("rescan:"))
    assert rescans == ["rescan:b"]
