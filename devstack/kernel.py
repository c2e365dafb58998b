"""Kernel limits lowered for a while, so that a test or the chaos soak meets what a busy
site meets at the defaults: here, an inotify queue that overflows."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

INOTIFY_QUEUE = Path("/proc/sys/fs/inotify/max_queued_events")


@contextlib.contextmanager
def low_inotify_queue(events: int) -> Iterator[bool]:
    """Inotify instances made inside hold ``events`` events at most (root only; the old
    limit is put back after). Yields False where the kernel does not let us."""
    try:
        before = INOTIFY_QUEUE.read_text()
        INOTIFY_QUEUE.write_text(str(events))
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        INOTIFY_QUEUE.write_text(before)
