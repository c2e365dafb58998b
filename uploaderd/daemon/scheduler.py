"""Periodic work inside ``uploaderd run``, on an APScheduler 3 background scheduler.

The in-memory job store is rebuilt from the job files on start and reload. Sweeps that must
run once per cluster (retries, session completion, trigger dispatch) take a lease in the
ledger, so several daemons on one database never double them; per-host work (lease
reaping of this host's dead workers, after_upload on local files, rescans) needs none. The
discovery of shared jobs is leased too (``leadership``).
Trigger calls wait on remote endpoints, so they run on a small pool of their own threads
(each with its own connection): one slow endpoint holds one thread, never the other jobs'
registrations. A prune can take minutes and has its own thread; everything else shares one.
``coalesce`` and ``max_instances=1`` keep a slow run from piling up behind itself. A task
that fails (the database away, read-only, or anything unexpected) is logged and the next
run tries again: no task's failure stops the scheduler.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from uploaderd.config.settings import Job, Retention
from uploaderd.daemon.disposal import Disposer
from uploaderd.daemon.leadership import RENEW_SECONDS, Leadership
from uploaderd.daemon.triggers import TriggerDispatcher
from uploaderd.errors import DatabaseUnavailable, StorageUnavailable
from uploaderd.ledger.retention import Pruner, PruneStopped
from uploaderd.ledger.store import Ledger, lease_holder
from uploaderd.observe import metrics
from uploaderd.policy.health import Breaker
from uploaderd.policy.lifecycle import call_by
from uploaderd.upload.multipart import abort
from uploaderd.upload.storage import Storage, s3_errors
from uploaderd.upload.workers import dead_workers

log = logging.getLogger(__name__)

LEASE_REAP_SECONDS = 30.0
GAUGE_SECONDS = 15.0
RETRY_SWEEP_SECONDS = 10.0
SESSION_SWEEP_SECONDS = 5.0
DISPOSAL_SECONDS = 10.0
ABANDONED_SECONDS = 10.0
PRUNE_SECONDS = 3600.0
TRIGGER_THREADS = 4  # jobs whose registrations are sent at the same time
_PER_JOB = ("rescan:", "sessions:", "triggers:", "dispose:")


class Scheduler:
    def __init__(
        self,
        ledger: Ledger,
        trigger_ledger: Callable[[], Ledger],
        prune_ledger: Ledger,
        *,
        host: str,
        me: str,
        rescan: Callable[[str], None],
        retention: Retention,
        can_lead: Callable[[str], bool] = lambda job: True,
        on_leading: Callable[[str, bool], None] = lambda job, leading: None,
    ) -> None:
        self.ledger = ledger
        self.pruner = Pruner(prune_ledger)
        self.retention = retention
        self.host = host
        self.me = me
        self.rescan = rescan
        self._new_trigger_ledger = trigger_ledger
        self._trigger_breakers: dict[str, Breaker] = {}
        self._trigger_local = threading.local()  # one dispatcher (and connection) per thread
        self._trigger_dispatchers: list[TriggerDispatcher] = []
        self._trigger_lock = threading.Lock()
        self.disposer = Disposer(ledger, host=host)
        self.leadership = Leadership(ledger, can_lead=can_lead, on_change=on_leading)
        self.storage = Storage(pool_connections=2)
        self.jobs: Mapping[str, Job] = {}
        self.scheduler = BackgroundScheduler(
            timezone="UTC",
            executors={
                "default": ThreadPoolExecutor(1),
                "triggers": ThreadPoolExecutor(TRIGGER_THREADS),
                "retention": ThreadPoolExecutor(1),
            },
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300},
        )
        self._every(LEASE_REAP_SECONDS, "reclaim-leases", self.reclaim_leases)
        self._every(GAUGE_SECONDS, "queue-gauges", self.update_gauges)
        self._every(RETRY_SWEEP_SECONDS, "retry-sweep", self.retry_sweep)
        self._every(ABANDONED_SECONDS, "abort-abandoned-uploads", self.abort_abandoned_uploads)
        self._every(PRUNE_SECONDS, "prune", self.prune, executor="retention")
        self._every(RENEW_SECONDS, "discovery-leases", self.lead_shared_jobs)

    def _every(
        self,
        seconds: float,
        task_id: str,
        func: Callable[..., None],
        *args: Any,
        executor: str = "default",
    ) -> None:
        self.scheduler.add_job(
            self._guarded(func),
            IntervalTrigger(seconds=seconds),
            args=args,
            id=task_id,
            executor=executor,
            replace_existing=True,
        )

    @staticmethod
    def _guarded(func: Callable[..., None]) -> Callable[..., None]:
        """A task that logs its failure instead of raising it; the next run retries."""

        def run(*args: Any) -> None:
            what = " ".join((func.__name__, *map(str, args)))
            try:
                func(*args)
            except DatabaseUnavailable as exc:
                log.warning("%s: %s", what, exc)
            except Exception:
                log.exception("%s: unexpected error; the next run tries again", what)

        run.__name__ = func.__name__
        return run

    def start(self) -> None:
        self.scheduler.start()
        # A dead predecessor's claims and the queue gauges are wanted now, not in 30 or 15 s.
        # (Moving the next run of the interval tasks; a one-shot task could race shutdown.)
        now = datetime.now(UTC)
        self.scheduler.modify_job("reclaim-leases", next_run_time=now)
        self.scheduler.modify_job("queue-gauges", next_run_time=now)
        self.scheduler.modify_job("discovery-leases", next_run_time=now)

    def apply(self, jobs: Mapping[str, Job]) -> None:
        """Per-job tasks (rescan, sessions, triggers, after_upload) for exactly ``jobs``."""
        self.jobs = jobs
        if self.scheduler.running:  # a new shared job wants its discovering host now
            self.scheduler.modify_job("discovery-leases", next_run_time=datetime.now(UTC))
        for task in self.scheduler.get_jobs():
            prefix = next((p for p in _PER_JOB if task.id.startswith(p)), None)
            if prefix is not None and task.id[len(prefix) :] not in jobs:
                task.remove()
        for name, job in jobs.items():
            self._keep_or_replace(
                f"rescan:{name}", IntervalTrigger(seconds=job.source.rescan), self.rescan, name
            )
            self._keep_or_replace(
                f"sessions:{name}",
                IntervalTrigger(seconds=SESSION_SWEEP_SECONDS),
                self._guarded(self.complete_sessions),
                name,
            )
            self._optional(
                f"dispose:{name}",
                job.after_upload.action != "keep",
                IntervalTrigger(seconds=DISPOSAL_SECONDS),
                self._guarded(self.dispose),
                name,
            )
            trigger = job.trigger
            schedule = (
                CronTrigger.from_crontab(trigger.cron, timezone="UTC")
                if trigger is not None and trigger.cron
                else IntervalTrigger(seconds=trigger.interval or 60.0)
                if trigger is not None
                else None
            )
            self._optional(
                f"triggers:{name}",
                trigger is not None,
                schedule,
                self._guarded(self.dispatch_triggers),
                name,
                executor="triggers",
            )

    def _keep_or_replace(
        self,
        task_id: str,
        trigger: Any,
        func: Callable[..., None],
        *args: Any,
        executor: str = "default",
    ) -> None:
        existing = self.scheduler.get_job(task_id)
        if existing is not None and str(existing.trigger) == str(trigger):
            return  # replacing it would postpone the next run on every reload
        self.scheduler.add_job(
            func, trigger, args=args, id=task_id, executor=executor, replace_existing=True
        )

    def _optional(
        self,
        task_id: str,
        wanted: bool,
        trigger: Any,
        func: Callable[..., None],
        *args: Any,
        executor: str = "default",
    ) -> None:
        if wanted:
            self._keep_or_replace(task_id, trigger, func, *args, executor=executor)
        elif self.scheduler.get_job(task_id) is not None:
            self.scheduler.remove_job(task_id)

    def alive(self) -> bool:
        return bool(self.scheduler.running)

    def stop(self, deadline: float) -> None:
        """No new runs (a prune is told to stop); the running ones may finish until
        ``deadline``. Each task connection belongs to an executor thread, so they are closed
        only once those threads are done: a task still running at the deadline keeps its
        connection until the process exits."""
        self.pruner.stop()
        if self.scheduler.running and not call_by(
            lambda: self.scheduler.shutdown(wait=True), deadline, "scheduler-stop"
        ):
            log.warning(
                "scheduler: a task still runs at the end of the shutdown; left to end "
                "with the process"
            )
            return
        self.leadership.release()
        self.ledger.close()
        with self._trigger_lock:
            for dispatcher in self._trigger_dispatchers:
                dispatcher.ledger.close()
        self.pruner.ledger.close()

    # --- the tasks -------------------------------------------------------------------------

    def reclaim_leases(self) -> None:
        """Put back claims whose lease ran out, and at once those of dead processes here."""
        dead = dead_workers(self.host, self.ledger.workers_on_host(self.host), self.me)
        count = self.ledger.reclaim_leases(dead)
        if count:
            log.warning("reclaimed %d uploads whose worker died or lost its lease", count)
        holders = self.ledger.lease_holders_on(self.host)
        gone = dead_workers(self.host, holders, lease_holder())
        if gone:
            self.ledger.drop_leases_of(gone)

    def lead_shared_jobs(self) -> None:
        self.leadership.round(self.jobs)

    def retry_sweep(self) -> None:
        with self.ledger.named_lock("retry-sweep") as held:
            if held:
                self.ledger.notify_due_retries()
                metrics.retry_sweeps.inc()

    def abort_abandoned_uploads(self) -> None:
        """Free the parts of multipart uploads whose version failed or moved on."""
        with self.ledger.named_lock("abandoned-uploads") as held:
            if not held:
                return
            for row in self.ledger.abandoned_uploads():
                job = self.jobs.get(row["job"])
                if job is None:
                    continue  # its job is gone from this host: its S3 settings with it
                client = self.storage.client(job.destination.s3)
                try:
                    with s3_errors():
                        abort(client, row["bucket"], row["key"], row["multipart_upload_id"])
                except StorageUnavailable as exc:
                    log.warning(
                        "job %s: cannot abort the multipart upload of %s: %s",
                        row["job"],
                        row["key"],
                        exc,
                    )
                    continue
                self.ledger.forget_upload(row["id"], row["multipart_upload_id"])

    def complete_sessions(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is None:
            return
        register = job.trigger is not None and job.trigger.on == "session_complete"
        with self.ledger.named_lock(f"sessions:{name}") as held:
            if not held:
                return
            closed = self.ledger.complete_sessions(
                name, idle_seconds=job.session.idle, marker=job.session.marker, register=register
            )
        for session_id in closed:
            log.info(
                "job %s: session %d complete%s",
                name,
                session_id,
                "; registration queued" if register else "",
            )

    def dispatch_triggers(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is not None:
            self._trigger_dispatcher().dispatch(job)

    def _trigger_dispatcher(self) -> TriggerDispatcher:
        """This executor thread's dispatcher: a ``Ledger`` belongs to one thread."""
        dispatcher: TriggerDispatcher | None = getattr(self._trigger_local, "dispatcher", None)
        if dispatcher is None:
            dispatcher = TriggerDispatcher(
                self._new_trigger_ledger(), host=self.host, breakers=self._trigger_breakers
            )
            self._trigger_local.dispatcher = dispatcher
            with self._trigger_lock:
                self._trigger_dispatchers.append(dispatcher)
        return dispatcher

    def dispose(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is not None:
            self.disposer.sweep(job)

    def update_gauges(self) -> None:
        with self.ledger.named_lock("compact-counts") as held:
            if held:
                self.ledger.compact_counts()
        metrics.set_queue(self.ledger.job_counts())

    def prune(self) -> None:
        """Retention: finished history older than ``ledger.retention`` leaves the ledger."""
        with self.pruner.ledger.named_lock("prune") as held:
            if not held:
                return
            try:
                report = self.pruner.run(self.retention, self.jobs)
            except PruneStopped:
                return
        log.info("retention: %s", report.describe(dry_run=False))
