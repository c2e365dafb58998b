"""``uploaderd run``: the daemon's life under systemd, as a readable sequence of steps.

Start: config, database, schema check, watches, then ``READY=1``. Run: signals, reloads,
a supervisor that sends ``WATCHDOG=1`` only while the observers, workers, discovery and
scheduler are alive, and a one-line ``STATUS=``. Stop: ``STOPPING=1``, stop claiming, finish
or hand back in-flight uploads within ``shutdown_grace``, exit 0.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType

import sdnotify
from watchdog.events import (
    FileClosedNoWriteEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from uploaderd import metrics, schema
from uploaderd.config import DaemonConfig, Job, load_jobs
from uploaderd.discovery import Discovery
from uploaderd.errors import EXIT_OK, EXIT_USAGE, DatabaseUnavailable
from uploaderd.ledger import Ledger
from uploaderd.logs import ActivityLog, fields
from uploaderd.scheduler import Scheduler
from uploaderd.units import plural
from uploaderd.watcher import Watcher
from uploaderd.workers import build_pool

log = logging.getLogger(__name__)

_TICK = 1.0
_RELOAD_DEBOUNCE = 0.5


class _JobsDirChanged(FileSystemEventHandler):
    """A change in jobs.d asks for a reload; merely reading a job file must not, or every
    reload (which reads them all) and every `uploaderd status` would cause another."""

    def __init__(self, events: queue.SimpleQueue[str]) -> None:
        self.events = events

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not event.is_directory and not isinstance(
            event, FileOpenedEvent | FileClosedNoWriteEvent
        ):
            self.events.put("jobs-changed")


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.host = socket.gethostname()
        self.notifier = sdnotify.SystemdNotifier()
        self.events: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.jobs: dict[str, Job] = {}
        self._db_state: dict[str, bool] = {}
        self._db_lock = threading.Lock()
        self._jobs_observer: BaseObserver | None = None
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        self._watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        self.discovery = Discovery(Ledger(config.dsn, application_name="uploaderd discovery"),
                                   host=self.host, on_db=self._db_reporter("discovery"))
        self.watcher = Watcher(self.discovery.submit, self._watch_error,
                               on_change=lambda: self.events.put("watches"))
        self.pool = build_pool(config, lambda: self.jobs, host=self.host,
                               name="uploaderd workers", on_db=self._db_reporter("workers"),
                               activity=ActivityLog())
        self.scheduler = Scheduler(
            Ledger(config.dsn, application_name="uploaderd scheduler"),
            lambda: Ledger(config.dsn, application_name="uploaderd triggers"),
            Ledger(config.dsn, application_name="uploaderd prune"),
            host=self.host, me=self.pool.worker, rescan=self._rescan,
            retention=config.retention,
        )

    # --- the sequence ----------------------------------------------------------------------

    def run(self) -> int:
        self._install_signal_handlers()
        self._notify("STATUS=starting")
        if not self._wait_for_database():
            return EXIT_OK
        if not self._schema_current():
            return EXIT_USAGE
        metrics.serve(self.config.metrics_listen)
        self._start_components()
        self._notify("READY=1", f"STATUS={self._status()}")
        log.info("uploaderd ready: %s", self._status())
        self._main_loop()
        self._shutdown()
        return EXIT_OK

    def _wait_for_database(self) -> bool:
        """Block until PostgreSQL answers (READY waits on it); False if told to stop first."""
        backoff = 0.5
        probe = Ledger(self.config.dsn, application_name="uploaderd startup")
        while True:
            try:
                probe.connect().ping()
                probe.close()
                metrics.db_up.set(1)
                return True
            except DatabaseUnavailable as exc:
                metrics.db_up.set(0)
                self._notify(f"STATUS=waiting for PostgreSQL: {exc}")
                log.error("%s; retrying in %.1fs", exc, backoff)
            try:
                event = self.events.get(timeout=backoff)
            except queue.Empty:
                event = ""
            if event == "stop":
                return False
            backoff = min(backoff * 2, 30.0)

    def _schema_current(self) -> bool:
        probe = Ledger(self.config.dsn, application_name="uploaderd startup").connect()
        try:
            missing = schema.pending(probe)
        finally:
            probe.close()
        if missing:
            log.error("the database schema is not up to date (missing %s): run `uploaderd "
                      "migrate`", ", ".join(m.name for m in missing))
            return False
        return True

    def _start_components(self) -> None:
        self.jobs = self._read_jobs(previous={})
        self.discovery.start()
        self.discovery.set_jobs(self.jobs)
        self.watcher.apply(self.jobs)
        self._report_watches()
        self.pool.start()
        self.scheduler.apply(self.jobs)
        self.scheduler.start()
        self._watch_jobs_dir()

    def _main_loop(self) -> None:
        reload_at: float | None = None
        next_beat = next_refresh = 0.0
        while True:
            timeout = _TICK if reload_at is None else max(0.0, reload_at - time.monotonic())
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                event = ""
            if event == "stop":
                return
            if event == "reload":
                self._reload()
                reload_at = None
            elif event == "status":
                self._notify(f"STATUS={self._status()}")
            elif event.startswith("rescan:"):
                job = event.removeprefix("rescan:")
                if self.watcher.retry_refused(job):
                    self._report_watches()
                self.discovery.request_scan(job)
            elif event == "jobs-changed" and reload_at is None:
                reload_at = time.monotonic() + _RELOAD_DEBOUNCE  # an editor writes in bursts
            if reload_at is not None and time.monotonic() >= reload_at:
                self._reload()
                reload_at = None
            if event == "watches" or time.monotonic() >= next_refresh:
                if self.watcher.refresh():  # lost watches back as soon as their root is
                    self._report_watches()
                next_refresh = time.monotonic() + _TICK
            if time.monotonic() >= next_beat:
                self._supervise()
                next_beat = time.monotonic() + min(_TICK * 5, self._watchdog_interval or 5.0)

    def _shutdown(self) -> None:
        self._notify("STOPPING=1", "STATUS=stopping")
        log.info("stopping: finishing in-flight uploads for up to %.0fs",
                 self.config.shutdown_grace)
        if self._jobs_observer is not None:
            self._jobs_observer.stop()
        self.scheduler.stop()
        self.watcher.stop()
        self.discovery.stop()
        self.pool.stop(self.config.shutdown_grace)
        log.info("stopped")

    # --- reload ----------------------------------------------------------------------------

    def _reload(self) -> None:
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}")
        log.info("reloading job files from %s", self.config.jobs_dir)
        self.jobs = self._read_jobs(previous=self.jobs)
        self.discovery.set_jobs(self.jobs)
        self.watcher.apply(self.jobs)
        self._report_watches()
        self.scheduler.apply(self.jobs)
        self._notify("READY=1", f"STATUS={self._status()}")

    def _read_jobs(self, previous: Mapping[str, Job]) -> dict[str, Job]:
        """The valid jobs; a broken file keeps its previous version running."""
        loaded = load_jobs(self.config.jobs_dir, self.config.s3, self.config.job_policy)
        for problem in loaded.problems:
            log.error("job file error: %s", problem)
        jobs = {name: job for name, job in loaded.jobs.items() if job.enabled}
        for name, job in previous.items():
            if job.file in loaded.broken_files and name not in jobs:
                log.warning("job %s: keeping the previous version of %s", name, job.file)
                jobs[name] = job
        metrics.config_reload_success.set(0 if loaded.problems else 1)
        for name, change in job_changes(previous, loaded.jobs, jobs):
            log.info("job %s: %s", name, change, extra=fields(name))
        return jobs

    def _watch_jobs_dir(self) -> None:
        if not self.config.jobs_dir.is_dir():
            log.warning("jobs directory %s does not exist; SIGHUP reloads", self.config.jobs_dir)
            return
        observer = Observer()
        observer.daemon = True
        observer.schedule(_JobsDirChanged(self.events), str(self.config.jobs_dir))
        observer.start()
        self._jobs_observer = observer

    # --- health ----------------------------------------------------------------------------

    def _supervise(self) -> None:
        broken = [name for name, alive in (
            ("observers", self.watcher.alive()),
            ("discovery", self.discovery.alive()),
            ("workers", self.pool.alive()),
            ("scheduler", self.scheduler.alive()),
        ) if not alive]
        if broken:
            # No WATCHDOG=1: systemd restarts us, which is the cure for a dead thread.
            log.error("unhealthy: %s not running", ", ".join(broken))
            self._notify(f"STATUS=unhealthy: {', '.join(broken)} not running")
            return
        self._notify("WATCHDOG=1", f"STATUS={self._status()}")

    def _status(self) -> str:
        roots = sum(self.watcher.count(name) for name in self.jobs)
        with self._db_lock:
            db = "ok" if all(self._db_state.values()) else "unreachable, retrying"
        return (f"{plural(len(self.jobs), 'job')}, {plural(roots, 'root')} watched, "
                f"{self.pool.busy()} uploading, database {db}")

    def _db_reporter(self, component: str) -> Callable[[bool], None]:
        def report(up: bool) -> None:
            with self._db_lock:
                changed = self._db_state.get(component) != up
                self._db_state[component] = up
                metrics.db_up.set(1 if all(self._db_state.values()) else 0)
            if changed:
                self.events.put("status")
        return report

    def _watch_error(self, job: str, message: str) -> None:
        log.error("job %s: %s", job, message)
        metrics.watch_errors.labels(job).inc()

    def _report_watches(self) -> None:
        metrics.declare_jobs(self.jobs)
        for name in self.jobs:
            metrics.watches.labels(name).set(self.watcher.count(name))

    def _rescan(self, job: str) -> None:
        # Called on the scheduler's thread; the watcher belongs to the main loop.
        self.events.put(f"rescan:{job}")

    # --- signals and systemd ---------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            self.events.put("reload" if signum == signal.SIGHUP else "stop")

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, on_signal)

    def _notify(self, *lines: str) -> None:
        self.notifier.notify("\n".join(lines))


def job_changes(
    previous: Mapping[str, Job], configured: Mapping[str, Job], running: Mapping[str, Job]
) -> list[tuple[str, str]]:
    """(job, what happened to it) for a load of ``jobs.d``: added, changed, disabled,
    enabled again, removed. A job kept at its previous version says nothing."""
    changes = []
    for name in sorted(set(previous) | set(configured)):
        before, after = previous.get(name), configured.get(name)
        if after is None:
            if name not in running:
                changes.append((name, "removed; its queued files wait until it returns"))
        elif not after.enabled:
            if before is not None or not previous:
                changes.append((name, "disabled (enabled: false): the daemon leaves it alone; "
                                      "`uploaderd upload` and `pipeline` still run it"))
        elif before is None:
            changes.append((name, f"added: {_describe(after)}"))
        elif before != after:
            changes.append((name, f"changed: {_describe(after)}"))
    return changes


def _describe(job: Job) -> str:
    roots = ", ".join(str(path) for path in job.source.paths)
    return f"{roots} to s3://{job.destination.bucket}"


def run(config: DaemonConfig) -> int:
    return Daemon(config).run()
