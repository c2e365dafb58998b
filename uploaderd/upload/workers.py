"""The upload pool: one dispatcher thread talks to PostgreSQL, worker threads talk to S3.

The dispatcher claims work in batches (``FOR UPDATE SKIP LOCKED`` plus a lease, committed at
once), keeps a short queue of claims ahead of the workers, renews the leases of everything it
holds, and writes outcomes back in batches fenced on claimer and attempt. Workers never touch
the database, so no transaction is open during an upload. It sleeps on LISTEN/NOTIFY (new work)
and on a pipe the workers write to when finished work needs it (a batch to write, or nothing
to bring it back within its write linger), with a poll as the safety net for lost
notifications and retries coming due.

No exception ends a loop: a worker turns anything unexpected into that attempt's failure
(logged with the job and file), and the dispatcher backs off and reconnects on database
trouble of any kind and logs anything else before going on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from uploaderd.config.settings import DaemonConfig, Destination, Job
from uploaderd.errors import CONFIG_ERROR_HINT, S3_CONFIG_ERRORS, DatabaseUnavailable
from uploaderd.ledger.connections import Budget
from uploaderd.ledger.store import Claim, Ledger, MultipartStarted, Outcome, Session, State
from uploaderd.observe import metrics
from uploaderd.observe.logs import ActivityLog, Attempt
from uploaderd.policy.health import Breaker
from uploaderd.policy.lifecycle import join, remaining
from uploaderd.policy.printable import printable
from uploaderd.policy.retry import OUTAGE_FIRST_WAIT, next_attempt_in, next_outage_wait
from uploaderd.policy.transfers import Transfers
from uploaderd.policy.units import plural
from uploaderd.policy.windows import in_any_window
from uploaderd.upload.storage import Storage
from uploaderd.upload.uploader import TransferSettings, Uploader, UploadResult

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
HAND_BACK_SECONDS = 5.0
POLL_SECONDS = 2.0
# Outcomes of a busy pool are written together: a batch once this many are in, or once the
# oldest has waited this long (a commit and a plan of the statement per batch, not per
# file). Written at once when every claim held has its outcome in: none could join them.
WRITE_BATCH = 32
WRITE_LINGER = 0.02
# An attempt running longer than the S3 read timeout plus its size at the slowest expected
# rate is stalled (a blackholed endpoint, say): logged once and counted; the S3 timeouts end
# it soon after.
STALL_RATE = 1024 * 1024  # bytes per second
STALL_CHECK_SECONDS = 1.0  # a look at every running attempt: once a second, not every round
STOPPING = "daemon stopping"
PAUSED = "released: the job's uploads are paused after S3 failures"


@dataclass
class _Running:
    """An attempt a worker is on, for the stall check."""

    claim: Claim
    job: str
    deadline: float
    began: float
    stalled: bool = False


def stall_deadline(size: int, destination: Destination) -> float:
    """Seconds after which an attempt on ``size`` bytes counts as stalled."""
    cap = destination.bandwidth
    rate = min(STALL_RATE, cap) if cap else STALL_RATE
    return destination.s3.read_timeout + size / rate


def worker_id(host: str) -> str:
    """``host:pid:token``: the pid lets a restarted daemon reclaim its dead predecessor's leases."""
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def dead_workers(host: str, holders: list[str], me: str) -> list[str]:
    """Claim holders on this host whose process no longer exists."""
    dead = []
    for holder in holders:
        parts = holder.split(":")
        if holder == me or len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        if int(parts[1]) == os.getpid():
            dead.append(holder)  # our pid, not our token: a predecessor (a restarted container)
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            dead.append(holder)
        except PermissionError:
            continue  # alive, someone else's
    return dead


