"""Helpers shared by every test tier (import as ``from helpers import wait_for``)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T | Literal[False] | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Tests wait on the condition they need, with a deadline, instead of sleeping
    and hoping. Exceptions listed in ``ignore`` count as "not yet" (e.g. a
    NoSuchKey while an upload is still in flight). On timeout the
    AssertionError names what was awaited and the last value (or exception)
    seen, which is usually enough to tell a slow system from a broken one.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value: T | Literal[False] | BaseException | None = predicate()
        except ignore as exc:
            value = exc
        if (
            value is not None
            and value is not False
            and value
            and not isinstance(value, BaseException)
        ):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {message}; last: {value!r}"
            )
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
