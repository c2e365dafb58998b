"""One-shot runs on the daemon's queue: ``upload``, ``retry --auto-retry`` and ``pipeline``.

What the old batch tool did, as commands that share the daemon's database: queue files in a
session of their own, then upload in this process with an ``UploadPool`` limited to the job
until every version the run waits on is terminal (uploaded, failed or superseded). A running
daemon may take some of the work; the run follows the ledger, so it does not matter who
uploads. Retries follow the job's policy: the run waits for a pending file's next attempt.
When the bucket keeps failing the pool's breaker trips, and a one-shot run stops there
instead of probing for hours: what is left stays pending for the daemon or the next run.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from uploaderd.collect import Collected, collect
from uploaderd.config import DaemonConfig, Job
from uploaderd.errors import EXIT_FAILURES, EXIT_OK, EXIT_UNREACHABLE
from uploaderd.health import Breaker
from uploaderd.ledger import Ledger, State, StateTally
from uploaderd.progress import Display, RunProgress
from uploaderd.register import Registrar
from uploaderd.units import format_bytes
from uploaderd.versions import new_version, render_key, scope_of
from uploaderd.workers import UploadPool, build_pool

Out = Callable[[str], None]
ACTIVE = (State.PENDING, State.UPLOADING)
TERMINAL = (State.UPLOADED, State.FAILED, State.SUPERSEDED, State.GONE)
POLL_SECONDS = 0.25
_LISTED_FAILURES = 50


@dataclass(frozen=True)
class Selection:
    """What a run waits on: one session, one job or everything, among the jobs it can upload."""

    jobs: tuple[str, ...]
    session_id: int | None = None
    job: str | None = None
    everything: bool = False

    def describe(self) -> str:
        if self.session_id is not None:
            return f"session {self.session_id}"
        return f"job {self.job}" if self.job else "all jobs"

    def tallies(self, ledger: Ledger) -> dict[str, StateTally]:
        return ledger.selection_progress(jobs=self.jobs, session_id=self.session_id,
                                         job=self.job, everything=self.everything)

    def failures(self, ledger: Ledger) -> list[dict[str, Any]]:
        rows = ledger.list_files(job=self.job, session_id=self.session_id, state=State.FAILED,
                                 limit=_LISTED_FAILURES)
        return [row for row in rows if row["job"] in self.jobs]


@dataclass(frozen=True)
class RunResult:
    uploaded: int
    failed: int
    superseded: int
    bytes: int
    left: int  # still pending or uploading when the run stopped early
    stopped: str | None = None  # why it stopped before everything was terminal
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        if self.stopped is not None:
            return EXIT_UNREACHABLE
        return EXIT_FAILURES if self.failed or self.left else EXIT_OK


def _files(tallies: Mapping[str, StateTally], states: Sequence[str]) -> int:
    return sum(tallies[s].files for s in states if s in tallies)


def _bytes(tallies: Mapping[str, StateTally], states: Sequence[str]) -> int:
    return sum(tallies[s].bytes for s in states if s in tallies)


def run_progress(
    baseline: Mapping[str, StateTally], now: Mapping[str, StateTally]
) -> RunProgress:
    """This run's share of the selection: what became terminal since it started, of all."""
    done_files = max(0, _files(now, TERMINAL) - _files(baseline, TERMINAL))
    done_bytes = max(0, _bytes(now, TERMINAL) - _bytes(baseline, TERMINAL))
    uploading = _files(now, [State.UPLOADING])
    pending = now.get(State.PENDING)
    retry_in = pending.next_in if pending is not None and not uploading else None
    return RunProgress(done_files, done_files + _files(now, ACTIVE), done_bytes,
                       done_bytes + _bytes(now, ACTIVE), uploading, retry_in)


def _delta(
    baseline: Mapping[str, StateTally], now: Mapping[str, StateTally], state: str
) -> int:
    return max(0, _files(now, [state]) - _files(baseline, [state]))


class BreakerLog:
    """The pool's breaker factory, keeping the breakers so the run can see one trip."""

    def __init__(self) -> None:
        self.made: list[Breaker] = []
        self._lock = threading.Lock()

    def __call__(self) -> Breaker:
        breaker = Breaker()
        with self._lock:
            self.made.append(breaker)
        return breaker

    def tripped(self) -> Breaker | None:
        with self._lock:
            return next((b for b in self.made if b.trips), None)


