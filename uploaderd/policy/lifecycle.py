"""The one shape of the daemon's long-running parts, and how ``uploaderd run`` drives them.

Each component (the metrics server, the upload pool, the scheduler, discovery, the
watchers) is started once, asked whether it is still ``alive()``, and stopped once by a
deadline on the monotonic clock that the whole shutdown shares (never a timeout of its
own). A component closes what it owns (its threads, its database connections, each on the
thread that uses it) and nothing else. ``Components`` starts them in order, stops them in
the reverse order, and names the first one that died; a thread ended by an exception is
logged with its traceback and wakes the daemon at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)


class Component(Protocol):
    def start(self) -> None: ...

    def stop(self, deadline: float) -> None:
        """Stop and release what it owns; wait no later than ``deadline`` (monotonic)."""

    def alive(self) -> bool:
        """False once a thread it needs has ended without being stopped."""


class StopNow(BaseException):
    """A second SIGTERM or SIGINT while stopping: stop at once, as ``kill`` would."""


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline``, never negative."""
    return max(0.0, deadline - time.monotonic())


def join(thread: threading.Thread, deadline: float) -> bool:
    """Wait for ``thread`` until ``deadline``; True when it has ended (or never started)."""
    if thread.ident is not None:
        thread.join(remaining(deadline))
    return not thread.is_alive()


def call_by(func: Callable[[], None], deadline: float, name: str) -> bool:
    """``func()`` on a thread of its own, for a call that cannot be given a deadline (a
    library's blocking shutdown); True when it returned before ``deadline``."""
    thread = threading.Thread(target=func, name=name, daemon=True)
    thread.start()
    return join(thread, deadline)


class Components:
    """Named components, started in order and stopped in reverse."""

    def __init__(
        self,
        components: Sequence[tuple[str, Component]],
        on_thread_death: Callable[[], None] = lambda: None,
    ) -> None:
        self.components = list(components)
        self._started: list[tuple[str, Component]] = []
        self._deaths: list[str] = []  # "thread NAME: Error: message", since the last check
        self._lock = threading.Lock()
        self._on_thread_death = on_thread_death
        self._previous_hook = threading.excepthook

    def start(self) -> None:
        threading.excepthook = self._thread_died
        for name, component in self.components:
            component.start()
            self._started.append((name, component))

    def dead(self) -> tuple[str, str] | None:
        """The first component that is not alive and why, as far as it is known."""
        with self._lock:
            deaths, self._deaths = self._deaths, []
        for name, component in self._started:
            if not component.alive():
                return name, "; ".join(deaths) or "its thread ended"
        return None

    def stop(self, deadline: float) -> None:
        """Stop every started component, the last started first; a failure to stop one is
        logged and the others still stop."""
        while self._started:
            name, component = self._started.pop()
            try:
                component.stop(deadline)
            except Exception:
                log.exception("stopping %s failed", name)
        threading.excepthook = self._previous_hook

    def _thread_died(self, args: threading.ExceptHookArgs) -> None:
        thread = args.thread.name if args.thread is not None else "?"
        if args.exc_type is SystemExit:
            return
        log.critical("thread %s ended by an exception", thread, exc_info=args.exc_value)
        with self._lock:
            self._deaths.append(f"thread {thread}: {args.exc_type.__name__}: {args.exc_value}")
        self._on_thread_death()
