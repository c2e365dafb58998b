"""Filesystem events for each job's roots, turned into "look at this path" requests.

One watchdog observer per job: inotify where it works, the polling observer where the root
is on a network filesystem (inotify sees no changes made by other hosts) or when the job
says ``polling: true``. Events only say where to look; the settle check and the ledger decide.

Watches get lost: a root deleted and re-created, or a mount point remounted, leaves the
watch on the old directory. ``refresh()`` (every second, from the main loop) notices a root
that is gone, has another identity (device, inode) or whose emitter stopped, drops that
watch and watches the root again as soon as it is a directory, then has it scanned. When the
kernel's inotify queue overflows, events were dropped: the job's observer is replaced by a new
one, with a kernel queue of its own, and every root of the job is scanned. Not watchdog's own
repair, which removes and re-adds every watch on the same queue: each removal queues an
event, so a tree of more directories than the queue holds overflowed it again, for ever.

Two needs have no public API in watchdog: hearing of IN_UNMOUNT, which watchdog drops, and
handing a file's event over without watchdog's queues (see ``_ReportingEmitter``). For them
this module reaches into watchdog's inotify internals; setup.cfg caps watchdog at the minor
release the suite ran against, and tests/unit/test_unit_watchdog_fence.py names every
internal used and fails, naming it, when one changes.

``JobsDirWatcher`` watches ``jobs.d`` itself: a change there (never a mere read) asks the
daemon for a reload. This is the only module that imports watchdog.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.inotify import InotifyEmitter, InotifyObserver
from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent
from watchdog.observers.polling import PollingObserver

from uploaderd.config.settings import Job
from uploaderd.discovery.scanner import network_filesystem
from uploaderd.policy.lifecycle import join

log = logging.getLogger(__name__)

_SWAP_SECONDS = 5.0  # a reload waits this long for a replaced observer to end


@dataclass(frozen=True)
class PathEvent:
    job: str
    root: str
    path: str
    is_dir: bool  # a directory appeared: its whole subtree must be scanned


Sink = Callable[[PathEvent], None]
# (job, message): a watch problem, logged and counted in uploaderd_watch_errors_total.
OnError = Callable[[str, str], None]


class UnmountEvent(FileSystemEvent):
    """A filesystem under this watch was unmounted (IN_UNMOUNT): its watches are gone."""

    event_type = "unmount"


# Where a named file's content may have changed: the only file events the daemon acts on.
_FILE_CHANGED = (
    InotifyConstants.IN_CREATE
    | InotifyConstants.IN_MODIFY
    | InotifyConstants.IN_CLOSE_WRITE
    | InotifyConstants.IN_MOVED_TO
)

# (root, path) of a file that may have changed, from watchdog's inotify thread.
FileChanged = Callable[[str, str], None]


class _ReportingEmitter(InotifyEmitter):
    """An inotify emitter that tells the handlers of unmounts, and hands file events
    straight over.

    Neither has a public API, so this replaces ``on_event``, the reader's callback, of the
    emitter's (private) watch group ``self._inotify``. watchdog drops IN_UNMOUNT; the wrapper
    turns it into an ``UnmountEvent``, so that the unmounted root is watched again. An
    overflow needs no wrapper: watchdog queues an ``EventsLostEvent`` behind the events read
    so far, which ``_Forward`` turns into a new observer for the job.

    An event on a file (not a directory) needs none of watchdog's bookkeeping: no watch
    to add or move. Yet each would pass its move grouper (a linear search of its queue per
    IN_MOVED_TO, quadratic when files are renamed in by the thousand), this emitter's
    thread and the observer's. ``file_changed`` gets it at once instead, from the thread
    that read it. Directory events, and files found inside a directory that appeared, still
    take watchdog's way to ``_Forward``.
    """

    def __init__(self, *args: Any, file_changed: FileChanged, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.file_changed = file_changed

    def on_thread_start(self) -> None:
        super().on_thread_start()
        group = self._inotify
        if group is None:
            return
        handle = group.on_event
        root = self.watch.path

        def on_event(event: InotifyEvent) -> None:
            if event.name and not event.is_directory:
                # A file's event. Those that only say where a file left are of no use.
                if event.mask & _FILE_CHANGED and group.is_active:
                    path = group._build_event_source_path(event)
                    if path is not None:
                        self.file_changed(root, os.fsdecode(path))
                return
            handle(event)
            if event.mask & InotifyConstants.IN_UNMOUNT:
                self.queue_event(UnmountEvent(root))

        group.on_event = on_event  # type: ignore[method-assign]


class _InotifyObserver(InotifyObserver):
    """Makes its emitters ``_ReportingEmitter``s: watchdog has no public way to choose the
    emitter, so this sets its private ``_emitter_class``."""

    def __init__(self, file_changed: FileChanged) -> None:
        super().__init__()
        # A factory in place of the class: watchdog only ever calls it.
        self._emitter_class = functools.partial(  # type: ignore[assignment]
            _ReportingEmitter, file_changed=file_changed
        )


class _Forward(FileSystemEventHandler):
    """Hands the rest of one root's interesting events to the sink, from watchdog's thread:
    directories, the files of a directory that appeared, and every event of the polling
    observer."""

    def __init__(self, watch: JobWatch, root: str, observer: BaseObserver) -> None:
        self.watch, self.job, self.root, self.sink = watch, watch.job.name, root, watch.sink
        self.observer = observer

    # Dispatched by event_type (after on_any_event, which ignores them).
    def on_events_lost(self, _event: EventsLostEvent) -> None:
        self.watch.overflowed(self.root, self.observer)

    def on_unmount(self, _event: UnmountEvent) -> None:
        self.watch.root_changed(self.root)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent | FileCreatedEvent | FileModifiedEvent):
            self.sink(PathEvent(self.job, self.root, os.fsdecode(event.src_path), False))
        elif isinstance(event, FileMovedEvent):
            self.sink(PathEvent(self.job, self.root, os.fsdecode(event.dest_path), False))
        elif isinstance(event, DirCreatedEvent):
            self.sink(PathEvent(self.job, self.root, os.fsdecode(event.src_path), True))
        elif isinstance(event, DirMovedEvent):
            self.sink(PathEvent(self.job, self.root, os.fsdecode(event.dest_path), True))
        elif isinstance(event, DirDeletedEvent) and os.fsdecode(event.src_path) == self.root:
            self.watch.root_changed(self.root)


# The events _Forward acts on; watchdog drops the rest. Naming them also keeps the kernel
# from queueing IN_OPEN and IN_CLOSE_NOWRITE, which every read of a file (the daemon's own
# hashing and upload among them) would otherwise add to each file's events. The kernel
# reports overflow and unmount whatever the mask; listing them lets their events through.
_WANTED: list[type[FileSystemEvent]] = [
    EventsLostEvent,
    UnmountEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]


@dataclass(frozen=True)
class _Watched:
    watch: ObservedWatch
    identity: tuple[int, int]  # (device, inode) of the root when its watch was made


def _identity(root: str) -> tuple[int, int] | None:
    """The root's (device, inode), or None when it is not a directory now."""
    try:
        info = os.stat(root)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


