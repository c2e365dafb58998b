"""What every local service shares: free ports, polling with a deadline, stopping by group."""

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
from types import TracebackType
from typing import Self

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


class DevstackError(RuntimeError):
    """A local service could not be found, started or used."""


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


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until it holds; DevstackError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise DevstackError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


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


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group of ``proc``; SIGKILL it if still there after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


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
