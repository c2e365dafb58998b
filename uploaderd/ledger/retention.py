"""Retention: finished history leaves the ledger; live work and what guarantees need stay.

The ledger is walked in id order, a batch per short transaction, so a prune never holds a
lock a claim could wait on (rows in use are skipped, never waited for) and reads no more
than the history it removes. Between batches the walk rests twice as long as the batch took,
so it takes at most about a third of one database backend while uploads go on. What may leave and
what must stay is decided in SQL (``prune_*`` in queries.sql); this module knows the jobs:
which keep their files, which register them, which this host may prune at all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from uploaderd.config.settings import Job, Retention
from uploaderd.ledger.store import Ledger, PruneBatch

log = logging.getLogger(__name__)

BATCH = 2000
# Rest after a batch: this many times as long as it took (at most MAX_REST seconds). With 1,
# pruning 1 M versions beside a small-file stream cost the uploads 21 % on 2 cores; with 2,
# the prune takes longer and the uploads keep their pace
# (bench/results/2026-12-02-ledger-after-issue-8.md).
REST_RATIO = 2.0
MAX_REST = 2.0
ATTEMPTS_PROGRESS = "attempts"


@dataclass
class PruneReport:
    versions: int = 0
    attempts: int = 0
    registrations: int = 0
    sessions: int = 0

    def describe(self, *, dry_run: bool) -> str:
        if dry_run:  # sessions and registrations go only once their versions have gone
            return (
                f"would remove {self.versions} file versions and {self.attempts} attempt "
                "rows, then the sessions and registrations left empty"
            )
        return (
            f"removed {self.versions} file versions, {self.attempts} attempt rows, "
            f"{self.registrations} registrations and {self.sessions} sessions"
        )


class Pruner:
    """Removes finished history older than the retention periods, for the jobs it is given.

    Jobs this host does not run are left alone: only their configuration says whether an
    uploaded version still waits on a registration or a disposal.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        rest: Callable[[float], bool] | None = None,
    ) -> None:
        self.ledger = ledger
        self.now = now
        self._stop = threading.Event()
        # Rest between batches; returns True when asked to stop.
        self.rest = rest or self._stop.wait

    def stop(self) -> None:
        self._stop.set()

    def run(
        self, retention: Retention, jobs: Mapping[str, Job], *, dry_run: bool = False
    ) -> PruneReport:
        report = PruneReport()
        if not jobs:
            return report
        now = self.now()
        if retention.attempts is not None:
            report.attempts = self._attempts(
                now - timedelta(seconds=retention.attempts), sorted(jobs), dry_run=dry_run
            )
        if retention.versions is not None:
            cutoff = now - timedelta(seconds=retention.versions)
            report.versions = self._versions(cutoff, jobs, dry_run=dry_run)
            if dry_run:
                return report
            self.ledger.compact_counts()  # sessions' counts are current before they go
            names = sorted(jobs)
            report.registrations = self._until_done(
                lambda: self.ledger.prune_triggers(cutoff=cutoff, jobs=names, limit=BATCH)
            )
            report.sessions = self._until_done(
                lambda: self.ledger.prune_sessions(cutoff=cutoff, jobs=names, limit=BATCH)
            )
        return report

    def _versions(self, cutoff: datetime, jobs: Mapping[str, Job], *, dry_run: bool) -> int:
        keeping = [name for name, job in jobs.items() if job.after_upload.action == "keep"]
        registering = [name for name, job in jobs.items() if job.trigger is not None]
        removed, after = 0, 0
        while True:
            started = self.now()
            batch = self.ledger.prune_versions(
                after=after,
                cutoff=cutoff,
                jobs=sorted(jobs),
                keeping=keeping,
                registering=registering,
                limit=BATCH,
                dry_run=dry_run,
            )
            self._rest_after(started)
            removed += batch.eligible if dry_run else batch.deleted
            if _walk_done(batch, cutoff) or batch.last_id is None:
                return removed
            after = batch.last_id

    def _attempts(self, cutoff: datetime, jobs: list[str], *, dry_run: bool) -> int:
        """Attempt rows of finished versions, from where the previous run stopped."""
        removed = 0
        after = self.ledger.prune_progress(ATTEMPTS_PROGRESS)
        while True:
            started = self.now()
            batch = self.ledger.prune_attempts(
                after=after, cutoff=cutoff, jobs=jobs, limit=BATCH, dry_run=dry_run
            )
            self._rest_after(started)
            removed += batch.eligible if dry_run else batch.deleted
            # A batch reaching past the cutoff is read again next time: not a step forward.
            if _walk_done(batch, cutoff) or batch.last_id is None:
                return removed
            after = batch.last_id
            if not dry_run:
                self.ledger.set_prune_progress(ATTEMPTS_PROGRESS, after)

    def _until_done(self, step: Callable[[], int]) -> int:
        total = 0
        while True:
            started = self.now()
            count = step()
            self._rest_after(started)
            total += count
            if count < BATCH:
                return total

    def _rest_after(self, started: datetime) -> None:
        """After a batch, a rest ``REST_RATIO`` times as long as it took; PruneStopped when
        the daemon stops."""
        took = (self.now() - started).total_seconds()
        if self.rest(min(MAX_REST, REST_RATIO * took)):
            raise PruneStopped


class PruneStopped(Exception):
    """The daemon is stopping: the prune ends between two batches, nothing half done."""


def _walk_done(batch: PruneBatch, cutoff: datetime) -> bool:
    """The walk is past the history old enough to go (ids follow discovery time)."""
    return batch.newest is None or batch.newest >= cutoff