class JobWatch:
    """The observer of one job: which roots it watches, and which it could not."""

    def __init__(
        self, job: Job, sink: Sink, on_error: OnError, on_change: Callable[[], None] = lambda: None
    ) -> None:
        self.job = job
        self.sink = sink
        self.on_error = on_error
        self.on_change = on_change  # from watchdog's thread: a root may have gone
        self.observer: BaseObserver | None = None
        self.watched: dict[str, _Watched] = {}
        self.unwatched: set[str] = set()  # roots reported as not watched, until they are
        # Roots the kernel refused (out of watches): retried at the rescan, not every second.
        self.refused: set[str] = set()
        # Roots whose watch watchdog's thread saw go (unmounted): dropped at the next refresh.
        self.stale: set[str] = set()
        # The observer whose kernel queue overflowed: replaced at the next refresh.
        self.overflowed_observer: BaseObserver | None = None
        self.polling = self._wants_polling()
        self._started = False

    def _wants_polling(self) -> bool:
        if self.job.source.polling is not None:
            return self.job.source.polling
        remote = [p for p in self.job.source.paths if network_filesystem(p)]
        for path in remote:
            log.info(
                "job %s: %s is on %s; using the polling observer",
                self.job.name,
                path,
                network_filesystem(path),
            )
        return bool(remote)

    def start(self) -> None:
        self.observer = (
            PollingObserver(timeout=1.0) if self.polling else _InotifyObserver(self._file_changed)
        )
        self.observer.daemon = True
        self.observer.start()
        self.ensure_watches()
        self._started = True

    def _file_changed(self, root: str, path: str) -> None:
        self.sink(PathEvent(self.job.name, root, path, False))

    def refresh(self) -> bool:
        """Drop lost watches and watch every root that can be watched; True if any changed."""
        if self.overflowed_observer is not None and self.overflowed_observer is self.observer:
            self._renew()
            return True
        lost = [root for root, watched in self.watched.items() if self._lost(root, watched)]
        for root in lost:
            self._unwatch(root)
            self.on_error(
                self.job.name,
                f"lost the watch on {root} (deleted, replaced or "
                "remounted); watching it again as soon as it is a directory",
            )
        return bool(self.ensure_watches()) or bool(lost)

    def retry_refused(self) -> bool:
        """At the rescan: try again the roots the kernel refused; True if any is watched now."""
        self.refused.clear()
        return bool(self.ensure_watches())

    def ensure_watches(self) -> list[str]:
        """Watch every root not yet watched; the roots newly watched.

        A root watched again (or for the first time after start) is scanned, since files may
        have arrived before its watch existed. A root that cannot be watched is reported
        once, until it is watched.
        """
        assert self.observer is not None
        added = []
        for path in self.job.source.paths:
            root = str(path)
            if root in self.watched or root in self.refused:
                continue
            problem = self._watch(root)
            if problem is None:
                added.append(root)
                if root in self.unwatched or self._started:
                    log.info("job %s: watching %s again; scanning it", self.job.name, root)
                    self.sink(PathEvent(self.job.name, root, root, True))
                self.unwatched.discard(root)
            elif root not in self.unwatched:
                self.unwatched.add(root)
                self.on_error(self.job.name, problem)
        return added

    def _watch(self, root: str) -> str | None:
        """Schedule the watch of one root; None, or why it cannot be watched."""
        assert self.observer is not None
        identity = _identity(root)
        if identity is None:
            return f"root {root} is not a directory"
        try:
            watch = self.observer.schedule(
                _Forward(self, root, self.observer),
                root,
                recursive=self.job.source.recursive,
                event_filter=_WANTED,
            )
        except OSError as exc:
            self.refused.add(root)
            reason = exc.strerror or str(exc)
            if exc.errno in (errno.ENOSPC, errno.EMFILE):
                reason += " (raise fs.inotify.max_user_watches; rescans still find files)"
            return f"cannot watch {root}: {reason}"
        self.watched[root] = _Watched(watch, identity)
        return None

    def _lost(self, root: str, watched: _Watched) -> bool:
        if root in self.stale or _identity(root) != watched.identity:
            return True
        assert self.observer is not None
        return not any(e.watch == watched.watch and e.is_alive() for e in self.observer.emitters)

    def _unwatch(self, root: str) -> None:
        assert self.observer is not None
        watched = self.watched.pop(root)
        self.stale.discard(root)
        with contextlib.suppress(KeyError, OSError):  # its emitter stopped with the directory
            self.observer.unschedule(watched.watch)
        self.unwatched.add(root)

    def root_changed(self, root: str) -> None:
        """A root was deleted, moved away or unmounted (watchdog's thread): refresh soon."""
        self.stale.add(root)
        self.on_change()

    def overflowed(self, root: str, observer: BaseObserver) -> None:
        """Events were lost (watchdog's thread): have ``refresh`` replace the observer, and so
        scan the job's roots, now instead of at the rescan. Reported once per observer: its
        queue may overflow again before it is replaced."""
        if observer is not self.observer or self.overflowed_observer is observer:
            return
        self.overflowed_observer = observer
        self.on_error(
            self.job.name,
            f"the inotify queue overflowed and events under {root} were lost "
            "(raise fs.inotify.max_queued_events); watching the job anew and scanning it",
        )
        self.on_change()

    def _renew(self) -> None:
        """A new observer, with an empty kernel queue of its own, in place of the old one;
        each root watched again is scanned (``ensure_watches``). Adding watches queues no
        event, so this ends an overflow that removing and re-adding them would repeat."""
        assert self.observer is not None
        old = self.observer
        old.stop()
        join(old, time.monotonic() + _SWAP_SECONDS)
        self.watched.clear()
        self.stale.clear()
        self.overflowed_observer = None
        self.start()

    def alive(self) -> bool:
        return self.observer is not None and self.observer.is_alive()

    def stop(self, deadline: float) -> None:
        if self.observer is not None:
            self.observer.stop()
            join(self.observer, deadline)