def uploadable(job: Job) -> Job:
    """The job as a one-shot run uploads it: asked for by a person, now. Upload windows and
    ``enabled: false`` govern what the daemon does on its own, not an explicit command."""
    destination = dataclasses.replace(job.destination, windows=())
    return dataclasses.replace(job, enabled=True, destination=destination)


class Engine:
    """Uploads a selection in this process until nothing in it is pending or uploading."""

    def __init__(
        self, config: DaemonConfig, jobs: Mapping[str, Job], ledger: Ledger, *, host: str,
        poll: float = POLL_SECONDS,
    ) -> None:
        self.config = config
        self.jobs = {name: uploadable(job) for name, job in jobs.items()}
        self.ledger = ledger
        self.host = host
        self.poll = poll

    def run(self, selection: Selection, display: Display) -> RunResult:
        baseline = selection.tallies(self.ledger)
        breakers = BreakerLog()
        pool = self._pool(selection, breakers)
        pool.start()
        try:
            now, stopped = self._follow(selection, baseline, display, pool, breakers)
        finally:
            pool.stop(self.config.shutdown_grace)
            pool.ledger.close()
        if stopped is not None:
            now = selection.tallies(self.ledger)  # the released claims are pending again
        display.update(run_progress(baseline, now))
        return RunResult(
            uploaded=_delta(baseline, now, State.UPLOADED),
            failed=_delta(baseline, now, State.FAILED),
            superseded=_delta(baseline, now, State.SUPERSEDED),
            bytes=max(0, _bytes(now, [State.UPLOADED]) - _bytes(baseline, [State.UPLOADED])),
            left=_files(now, ACTIVE), stopped=stopped, failures=selection.failures(self.ledger),
        )

    def _pool(self, selection: Selection, breakers: BreakerLog) -> UploadPool:
        jobs = {name: self.jobs[name] for name in selection.jobs}
        return build_pool(self.config, lambda: jobs, host=self.host,
                          name="uploaderd one-shot workers", breaker=breakers)

    def _follow(
        self, selection: Selection, baseline: Mapping[str, StateTally], display: Display,
        pool: UploadPool, breakers: BreakerLog,
    ) -> tuple[dict[str, StateTally], str | None]:
        """Watch the ledger until the selection is done, or the bucket keeps failing."""
        while True:
            now = selection.tallies(self.ledger)
            display.update(run_progress(baseline, now))
            if not _files(now, ACTIVE):
                return now, None
            tripped = breakers.tripped()
            if tripped is not None:
                return now, f"S3 keeps failing ({tripped.last_error})"
            if not pool.alive():
                return now, "the upload pool stopped"
            time.sleep(self.poll)


