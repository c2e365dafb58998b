"""``uploaderd run`` as a real subprocess with a real NOTIFY_SOCKET, for the tests and the
benchmarks.

The harness plays systemd's part: it binds the notification datagram socket, records every
message the daemon sends (READY=1, STATUS=..., WATCHDOG=1, RELOADING=1, STOPPING=1) and lets
its user wait for them with a deadline. The socket is drained until closed: the daemon's
sd_notify sends block, and a full socket buffer would stall its main loop.
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
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from devstack.process import WaitTimeout
from devstack.s3 import REGION


class Notifications:
    """Messages received on the notify socket, in order, each split into its lines."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[list[str]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, name="notify", daemon=True)
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
                self.messages.append(data.decode(errors="replace").splitlines())
                self._cond.notify_all()

    def lines(self) -> list[str]:
        with self._cond:
            return [line for message in self.messages for line in message]

    def count(self, line: str) -> int:
        return sum(1 for seen in self.lines() if seen == line)

    def wait_for(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        """Until ``predicate`` holds (checked on each message, and at least every 0.1 s)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(f"timed out waiting for {what}; got {self.messages!r}")
                self._cond.wait(min(remaining, 0.1))

    def wait_line(self, line: str, *, nth: int = 1, timeout: float = 30.0) -> None:
        self.wait_for(lambda: self.count(line) >= nth, timeout, f"{line!r} #{nth}")

    def wait_prefix(self, prefix: str, contains: str = "", timeout: float = 30.0) -> str:
        found: list[str] = []

        def seen() -> bool:
            found[:] = [x for x in self.lines() if x.startswith(prefix) and contains in x]
            return bool(found)

        self.wait_for(seen, timeout, f"a line starting {prefix!r} containing {contains!r}")
        return found[-1]

    def close(self) -> None:
        self._closed = True
        self.sock.close()


class DaemonProcess:
    """Config files, the process and its notifications: one daemon of a test or a benchmark.

    ``settings`` replace top-level keys of the config; one set to None is left out, so the
    daemon's own default applies. ``extra_env`` is added to this process's environment and
    ``cwd`` (default: this process's) is where the daemon runs. The daemon runs in a
    session of its own: a terminal's Ctrl-C reaches its starter only, which stops it. With a
    ``hostname`` it runs in a UTS namespace of its own under that name (``unshare -u``,
    root only): several hosts on one machine.
    """

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
            "s3": {"endpoint_url": endpoint_url, "region": REGION},
            "log": {"level": "debug", "format": "text"},
            "shutdown_grace": "20s",
        }
        config.update(settings)
        config = {key: value for key, value in config.items() if value is not None}
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "daemon.log"
        self._sock_dir = ""  # made by the first start
        self.proc: subprocess.Popen[bytes] | None = None
        self.notes: Notifications | None = None
        self.extra_env: dict[str, str] = {}
        self.cwd: Path | None = None
        self.started = 0.0  # time.perf_counter() at the last start
        self.hostname: str | None = None

    def write_job(self, name: str, job: dict[str, Any] | str) -> Path:
        path = self.jobs_dir / f"{name}.yaml"
        path.write_text(job if isinstance(job, str) else yaml.safe_dump(job, allow_unicode=True))
        return path

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.extra_env}

    def cli(self, *args: str) -> list[str]:
        """The argv of ``uploaderd ARGS -c CONFIG``: a command on this daemon's config."""
        return [sys.executable, "-m", "uploaderd", *args, "-c", str(self.config_path)]

    def start(self, *, wait_ready: bool = True) -> DaemonProcess:
        # AF_UNIX paths are limited to 108 bytes; pytest's tmp paths can be longer.
        self._sock_dir = self._sock_dir or tempfile.mkdtemp(prefix="ud-")
        notify_path = os.path.join(self._sock_dir, "notify")
        if self.notes is not None:
            self.notes.close()
            os.unlink(notify_path)
        self.notes = Notifications(notify_path)
        env = {**self.environment(), "NOTIFY_SOCKET": notify_path}
        with self.log_path.open("ab") as log:
            self.started = time.perf_counter()
            self.proc = subprocess.Popen(
                self.command(),
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait_ready:
            self.wait_ready()
        return self

    def command(self) -> list[str]:
        """The daemon's argv; a subclass may wrap it (in a mount namespace, say)."""
        if self.hostname is None:
            return self.cli("run")
        named = 'hostname "$0" && exec "$@"'
        return ["unshare", "-u", "sh", "-c", named, self.hostname, *self.cli("run")]

    def wait_ready(self, nth: int = 1, timeout: float = 30.0) -> None:
        """Until the ``nth`` READY=1; a daemon that exits first fails the wait at once."""
        assert self.notes is not None
        notes = self.notes
        try:
            notes.wait_for(
                lambda: notes.count("READY=1") >= nth or not self.alive(),
                timeout,
                f"'READY=1' #{nth}",
            )
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}\n--- daemon log ---\n{self.log()}") from None
        if notes.count("READY=1") < nth:
            assert self.proc is not None
            raise WaitTimeout(
                f"uploaderd exited with {self.proc.returncode} before 'READY=1' #{nth}\n"
                f"--- daemon log ---\n{self.log()}"
            )

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
        if self._sock_dir:
            shutil.rmtree(self._sock_dir, ignore_errors=True)


def metric(port: int, name: str, **labels: str) -> float | None:
    """A sample of a daemon's /metrics on 127.0.0.1:``port`` (counters by their ``_total``
    name), or None when it has none with exactly these labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def can_name_hosts() -> bool:
    """Whether a daemon can have a hostname of its own here: root and ``unshare -u``."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "-u", "true"], capture_output=True, check=False)
    return done.returncode == 0
