"""``uploaderd run``: the daemon's life under systemd, as a readable sequence of steps.

Start: config, database, schema check, the components (``lifecycle``) in order, watches,
then ``READY=1``. Run: signals, reloads, ``WATCHDOG=1`` and a one-line ``STATUS=``. Stop:
``STOPPING=1``, the components in reverse order by one deadline (``shutdown_grace``: the
upload pool stops claiming, lets in-flight uploads finish, hands back the rest), exit 0.
A component that dies stops the daemon the same way, with exit status 1; a second SIGTERM
or SIGINT while stopping stops at once, handing back what the pool holds.
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

from uploaderd.config.settings import DaemonConfig, Job, load_jobs
from uploaderd.daemon.scheduler import Scheduler
from uploaderd.discovery.discovery import Discovery
from uploaderd.discovery.watcher import JobsDirWatcher, Watcher
from uploaderd.errors import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, DatabaseUnavailable
from uploaderd.ledger import schema
from uploaderd.ledger.store import Ledger, connection_budget
from uploaderd.observe import metrics
from uploaderd.observe.logs import ActivityLog, fields
from uploaderd.policy.lifecycle import Components, StopNow
from uploaderd.policy.retry import OUTAGE_FIRST_WAIT, next_outage_wait
from uploaderd.policy.units import plural
from uploaderd.upload.workers import build_pool

log = logging.getLogger(__name__)

_TICK = 1.0
_RELOAD_DEBOUNCE = 0.5

Death = tuple[str, str]  # (component, why)


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.host = socket.gethostname()
        self.notifier = sdnotify.SystemdNotifier()
        self.events: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.jobs: dict[str, Job] = {}
        self._db_state: dict[str, bool] = {}
        self._db_lock = threading.Lock()
        self._stopping = False
        self.stopped_now = False  # a second signal cut the shutdown short
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        self._watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        # Every thread's ledger shares these connections (database.connections).
        self.budget = connection_budget(
            config.dsn,
            config.connections,
            "uploaderd",
            pool_mode=config.pool_mode,
            on_new_server=self._new_server,
        )
        metrics.db_connections.set_function(lambda: self.budget.opened)
        self.discovery = Discovery(
            self._ledger("uploaderd discovery"),
            host=self.host,
            on_db=self._db_reporter("discovery"),
        )
        self.watcher = Watcher(
            self.discovery.submit, self._watch_error, on_change=lambda: self.events.put("watches")
        )
        self.pool = build_pool(
            config,
            lambda: self.jobs,
            host=self.host,
            name="uploaderd workers",
            on_db=self._db_reporter("workers"),
            activity=ActivityLog(),
            budget=self.budget,
        )
        self.scheduler = Scheduler(
            self._ledger("uploaderd scheduler"),
            lambda: self._ledger("uploaderd triggers"),
            self._ledger("uploaderd prune"),
            host=self.host,
            me=self.pool.worker,
            rescan=self._rescan,
            retention=config.retention,
            can_lead=lambda name: self.watcher.count(name) > 0,
            on_leading=self.discovery.set_leading,
        )
        # Started in this order, stopped in the reverse: sources of work stop before the
        # pool, which stops claiming and hands back what it holds.
        self.components = Components(
            [
                (
                    "metrics server",
                    metrics.MetricsServer(
                        config.metrics_listen, lambda: self.pool.transfers.snapshot().active
                    ),
                ),
                ("upload pool", self.pool),
                ("scheduler", self.scheduler),
                ("discovery", self.discovery),
                ("watchers", self.watcher),
                (
                    "jobs.d watcher",
                    JobsDirWatcher(config.jobs_dir, lambda: self.events.put("jobs-changed")),
                ),
            ],
            on_thread_death=lambda: self.events.put("died"),
        )

    # --- the sequence ----------------------------------------------------------------------

    def run(self) -> int:
        self._install_signal_handlers()
        self._notify("STATUS=starting")
        if not self._wait_for_database():
            return EXIT_OK
        if not self._schema_current():
            return EXIT_USAGE
        self._start_components()
        self._notify("READY=1", f"STATUS={self._status()}")
        log.info("uploaderd ready: %s", self._status())
        died = self._main_loop()
        self._shutdown(died)
        return EXIT_OK if died is None else EXIT_FAILURES

    def _wait_for_database(self) -> bool:
        """Block until PostgreSQL answers (READY waits on it); False if told to stop first."""
        backoff = OUTAGE_FIRST_WAIT
        probe = Ledger.of(self.config, "uploaderd startup")
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
            backoff = next_outage_wait(backoff)

    def _schema_current(self) -> bool:
        probe = Ledger.of(self.config, "uploaderd startup").connect()
        try:
            missing = schema.pending(probe)
        finally:
            probe.close()
        if missing:
            log.error(
                "the database schema is not up to date (missing %s): run `uploaderd migrate`",
                ", ".join(m.name for m in missing),
            )
            return False
        return True

    def _start_components(self) -> None:
        self.jobs = self._read_jobs(previous={})
        self.discovery.set_jobs(self.jobs)
        self.scheduler.apply(self.jobs)
        self.components.start()
        self.watcher.apply(self.jobs)
        self._report_watches()

    def _main_loop(self) -> Death | None:
        """Until told to stop (None) or until a component dies (which one, and why)."""
        reload_at: float | None = None
        next_beat = next_refresh = 0.0
        while True:
            timeout = _TICK if reload_at is None else max(0.0, reload_at - time.monotonic())
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                event = ""
            if event == "stop":
                return None
            died = self.components.dead()
            if died is not None:
                return died
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

    def _shutdown(self, died: Death | None) -> None:
        try:
            self._stopping = True
            if died is not None:
                log.critical(
                    "component %s died: %s; stopping (exit status %d)", *died, EXIT_FAILURES
                )
                self._notify("STOPPING=1", f"STATUS=component {died[0]} died: {died[1]}")
            else:
                self._notify("STOPPING=1", "STATUS=stopping")
            log.info(
                "stopping: finishing in-flight uploads for up to %.0fs (a second signal "
                "stops at once)",
                self.config.shutdown_grace,
            )
            self.components.stop(time.monotonic() + self.config.shutdown_grace)
        except StopNow:
            self.stopped_now = True
            log.warning("second signal: stopping now; handing back the uploads in flight")
            self.pool.stop(time.monotonic())
        self.budget.close()
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
        metrics.job_files_not_loaded.set(len(loaded.broken_files))
        for name, change in job_changes(previous, loaded.jobs, jobs):
            log.info("job %s: %s", name, change, extra=fields(name))
        return jobs

    # --- health ----------------------------------------------------------------------------

    def _supervise(self) -> None:
        # Only reached while every component is alive: the main loop stops at a death.
        self._notify("WATCHDOG=1", f"STATUS={self._status()}")

    def _status(self) -> str:
        roots = sum(self.watcher.count(name) for name in self.jobs)
        with self._db_lock:
            db = "ok" if all(self._db_state.values()) else "unreachable, retrying"
        return (
            f"{plural(len(self.jobs), 'job')}, {plural(roots, 'root')} watched, "
            f"{self.pool.busy()} uploading, database {db}"
        )

    def _ledger(self, application_name: str) -> Ledger:
        return Ledger.of(self.config, application_name, self.budget)

    def _db_reporter(self, component: str) -> Callable[[bool], None]:
        def report(up: bool) -> None:
            with self._db_lock:
                changed = self._db_state.get(component) != up
                self._db_state[component] = up
                metrics.db_up.set(1 if all(self._db_state.values()) else 0)
            if changed:
                self.events.put("status")

        return report

    def _new_server(self, before: str, now: str) -> None:
        # On whichever thread opened the connection: hand the news on, nothing more.
        log.warning(
            "PostgreSQL is another server than before (%s, was %s): a failover may have "
            "lost the last commits; every job is rescanned against the ledger",
            now,
            before,
        )
        metrics.db_server_changes.inc()
        self.discovery.server_changed()

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
            if signum == signal.SIGHUP:
                self.events.put("reload")
            elif not self._stopping:
                self.events.put("stop")
            elif not self.stopped_now:
                raise StopNow  # on the main thread, which is waiting in the shutdown

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
                changes.append(
                    (
                        name,
                        "disabled (enabled: false): the daemon leaves it alone; "
                        "`uploaderd upload` and `pipeline` still run it",
                    )
                )
        elif before is None:
            changes.append((name, f"added: {_describe(after)}"))
        elif before != after:
            changes.append((name, f"changed: {_describe(after)}"))
    return changes


def _describe(job: Job) -> str:
    roots = ", ".join(str(path) for path in job.source.paths)
    return f"{roots} to s3://{job.destination.bucket}"


def run(config: DaemonConfig) -> int:
    daemon = Daemon(config)
    status = daemon.run()
    if daemon.stopped_now:
        # At once means not waiting at exit for threads still in a request (a multipart
        # part, a trigger call): what they hold was handed back or expires with its lease.
        logging.shutdown()
        os._exit(status)
    return status
