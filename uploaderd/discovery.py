"""From "look at this path" to queued file versions: the settle check, then the ledger.

One thread owns all discovery state: the paths waiting to settle, the scans in progress and
the batches not yet written. Whether a path's signature is already in the ledger is asked of
the ledger, a batch of candidates per round trip (a bounded cache remembers the paths just
written), so memory follows the files in flight, never the ledger's history. Watchdog threads and
the scheduler only put requests on its queue. Scans advance a slice at a time between
events, so a long rescan never stalls event handling. Complete versions are written in
batches (one round trip for many files); while PostgreSQL is away they wait in memory and
the next successful write is followed by a full rescan.

Nothing ends the thread but ``stop()``: a problem with one file becomes that version's
``failed`` row with the reason, and anything unexpected is logged with the job and path it
concerns before the loop goes on.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections import Counter as Tally
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from uploaderd import metrics
from uploaderd.config import Job
from uploaderd.errors import DatabaseUnavailable
from uploaderd.ledger import Ledger, NewVersion
from uploaderd.lifecycle import join
from uploaderd.scanner import Candidate, ScanRules, check_path, recheck, scan
from uploaderd.sessions import group_key
from uploaderd.settle import SettleTracker, Signature
from uploaderd.versions import failed_version, new_version, scope_of
from uploaderd.watcher import PathEvent

log = logging.getLogger(__name__)

BATCH_SIZE = 500
SCAN_SLICE = 2000
LOOKUP_BATCH = 2000  # candidates per "already known?" round trip
RECENT_PATHS = 10_000  # signatures just written, remembered without asking the ledger
_MAX_BACKOFF = 30.0

PathKey = tuple[str, str]  # (root, relpath)


@dataclass(frozen=True)
class ScanRequest:
    job: str


@dataclass(frozen=True)
class _Scan:
    job: str
    path: str  # the root, or the directory that appeared
    candidates: Iterator[Candidate]


@dataclass
class _JobState:
    job: Job
    tracker: SettleTracker[PathKey]
    # Seen, not yet checked against the ledger: (candidate, source).
    unchecked: list[tuple[Candidate, str]] = field(default_factory=list)
    recent: OrderedDict[PathKey, Signature] = field(default_factory=OrderedDict)
    batch: list[tuple[Candidate, str]] = field(default_factory=list)

    def remember(self, candidate: Candidate) -> None:
        key = (candidate.root, candidate.relpath)
        self.recent[key] = candidate.signature
        self.recent.move_to_end(key)
        if len(self.recent) > RECENT_PATHS:
            self.recent.popitem(last=False)

    @property
    def rules(self) -> ScanRules:
        source = self.job.source
        return ScanRules(source.filter, source.recursive, source.follow_symlinks)


class Discovery:
    """The discovery thread and its inbox."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        host: str | None = None,
        on_db: Callable[[bool], None] = lambda up: None,
    ) -> None:
        self.ledger = ledger
        self.host = host or socket.gethostname()
        self.on_db = on_db
        self.inbox: queue.SimpleQueue[PathEvent | ScanRequest | dict[str, Job]] = (
            queue.SimpleQueue()
        )
        self._jobs: dict[str, _JobState] = {}
        self._scans: deque[_Scan] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="discovery", daemon=True)
        self._db_ok = True
        self._retry_at = 0.0
        self._backoff = 0.5
        self._idle = threading.Event()

    # --- called from other threads ---------------------------------------------------------

    def set_jobs(self, jobs: dict[str, Job]) -> None:
        self.inbox.put(dict(jobs))

    def submit(self, event: PathEvent) -> None:
        self.inbox.put(event)

    def request_scan(self, job: str) -> None:
        self.inbox.put(ScanRequest(job))

    def start(self) -> None:
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """Stop after a last attempt to write what is complete (by ``deadline``)."""
        self._stop.set()
        join(self._thread, deadline)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def settled(self) -> bool:
        """True when nothing is waiting: no request in the inbox or being handled, no scan,
        no unsettled path, no unwritten batch."""
        return self._idle.is_set() and self.inbox.empty()

    # --- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        next_tick = 0.0
        while not self._stop.is_set():
            try:
                next_tick = self._step(next_tick)
            except Exception:  # the last net; the steps below catch what they can name
                log.exception("discovery: unexpected error; going on")
                self._stop.wait(1.0)
        try:
            self._flush(force=True)
        except Exception:
            log.exception("discovery: the last write before stopping failed")
        finally:
            self.ledger.close()  # discovery's connection: closed by discovery

    def _step(self, next_tick: float) -> float:
        """One round: events, a slice of scan, ledger look-ups, re-checks, writes."""
        busy = bool(self._scans) or any(
            len(s.tracker) or s.batch or s.unchecked for s in self._jobs.values()
        )
        if busy:
            self._idle.clear()
        else:
            self._idle.set()
        self._drain(timeout=0.0 if self._scans else self._tick_interval() if busy else 0.5)
        self._advance_scan()
        self._check_unchecked()
        now = time.monotonic()
        if now >= next_tick:
            self._recheck_tracked()
            next_tick = now + self._tick_interval()
        self._flush(force=not self._scans)
        return next_tick

    def _tick_interval(self) -> float:
        settles = [s.job.source.settle for s in self._jobs.values()] or [1.0]
        return min(0.5, max(0.05, min(settles) / 4))

    def _drain(self, timeout: float) -> None:
        try:
            item = self.inbox.get(timeout=timeout) if timeout else self.inbox.get_nowait()
        except queue.Empty:
            return
        self._idle.clear()  # busy with it until the loop looks again
        for _ in range(10_000):  # bounded, so a flood of events cannot starve the rest
            try:
                self._handle(item)
            except Exception:
                log.exception("discovery: unexpected error on %s; going on", _describe(item))
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item: PathEvent | ScanRequest | dict[str, Job]) -> None:
        if isinstance(item, dict):
            self._apply_jobs(item)
        elif isinstance(item, ScanRequest):
            self._start_scan(item.job)
        elif item.job in self._jobs:
            state = self._jobs[item.job]
            if item.is_dir:
                self._add_scan(item.job, item.root, start=item.path)
            else:
                candidate = check_path(item.root, item.path, state.rules)
                if candidate is not None:
                    self._observe(state, candidate, "watch")

    def _apply_jobs(self, jobs: dict[str, Job]) -> None:
        for name in list(self._jobs):
            if name not in jobs:
                self._flush_job(self._jobs.pop(name))
        for name, job in jobs.items():
            state = self._jobs.get(name)
            if state is None or state.job.source != job.source:
                self._jobs[name] = _JobState(job, SettleTracker(job.source.settle))
                self._start_scan(name)
            else:
                state.job = job

    def _start_scan(self, name: str) -> None:
        state = self._jobs.get(name)
        if state is None:
            return
        for path in state.job.source.paths:
            self._add_scan(name, str(path))

    def _add_scan(self, name: str, root: str, start: str | None = None) -> None:
        rules = self._jobs[name].rules
        self._scans.append(_Scan(name, start or root, scan(root, rules, start=start)))

    def _advance_scan(self) -> None:
        if not self._scans:
            return
        current = self._scans[0]
        state = self._jobs.get(current.job)
        seen = 0
        try:
            for _, candidate in zip(range(SCAN_SLICE), current.candidates, strict=False):
                seen += 1
                if state is not None:
                    self._observe(state, candidate, "scan")
        except Exception:
            log.exception(
                "discovery: job %s: the scan of %s stopped on an unexpected error; "
                "the next rescan tries again",
                current.job,
                current.path,
            )
            seen = 0
        if seen < SCAN_SLICE:
            self._scans.popleft()

    def _observe(self, state: _JobState, candidate: Candidate, source: str) -> None:
        key = (candidate.root, candidate.relpath)
        if state.recent.get(key) == candidate.signature:
            state.tracker.forget(key)
        elif key in state.tracker:
            # Unknown at first sight and settling since: no need to ask the ledger again.
            self._track(state, candidate, source)
        else:
            state.unchecked.append((candidate, source))
            if len(state.unchecked) >= LOOKUP_BATCH:
                self._check_known(state)

    def _track(self, state: _JobState, candidate: Candidate, source: str) -> None:
        first_source = state.tracker.observe(
            (candidate.root, candidate.relpath), candidate.signature, source
        )
        if first_source is not None:
            state.batch.append((candidate, first_source))

    def _check_unchecked(self) -> None:
        for state in list(self._jobs.values()):
            if state.unchecked and not self._check_known(state):
                return

    def _check_known(self, state: _JobState) -> bool:
        """Ask the ledger which unchecked candidates it already holds; track the others."""
        if time.monotonic() < self._retry_at:
            return False
        pending, state.unchecked = state.unchecked, []
        try:
            known = self.ledger.known_paths(
                state.job.name, self._scope(state.job), [candidate for candidate, _ in pending]
            )
        except DatabaseUnavailable as exc:
            state.unchecked = pending + state.unchecked
            self._db_down(exc)
            return False
        except Exception:
            # Settle them as unknown: enqueueing a version the ledger has is a no-op.
            log.exception(
                "discovery: job %s: cannot look up %d paths in the ledger; treating them as new",
                state.job.name,
                len(pending),
            )
            known = set()
        for candidate, source in pending:
            if (candidate.root, candidate.relpath) in known:
                state.tracker.forget((candidate.root, candidate.relpath))
            else:
                self._track(state, candidate, source)
        self._db_up()
        return True

    def _recheck_tracked(self) -> None:
        for state in self._jobs.values():
            rules = state.rules
            for root, relpath in state.tracker.due():
                try:
                    candidate = recheck(root, relpath, rules)
                    if candidate is not None:
                        self._observe(state, candidate, "watch")
                        continue
                except Exception:
                    log.exception(
                        "discovery: job %s: unexpected error on %s/%s; forgotten until "
                        "its next event or rescan",
                        state.job.name,
                        root,
                        relpath,
                    )
                state.tracker.forget((root, relpath))

    # --- writing to the ledger -------------------------------------------------------------

    def _flush(self, *, force: bool) -> None:
        if time.monotonic() < self._retry_at:
            return
        for state in list(self._jobs.values()):
            due = state.batch and (force or len(state.batch) >= BATCH_SIZE)
            if due and not self._flush_job(state):
                return

    def _flush_job(self, state: _JobState) -> bool:
        job = state.job
        try:
            while state.batch:
                chunk = state.batch[:BATCH_SIZE]
                written = self._write_chunk(job, chunk)
                del state.batch[: len(chunk)]
                for candidate, _ in written:
                    state.remember(candidate)
                for source, count in Tally(source for _, source in written).items():
                    metrics.files_discovered.labels(job.name, source).inc(count)
        except DatabaseUnavailable as exc:
            self._db_down(exc)
            return False
        self._db_up()
        return True

    def _write_chunk(
        self, job: Job, chunk: list[tuple[Candidate, str]]
    ) -> list[tuple[Candidate, str]]:
        """Write a chunk; on an error that is not an outage, find the file it belongs to.

        The whole chunk in one round trip first. If that fails, each file alone: one that
        still fails is recorded ``failed`` with the error, or if even that cannot be written,
        logged and left to the next rescan. The other files of the chunk are never lost.
        """
        try:
            self._write(job, [candidate for candidate, _ in chunk])
            return chunk
        except DatabaseUnavailable:
            raise
        except Exception:
            log.exception(
                "discovery: job %s: writing %d versions failed; writing them one by "
                "one to find the culprit",
                job.name,
                len(chunk),
            )
        return [item for item in chunk if self._write_alone(job, item[0])]

    def _write_alone(self, job: Job, candidate: Candidate) -> bool:
        path = f"{candidate.root}/{candidate.relpath}"
        try:
            self._write(job, [candidate])
            return True
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            reason = f"cannot queue this file: {type(exc).__name__}: {exc}"[:500]
            log.exception("discovery: job %s: %s", job.name, path)
        try:
            self._enqueue(job, [failed_version(candidate, None, reason)])
            return True
        except DatabaseUnavailable:
            raise
        except Exception:
            log.exception(
                "discovery: job %s: cannot record %s as failed either; the next rescan tries again",
                job.name,
                path,
            )
            return False

    def _write(self, job: Job, candidates: list[Candidate]) -> None:
        groups = {
            c.relpath: group_key(job.session.group_by, c.relpath, c.signature.mtime_ns)
            for c in candidates
        }
        sessions = self.ledger.open_sessions(job.name, self.host, sorted(set(groups.values())))
        self._enqueue(job, [self._version(job, c, sessions[groups[c.relpath]]) for c in candidates])

    def _version(self, job: Job, candidate: Candidate, session_id: int) -> NewVersion:
        """The version to queue; one that cannot even be built is recorded failed."""
        try:
            return new_version(job, candidate, session_id=session_id, host=self.host)
        except Exception as exc:
            log.exception("discovery: job %s: %s/%s", job.name, candidate.root, candidate.relpath)
            return failed_version(
                candidate, session_id, f"cannot queue this file: {type(exc).__name__}: {exc}"[:500]
            )

    def _enqueue(self, job: Job, versions: list[NewVersion]) -> None:
        inserted, superseded = self.ledger.enqueue(
            job.name,
            scope=self._scope(job),
            host=self.host,
            bucket=job.destination.bucket,
            versions=versions,
            marker=job.session.marker,
        )
        log.debug("job %s: queued %d new versions (%d superseded)", job.name, inserted, superseded)

    def _scope(self, job: Job) -> str:
        return scope_of(job, self.host)

    def _db_down(self, exc: DatabaseUnavailable) -> None:
        if self._db_ok:
            log.error("discovery: %s; complete files wait in memory and are retried", exc)
        self._db_ok = False
        self.on_db(False)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF)

    def _db_up(self) -> None:
        if not self._db_ok:
            log.info("discovery: PostgreSQL is back; rescanning every job")
            self._db_ok = True
            for name in self._jobs:
                self._start_scan(name)
        self.on_db(True)
        self._backoff = 0.5


def _describe(item: PathEvent | ScanRequest | dict[str, Job]) -> str:
    if isinstance(item, dict):
        return "a change of the job set"
    if isinstance(item, ScanRequest):
        return f"a rescan request of job {item.job}"
    return f"job {item.job}: {item.path}"
