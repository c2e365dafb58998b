"""From "look at this path" to queued file versions: the settle check, then the ledger.

One thread owns all discovery state: the paths waiting to settle, the scans in progress and
the batches not yet written. Whether a path's signature is already in the ledger is asked of
the ledger, a batch of candidates per round trip (a bounded cache remembers the paths just
written), so memory follows the files in flight, never the ledger's history. Watchdog threads and
the scheduler only put requests on its queue. Scans advance a slice at a time between
events, so a long rescan never stalls event handling. Complete versions are handed in
batches to a writer thread with a connection of its own (``enqueuer``: one round trip for
many files, while the scan goes on); while PostgreSQL is away they wait in memory, and the
next successful write is followed by a full rescan. A shared job's files are discovered by
one host at a time (``daemon.leadership``): until told it leads, discovery leaves them be,
and once told it scans the job's roots.

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

from uploaderd.config.settings import Job
from uploaderd.discovery.enqueuer import Chunk, Enqueuer, Item, Written
from uploaderd.discovery.scanner import ScanRules, check_path, recheck, scan
from uploaderd.discovery.versions import scope_of
from uploaderd.discovery.watcher import PathEvent
from uploaderd.errors import DatabaseUnavailable
from uploaderd.ledger.store import LOOKUP_BATCH, Ledger
from uploaderd.observe import metrics
from uploaderd.policy.lifecycle import join
from uploaderd.policy.retry import OUTAGE_FIRST_WAIT, next_outage_wait
from uploaderd.policy.settle import Candidate, SettleTracker, Signature

log = logging.getLogger(__name__)

BATCH_SIZE = 500
SCAN_SLICE = 2000
RECENT_PATHS = 10_000  # signatures just written, remembered without asking the ledger

PathKey = tuple[str, str]  # (root, relpath)


@dataclass(frozen=True)
class ScanRequest:
    job: str


@dataclass(frozen=True)
class Leading:
    """Whether this host discovers a shared job's files now."""

    job: str
    leading: bool


@dataclass(frozen=True)
class ServerChanged:
    """The ledger is another server than before (a promoted standby): what it was told last
    may be lost."""


_Inbox = PathEvent | ScanRequest | Leading | ServerChanged | dict[str, Job] | Written


@dataclass(frozen=True)
class _Scan:
    job: str
    path: str  # the root, or the directory that appeared
    candidates: Iterator[Candidate]


# Seconds between two ticks (ledger look-ups and re-checks) at least, whatever the due times
# say: files arriving one by one are looked up and written a few at a time, not one
# statement each. At 100 files/s, 0.05 s made batches of 5 files and 0.2 s batches of 20,
# which took the CPU per file of such a trickle from 3.0x a burst's to 2.0x (bench/README.md);
# a file's upload waits for it at most once, after its settle.
_SOONEST_TICK = 0.2
# Seconds an event waits for the next ones before the thread handles it (not during a scan):
# with it, the trickle's discovery thread spent 40 % less CPU.
_EVENT_LINGER = 0.02


