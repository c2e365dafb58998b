"""What in jobs.d makes the daemon reload: changes, never reads."""

from __future__ import annotations

import queue

import pytest
from watchdog.events import (
    DirModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
)

from uploaderd.discovery.watcher import _JobsDirChanged

JOB = "/etc/uploaderd/jobs.d/lab.yaml"


@pytest.mark.parametrize(
    "event",
    [
        FileCreatedEvent(JOB),
        FileModifiedEvent(JOB),
        FileClosedEvent(JOB),
        FileDeletedEvent(JOB),
        FileMovedEvent(JOB + ".tmp", JOB),
        FileAttribEvent(JOB),  # chmod changes its trust
    ],
    ids=lambda e: type(e).__name__,
)
def test_changes_ask_for_a_reload(event: FileSystemEvent) -> None:
    events: queue.SimpleQueue[str] = queue.SimpleQueue()
    _JobsDirChanged(lambda: events.put("jobs-changed")).on_any_event(event)
    assert events.get_nowait() == "jobs-changed"


@pytest.mark.parametrize(
    "event",
    [
        FileOpenedEvent(JOB),
        FileClosedNoWriteEvent(JOB),
        DirModifiedEvent("/etc/uploaderd/jobs.d"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_reads_do_not(event: FileSystemEvent) -> None:
    events: queue.SimpleQueue[str] = queue.SimpleQueue()
    _JobsDirChanged(lambda: events.put("jobs-changed")).on_any_event(event)
    assert events.empty()
