"""One-shot runs on the daemon's queue: ``upload``, ``retry --auto-retry`` and ``pipeline``.

What the old batch tool did, as commands that share the daemon's database: queue files in a
session of their own, then upload in this process with an ``UploadPool`` limited to the job
until every version the run waits on is terminal (uploaded, failed or superseded). A running
daemon may take some of the work; the run follows the ledger, so it does not matter who
uploads. Retries follow the job's policy: the run waits for a pending file's next attempt.
When the bucket keeps failing the pool's breaker trips, and a one-shot run stops there
instead of probing for hours: what is left stays pending for the daemon or the next run.
Before it queues anything, ``upload`` checks that the credentials reach the bucket.

Every step is printed through ``out`` and recorded in ``report`` (what ``--json`` prints).
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from uploaderd.commands.probes import bucket_preflight
from uploaderd.commands.registrar import Registrar
from uploaderd.config.settings import DaemonConfig, Job
from uploaderd.discovery.collect import Collected, collect
from uploaderd.discovery.versions import enqueue, new_version, render_key, scope_of
from uploaderd.errors import (
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    StorageMisconfigured,
    StorageUnavailable,
)
from uploaderd.ledger.store import Ledger, State, StateTally
from uploaderd.observe.progress import Display, RunProgress, Speed
from uploaderd.policy.health import Breaker
from uploaderd.policy.transfers import Snapshot
from uploaderd.policy.units import format_bytes, plural
from uploaderd.upload.storage import Storage
from uploaderd.upload.verify import listing_prefix
from uploaderd.upload.workers import UploadPool, build_pool, claim_scopes

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

    def tallies(self, ledger: Ledger, host: str) -> dict[str, StateTally]:
        return ledger.selection_progress(
            jobs=self.jobs,
            scopes=claim_scopes(host),
            session_id=self.session_id,
            job=self.job,
            everything=self.everything,
        )

    def failures(self, ledger: Ledger) -> list[dict[str, Any]]:
        rows = ledger.list_files(
            job=self.job, session_id=self.session_id, state=State.FAILED, limit=_LISTED_FAILURES
        )
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
    misconfigured: bool = False  # stopped because S3 said the configuration is wrong

    @property
    def exit_status(self) -> int:
        if self.stopped is not None:
            return EXIT_USAGE if self.misconfigured else EXIT_UNREACHABLE
        # ``failures`` also holds versions failed when queued (no safe key): no attempt ran.
        return EXIT_FAILURES if self.failed or self.failures or self.left else EXIT_OK

    def as_json(self, seconds: float) -> dict[str, Any]:
        return {
            "uploaded": self.uploaded,
            "failed": self.failed,
            "superseded": self.superseded,
            "bytes": self.bytes,
            "left": self.left,
            "seconds": round(seconds, 3),
            "stopped": self.stopped,
            "failures": [
                {"relpath": f["relpath"], "attempts": f["attempts"], "error": f["last_error"]}
                for f in self.failures
            ],
        }


def _files(tallies: Mapping[str, StateTally], states: Sequence[str]) -> int:
    return sum(tallies[s].files for s in states if s in tallies)


def _bytes(tallies: Mapping[str, StateTally], states: Sequence[str]) -> int:
    return sum(tallies[s].bytes for s in states if s in tallies)


def run_progress(
    baseline: Mapping[str, StateTally],
    now: Mapping[str, StateTally],
    sending: Snapshot | None = None,
    speed: float | None = None,
) -> RunProgress:
    """This run's share of the selection: what became terminal since it started, of all,
    plus the bytes sent so far of the files in flight (``sending``, read before ``now``)."""
    done_files = max(0, _files(now, TERMINAL) - _files(baseline, TERMINAL))
    done_bytes = max(0, _bytes(now, TERMINAL) - _bytes(baseline, TERMINAL))
    total_bytes = done_bytes + _bytes(now, ACTIVE)
    uploading = _files(now, [State.UPLOADING])
    pending = now.get(State.PENDING)
    retry_in = pending.next_in if pending is not None and not uploading else None
    active = sending.active if sending is not None else ()
    # A file whose outcome landed between the two reads counts once: capped at the total.
    in_flight = sum(a.sent for a in active)
    return RunProgress(
        done_files,
        done_files + _files(now, ACTIVE),
        min(total_bytes, done_bytes + in_flight),
        total_bytes,
        uploading,
        retry_in,
        active,
        sending.last_error if sending else None,
        speed,
    )


def _delta(baseline: Mapping[str, StateTally], now: Mapping[str, StateTally], state: str) -> int:
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
        self,
        config: DaemonConfig,
        jobs: Mapping[str, Job],
        ledger: Ledger,
        *,
        host: str,
        poll: float = POLL_SECONDS,
        workers: int | None = None,
    ) -> None:
        self.config = config
        self.jobs = {name: uploadable(job) for name, job in jobs.items()}
        self.ledger = ledger
        self.host = host
        self.poll = poll
        self.workers = workers

    def run(self, selection: Selection, display: Display) -> RunResult:
        baseline = selection.tallies(self.ledger, self.host)
        breakers = BreakerLog()
        pool = self._pool(selection, breakers)
        pool.start()
        try:
            now, stopped = self._follow(selection, baseline, display, pool, breakers)
        finally:
            pool.stop(time.monotonic() + self.config.shutdown_grace)
        tripped = breakers.tripped()
        if stopped is not None:
            now = selection.tallies(self.ledger, self.host)  # the released claims are pending again
        display.update(run_progress(baseline, now, pool.transfers.snapshot()))
        return RunResult(
            uploaded=_delta(baseline, now, State.UPLOADED),
            failed=_delta(baseline, now, State.FAILED),
            superseded=_delta(baseline, now, State.SUPERSEDED),
            bytes=max(0, _bytes(now, [State.UPLOADED]) - _bytes(baseline, [State.UPLOADED])),
            left=_files(now, ACTIVE),
            stopped=stopped,
            failures=selection.failures(self.ledger),
            misconfigured=stopped is not None and tripped is not None and tripped.misconfigured,
        )

    def _pool(self, selection: Selection, breakers: BreakerLog) -> UploadPool:
        jobs = {name: self.jobs[name] for name in selection.jobs}
        return build_pool(
            self.config,
            lambda: jobs,
            host=self.host,
            name="uploaderd one-shot workers",
            breaker=breakers,
            workers=self.workers,
        )

    def _follow(
        self,
        selection: Selection,
        baseline: Mapping[str, StateTally],
        display: Display,
        pool: UploadPool,
        breakers: BreakerLog,
    ) -> tuple[dict[str, StateTally], str | None]:
        """Watch the ledger until the selection is done, or the bucket keeps failing."""
        speed = Speed()
        while True:
            sending = pool.transfers.snapshot()
            now = selection.tallies(self.ledger, self.host)
            display.update(run_progress(baseline, now, sending, speed.sample(sending.sent_total)))
            if not _files(now, ACTIVE):
                return now, None
            tripped = breakers.tripped()
            if tripped is not None and tripped.misconfigured:
                return (
                    now,
                    f"S3 says the bucket, credentials or policy are wrong ({tripped.last_error})",
                )
            if tripped is not None:
                return now, f"S3 keeps failing ({tripped.last_error})"
            if not pool.alive():
                return now, "the upload pool stopped"
            time.sleep(self.poll)


class OneShot:
    """``upload``, ``retry`` and ``pipeline``: each prints what it does through ``out`` and
    records it in ``report``."""

    def __init__(
        self,
        config: DaemonConfig,
        jobs: Mapping[str, Job],
        ledger: Ledger,
        *,
        out: Out,
        display: Callable[[], Display],
        registrar: Registrar | None = None,
        host: str | None = None,
        workers: int | None = None,
    ) -> None:
        self.config = config
        self.jobs = jobs
        self.ledger = ledger
        self.out = out
        self.display = display
        self.registrar = registrar
        self.host = host or socket.gethostname()
        self.engine = Engine(config, jobs, ledger, host=self.host, workers=workers)
        self.report: dict[str, Any] = {}

    # --- upload ----------------------------------------------------------------------------

    def upload(self, job: Job, *, dry_run: bool = False) -> int:
        """Queue what is new in a session of its own, upload it, send the due registrations."""
        status, _ = self._upload(job, dry_run=dry_run)
        if dry_run:
            return status
        return max(status, self._send_due(job))

    def _upload(self, job: Job, *, dry_run: bool) -> tuple[int, int | None]:
        """(exit status, session id or None when nothing was queued)."""
        report = self.report.setdefault("upload", {"job": job.name, "session": None})
        found = self._collect(job)
        self._report_found(job, found)
        if dry_run:
            self._print_plan(job, found)
            return EXIT_OK, None
        if not found.complete:
            self.out(f"job {job.name}: nothing new to upload")
            return EXIT_OK, None
        self._preflight(job)
        session_id = self.ledger.open_run_session(job.name, self.host)
        versions = [
            new_version(job, c, session_id=session_id, host=self.host) for c in found.complete
        ]
        queued, _ = enqueue(self.ledger, job, self.host, versions)
        report["queued"] = queued
        if not queued:
            self.ledger.drop_empty_run_session(session_id)
            self.out(
                f"job {job.name}: nothing queued: another uploaderd (the daemon) queued "
                f"these {plural(len(versions), 'file')} first and uploads them"
            )
            return EXIT_OK, None
        report["session"] = session_id
        size = sum(v.size for v in versions[:queued]) if queued == len(versions) else None
        others = len(versions) - queued
        self.out(
            f"session {session_id}: queued {plural(queued, 'file')}"
            + (f" ({format_bytes(size)})" if size is not None else "")
            + (f"; {others} more were queued by another uploaderd first" if others else "")
        )
        result = self._run(Selection((job.name,), session_id=session_id), report)
        self._complete_run_sessions([(session_id, job)])
        return result.exit_status, session_id

    def _preflight(self, job: Job) -> None:
        """Spend no attempts on a bucket these credentials cannot reach."""
        storage = Storage(pool_connections=1)
        finding = bucket_preflight(storage, job, listing_prefix(job.destination.key, job.name))
        if finding.level == "error":
            raise StorageMisconfigured(
                f"job {job.name}: {finding.subject}: {finding.message}: the bucket, the "
                "credentials or the policy are wrong; nothing was queued"
            )
        if finding.level == "unreachable":
            raise StorageUnavailable(
                f"job {job.name}: cannot reach {finding.subject}: "
                f"{finding.message}; nothing was queued"
            )
        if finding.level == "warning":
            self.out(f"job {job.name}: {finding.subject}: {finding.message}")

    def _collect(self, job: Job) -> Collected:
        scope = scope_of(job, self.host)
        display = self.display()
        try:
            return collect(
                job,
                lambda seen: self.ledger.known_paths(job.name, scope, seen),
                on_wait=display.settling,
            )
        finally:
            display.close()

    def _report_found(self, job: Job, found: Collected) -> None:
        self.report["upload"]["found"] = {
            "complete": len(found.complete),
            "known": found.known,
            "unsettled": len(found.unsettled),
        }
        self.out(
            f"job {job.name}: {plural(len(found.complete), 'new complete file')}, "
            f"{found.known} already in the ledger, {len(found.unsettled)} still being "
            "written"
        )
        for candidate in found.unsettled:
            self.out(f"skipped (still being written): {candidate.root}/{candidate.relpath}")

    def _print_plan(self, job: Job, found: Collected) -> None:
        """``--dry-run``: what would be queued, with keys (``${session}`` not yet known)."""
        total = sum(c.signature.size for c in found.complete)
        self.out(
            f"would queue {plural(len(found.complete), 'file')} ({format_bytes(total)}) "
            f"to s3://{job.destination.bucket}:"
        )
        plan = self.report["upload"]["would_queue"] = []
        for candidate in found.complete:
            key, error = render_key(job, candidate, session="<session>", host=self.host)
            plan.append(
                {
                    "relpath": candidate.relpath,
                    "size": candidate.signature.size,
                    "key": key,
                    "error": error,
                }
            )
            self.out(
                f"  {candidate.relpath}  {format_bytes(candidate.signature.size)}  {key or error}"
            )

    # --- retry -----------------------------------------------------------------------------

    def retry(self, selection: Selection, *, auto: bool) -> int:
        files, registrations = self.ledger.requeue_failed(
            session_id=selection.session_id, job=selection.job, everything=selection.everything
        )
        report = self.report.setdefault("retry", {})
        report.update(
            {
                "selection": selection.describe(),
                "requeued_files": files,
                "requeued_registrations": registrations,
            }
        )
        self.out(
            f"{selection.describe()}: requeued {plural(files, 'failed file')} and "
            f"{plural(registrations, 'failed registration')}"
        )
        if not auto:
            return EXIT_OK
        result = self._run(selection, report)
        self._complete_run_sessions(self._open_run_sessions(selection))
        return result.exit_status

    def _open_run_sessions(self, selection: Selection) -> list[tuple[int, Job]]:
        rows = self.ledger.open_session_summaries(selection.job)
        return [
            (row["id"], self.jobs[row["job"]])
            for row in rows
            if row["origin"] == "upload"
            and row["job"] in selection.jobs
            and selection.session_id in (None, row["id"])
        ]

    # --- pipeline --------------------------------------------------------------------------

    def pipeline(self, job: Job) -> int:
        """upload → retry of that session with fresh attempts → trigger of that session →
        the job's other due registrations (an earlier run's that the endpoint refused)."""
        status, session_id = self._upload(job, dry_run=False)
        if session_id is not None and status != EXIT_OK:
            self.out(f"pipeline: retrying the failures of session {session_id}")
            status = self.retry(Selection((job.name,), session_id=session_id), auto=True)
        if job.trigger is None:
            if session_id is not None:
                self.out(f"pipeline: job {job.name} has no trigger; nothing to register")
            return status
        if session_id is not None:
            assert self.registrar is not None
            status = max(status, self.registrar.trigger(session_id, force=False))
        return max(status, self._send_due(job))

    # --- shared ----------------------------------------------------------------------------

    def _send_due(self, job: Job) -> int:
        if self.registrar is None or job.trigger is None:
            return EXIT_OK
        status = self.registrar.send_due(job)
        self.report["registrations"] = self.registrar.calls
        return status

    def _run(self, selection: Selection, report: dict[str, Any]) -> RunResult:
        display = self.display()
        started = time.monotonic()
        try:
            result = self.engine.run(selection, display)
        finally:
            display.close()
        elapsed = time.monotonic() - started
        report["run"] = result.as_json(elapsed)
        self.out(
            f"{selection.describe()}: {result.uploaded} uploaded, {result.failed} failed, "
            f"{result.superseded} changed while queued "
            f"({format_bytes(result.bytes)} in {elapsed:.1f}s)"
        )
        for row in result.failures:
            self.out(
                f"failed: {row['relpath']} ({plural(row['attempts'], 'attempt')}): "
                f"{row['last_error']}"
            )
        if result.stopped is not None:
            self.out(
                f"stopped: {result.stopped}; {plural(result.left, 'file')} stay pending "
                "for the daemon or the next run"
            )
        return result

    def _complete_run_sessions(self, sessions: Sequence[tuple[int, Job]]) -> None:
        for session_id, job in sessions:
            register = job.trigger is not None and job.trigger.on == "session_complete"
            if self.ledger.complete_run_session(session_id, register=register):
                self.report.setdefault("sessions", []).append(
                    {"session": session_id, "state": "complete"}
                )
                self.out(
                    f"session {session_id}: complete"
                    + ("; registration queued" if register else "")
                )
            else:
                self.report.setdefault("sessions", []).append(
                    {"session": session_id, "state": "open"}
                )
                self.out(
                    f"session {session_id}: stays open until its failures are retried "
                    f"(`uploaderd retry --session-id {session_id} --auto-retry`)"
                )