@dataclass
class _JobState:
    job: Job
    tracker: SettleTracker[PathKey]
    # Seen, not yet checked against the ledger: (candidate, source).
    unchecked: list[Item] = field(default_factory=list)
    recent: OrderedDict[PathKey, Signature] = field(default_factory=OrderedDict)
    # Complete, not yet written; the first ``sent`` of them are with the writer.
    batch: list[Item] = field(default_factory=list)
    sent: int = 0

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
        self.inbox: queue.SimpleQueue[_Inbox] = queue.SimpleQueue()
        self._jobs: dict[str, _JobState] = {}
        self._leading: set[str] = set()  # shared jobs whose files this host discovers
        # Scans in progress, first in first out within a job, the jobs a slice each in
        # turn, so that one job's many scans (a storm of overflows, a tree of new
        # directories) cannot hold back another job's.
        self._scans: deque[_Scan] = deque()
        # (job, path) of the scans not begun: asking again for one of them adds nothing.
        self._waiting: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="discovery", daemon=True)
        self._db_ok = True
        self._retry_at = 0.0
        self._backoff = OUTAGE_FIRST_WAIT
        self._idle = threading.Event()
        # Files that joined ``unchecked`` or the tracker since the last tick, and its time.
        self._newly_seen = False
        self._last_tick = 0.0
        self._writer = Enqueuer(
            ledger.clone(f"{ledger.application_name} writer"), host=self.host, report=self.inbox.put
        )

    # --- called from other threads ---------------------------------------------------------

    def set_jobs(self, jobs: dict[str, Job]) -> None:
        self.inbox.put(dict(jobs))

    def submit(self, event: PathEvent) -> None:
        self.inbox.put(event)

    def request_scan(self, job: str) -> None:
        self.inbox.put(ScanRequest(job))

    def server_changed(self) -> None:
        self.inbox.put(ServerChanged())

    def set_leading(self, job: str, leading: bool) -> None:
        self.inbox.put(Leading(job, leading))

    def start(self) -> None:
        self._writer.start()
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """Stop after a last attempt to write what is complete (by ``deadline``)."""
        self._stop.set()
        join(self._thread, deadline)
        self._writer.stop(deadline)

    def alive(self) -> bool:
        return self._thread.is_alive() and self._writer.alive()

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
        wait = max(0.0, next_tick - time.monotonic()) if busy else 0.5
        self._drain(timeout=0.0 if self._scans else wait)
        self._advance_scan()
        now = time.monotonic()
        if self._newly_seen:
            # A new file waits for its "already known?" (and, with an old mtime, for its
            # completion) no longer than the shortest tick after the last.
            self._newly_seen = False
            next_tick = min(next_tick, self._last_tick + _SOONEST_TICK)
        if now >= next_tick:
            self._last_tick = now
            self._check_unchecked()
            self._recheck_tracked()
            next_tick = self._next_tick(now)
        self._flush()
        return next_tick

    def _next_tick(self, now: float) -> float:
        """When to re-check settling files: as soon as the first can be complete, and every
        quarter of the shortest settle time to see changes that came without an event."""
        settles = [s.job.source.settle for s in self._jobs.values()] or [1.0]
        tick = now + min(0.5, max(0.05, min(settles) / 4))
        dues = [d for s in self._jobs.values() if (d := s.tracker.next_due()) is not None]
        return max(now + _SOONEST_TICK, min([tick, *dues]))

    def _drain(self, timeout: float) -> None:
        try:
            item = self.inbox.get(timeout=timeout) if timeout else self.inbox.get_nowait()
        except queue.Empty:
            return
        self._idle.clear()  # busy with it until the loop looks again
        if timeout and self.inbox.empty():
            # Files arriving one by one: let the next few events join this one, so the
            # thread wakes (and each burst's memo serves) a few files at a time, not each.
            self._stop.wait(_EVENT_LINGER)
        inside: dict[str, dict[str, bool]] = {}  # per job: recheck's memo, for this burst
        for _ in range(10_000):  # bounded, so a flood of events cannot starve the rest
            try:
                self._handle(item, inside)
            except Exception:
                log.exception("discovery: unexpected error on %s; going on", _describe(item))
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item: _Inbox, inside: dict[str, dict[str, bool]]) -> None:
        if isinstance(item, Written):
            self._written(item)
        elif isinstance(item, dict):
            self._apply_jobs(item)
        elif isinstance(item, ScanRequest):
            self._start_scan(item.job)
        elif isinstance(item, Leading):
            self._lead(item)
        elif isinstance(item, ServerChanged):
            self._server_changed()
        elif item.job in self._jobs and self._discovers(item.job):
            state = self._jobs[item.job]
            if item.is_dir:
                self._add_scan(item.job, item.root, start=item.path)
            else:
                memo = inside.setdefault(item.job, {})
                candidate = check_path(item.root, item.path, state.rules, memo)
                if candidate is not None:
                    self._observe(state, candidate, "watch")

    def _apply_jobs(self, jobs: dict[str, Job]) -> None:
        for name in [name for name in self._jobs if name not in jobs]:
            self._submit(self._jobs.pop(name), force=True)  # a last write of what is complete
            self._drop_scans(name)
        for name, job in jobs.items():
            state = self._jobs.get(name)
            if state is None or state.job.source != job.source:
                self._jobs[name] = _JobState(job, SettleTracker(job.source.settle))
                self._drop_scans(name)  # they follow the old paths and filter
                self._start_scan(name)
            else:
                state.job = job

    def _discovers(self, name: str) -> bool:
        return not self._jobs[name].job.source.shared or name in self._leading

    def _lead(self, item: Leading) -> None:
        if not item.leading:
            self._leading.discard(item.job)
            state = self._jobs.get(item.job)
            if state is not None:  # settling files are the new discovering host's now
                state.tracker = SettleTracker(state.job.source.settle)
                state.unchecked.clear()
            return
        if item.job not in self._leading:
            self._leading.add(item.job)
            self._start_scan(item.job)  # what arrived while another host discovered

    def _start_scan(self, name: str) -> None:
        state = self._jobs.get(name)
        if state is None or not self._discovers(name):
            return
        for path in state.job.source.paths:
            self._add_scan(name, str(path))

    def _server_changed(self) -> None:
        """After a failover the new primary may lack the last versions written (asynchronous
        replication): forget which paths were written, and look at every file again, so
        the ledger is asked about each."""
        for name, state in self._jobs.items():
            state.recent.clear()
            self._start_scan(name)

    def _add_scan(self, name: str, root: str, start: str | None = None) -> None:
        key = (name, start or root)
        if key in self._waiting:
            return
        self._waiting.add(key)
        rules = self._jobs[name].rules
        self._scans.append(_Scan(name, start or root, scan(root, rules, start=start)))

    def _drop_scans(self, name: str) -> None:
        self._scans = deque(s for s in self._scans if s.job != name)
        self._waiting = {key for key in self._waiting if key[0] != name}

    def _advance_scan(self) -> None:
        if not self._scans:
            return
        current = self._scans[0]
        self._waiting.discard((current.job, current.path))  # begun: files may change behind it
        state = self._jobs.get(current.job)
        seen = 0
        try:
            for _, candidate in zip(range(SCAN_SLICE), current.candidates, strict=False):
                seen += 1
                if state is not None and self._discovers(current.job):
                    self._observe(state, candidate, "scan")
        except Exception:
            log.exception(
                "discovery: job %s: the scan of %s stopped on an unexpected error; "
                "the next rescan tries again",
                current.job,
                current.path,
            )
            seen = 0
        self._scans.popleft()
        if seen == SCAN_SLICE:
            self._scans.appendleft(current)
        self._take_turns(current.job)

    def _take_turns(self, job: str) -> None:
        """After a slice, the job's scans (in their order) go behind the other jobs': jobs
        take turns, and a job's own roots are still scanned one after the other."""
        mine = [s for s in self._scans if s.job == job]
        if len(mine) < len(self._scans):
            self._scans = deque([*(s for s in self._scans if s.job != job), *mine])

    def _observe(self, state: _JobState, candidate: Candidate, source: str) -> None:
        key = (candidate.root, candidate.relpath)
        if state.recent.get(key) == candidate.signature:
            state.tracker.forget(key)
        elif key in state.tracker:
            # Unknown at first sight and settling since: no need to ask the ledger again.
            self._track(state, candidate, source)
        else:
            state.unchecked.append((candidate, source))
            self._newly_seen = True
            if len(state.unchecked) >= LOOKUP_BATCH:
                self._check_known(state)

    def _track(self, state: _JobState, candidate: Candidate, source: str) -> None:
        first_source = state.tracker.observe(
            (candidate.root, candidate.relpath), candidate.signature, source
        )
        if first_source is not None:
            state.batch.append((candidate, first_source))
        else:
            self._newly_seen = True

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
            inside: dict[str, bool] = {}  # per round: directories found free of links
            for root, relpath in state.tracker.due():
                try:
                    candidate = recheck(root, relpath, rules, inside)
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

    # --- writing to the ledger (on the writer's thread) --------------------------------------

    def _flush(self, *, force: bool = False) -> None:
        """Hand complete files to the writer: a job being scanned in full batches (the scan
        finds more), the others all they have."""
        if time.monotonic() < self._retry_at:
            return
        if not any(state.sent for state in self._jobs.values()):
            self._writer.resume()  # nothing in flight: after an outage, safe to write again
        scanning = {current.job for current in self._scans}
        for name, state in list(self._jobs.items()):
            self._submit(state, force=force or name not in scanning)

    def _submit(self, state: _JobState, *, force: bool) -> None:
        """Hand the batch's unsent files to the writer, a chunk at a time; they stay at the
        front of the batch until their result comes back."""
        while (unsent := len(state.batch) - state.sent) and (force or unsent >= BATCH_SIZE):
            chunk = state.batch[state.sent : state.sent + BATCH_SIZE]
            state.sent += len(chunk)
            self._writer.submit(Chunk(state.job, chunk, state))

    def _written(self, result: Written) -> None:
        """A chunk's result (in the order the chunks were given)."""
        state = result.chunk.owner
        assert isinstance(state, _JobState)
        count = len(result.chunk.items)
        state.sent -= count
        if result.outage is not None:  # kept at the front of the batch, in order
            self._db_down(result.outage)
            return
        del state.batch[:count]
        for candidate, _ in result.written:
            state.remember(candidate)
        for source, number in Tally(source for _, source in result.written).items():
            metrics.files_discovered.labels(state.job.name, source).inc(number)
        self._db_up()

    def _scope(self, job: Job) -> str:
        return scope_of(job, self.host)

    def _db_down(self, exc: DatabaseUnavailable) -> None:
        if self._db_ok:
            log.error("discovery: %s; complete files wait in memory and are retried", exc)
        self._db_ok = False
        self.on_db(False)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = next_outage_wait(self._backoff)

    def _db_up(self) -> None:
        if not self._db_ok:
            log.info("discovery: PostgreSQL is back; rescanning every job")
            self._db_ok = True
            for name in self._jobs:
                self._start_scan(name)
        self.on_db(True)
        self._backoff = OUTAGE_FIRST_WAIT


def _describe(item: _Inbox) -> str:
    if isinstance(item, Written):
        return (
            f"the result of writing {len(item.chunk.items)} versions of job {item.chunk.job.name}"
        )
    if isinstance(item, dict):
        return "a change of the job set"
    if isinstance(item, ScanRequest):
        return f"a rescan request of job {item.job}"
    if isinstance(item, Leading):
        return f"a change of the discovering host of job {item.job}"
    if isinstance(item, ServerChanged):
        return "a failover of PostgreSQL"
    return f"job {item.job}: {item.path}"
