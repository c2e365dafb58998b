"""``uploaderd run`` as a real subprocess with a real NOTIFY_SOCKET, for the e2e tests.

The harness plays systemd's part: it binds the notification datagram socket, records every
message the daemon sends (READY=1, STATUS=..., WATCHDOG=1, RELOADING=1, STOPPING=1) and lets
tests wait for them with a deadline.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml


class Notifications:
    """Messages received on the notify socket, in order, each split into its lines."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[list[str]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append(data.decode().splitlines())
                self._cond.notify_all()

    def lines(self) -> list[str]:
        with self._cond:
            return [line for message in self.messages for line in message]

    def count(self, line: str) -> int:
        return sum(1 for seen in self.lines() if seen == line)

    def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting for {what}; got {self.messages!r}")
                self._cond.wait(remaining)

    def wait_line(self, line: str, *, nth: int = 1, timeout: float = 30.0) -> None:
        self.wait_for(
            lambda: sum(1 for m in self.messages for x in m if x == line) >= nth,
            timeout,
            f"{line!r} #{nth}",
        )

    def wait_prefix(self, prefix: str, contains: str = "", timeout: float = 30.0) -> str:
        found: list[str] = []

        def seen() -> bool:
            found[:] = [
                x for m in self.messages for x in m if x.startswith(prefix) and contains in x
            ]
            return bool(found)

        self.wait_for(seen, timeout, f"a line starting {prefix!r} containing {contains!r}")
        return found[-1]

    def close(self) -> None:
        self._closed = True
        self.sock.close()


class DaemonProcess:
    """Config files, the process and its notifications, for one test."""

    def __init__(self, workdir: Path, dsn: str, endpoint_url: str, **settings: Any) -> None:
        self.workdir = workdir
        self.jobs_dir = workdir / "jobs.d"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "uploaderd.yaml"
        config = {
            "database": {"dsn": dsn},
            "jobs_dir": str(self.jobs_dir),
            "workers": 4,
            "metrics": {"listen": ""},
            "s3": {"endpoint_url": endpoint_url, "region": "us-east-1"},
            "log": {"level": "debug", "format": "text"},
            "shutdown_grace": "20s",
        }
        config.update(settings)
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "daemon.log"
        # AF_UNIX paths are limited to 108 bytes; pytest's tmp paths can be longer.
        self._sock_dir = tempfile.mkdtemp(prefix="ud-")
        self.notify_path = os.path.join(self._sock_dir, "notify")
        self.proc: subprocess.Popen[bytes] | None = None
        self.notes: Notifications | None = None
        self.extra_env: dict[str, str] = {}

    def write_job(self, name: str, job: dict[str, Any] | str) -> Path:
        path = self.jobs_dir / f"{name}.yaml"
        path.write_text(job if isinstance(job, str) else yaml.safe_dump(job, allow_unicode=True))
        return path

    def start(self, *, wait_ready: bool = True) -> DaemonProcess:
        if self.notes is not None:
            self.notes.close()
            os.unlink(self.notify_path)
        self.notes = Notifications(self.notify_path)
        env = {**os.environ, "NOTIFY_SOCKET": self.notify_path, **self.extra_env}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), env=env, stdout=log, stderr=subprocess.STDOUT
            )
        if wait_ready:
            self.wait_ready()
        return self

    def command(self) -> list[str]:
        """The daemon's argv; a subclass may wrap it (in a mount namespace, say)."""
        return [sys.executable, "-m", "uploaderd", "run", "-c", str(self.config_path)]

    def wait_ready(self, nth: int = 1, timeout: float = 30.0) -> None:
        assert self.notes is not None
        try:
            self.notes.wait_line("READY=1", nth=nth, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- daemon log ---\n{self.log()}") from None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.notes is not None:
            self.notes.close()
        shutil.rmtree(self._sock_dir, ignore_errors=True)
