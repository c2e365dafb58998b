"""What every local service, test and benchmark shares: free ports, polling with a deadline,
stopping by group, and stop signals turned into KeyboardInterrupt."""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Literal, Self, TypeVar

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
# Ctrl-C, `kill`, and the terminal closing all mean "stop everything".
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

T = TypeVar("T")


class DevstackError(RuntimeError):
    """A local service could not be found, started or used."""


class WaitTimeout(DevstackError, AssertionError):
    """A wait's deadline passed: a DevstackError to the services and the benchmarks, a
    failed check (AssertionError) to a test."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now.

    The sockets are held open together, so the kernel cannot hand out one port twice.
    """
    with contextlib.ExitStack() as stack:
        socks = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def wait_for(
    predicate: Callable[[], T | Literal[False] | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Callers wait on the condition they need, with a deadline, instead of sleeping and
    hoping. Exceptions listed in ``ignore`` count as "not yet" (e.g. a NoSuchKey while an
    upload is still in flight). On timeout the WaitTimeout names what was awaited and the
    last value (or exception) seen, which is usually enough to tell a slow system from a
    broken one.
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
            raise WaitTimeout(f"timed out after {timeout}s waiting for {message}; last: {value!r}")
        time.sleep(interval)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, for error messages ("" when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def find_tool(name: str) -> str:
    """Prefer the tool installed next to this interpreter (the venv), then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise DevstackError(
            f"{name} not found next to {sys.executable} or on PATH "
            "(`./dev test` installs every server the tests use)"
        )
    return found


def terminate(
    proc: subprocess.Popen[bytes], timeout: float, sig: signal.Signals = signal.SIGTERM
) -> None:
    """Send ``sig`` to the process group of ``proc``; SIGKILL it if still there after
    ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt, as SIGINT already is (set again: a
    shell starts a background job with SIGINT ignored, and Python then leaves it so)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else _interrupt)


class Service(abc.ABC):
    """Something started for the demo, tests or benchmarks: a context manager that cleans up."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def cleanup(self) -> None: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
