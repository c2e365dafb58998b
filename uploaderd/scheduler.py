"""Periodic work inside ``uploaderd run``, on an APScheduler 3 background scheduler.

The in-memory job store is rebuilt from the job files on start and reload. Every task runs on
one executor thread with its own ledger connection; ``coalesce`` and ``max_instances=1`` keep a
slow run from piling up behind itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from uploaderd import metrics
from uploaderd.config import Job
from uploaderd.errors import DatabaseUnavailable
from uploaderd.ledger import Ledger, State
from uploaderd.workers import dead_workers

log = logging.getLogger(__name__)

LEASE_REAP_SECONDS = 30.0
GAUGE_SECONDS = 15.0


class Scheduler:
    def __init__(
        self, ledger: Ledger, *, host: str, me: str, rescan: Callable[[str], None]
    ) -> None:
        self.ledger = ledger
        self.host = host
        self.me = me
        self.rescan = rescan
        self.scheduler = BackgroundScheduler(
            timezone="UTC",
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300},
        )
        self.scheduler.add_job(self.reclaim_leases, "interval", seconds=LEASE_REAP_SECONDS,
                               id="reclaim-leases")
        self.scheduler.add_job(self.update_gauges, "interval", seconds=GAUGE_SECONDS,
                               id="queue-gauges")

    def start(self) -> None:
        self.scheduler.start()
        self.scheduler.add_job(self.reclaim_leases, id="reclaim-leases-at-start")

    def apply(self, jobs: Mapping[str, Job]) -> None:
        """One rescan task per job, at the job's ``rescan`` interval."""
        for task in self.scheduler.get_jobs():
            if task.id.startswith("rescan:") and task.id[len("rescan:"):] not in jobs:
                task.remove()
        for name, job in jobs.items():
            existing = self.scheduler.get_job(f"rescan:{name}")
            if existing is not None and existing.trigger.interval_length == job.source.rescan:
                continue  # replacing it would postpone the next rescan on every reload
            self.scheduler.add_job(self.rescan, "interval", args=[name], id=f"rescan:{name}",
                                   seconds=job.source.rescan, replace_existing=True)

    def alive(self) -> bool:
        return bool(self.scheduler.running)

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.ledger.close()

    def reclaim_leases(self) -> None:
        """Put back claims whose lease ran out, and at once those of dead processes here."""
        try:
            dead = dead_workers(self.host, self.ledger.workers_on_host(self.host), self.me)
            count = self.ledger.reclaim_leases(dead)
        except DatabaseUnavailable as exc:
            log.warning("lease reaper: %s", exc)
            return
        if count:
            log.warning("reclaimed %d uploads whose worker died or lost its lease", count)

    def update_gauges(self) -> None:
        try:
            counts = self.ledger.job_counts()
        except DatabaseUnavailable as exc:
            log.warning("queue gauges: %s", exc)
            return
        for row in counts:
            metrics.queue_files.labels(row.job, row.state).set(row.files)
            if row.state == State.PENDING:
                metrics.queue_oldest_pending_age.labels(row.job).set(row.oldest_age_seconds or 0)
