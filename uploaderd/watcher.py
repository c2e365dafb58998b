"""Filesystem events for each job's roots, turned into "look at this path" requests.

One watchdog observer per job: inotify where it works, the polling observer where the root
is on a network filesystem (inotify sees no changes made by other hosts) or when the job
says ``polling: true``. Events only say where to look; the settle check and the ledger decide.
Watchdog drops events when the kernel queue overflows, which is why discovery also rescans.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from uploaderd.config import Job
from uploaderd.scanner import network_filesystem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PathEvent:
    job: str
    root: str
    path: str
    is_dir: bool  # a directory appeared: its whole subtree must be scanned


Sink = Callable[[PathEvent], None]


class _Forward(FileSystemEventHandler):
    """Hands every interesting event of one root to the sink, from watchdog's thread."""

    def __init__(self, job: str, root: str, sink: Sink) -> None:
        self.job, self.root, self.sink = job, root, sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent | FileCreatedEvent | FileModifiedEvent):
            self.sink(PathEvent(self.job, self.root, os.fsdecode(event.src_path), False))
        elif isinstance(event, FileMovedEvent):
            self.sink(PathEvent(self.job, self.root, os.fsdecode(event.dest_path), False))
        elif isinstance(event, DirCreatedEvent):
            self.sink(PathEvent(self.job, self.root, os.fsdecode(event.src_path), True))
        elif isinstance(event, DirMovedEvent):
            self.sink(PathEvent(self.job, self.root, os.fsdecode(event.dest_path), True))


class JobWatch:
    """The observer of one job; knows which roots it could not watch."""

    def __init__(self, job: Job, sink: Sink, on_error: Callable[[str, str], None]) -> None:
        self.job = job
        self.sink = sink
        self.on_error = on_error
        self.observer: BaseObserver | None = None
        self.watched: set[str] = set()
        self.polling = self._wants_polling()

    def _wants_polling(self) -> bool:
        if self.job.source.polling is not None:
            return self.job.source.polling
        remote = [p for p in self.job.source.paths if network_filesystem(p)]
        for path in remote:
            log.info("job %s: %s is on %s; using the polling observer",
                     self.job.name, path, network_filesystem(path))
        return bool(remote)

    def start(self) -> None:
        self.observer = PollingObserver(timeout=1.0) if self.polling else Observer()
        self.observer.daemon = True
        self.observer.start()
        self.ensure_watches()

    def ensure_watches(self) -> None:
        """Watch every root not yet watched (a missing root may appear later; rescans retry)."""
        assert self.observer is not None
        for path in self.job.source.paths:
            root = str(path)
            if root in self.watched:
                continue
            if not Path(root).is_dir():
                self.on_error(self.job.name, f"root {root} is not a directory")
                continue
            try:
                self.observer.schedule(
                    _Forward(self.job.name, root, self.sink), root,
                    recursive=self.job.source.recursive,
                )
            except OSError as exc:
                reason = exc.strerror or str(exc)
                if exc.errno in (errno.ENOSPC, errno.EMFILE):
                    reason += " (raise fs.inotify.max_user_watches; rescans still find files)"
                self.on_error(self.job.name, f"cannot watch {root}: {reason}")
                continue
            self.watched.add(root)

    def alive(self) -> bool:
        return self.observer is not None and self.observer.is_alive()

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)


class Watcher:
    """All jobs' observers; swapped job by job on reload."""

    def __init__(self, sink: Sink, on_error: Callable[[str, str], None]) -> None:
        self.sink = sink
        self.on_error = on_error
        self.watches: dict[str, JobWatch] = {}

    def apply(self, jobs: dict[str, Job]) -> None:
        """Start, restart or stop observers so that exactly ``jobs`` are watched."""
        for name in list(self.watches):
            if name not in jobs or jobs[name].source != self.watches[name].job.source:
                self.watches.pop(name).stop()
        for name, job in jobs.items():
            if name not in self.watches:
                watch = JobWatch(job, self.sink, self.on_error)
                watch.start()
                self.watches[name] = watch
            else:
                self.watches[name].job = job

    def ensure_watches(self, job: str) -> None:
        if job in self.watches:
            self.watches[job].ensure_watches()

    def count(self, job: str) -> int:
        return len(self.watches[job].watched) if job in self.watches else 0

    def alive(self) -> bool:
        return all(w.alive() for w in self.watches.values())

    def stop(self) -> None:
        for watch in self.watches.values():
            watch.stop()
        self.watches.clear()
