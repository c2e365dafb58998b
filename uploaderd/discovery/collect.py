"""What ``uploaderd upload`` may queue right now: the complete files under a job's roots.

The daemon learns that a file is complete over time (events, then ``settle``); a one-shot run
has to decide within one sitting. It scans once, skips what the ledger already holds (asked
a batch of paths at a time), then re-stats the rest until each has kept its signature for
``settle`` (a file whose mtime is already ``settle`` old is complete at its second look). A
file still changing when the bounded wait is over is reported, not waited on for ever: the
next run or the daemon takes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from uploaderd.config.settings import Job
from uploaderd.discovery.scanner import ScanRules, recheck, scan
from uploaderd.ledger.store import LOOKUP_BATCH
from uploaderd.policy.settle import Candidate, SettleTracker

PathKey = tuple[str, str]  # (root, relpath)
# Which of these candidates does the ledger hold with exactly this signature?
KnownPaths = Callable[[Sequence[Candidate]], set[PathKey]]


@dataclass
class Collected:
    complete: list[Candidate] = field(default_factory=list)
    known: int = 0  # found with a signature the ledger already holds
    unsettled: list[Candidate] = field(default_factory=list)  # still being written


@dataclass(frozen=True)
class Clock:
    """Injected time, so the settle wait is tested without sleeping."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


def rules_of(job: Job) -> ScanRules:
    source = job.source
    return ScanRules(source.filter, source.recursive, source.follow_symlinks)


def settle_budget(settle: float) -> float:
    """How long one run waits for files to settle: a file that stops changing within about one
    ``settle`` of the scan still makes it; one written for longer is left for the next run."""
    return 2 * settle + 1.0


def collect(
    job: Job,
    known: KnownPaths,
    *,
    clock: Clock | None = None,
    on_wait: Callable[[int, float], None] = lambda waiting, remaining: None,
) -> Collected:
    """Scan the job's roots now and settle what is new; ``on_wait(files, seconds left)``:
    the seconds until the last of them is complete if none changes again, within the budget."""
    clock = clock or Clock()
    result = Collected()
    tracker: SettleTracker[PathKey] = SettleTracker(
        job.source.settle, monotonic=clock.monotonic, wall=clock.wall
    )
    waiting: dict[PathKey, Candidate] = {}
    rules = rules_of(job)
    seen: list[Candidate] = []
    for root in job.source.paths:
        for candidate in scan(str(root), rules):
            seen.append(candidate)
            if len(seen) >= LOOKUP_BATCH:
                _skip_known(seen, known, tracker, waiting, result)
    _skip_known(seen, known, tracker, waiting, result)
    deadline = clock.monotonic() + settle_budget(job.source.settle)
    interval = min(0.5, max(0.05, job.source.settle / 4))
    while waiting:
        _look_again(waiting, tracker, rules, result)
        now = clock.monotonic()
        remaining = deadline - now
        if not waiting or remaining <= 0:
            break
        last = tracker.last_due()
        on_wait(len(waiting), max(0.0, min(deadline, last if last is not None else now) - now))
        clock.sleep(min(interval, remaining))
    result.unsettled = sorted(waiting.values(), key=lambda c: (c.root, c.relpath))
    result.complete.sort(key=lambda c: (c.root, c.relpath))
    return result


def _skip_known(
    seen: list[Candidate],
    known: KnownPaths,
    tracker: SettleTracker[PathKey],
    waiting: dict[PathKey, Candidate],
    result: Collected,
) -> None:
    """Count the candidates the ledger holds; start settling the others. Empties ``seen``."""
    held = known(seen)
    for candidate in seen:
        key = (candidate.root, candidate.relpath)
        if key in held:
            result.known += 1
        else:
            tracker.observe(key, candidate.signature, "scan")
            waiting[key] = candidate
    seen.clear()


def _look_again(
    waiting: dict[PathKey, Candidate],
    tracker: SettleTracker[PathKey],
    rules: ScanRules,
    result: Collected,
) -> None:
    """Re-stat every waiting file: gone ones are dropped, settled ones move to complete."""
    inside: dict[str, bool] = {}  # this round's directories found free of links
    for key in list(waiting):
        root, relpath = key
        candidate = recheck(root, relpath, rules, inside)
        if candidate is None:
            del waiting[key]
            tracker.forget(key)
        elif tracker.observe(key, candidate.signature, "scan") is not None:
            del waiting[key]
            result.complete.append(candidate)
        else:
            waiting[key] = candidate
