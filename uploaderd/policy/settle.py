"""When a file counts as complete: its signature (size, mtime, inode, ctime) unchanged for
``settle``.

A pure policy with injected clocks, so its tests never sleep.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


# PostgreSQL stores the signature in bigint columns. An mtime outside them (after
# 2262-04-11 or before 1677-09-21: `touch -d 2300-01-01`, a camera with a broken clock) is
# held at the nearest bound, so such a file can still be recorded and uploaded; its date is
# unknown (keys.file_date).
MTIME_MIN = -(2**63)
MTIME_MAX = 2**63 - 1


@dataclass(frozen=True, eq=False)
class Signature:
    """What identifies a version of a file: a change of any field is a new version.

    The ctime is in it because every write changes it and nothing can set it back: a file
    rewritten in place with its size kept and its mtime restored (``cp -p``, ``tar``,
    ``rsync --inplace -t``) is still a new version. A signature recorded before migration
    0008 has no ctime (None) and matches any ctime: equality is "the same version".
    """

    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int | None = None

    @classmethod
    def of(cls, stat: os.stat_result) -> Signature:
        """The one place a signature is made from a file's status."""
        return cls(
            stat.st_size, _storable(stat.st_mtime_ns), stat.st_ino, _storable(stat.st_ctime_ns)
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signature):
            return NotImplemented
        return (
            self.size == other.size
            and self.mtime_ns == other.mtime_ns
            and self.inode == other.inode
            and (self.ctime_ns is None or other.ctime_ns is None or self.ctime_ns == other.ctime_ns)
        )

    def __hash__(self) -> int:  # equal signatures must hash alike, with or without a ctime
        return hash((self.size, self.mtime_ns, self.inode))


@dataclass(frozen=True)
class Candidate:
    """A file of a job's root, as discovery saw it: where it is and its signature."""

    root: str
    relpath: str
    signature: Signature


def _storable(nanoseconds: int) -> int:
    return min(max(nanoseconds, MTIME_MIN), MTIME_MAX)


@dataclass
class _Watching:
    signature: Signature
    since: float  # monotonic time the signature was first seen
    source: str
    due: float  # monotonic time at which it can first be complete: no point looking before


class SettleTracker(Generic[K]):
    """Files seen but not yet complete, each with the signature it has held since when.

    A file is complete on an observation that finds the same signature as the previous one
    and either that signature has held for ``settle`` by our clock, or the file's mtime is
    already ``settle`` old (it was written before we saw it, e.g. while the daemon was down).
    """

    def __init__(
        self,
        settle: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settle = settle
        self._monotonic = monotonic
        self._wall = wall
        self._watching: dict[K, _Watching] = {}

    def __len__(self) -> int:
        return len(self._watching)

    def __contains__(self, key: object) -> bool:
        return key in self._watching

    def due(self) -> list[K]:
        """The tracked keys worth looking at now: those that could be complete by now.

        Re-checking only these keeps a burst of thousands of files from being stat'ed on
        every tick while they settle; changes in between arrive as events anyway.
        """
        now = self._monotonic()
        return [key for key, seen in self._watching.items() if seen.due <= now]

    def last_due(self) -> float | None:
        """The monotonic time the last tracked file can be complete, if none changes again."""
        return max((seen.due for seen in self._watching.values()), default=None)

    def next_due(self) -> float | None:
        """The monotonic time the first tracked file can be complete; None if none is tracked."""
        return min((seen.due for seen in self._watching.values()), default=None)

    def observe(self, key: K, signature: Signature, source: str) -> str | None:
        """Record an observation; returns the first source that saw it once it is complete."""
        seen = self._watching.get(key)
        if seen is None or seen.signature != signature:
            first_source = seen.source if seen else source
            now = self._monotonic()
            age = self._wall() - signature.mtime_ns / 1e9
            due = now + max(0.0, min(self.settle, self.settle - age))
            self._watching[key] = _Watching(signature, now, first_source, due)
            return None
        held = self._monotonic() - seen.since
        age = self._wall() - signature.mtime_ns / 1e9
        if held >= self.settle or age >= self.settle:
            del self._watching[key]
            return seen.source
        return None

    def forget(self, key: K) -> None:
        self._watching.pop(key, None)