class UploadPool:
    def __init__(
        self,
        ledger: Ledger,
        uploader: Uploader,
        jobs: Callable[[], Mapping[str, Job]],
        *,
        workers: int,
        host: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
        on_db: Callable[[bool], None] = lambda up: None,
        breaker: Callable[[], Breaker] = Breaker,
        activity: ActivityLog | None = None,
        write_linger: float = WRITE_LINGER,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.ledger = ledger
        self.write_linger = write_linger
        self.poll_seconds = poll_seconds
        self._new_breaker = breaker
        self.activity = activity  # the daemon's per-file log lines; one-shot runs show a bar
        self.transfers = Transfers()
        self.uploader = uploader
        self.jobs = jobs
        self.workers = workers
        self.host = host or socket.gethostname()
        self.worker = worker_id(self.host)
        self.lease_seconds = lease_seconds
        self.on_db = on_db
        self._todo: queue.SimpleQueue[tuple[Claim, Job] | None] = queue.SimpleQueue()
        # What workers hand in for the dispatcher to write. A worker wakes the dispatcher only
        # when it would not look soon by itself: a wake-up per file cost the dispatcher a
        # round and the worker a syscall, about a sixth of the daemon's CPU per small file.
        self._handed_in: list[Outcome | MultipartStarted] = []
        self._handed_lock = threading.Lock()
        self._lingering = False  # the dispatcher sleeps no longer than its write linger
        self._held: dict[int, Claim] = {}  # claimed and not yet written back (dispatcher only)
        self._unwritten: list[Outcome] = []
        self._unwritten_since = 0.0  # monotonic time the oldest unwritten outcome came in
        self._multiparts: list[MultipartStarted] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._claiming = threading.Event()
        self._claiming.set()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"upload-{i}", daemon=True)
            for i in range(workers)
        ]
        self._dispatcher = threading.Thread(target=self._dispatch, name="dispatcher", daemon=True)
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._running: dict[int, _Running] = {}  # guarded by _busy_lock
        self._listening = False  # dispatcher only
        # When a claim can find something (dispatcher only): after a notification, a claim
        # that filled all its room, a change in which jobs may claim, and at each poll;
        # not after one that found the queue empty, whatever number of workers finish.
        self._work_may_wait = True
        self._claimed_for: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
        self._next_poll = 0.0
        self._next_renewal = 0.0
        self._next_stall_check = 0.0
        # Destination health per job: fed by the workers, written to the ledger by the
        # dispatcher (the only thread with a connection).
        self._breakers: dict[str, Breaker] = {}
        self._health_changes: dict[str, float | None] = {}  # job → pause, or None: resumed
        self._answered: set[str] = set()  # jobs whose bucket answered this pool once
        self._health_lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._dispatcher.start()

    def alive(self) -> bool:
        return self._dispatcher.is_alive() and all(t.is_alive() for t in self._threads)

    def stop(self, deadline: float) -> None:
        """Stop claiming, hand back what has not started, let what runs finish until
        ``deadline``, then hand that back too. Handing back takes the dispatcher a round trip;
        it gets ``HAND_BACK_SECONDS`` for it even when the deadline has passed."""
        self._claiming.clear()
        self._wake()
        while remaining(deadline) and (self._busy or not self._todo.empty()):
            if self._stop.wait(0.05):
                break
        self._stop.set()
        self._wake()
        join(self._dispatcher, max(deadline, time.monotonic() + HAND_BACK_SECONDS))

    def busy(self) -> int:
        return self._busy

    # --- worker threads --------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._todo.get()
            if item is None:
                return
            claim, job = item
            if not self._claiming.is_set() or self._paused(job.name):
                reason = STOPPING if not self._claiming.is_set() else PAUSED
                self._hand_in(Outcome(claim, State.PENDING, "released", error=reason))
                continue
            now = time.monotonic()
            with self._busy_lock:
                self._busy += 1
                self._running[claim.id] = _Running(
                    claim, job.name, now + stall_deadline(claim.size, job.destination), now
                )
            try:
                self._hand_in(self._attempt_guarded(claim, job))
            finally:
                with self._busy_lock:
                    self._busy -= 1
                    self._running.pop(claim.id, None)

    def _attempt_guarded(self, claim: Claim, job: Job) -> Outcome:
        """An attempt's outcome; a bug costs that attempt, never the worker thread."""
        try:
            return self._attempt(claim, job)
        except Exception as exc:
            log.exception(
                "job %s: unexpected error around the upload of %s", job.name, claim.relpath
            )
            return outcome_of(
                claim, job, UploadResult("failed", error=f"internal error: {type(exc).__name__}")
            )

    def _attempt(self, claim: Claim, job: Job) -> Outcome:
        began = time.monotonic()

        def multipart_started(upload_id: str, part_size: int) -> None:
            self._hand_in(MultipartStarted(claim, upload_id, part_size))

        progress = self.transfers.begin(claim.id, job.name, claim.relpath, claim.size)
        try:
            result = self.uploader.upload(claim, job, multipart_started, progress)
        except Exception as exc:  # a bug must cost one attempt, not the worker thread
            log.exception("job %s: unexpected error uploading %s", job.name, claim.relpath)
            result = UploadResult("failed", error=f"internal error: {type(exc).__name__}")
        seconds = time.monotonic() - began
        metrics.uploads.labels(job.name, result.outcome).inc()
        self._record_health(job.name, result)
        if result.outcome == "uploaded":
            if claim.repair:
                metrics.repairs.labels(job.name).inc()
            metrics.upload_duration.labels(job.name).observe(seconds)
            metrics.upload_bytes.labels(job.name).inc(result.bytes)
            metrics.upload_size.labels(job.name).observe(claim.size)
            metrics.last_success.labels(job.name).set_to_current_time()
        elif result.error:
            self.transfers.failed(claim.relpath, result.error)
        return outcome_of(claim, job, result, seconds)

    def _record_health(self, job: str, result: UploadResult) -> None:
        with self._health_lock:
            breaker = self._breakers.setdefault(job, self._new_breaker())
            if result.outcome == "uploaded":
                if breaker.record_success():
                    self._health_changes[job] = None
                    log.info("job %s: the bucket answers again; uploads resume", job)
                elif job not in self._answered:
                    # A pause an earlier process (or run) recorded for this host is over.
                    self._health_changes[job] = None
                self._answered.add(job)
            elif result.destination:
                misconfigured = result.code in S3_CONFIG_ERRORS
                pause = breaker.record_failure(result.error or "", misconfigured=misconfigured)
                if pause is not None:
                    self._health_changes[job] = pause
                    log.error(
                        "job %s: pausing uploads for %.0fs after %s (last: %s)%s",
                        job,
                        pause,
                        plural(breaker.failures, "S3 failure") + " in a row",
                        result.error,
                        CONFIG_ERROR_HINT if misconfigured else "",
                    )

    def _paused(self, job: str) -> bool:
        with self._health_lock:
            breaker = self._breakers.get(job)
            return breaker is not None and breaker.paused()

    def _probing(self, job: str) -> bool:
        with self._health_lock:
            breaker = self._breakers.get(job)
            return breaker is not None and breaker.probing()

    def _report_stalls(self) -> None:
        """Log (once) and count attempts running past their deadline: no other signal exists
        while a socket waits on an endpoint that swallows packets."""
        now = time.monotonic()
        with self._busy_lock:
            stalled = [r for r in self._running.values() if not r.stalled and now > r.deadline]
            for running in stalled:
                running.stalled = True
        for running in stalled:
            metrics.upload_stalls.labels(running.job).inc()
            log.warning(
                "job %s: the upload of %s (%d bytes) has run for %.0fs, past its "
                "deadline: S3 may be unreachable",
                running.job,
                running.claim.relpath,
                running.claim.size,
                now - running.began,
            )

    def _write_health(self) -> None:
        with self._health_lock:
            changes, self._health_changes = self._health_changes, {}
            states = {job: self._breakers[job] for job in changes}
        for job, pause in changes.items():
            metrics.destination_paused.labels(job, "upload").set(1 if pause else 0)
            wrong = bool(pause) and states[job].misconfigured
            metrics.destination_misconfigured.labels(job).set(1 if wrong else 0)
            self.ledger.set_destination_health(
                job,
                self.host,
                "upload",
                failures=states[job].failures,
                pause_seconds=pause,
                error=states[job].last_error,
            )

    def _hand_in(self, item: Outcome | MultipartStarted) -> None:
        """Give the dispatcher ``item``; wake it if it must write now or is not lingering.

        Waking is needed only when the item is a multipart upload to record at once, when the
        outcomes in hand make a batch (``_batch_ready``: the count read here may be stale,
        which costs at most one linger), or when the dispatcher may sleep past its linger.
        """
        with self._handed_lock:
            self._handed_in.append(item)
            due = len(self._handed_in) + len(self._unwritten)
            wake = (
                not self._lingering
                or isinstance(item, MultipartStarted)
                or due >= min(WRITE_BATCH, len(self._held))
            )
        if wake:
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe: the dispatcher is awake anyway
            os.write(self._wake_w, b"x")

    # --- the dispatcher --------------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            self._dispatch_until_stopped()
        finally:
            self.ledger.close()  # the dispatcher's connection: closed by the dispatcher

    def _dispatch_until_stopped(self) -> None:
        backoff = OUTAGE_FIRST_WAIT
        self._listening = False
        self._next_renewal = time.monotonic() + self.lease_seconds / 3
        while True:
            stopping = self._stop.is_set()
            try:
                if self._dispatch_round(stopping):
                    return
                self.on_db(True)
                backoff = OUTAGE_FIRST_WAIT
                continue
            except DatabaseUnavailable as exc:
                if stopping:
                    log.error(
                        "stopping without PostgreSQL: %d claims expire with their lease",
                        len(self._held),
                    )
                    return
                log.error("upload pool: %s; retrying in %.1fs", exc, backoff)
                self.on_db(False)
            except Exception:
                if stopping:
                    log.exception("upload pool: unexpected error while stopping")
                    return
                log.exception("upload pool: unexpected error; retrying in %.1fs", backoff)
            self._listening = False
            self.ledger.close()  # a fresh session next round: nothing half-done lingers
            self._stop.wait(backoff)
            backoff = next_outage_wait(backoff)

    def _dispatch_round(self, stopping: bool) -> bool:
        """One round of the dispatcher's loop; True once it has stopped."""
        if not self._listening:
            self.ledger.listen()
            self._listening = True
            self._work_may_wait = True  # notifications sent while not listening are lost
        self._collect()
        if stopping or self._batch_ready():
            self._write_outcomes()
        self._write_health()
        if self.activity is not None:
            self.activity.flush(force=stopping)
        if stopping:
            self._release_held()
            return True
        if time.monotonic() >= self._next_renewal:
            if self._held:
                self.ledger.renew_leases(self.worker, list(self._held), self.lease_seconds)
            self._next_renewal = time.monotonic() + self.lease_seconds / 3
        if time.monotonic() >= self._next_stall_check:
            self._report_stalls()
            self._next_stall_check = time.monotonic() + STALL_CHECK_SECONDS
        if not self._claim_more():
            # Wake for new work, finished work, a poll, a batch of outcomes or a lease
            # renewal coming due.
            now = time.monotonic()
            # An overdue poll means no claim had room: writing outcomes makes it, and the
            # worker whose outcome completes a batch wakes us for that.
            poll_in = self._next_poll - now if self._next_poll > now else self.poll_seconds
            timeout = max(0.0, min(poll_in, self._next_renewal - now))
            if self._unwritten:
                timeout = min(timeout, max(0.0, self._unwritten_since + self.write_linger - now))
            with self._handed_lock:
                if self._handed_in:
                    timeout = 0.0  # handed in since ``_collect``, perhaps without a wake-up
                self._lingering = bool(self._unwritten)
            if self.ledger.wait_for_notify(timeout, self._wake_r, host=self.host):
                self._work_may_wait = True
            self._drain_wake_pipe()
        return False

    def _batch_ready(self) -> bool:
        """Whether to write the outcomes in hand now, or wait for more to join them."""
        if self._multiparts:
            return True
        if not self._unwritten:
            return False
        # Every claim held is in ``_unwritten`` once its outcome is: then none can join.
        if len(self._unwritten) >= min(WRITE_BATCH, len(self._held)):
            return True
        return time.monotonic() >= self._unwritten_since + self.write_linger

    def _collect(self) -> None:
        with self._handed_lock:
            items, self._handed_in = self._handed_in, []
        for item in items:
            if isinstance(item, MultipartStarted):
                self._multiparts.append(item)
            else:
                if not self._unwritten:
                    self._unwritten_since = time.monotonic()
                self._unwritten.append(item)

    def _write_outcomes(self) -> None:
        # First what a later attempt could resume; an outcome clears it again.
        while self._multiparts:
            self.ledger.record_multipart(self.worker, self._multiparts[0])
            self._multiparts.pop(0)
        if not self._unwritten:
            return
        releases: dict[str, list[int]] = {}
        for outcome in self._unwritten:
            if outcome.outcome == "released":
                releases.setdefault(outcome.error or STOPPING, []).append(outcome.claim.id)
        finished = [o for o in self._unwritten if o.outcome != "released"]
        for reason, ids in releases.items():
            self.ledger.release(self.worker, ids, reason)
        if finished:
            keeping = [
                name for name, job in self.jobs().items() if job.after_upload.action == "keep"
            ]
            ours = self.ledger.complete(self.worker, finished, keeping=keeping)
            for outcome in finished:
                if outcome.claim.id not in ours:
                    log.warning(
                        "job %s: %s: the lease was lost; the result of attempt %d is dropped",
                        outcome.claim.job,
                        outcome.claim.relpath,
                        outcome.claim.attempt,
                    )
                elif self.activity is not None and outcome.outcome in ("uploaded", "failed"):
                    self.activity.record(_attempt(outcome))
        for outcome in self._unwritten:
            self._held.pop(outcome.claim.id, None)
        self.transfers.end([o.claim.id for o in self._unwritten])
        self._unwritten.clear()

    def _claim_more(self) -> bool:
        """Top the queue up to twice the workers, in batches of at least half of them."""
        if not self._claiming.is_set():
            return False
        room = 2 * self.workers - len(self._held)
        if room < max(1, self.workers // 2):
            return False
        jobs = self._claimable_jobs()
        # A job whose pause just ended sends one probe, not a batch that could all fail.
        probing = {name for name in jobs if self._probing(name)}
        claiming_for = (frozenset(jobs), frozenset(probing))
        now = time.monotonic()
        if not self._work_may_wait and claiming_for == self._claimed_for and now < self._next_poll:
            return False
        self._claimed_for, self._next_poll = claiming_for, now + self.poll_seconds
        claims = self._claim(sorted(set(jobs) - probing), room)
        for name in sorted(probing):
            if not any(held.job == name for held in self._held.values()):
                claims += self._claim([name], 1)
        for claim in claims:
            self._held[claim.id] = claim
            self._todo.put((claim, jobs[claim.job]))
        self._work_may_wait = len(claims) == room
        return self._work_may_wait

    def _claim(self, jobs: list[str], limit: int) -> list[Claim]:
        if not jobs:
            return []
        return self.ledger.claim(
            worker=self.worker,
            host=self.host,
            jobs=jobs,
            scopes=claim_scopes(self.host),
            limit=limit,
            lease_seconds=self.lease_seconds,
        )

    def _claimable_jobs(self) -> dict[str, Job]:
        now = datetime.now()  # windows are in local time, as operators write them
        return {
            name: job
            for name, job in self.jobs().items()
            if job.enabled
            and in_any_window(job.destination.windows, now)
            and not self._paused(name)
        }

    def _release_held(self) -> None:
        while True:  # claims no worker started
            try:
                item = self._todo.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._unwritten.append(Outcome(item[0], State.PENDING, "released", error=STOPPING))
        self._write_outcomes()
        if self._held:
            log.warning(
                "released %d uploads still running at the end of the grace period", len(self._held)
            )
            self.ledger.release(
                self.worker,
                list(self._held),
                "daemon stopping: still running at the end of shutdown_grace",
            )
            self._held.clear()
        for _ in self._threads:
            self._todo.put(None)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass


def claim_scopes(host: str) -> list[str]:
    """The scopes a host's claims take: its own files and those of shared roots (a job's
    scope follows its ``shared`` setting, and rows of either may be waiting after a change)."""
    return [host, ""]


def build_pool(
    config: DaemonConfig,
    jobs: Callable[[], Mapping[str, Job]],
    *,
    host: str,
    name: str,
    on_db: Callable[[bool], None] = lambda up: None,
    breaker: Callable[[], Breaker] = Breaker,
    activity: ActivityLog | None = None,
    workers: int | None = None,
    budget: Budget[Session] | None = None,
) -> UploadPool:
    """A pool as ``config`` sizes it (or ``workers``): S3 connections for every worker and
    its part threads."""
    workers = workers or config.workers
    transfer = TransferSettings()
    storage = Storage(pool_connections=workers * (1 + transfer.concurrency_per_file))
    return UploadPool(
        Ledger.of(config, name, budget),
        Uploader(storage, transfer),
        jobs,
        workers=workers,
        host=host,
        on_db=on_db,
        breaker=breaker,
        activity=activity,
    )


def outcome_of(claim: Claim, job: Job, result: UploadResult, seconds: float = 0.0) -> Outcome:
    """What the ledger records for one attempt's result, by the job's retry policy."""
    if result.error is not None:
        # No NUL for the database, one line for a terminal: the shared escaping, capped.
        result = replace(result, error=printable(result.error)[:500])
    if result.outcome == "uploaded":
        return Outcome(
            claim,
            State.UPLOADED,
            "uploaded",
            result.sha256,
            result.etag,
            bytes=result.bytes,
            seconds=seconds,
        )
    if result.outcome == "changed":
        # The file moved on; its new content is a new version that discovery queues.
        return Outcome(claim, State.SUPERSEDED, "changed", error=result.error, seconds=seconds)
    if result.outcome == "gone":
        # Nothing to retry and nothing newer to queue: final, and no session waits on it.
        return Outcome(claim, State.GONE, "failed", error=result.error, seconds=seconds)
    delay = next_attempt_in(claim.tries, job.retry) if result.retryable else None
    if delay is None:
        return Outcome(
            claim, State.FAILED, "failed", result.sha256, error=result.error, seconds=seconds
        )
    return Outcome(
        claim,
        State.PENDING,
        "failed",
        result.sha256,
        error=result.error,
        retry_in=delay,
        seconds=seconds,
    )


def _attempt(outcome: Outcome) -> Attempt:
    claim = outcome.claim
    return Attempt(
        claim.job,
        claim.session_id,
        claim.relpath,
        claim.bucket,
        claim.key,
        claim.size,
        outcome.seconds,
        claim.attempt,
        None if outcome.outcome == "uploaded" else outcome.error or "failed",
        outcome.retry_in,
    )
