"""``uploaderd top`` as a person sees it: in a real terminal (tmux), while a daemon uploads
to the moto server, what the screen shows, that it moves, and that q quits; as a plain
snapshot when its output is not a terminal."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import DaemonProcess, S3Server, free_port, wait_for

MiB = 1024 * 1024
Sql = Callable[..., list[tuple[Any, ...]]]


class Terminal:
    """A tmux session of its own (its own server socket), 160 columns by 40 lines, running
    one command; the pane stays after the command ends, showing what it left."""

    def __init__(self, workdir: Path) -> None:
        self.socket = workdir / "tmux.sock"
        self.status = workdir / "exit-status"
        conf = workdir / "tmux.conf"
        # Without a client attached, a session takes default-size, not new-session's -x -y.
        conf.write_text("set -g remain-on-exit on\nset -g status off\nset -g default-size 160x40\n")
        self.conf = conf

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", str(self.conf), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout

    def run(self, argv: list[str]) -> None:
        command = f"{shlex.join(argv)}; echo $? > {shlex.quote(str(self.status))}"
        self.tmux("new-session", "-d", "-x", "160", "-y", "40", command)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def wait_screen(self, predicate: Callable[[str], bool], message: str) -> str:
        def shown() -> str | None:
            text = self.screen()
            return text if predicate(text) else None

        try:
            return wait_for(shown, timeout=30, message=message)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen:\n{self.screen()}") from None

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def exit_status(self) -> int | None:
        """The command's exit status once it ended (tmux's own record of it is not reliable:
        a pane can read as dead before its status is in)."""
        try:
            return int(self.status.read_text())
        except (FileNotFoundError, ValueError):  # running, or the status half written
            return None

    def close(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    if subprocess.run(["sh", "-c", "command -v tmux"], capture_output=True).returncode:
        pytest.skip("tmux is not installed")
    term = Terminal(tmp_path)
    yield term
    term.close()


def job_line(screen: str, job: str) -> list[str]:
    """The job's row of the table, split into its columns."""
    for line in screen.splitlines():
        if line.split()[:1] == [job]:
            return line.split()
    raise AssertionError(f"no line for job {job}:\n{screen}")


def percent(screen: str, relpath: str) -> int | None:
    for line in screen.splitlines():
        if relpath in line and (found := re.search(r"(\d+)%", line)):
            return int(found.group(1))
    return None


@pytest.fixture
def lab(make_daemon: Callable[..., DaemonProcess], bucket: str, tmp_path: Path) -> DaemonProcess:
    """A daemon whose job `lab` uploads at 4 MiB/s, with its metrics on a free port."""
    daemon = make_daemon(metrics={"listen": f"127.0.0.1:{free_port()}"})
    (tmp_path / "data").mkdir()
    daemon.write_job(
        "lab",
        {
            "source": {"paths": [str(tmp_path / "data")], "settle": "0.2s"},
            "destination": {"bucket": bucket, "key": "${relpath}", "bandwidth": "4MiB"},
        },
    )
    return daemon.start()


def test_top_shows_the_queue_and_a_large_upload_moving_and_quits_on_q(
    lab: DaemonProcess, terminal: Terminal, tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    data = tmp_path / "data"
    (data / "run-1").mkdir()
    big = os.urandom(48 * MiB)  # 12 s at the job's 4 MiB/s
    (data / "run-1" / "big.raw").write_bytes(big)
    for i in range(3):
        (data / "run-1" / f"small-{i}.txt").write_bytes(b"x" * 100)

    terminal.run(lab.cli("top"))
    first = terminal.wait_screen(
        lambda s: (percent(s, "run-1/big.raw") or 0) > 0, "big.raw in flight with its share sent"
    )
    assert "uploaderd top" in first and "q quits" in first
    assert "uploads in flight on" in first
    row = job_line(first, "lab")
    # JOB FILES/S BYTES/S PENDING UPLOADING FAILED OLDEST-PENDING UNSENT-REGISTRATIONS
    assert row[-3] == "0", "nothing failed"
    assert int(row[-4]) >= 1, "the large file counted as uploading"
    assert "48.0 MiB" in first, "its size shown beside the bytes sent"

    # The view moves by itself: a later frame shows more of the file sent, then rates.
    shown = percent(first, "run-1/big.raw")
    assert shown is not None
    later = terminal.wait_screen(
        lambda s: (percent(s, "run-1/big.raw") or 101) > shown and job_line(s, "lab")[1] != "-",
        "more of big.raw sent, and the files a second measured",
    )
    assert float(job_line(later, "lab")[1]) >= 0
    done = terminal.wait_screen(
        lambda s: "run-1/big.raw" not in s and job_line(s, "lab")[-5:-2] == ["0", "0", "0"],
        "the upload done and gone from the view",
    )
    assert "none" in done.split("uploads in flight on", 1)[1]
    body = s3_server.client().get_object(Bucket=bucket, Key="run-1/big.raw")["Body"].read()
    assert body == big

    terminal.keys("q")
    wait_for(lambda: terminal.exit_status() is not None, timeout=10, message="top ended")
    assert terminal.exit_status() == 0
    assert "uploaderd top" not in terminal.screen(), "the screen given back as it was"


def test_top_prints_one_plain_snapshot_when_not_on_a_terminal_of_every_job_or_one(
    lab: DaemonProcess, tmp_path: Path, sql: Sql
) -> None:
    (tmp_path / "data" / "a.txt").write_bytes(b"a")
    wait_for(
        lambda: sql("SELECT state FROM file_versions WHERE relpath = 'a.txt'") == [("uploaded",)],
        timeout=30,
        message="a.txt uploaded",
    )
    result = subprocess.run(lab.cli("top"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout, "no escape sequences in a snapshot"
    assert "q quits" not in result.stdout
    # One frame: no rates yet; nothing pending, uploading or failed; no registration owed.
    assert job_line(result.stdout, "lab") == ["lab", "-", "-", "0", "0", "0", "-", "0"]
    assert "uploads in flight on" in result.stdout

    other = tmp_path / "other"
    other.mkdir()
    lab.write_job(
        "other",
        {"source": {"paths": [str(other)]}, "destination": {"bucket": "other-bucket"}},
    )
    both = subprocess.run(lab.cli("top"), capture_output=True, text=True, timeout=60)
    assert job_line(both.stdout, "other")[0] == "other"
    only = subprocess.run(lab.cli("top", "--job", "lab"), capture_output=True, text=True)
    assert only.returncode == 0, only.stderr
    assert job_line(only.stdout, "lab")[0] == "lab"
    assert "other" not in only.stdout

    unknown = subprocess.run(lab.cli("top", "--job", "nope"), capture_output=True, text=True)
    assert unknown.returncode == 2
    assert "unknown job 'nope'" in unknown.stderr
