"""Bytes on the wire, as the workers send them: what a progress display polls.

The ledger only learns of a file when its attempt ends; a 114 MiB file would show nothing for
its whole upload. So the workers count the bytes of each request body as botocore reads it
to send (small files and every multipart part), here, under one lock; a display polls
``snapshot()`` a few times a second. Nothing here touches the database.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# How often a display that is not a terminal prints a one-line summary (``--stats``).
STATS_SECONDS = 10.0


@dataclass(frozen=True)
class Active:
    """A file being uploaded right now: bytes sent of this attempt, of its size."""

    job: str
    relpath: str
    sent: int
    size: int


@dataclass(frozen=True)
class Snapshot:
    sent_total: int  # every byte sent since the start, retries included (for the speed)
    active: tuple[Active, ...]
    last_error: str | None  # the latest failed attempt: "relpath: error"


class Transfers:
    """The thread-safe counter the workers feed and the display reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent_total = 0
        self._active: dict[int, list[Any]] = {}  # version id → [job, relpath, sent, size]
        self._last_error: str | None = None

    def begin(self, version_id: int, job: str, relpath: str, size: int) -> FileProgress:
        """Start counting one attempt; its bytes are reported through what this returns."""
        with self._lock:
            self._active[version_id] = [job, relpath, 0, size]
        return FileProgress(self, version_id)

    def add(self, version_id: int, count: int, *, on_wire: bool) -> None:
        """Bytes of one attempt: on the wire now (``on_wire``), or held from an earlier one."""
        with self._lock:
            if on_wire:
                self._sent_total += count
            entry = self._active.get(version_id)
            if entry is not None:
                entry[2] = min(entry[3], entry[2] + count)

    def failed(self, relpath: str, error: str) -> None:
        with self._lock:
            self._last_error = f"{relpath}: {error}"

    def end(self, version_ids: list[int]) -> None:
        """The attempts' outcomes are in the ledger now: stop showing them as in flight."""
        with self._lock:
            for version_id in version_ids:
                self._active.pop(version_id, None)

    def snapshot(self) -> Snapshot:
        with self._lock:
            active = tuple(Active(*entry) for entry in self._active.values())
            return Snapshot(self._sent_total, active, self._last_error)


@dataclass(frozen=True)
class FileProgress:
    """One attempt's reporter, handed to the uploader."""

    transfers: Transfers | None
    version_id: int

    def sent(self, count: int) -> None:
        if self.transfers is not None:
            self.transfers.add(self.version_id, count, on_wire=True)

    def kept(self, count: int) -> None:
        """Bytes an earlier attempt already sent (resumed parts): done, but not speed."""
        if self.transfers is not None:
            self.transfers.add(self.version_id, count, on_wire=False)


NO_PROGRESS = FileProgress(None, 0)


class CountingBody(io.BytesIO):
    """A request body that reports the bytes botocore reads from it to send.

    botocore also reads a body before sending (a checksum, a signature) and rewinds it for a
    retry; like s3transfer's ``ReadFileChunk``, counting is off until the request is signed
    (``Storage`` toggles it on ``request-created``), and only bytes past the furthest point
    already counted are reported, so a resent stretch counts once.
    """

    def __init__(self, data: bytes, report: Callable[[int], None]) -> None:
        super().__init__(data)
        self._report = report
        self._counting = False
        self._counted = 0

    def signal_not_transferring(self) -> None:
        self._counting = False

    def signal_transferring(self) -> None:
        self._counting = True

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if self._counting:
            self._count_to(self.tell())
        return chunk

    def finish(self) -> None:
        """The request succeeded: every byte of the body was sent."""
        self._count_to(len(self.getbuffer()))

    def _count_to(self, position: int) -> None:
        if position > self._counted:
            self._report(position - self._counted)
            self._counted = position


def not_transferring(request: Any, **_: Any) -> None:
    if hasattr(request.body, "signal_not_transferring"):
        request.body.signal_not_transferring()


def transferring(request: Any, **_: Any) -> None:
    if hasattr(request.body, "signal_transferring"):
        request.body.signal_transferring()