class Watcher:
    """All jobs' observers, one component; swapped job by job on reload."""

    def __init__(
        self, sink: Sink, on_error: OnError, on_change: Callable[[], None] = lambda: None
    ) -> None:
        self.sink = sink
        self.on_error = on_error
        self.on_change = on_change
        self.watches: dict[str, JobWatch] = {}
        # watchdog watches a new directory's subdirectories as it walks it, and again when
        # their IN_CREATE arrives: a `mkdir -p` racing the walk adds the same callback twice,
        # harmlessly overwritten, with a RuntimeWarning about watchdog's internals each time.
        warnings.filterwarnings(
            "ignore",
            message=r"Callback with id '.*' already exists for watch",
            category=RuntimeWarning,
        )

    def apply(self, jobs: dict[str, Job]) -> None:
        """Start, restart or stop observers so that exactly ``jobs`` are watched."""
        for name in list(self.watches):
            if name not in jobs or jobs[name].source != self.watches[name].job.source:
                self.watches.pop(name).stop(time.monotonic() + _SWAP_SECONDS)
        for name, job in jobs.items():
            if name not in self.watches:
                watch = JobWatch(job, self.sink, self.on_error, self.on_change)
                watch.start()
                self.watches[name] = watch
            else:
                self.watches[name].job = job

    def refresh(self) -> list[str]:
        """Every job's ``refresh()``; the jobs whose watches changed."""
        return [name for name, watch in self.watches.items() if watch.refresh()]

    def retry_refused(self, job: str) -> bool:
        return job in self.watches and self.watches[job].retry_refused()

    def count(self, job: str) -> int:
        return len(self.watches[job].watched) if job in self.watches else 0

    def start(self) -> None:
        """Nothing to start: ``apply()`` starts an observer for each job."""

    def alive(self) -> bool:
        return all(w.alive() for w in self.watches.values())

    def stop(self, deadline: float) -> None:
        for watch in self.watches.values():
            watch.stop(deadline)
        self.watches.clear()


class _JobsDirChanged(FileSystemEventHandler):
    """A change in jobs.d asks for a reload; merely reading a job file must not, or every
    reload (which reads them all) and every `uploaderd status` would cause another."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self.changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not event.is_directory and not isinstance(
            event, FileOpenedEvent | FileClosedNoWriteEvent
        ):
            self.changed()


class JobsDirWatcher:
    """The observer of ``jobs.d`` (a component): a change there asks for a reload."""

    def __init__(self, jobs_dir: Path, changed: Callable[[], None]) -> None:
        self.jobs_dir = jobs_dir
        self.changed = changed
        self.observer: BaseObserver | None = None

    def start(self) -> None:
        if not self.jobs_dir.is_dir():
            log.warning("jobs directory %s does not exist; SIGHUP reloads", self.jobs_dir)
            return
        self.observer = Observer()
        self.observer.daemon = True
        self.observer.schedule(_JobsDirChanged(self.changed), str(self.jobs_dir))
        self.observer.start()

    def alive(self) -> bool:
        return self.observer is None or self.observer.is_alive()

    def stop(self, deadline: float) -> None:
        if self.observer is not None:
            self.observer.stop()
            join(self.observer, deadline)
