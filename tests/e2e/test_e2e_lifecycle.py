"""One lifecycle: a component that dies stops the daemon with exit status 1, and a second
SIGTERM during a slow shutdown stops it at once. The faults come from tests/faulty_daemon.py,
which runs the real daemon in its process with one component patched."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import DaemonProcess, S3Server, wait_for

Sql = Callable[..., list[tuple[Any, ...]]]
FAULTY = Path(__file__).resolve().parent.parent / "faulty_daemon.py"


class FaultyDaemon(DaemonProcess):
    def __init__(
        self, workdir: Path, dsn: str, endpoint_url: str, fault: str, **settings: Any
    ) -> None:
        super().__init__(workdir, dsn, endpoint_url, **settings)
        self.fault = fault
        self.trigger = workdir / "strike"

    def command(self) -> list[str]:
        return [
            sys.executable,
            str(FAULTY),
            self.fault,
            str(self.trigger),
            "run",
            "-c",
            str(self.config_path),
        ]

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def faulty(
    tmp_path: Path,
    migrated_dsn: str,
    s3_server: S3Server,
    bucket: str,
) -> Iterator[Callable[..., FaultyDaemon]]:
    made: list[FaultyDaemon] = []
    root = tmp_path / "watched"
    root.mkdir()

    def make(fault: str, **settings: Any) -> FaultyDaemon:
        daemon = FaultyDaemon(
            tmp_path / f"daemon-{len(made)}",
            migrated_dsn,
            s3_server.endpoint_url,
            fault,
            **settings,
        )
        daemon.write_job(
            "lab",
            {
                "source": {"paths": [str(root)], "settle": "1s", "rescan": "1h"},
                "destination": {"bucket": bucket, "key": "in/${relpath}"},
            },
        )
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.cleanup()


@pytest.mark.parametrize(
    ("fault", "component", "thread"),
    [
        ("kill-dispatcher", "upload pool", "dispatcher"),
        ("kill-discovery", "discovery", "discovery"),
    ],
)
def test_a_component_that_dies_stops_the_daemon_with_status_1(
    faulty: Callable[..., FaultyDaemon],
    fault: str,
    component: str,
    thread: str,
) -> None:
    daemon = faulty(fault)
    daemon.start()
    daemon.trigger.touch()
    assert daemon.wait_exit(timeout=30) == 1
    log = daemon.log()
    assert f"thread {thread} ended by an exception" in log
    assert (
        f"component {component} died: thread {thread}: RuntimeError: {thread} killed by "
        "the test; stopping (exit status 1)"
    ) in log
    assert daemon.notes is not None
    assert "STOPPING=1" in daemon.notes.lines()
    assert (
        f"STATUS=component {component} died: thread {thread}: RuntimeError: "
        f"{thread} killed by the test" in daemon.notes.lines()
    )


def test_a_second_sigterm_stops_a_slow_shutdown_at_once(
    faulty: Callable[..., FaultyDaemon],
    sql: Sql,
    tmp_path: Path,
) -> None:
    daemon = faulty("hang-upload", shutdown_grace="120s")
    daemon.start()
    (tmp_path / "watched" / "stuck.bin").write_bytes(b"x" * 1000)
    wait_for(
        lambda: sql("SELECT state FROM file_versions") == [("uploading",)],
        timeout=30,
        message="the upload under way",
    )
    daemon.signal(signal.SIGTERM)
    wait_for(
        lambda: "a second signal stops at once" in daemon.log(),
        timeout=15,
        message="the shutdown under way",
    )
    assert daemon.alive()  # waiting for the hung upload, for up to 120 s
    began = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(timeout=15) == 0
    assert time.monotonic() - began < 10
    assert "second signal: stopping now" in daemon.log()
    # Handed back: pending again, the attempt recorded as released.
    assert sql("SELECT state FROM file_versions") == [("pending",)]
    assert sql("SELECT outcome FROM upload_attempts") == [("released",)]
