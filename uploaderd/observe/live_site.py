"""What ``uploaderd top`` knows of a running site, one frame a second.

A frame comes from two places. The ledger's live rows, through the queries ``status`` runs:
counts by state from the incremental count tables, the oldest pending version through the
live index, unsent registrations, paused destinations and the newest errors; never a scan
of the history, so a frame a second costs the same at any ledger size. And this host's
daemon: its uploads in flight, with the bytes sent so far, from ``/uploads`` on its
metrics endpoint. Rates are the ledger's uploaded totals differenced over the last minute
of frames, so they are the site's, every host that shares the ledger included.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from uploaderd.config.settings import Job
from uploaderd.errors import DatabaseUnavailable
from uploaderd.ledger.store import JobStateCount, Ledger, State
from uploaderd.observe.metrics import UPLOADS_PATH
from uploaderd.policy.transfers import Active

RATE_WINDOW_SECONDS = 60.0
_DAEMON_TIMEOUT = 0.5  # seconds: a frame a second cannot wait longer for this host's daemon
ERRORS_SHOWN = 5


@dataclass(frozen=True)
class JobLine:
    name: str
    states: Mapping[str, int]
    oldest_pending_seconds: float | None
    files_per_second: float | None  # None until two frames are apart
    bytes_per_second: float | None
    unsent_registrations: int
    enabled: bool | None  # None: in the ledger, no longer configured


@dataclass(frozen=True)
class Frame:
    host: str
    taken_at: datetime
    jobs: tuple[JobLine, ...]
    rate_seconds: float  # how far back the rates reach (up to a minute)
    uploads: tuple[Active, ...] | None  # this host's in flight; None: the daemon did not say
    daemon: str  # where the uploads came from, or why there are none
    paused: tuple[dict[str, Any], ...]
    errors: tuple[dict[str, Any], ...]
    ledger_problem: str | None = None  # the ledger could not be read this frame: why


@dataclass(frozen=True)
class _LedgerRows:
    """One frame's reading of the ledger (``status``'s queries)."""

    counts: list[JobStateCount] = field(default_factory=list)
    registrations: list[dict[str, Any]] = field(default_factory=list)
    paused: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


class Rates:
    """Files and bytes a second of each job over the last ``window`` seconds, from successive
    samples of its uploaded totals. Totals that fall (``prune`` deleted history) restart
    the job's window."""

    def __init__(
        self, window: float = RATE_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self.clock = clock
        self._samples: dict[str, deque[tuple[float, int, int]]] = {}

    def add(self, job: str, files: int, size: int) -> None:
        now = self.clock()
        samples = self._samples.setdefault(job, deque())
        if samples and (files < samples[-1][1] or size < samples[-1][2]):
            samples.clear()
        samples.append((now, files, size))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()

    def rate(self, job: str) -> tuple[float, float] | None:
        """(files/s, bytes/s), or None before two samples."""
        samples = self._samples.get(job)
        if not samples or len(samples) < 2:
            return None
        (first, files0, bytes0), (last, files1, bytes1) = samples[0], samples[-1]
        seconds = last - first
        return ((files1 - files0) / seconds, (bytes1 - bytes0) / seconds) if seconds > 0 else None

    def reach(self) -> float:
        """Seconds between the oldest and newest sample of any job."""
        spans = [s[-1][0] - s[0][0] for s in self._samples.values() if s]
        return max(spans, default=0.0)


def daemon_url(listen: str) -> str | None:
    """Where this host's daemon answers, from ``metrics.listen``; None when it is off. A
    wildcard address is reached on loopback."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    with contextlib.suppress(ValueError):  # a name, such as localhost, stays as it is
        address = ipaddress.ip_address(host)
        if address.is_unspecified:
            host = "::1" if address.version == 6 else "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def fetch_uploads(base: str) -> tuple[Active, ...]:
    """This host's uploads in flight, from the daemon; OSError when it does not answer."""
    url = base + UPLOADS_PATH  # http://, made by daemon_url: no other scheme reaches here
    with urllib.request.urlopen(url, timeout=_DAEMON_TIMEOUT) as response:  # noqa: S310
        document = json.load(response)
    return tuple(Active(**upload) for upload in document["uploads"])


class SiteSampler:
    """Builds a frame from the ledger and this host's daemon; keeps the rates' samples."""

    def __init__(
        self,
        ledger: Ledger,
        jobs: Callable[[], Mapping[str, Job]],
        metrics_listen: str,
        job: str | None = None,
    ) -> None:
        self.ledger = ledger
        self.jobs = jobs
        self.job = job
        self.daemon_url = daemon_url(metrics_listen)
        self.rates = Rates()
        self._last = _LedgerRows()  # the last rows read, shown while the ledger is away

    def frame(self) -> Frame:
        problem = None
        try:
            self._last = self._read_ledger()
        except DatabaseUnavailable as exc:
            problem = str(exc)
        uploads, daemon = self._uploads()
        return Frame(
            host=socket.gethostname(),
            taken_at=datetime.now(UTC),
            jobs=tuple(self._job_lines()),
            rate_seconds=self.rates.reach(),
            uploads=uploads,
            daemon=daemon,
            paused=tuple(self._last.paused),
            errors=tuple(self._last.errors),
            ledger_problem=problem,
        )

    def _read_ledger(self) -> _LedgerRows:
        rows = _LedgerRows(
            counts=self.ledger.job_counts(self.job),
            registrations=self.ledger.registration_counts(self.job),
            paused=self.ledger.paused_destinations(self.job),
            errors=self.ledger.recent_errors(self.job, limit=ERRORS_SHOWN),
        )
        uploaded = {
            row.job: (row.files, row.bytes) for row in rows.counts if row.state == State.UPLOADED
        }
        for name in self._names(rows.counts):
            self.rates.add(name, *uploaded.get(name, (0, 0)))
        return rows

    def _names(self, counts: list[JobStateCount]) -> list[str]:
        """The jobs shown: those configured and those the ledger has files of (``--job``:
        that one)."""
        names = {row.job for row in counts} | set(self.jobs())
        return sorted(name for name in names if self.job in (None, name))

    def _job_lines(self) -> list[JobLine]:
        configured = self.jobs()
        states: dict[str, dict[str, int]] = {name: {} for name in self._names(self._last.counts)}
        oldest: dict[str, float | None] = {}
        for row in self._last.counts:
            states.setdefault(row.job, {})[row.state] = row.files
            if row.state == State.PENDING:
                oldest[row.job] = row.oldest_age_seconds
        unsent: dict[str, int] = {}
        for reg in self._last.registrations:
            unsent[reg["job"]] = unsent.get(reg["job"], 0) + reg["registrations"]
        lines = []
        for name in sorted(states):
            rate = self.rates.rate(name)
            job = configured.get(name)
            lines.append(
                JobLine(
                    name=name,
                    states=states[name],
                    oldest_pending_seconds=oldest.get(name),
                    files_per_second=rate[0] if rate else None,
                    bytes_per_second=rate[1] if rate else None,
                    unsent_registrations=unsent.get(name, 0),
                    enabled=job.enabled if job is not None else None,
                )
            )
        return lines

    def _uploads(self) -> tuple[tuple[Active, ...] | None, str]:
        if self.daemon_url is None:
            return None, "metrics.listen is off: uploads in flight unknown"
        try:
            uploads = fetch_uploads(self.daemon_url)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return None, f"no answer from {self.daemon_url} ({reason}): uploads in flight unknown"
        if self.job is not None:
            uploads = tuple(u for u in uploads if u.job == self.job)
        return uploads, f"uploads in flight from {self.daemon_url}"