class OneShot:
    """``upload``, ``retry`` and ``pipeline``: each prints what it does through ``out``."""

    def __init__(
        self, config: DaemonConfig, jobs: Mapping[str, Job], ledger: Ledger, *, out: Out,
        display: Callable[[], Display], host: str | None = None,
    ) -> None:
        self.config = config
        self.jobs = jobs
        self.ledger = ledger
        self.out = out
        self.display = display
        self.host = host or socket.gethostname()
        self.engine = Engine(config, jobs, ledger, host=self.host)

    # --- upload ----------------------------------------------------------------------------

    def upload(self, job: Job, *, dry_run: bool = False) -> tuple[int, int | None]:
        """(exit status, session id or None when nothing was queued)."""
        found = self._collect(job)
        self._report_found(job, found)
        if dry_run:
            self._print_plan(job, found)
            return EXIT_OK, None
        if not found.complete:
            self.out(f"job {job.name}: nothing new to upload")
            return EXIT_OK, None
        session_id = self.ledger.open_run_session(job.name, self.host)
        versions = [new_version(job, c, session_id=session_id, host=self.host)
                    for c in found.complete]
        self.ledger.enqueue(job.name, scope=scope_of(job, self.host), host=self.host,
                            bucket=job.destination.bucket, versions=versions,
                            marker=job.session.marker)
        self.out(f"session {session_id}: queued {len(versions)} files "
                 f"({format_bytes(sum(v.size for v in versions))})")
        result = self._run(Selection((job.name,), session_id=session_id))
        self._complete_run_sessions([(session_id, job)])
        return result.exit_status, session_id

    def _collect(self, job: Job) -> Collected:
        scope = scope_of(job, self.host)
        display = self.display()
        try:
            return collect(job, lambda seen: self.ledger.known_paths(job.name, scope, seen),
                           on_wait=display.settling)
        finally:
            display.close()

    def _report_found(self, job: Job, found: Collected) -> None:
        self.out(f"job {job.name}: {len(found.complete)} new complete files, {found.known} "
                 f"already in the ledger, {len(found.unsettled)} still being written")
        for candidate in found.unsettled:
            self.out(f"skipped (still being written): {candidate.root}/{candidate.relpath}")

    def _print_plan(self, job: Job, found: Collected) -> None:
        """``--dry-run``: what would be queued, with keys (``${session}`` not yet known)."""
        total = sum(c.signature.size for c in found.complete)
        self.out(f"would queue {len(found.complete)} files ({format_bytes(total)}) "
                 f"to s3://{job.destination.bucket}:")
        for candidate in found.complete:
            key, error = render_key(job, candidate, session="<session>", host=self.host)
            self.out(f"  {candidate.relpath}  {format_bytes(candidate.signature.size)}  "
                     f"{key or error}")

    # --- retry -----------------------------------------------------------------------------

    def retry(self, selection: Selection, *, auto: bool) -> int:
        files, registrations = self.ledger.requeue_failed(
            session_id=selection.session_id, job=selection.job,
            everything=selection.everything)
        self.out(f"{selection.describe()}: requeued {files} failed files and {registrations} "
                 "failed registrations")
        if not auto:
            return EXIT_OK
        result = self._run(selection)
        self._complete_run_sessions(self._open_run_sessions(selection))
        return result.exit_status

    def _open_run_sessions(self, selection: Selection) -> list[tuple[int, Job]]:
        rows = self.ledger.open_session_summaries(selection.job)
        return [(row["id"], self.jobs[row["job"]]) for row in rows
                if row["origin"] == "upload" and row["job"] in selection.jobs
                and selection.session_id in (None, row["id"])]

    # --- pipeline --------------------------------------------------------------------------

    def pipeline(self, job: Job, registrar: Registrar) -> int:
        """upload → retry of that session with fresh attempts → trigger of that session."""
        status, session_id = self.upload(job)
        if session_id is None:
            return status
        if status != EXIT_OK:
            self.out(f"pipeline: retrying the failures of session {session_id}")
            status = self.retry(Selection((job.name,), session_id=session_id), auto=True)
        if job.trigger is None:
            self.out(f"pipeline: job {job.name} has no trigger; nothing to register")
            return status
        return max(status, registrar.trigger(session_id, force=False))

    # --- shared ----------------------------------------------------------------------------

    def _run(self, selection: Selection) -> RunResult:
        display = self.display()
        started = time.monotonic()
        try:
            result = self.engine.run(selection, display)
        finally:
            display.close()
        elapsed = time.monotonic() - started
        self.out(f"{selection.describe()}: {result.uploaded} uploaded, {result.failed} failed, "
                 f"{result.superseded} changed while queued "
                 f"({format_bytes(result.bytes)} in {elapsed:.1f}s)")
        for row in result.failures:
            self.out(f"failed: {row['relpath']} ({row['attempts']} attempts): "
                     f"{row['last_error']}")
        if result.stopped is not None:
            self.out(f"stopped: {result.stopped}; {result.left} files stay pending for the "
                     "daemon or the next run")
        return result

    def _complete_run_sessions(self, sessions: Sequence[tuple[int, Job]]) -> None:
        for session_id, job in sessions:
            register = job.trigger is not None and job.trigger.on == "session_complete"
            if self.ledger.complete_run_session(session_id, register=register):
                self.out(f"session {session_id}: complete"
                         + ("; registration queued" if register else ""))
            else:
                self.out(f"session {session_id}: stays open until its failures are retried "
                         f"(`uploaderd retry --session-id {session_id} --auto-retry`)")
