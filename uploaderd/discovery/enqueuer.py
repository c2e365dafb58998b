"""Writing complete versions to the ledger on a thread of its own, beside discovery.

Discovery hands over chunks of complete files and goes on scanning while they are written
on a second connection: a start-up scan of a big tree then costs about the larger of the
walk and the writes, not their sum. Chunks are written in the order given; each result goes
back on discovery's inbox, in the same order.

After an outage the writer is *halted*: it returns every chunk it is given unwritten until
discovery, with nothing in flight any more, calls ``resume``. So a chunk given after one
that failed is never written before it: an older version of a path written after a newer
one would supersede it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from uploaderd.config.settings import Job
from uploaderd.discovery.versions import enqueue, failed_version, new_version
from uploaderd.errors import DatabaseUnavailable
from uploaderd.ledger.store import Ledger, NewVersion
from uploaderd.policy.lifecycle import join
from uploaderd.policy.sessions import group_key
from uploaderd.policy.settle import Candidate

log = logging.getLogger(__name__)

IN_FLIGHT = 2  # chunks handed over and not yet taken: enough to keep the writer busy

Item = tuple[Candidate, str]  # a complete candidate and the source that first saw it


@dataclass(eq=False)
class Chunk:
    """Complete files of one job to write, in discovery order."""

    job: Job
    items: list[Item]
    owner: object  # discovery's state of the job, so a result finds where it came from


@dataclass(eq=False)
class Written:
    """What became of a chunk: ``outage`` set means none of it was written (retry it)."""

    chunk: Chunk
    written: list[Item]
    outage: DatabaseUnavailable | None = None


class Enqueuer:
    """The writing thread: chunks in, ``Written`` results out through ``report``."""

    def __init__(self, ledger: Ledger, *, host: str, report: Callable[[Written], None]) -> None:
        self.ledger = ledger
        self.host = host
        self.report = report
        self._todo: queue.Queue[Chunk | None] = queue.Queue(maxsize=IN_FLIGHT)
        self._halted: DatabaseUnavailable | None = None
        self._thread = threading.Thread(target=self._run, name="discovery-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, chunk: Chunk) -> None:
        """Hand over a chunk; waits while ``IN_FLIGHT`` chunks are already waiting."""
        self._todo.put(chunk)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def resume(self) -> None:
        """Write again after an outage (called by discovery once nothing is in flight)."""
        self._halted = None

    def stop(self, deadline: float) -> None:
        """Write what was handed over (by ``deadline``), then end."""
        with contextlib.suppress(queue.Full):  # a writer stuck on a hung database
            self._todo.put(None, timeout=max(0.0, deadline - time.monotonic()))
        join(self._thread, deadline)

    def _run(self) -> None:
        try:
            while (chunk := self._todo.get()) is not None:
                self.report(self._write_or_hold(chunk))
        finally:
            self.ledger.close()  # the writer's connection: closed by the writer

    def _write_or_hold(self, chunk: Chunk) -> Written:
        if self._halted is not None:
            return Written(chunk, [], self._halted)
        try:
            return Written(chunk, self._write_chunk(chunk.job, chunk.items))
        except DatabaseUnavailable as exc:
            self._halted = exc
            return Written(chunk, [], exc)
        except Exception:  # the last net: the chunk is left to the next rescan
            log.exception(
                "discovery: job %s: writing %d versions failed; the next rescan tries again",
                chunk.job.name,
                len(chunk.items),
            )
            return Written(chunk, [])

    def _write_chunk(self, job: Job, chunk: list[Item]) -> list[Item]:
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
            reason = _cannot_queue(exc)
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
            return failed_version(candidate, session_id, _cannot_queue(exc))

    def _enqueue(self, job: Job, versions: list[NewVersion]) -> None:
        inserted, superseded = enqueue(self.ledger, job, self.host, versions)
        log.debug("job %s: queued %d new versions (%d superseded)", job.name, inserted, superseded)


def _cannot_queue(exc: Exception) -> str:
    """The ``failed`` reason of a file that could not be queued (capped like every reason)."""
    return f"cannot queue this file: {type(exc).__name__}: {exc}"[:500]
