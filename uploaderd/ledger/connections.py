"""A process's budget of database connections, shared by its threads.

The daemon's components (discovery and its writer, the upload dispatcher, the sweeps, the
trigger senders, the prune) borrow a connection for each transaction and give it back, so a
host holds at most ``database.connections`` whatever it does, and a thread that finds them
all in use waits its turn. A site of many hosts on one PostgreSQL can then count:
hosts x budget, plus the operator's own sessions, must fit in ``max_connections``.

Idle, a host holds one connection, the dispatcher's, listening for new work. Another thread
that needs a connection asks the listener to lend it (the listener ends its wait and gives
it back) before it takes or opens another, and a listener that finds every connection lent
out waits without one rather than open another. A thread opens another connection only
after waiting ``GROW_AFTER`` for one to come back, and a connection left unused for
``idle_close`` seconds is closed.

A thread that already holds a connection gets the same one again: borrowing twice never
deadlocks, even at a budget of one.

The budget also carries the process's bell. Through a transaction pooler nothing can
LISTEN, so a thread that queued new work rings it, and the waiter hears it at once instead
of at its next poll.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

IDLE_CLOSE_SECONDS = 10.0
GROW_AFTER = 0.05  # seconds a thread waits for a lent connection before opening another


class Connection(Protocol):
    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...


C = TypeVar("C", bound=Connection)


@dataclass
class _Turn(Generic[C]):
    """A thread waiting for a connection: handed one, or allowed to open one."""

    connection: C | None = None
    may_open: bool = False


@dataclass
class _Idle(Generic[C]):
    connection: C
    since: float


class Budget(Generic[C]):
    """At most ``size`` connections, opened by ``open_connection`` when needed."""

    def __init__(
        self,
        open_connection: Callable[[], C],
        size: int,
        *,
        idle_close: float | None = IDLE_CLOSE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if size < 1:
            raise ValueError("a connection budget is at least 1")
        self.size = size
        self._open_connection = open_connection
        self._idle_close = idle_close
        self._clock = clock
        self._lock = threading.Condition()
        self._free: list[_Idle[C]] = []  # the most recently returned last: reused first
        self._opened = 0  # open or being opened, lent or free
        self._turns: deque[_Turn[C]] = deque()
        self._held = threading.local()  # the connection this thread holds
        self._listening: C | None = None  # lent to a thread that waits on it and yields it
        self._bare = False  # a listener waits without a connection, for one to come back
        self._lent: set[int] = set()  # id() of each connection lent out
        self._doomed: set[int] = set()  # lent when close() was called: closed on return
        # Pipes made on first use, so a ledger that never waits (a command's) holds none.
        self._yield_r, self._yield_w = -1, -1
        self._bell: tuple[int, int] | None = None

    @property
    def opened(self) -> int:
        with self._lock:
            return self._opened

    @contextmanager
    def connection(self) -> Iterator[C]:
        """A connection for this thread until the block ends: the one it holds already,
        else any."""
        held: C | None = getattr(self._held, "connection", None)
        if held is not None:
            yield held
            return
        connection = self._acquire()
        self._held.connection = connection
        try:
            yield connection
        finally:
            self._held.connection = None
            self._release(connection)

    def hang_bell(self) -> None:
        """Make the bell (a waiter does, before it first looks for work): until then, with
        nobody to hear it, ringing does nothing."""
        with self._lock:
            if self._bell is None:
                self._bell = _pipe()

    def ring(self) -> None:
        """Tell this process's waiter that new work was queued."""
        if self._bell is not None:
            with contextlib.suppress(BlockingIOError):  # a full pipe: it will hear anyway
                os.write(self._bell[1], b"x")

    def wait_for_ring(self, timeout: float, extra_fds: Sequence[int] = ()) -> bool:
        """Wait without a connection for the bell, ``extra_fds`` or ``timeout``; True when
        the bell rang."""
        self.hang_bell()
        assert self._bell is not None
        ready, _, _ = select.select([self._bell[0], *extra_fds], [], [], timeout)
        if self._bell[0] not in ready:
            return False
        _drain(self._bell[0])
        return True

    @contextmanager
    def listening(self) -> Iterator[tuple[C | None, int]]:
        """A free connection to wait on, with a descriptor that becomes readable when
        another thread needs it: the waiter then ends its wait, and the block, to lend it.
        When every open connection is lent out, no connection (the waiter waits without one
        rather than open another, which keeps an idle host at one connection), and the
        descriptor becomes readable as soon as one comes back."""
        must_open = False
        with self._lock:
            if self._yield_r < 0:
                self._yield_r, self._yield_w = _pipe()
            self._close_idle()  # an idle host borrows nothing else that would
            if self._free:
                connection: C | None = self._lend(self._free.pop().connection)
            else:
                connection = None
                must_open = self._opened == 0
                self._opened += must_open
                self._bare = not must_open
        if must_open:
            connection = self._open()
            with self._lock:
                self._lend(connection)
        if connection is not None:
            self._held.connection = connection
            with self._lock:
                self._listening = connection
                if self._turns:
                    os.write(self._yield_w, b"x")
        try:
            yield connection, self._yield_r
        finally:
            with self._lock:
                self._listening = None
                self._bare = False
            _drain(self._yield_r)
            if connection is not None:
                self._held.connection = None
                self._release(connection)

    def close(self) -> None:
        """Close every free connection now, and each lent one when it comes back; the
        budget opens new ones when asked again."""
        with self._lock:
            free, self._free = self._free, []
            self._opened -= len(free)
            self._doomed |= self._lent
        for idle in free:
            idle.connection.close()

    def _acquire(self) -> C:
        with self._lock:
            self._close_idle()
            # The listener's connection first, even with another free: the others then
            # go unused and close, down to the one an idle host keeps.
            if not self._turns and self._free and self._listening is None:
                return self._lend(self._free.pop().connection)
            if self._opened == 0:
                self._opened += 1
            else:
                turn: _Turn[C] = _Turn()
                self._turns.append(turn)
                if self._listening is not None:
                    os.write(self._yield_w, b"x")  # the listener lends its connection
                self._wait_turn(turn)
                if turn.connection is not None:
                    return self._lend(turn.connection)
        connection = self._open()  # outside the lock: connecting may take seconds
        with self._lock:
            return self._lend(connection)

    def _wait_turn(self, turn: _Turn[C]) -> None:
        """Wait to be handed a connection; after ``GROW_AFTER`` seconds, open another if the
        budget allows (a moment's overlap of two sweeps does not open a second connection
        for good; a burst does)."""
        grow_at = time.monotonic() + GROW_AFTER
        while turn.connection is None and not turn.may_open:
            left = grow_at - time.monotonic()
            if left <= 0 and self._opened < self.size:
                self._turns.remove(turn)
                self._opened += 1
                turn.may_open = True
                return
            self._lock.wait(left if left > 0 else None)

    def _lend(self, connection: C) -> C:
        self._lent.add(id(connection))
        return connection

    def _open(self) -> C:
        """Open a connection already counted in ``_opened``; a failure gives its place back."""
        try:
            return self._open_connection()
        except BaseException:
            with self._lock:
                self._opened -= 1
                self._hand_on()
            raise

    def _release(self, connection: C) -> None:
        with self._lock:
            self._lent.discard(id(connection))
            doomed = id(connection) in self._doomed
            self._doomed.discard(id(connection))
            if not connection.closed and not doomed:
                if self._turns:
                    self._turns.popleft().connection = connection
                    self._lock.notify_all()
                else:
                    self._free.append(_Idle(connection, self._clock()))
                    if self._bare:
                        os.write(self._yield_w, b"x")  # the listener may take it now
                return
            self._opened -= 1
            self._hand_on()
        connection.close()

    def _hand_on(self) -> None:
        """A place was freed (a connection closed): the first thread waiting may open one."""
        if self._turns and self._opened < self.size:
            self._turns.popleft().may_open = True
            self._opened += 1
            self._lock.notify_all()

    def _close_idle(self) -> None:
        """Drop the free connections that closed or that idled past ``idle_close``."""
        deadline = -1.0 if self._idle_close is None else self._clock() - self._idle_close
        stale = [idle for idle in self._free if idle.connection.closed or idle.since < deadline]
        if stale:
            self._free = [idle for idle in self._free if all(idle is not s for s in stale)]
            self._opened -= len(stale)
            for idle in stale:
                idle.connection.close()


def _pipe() -> tuple[int, int]:
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    return read, write


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 64):
            pass
    except BlockingIOError:
        pass
