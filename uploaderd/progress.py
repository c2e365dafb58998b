"""What a person sees while a one-shot command works: a live bar on a terminal, else nothing.

The bar follows the ledger (files and bytes of the selection by state), not the workers, so
it shows the same truth whether this process or a running daemon does the uploading. On a
pipe, in a log or with ``--no-progress`` nothing is drawn: no control sequences end up in
files, only the summary lines the command prints itself.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


@dataclass(frozen=True)
class RunProgress:
    """Work of one run: what is finished (uploaded, failed or replaced) out of everything."""

    done_files: int
    total_files: int
    done_bytes: int
    total_bytes: int
    uploading: int
    retry_in: float | None  # nothing uploading, pending files wait this long for their retry

    @property
    def status(self) -> str:
        if self.retry_in is not None and self.retry_in > 0:
            return f"waiting {self.retry_in:.0f}s to retry"
        return "uploading"


class Display(Protocol):
    def settling(self, files: int, remaining: float) -> None: ...

    def update(self, progress: RunProgress) -> None: ...

    def close(self) -> None: ...


class QuietDisplay:
    """Not a terminal, or ``--no-progress``: draw nothing."""

    def settling(self, files: int, remaining: float) -> None:
        return None

    def update(self, progress: RunProgress) -> None:
        return None

    def close(self) -> None:
        return None


class BarDisplay:
    """A rich progress bar: files, bytes, speed and time left."""

    def __init__(self, stream: TextIO) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<20}"),
            BarColumn(),
            TextColumn("{task.fields[files]}"),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
        )
        self.task: TaskID | None = None
        self.progress.start()

    def settling(self, files: int, remaining: float) -> None:
        self._task(f"settling {files} files", total=None, completed=0, files="")

    def update(self, progress: RunProgress) -> None:
        self._task(progress.status, total=max(1, progress.total_bytes),
                   completed=progress.done_bytes,
                   files=f"{progress.done_files}/{progress.total_files} files")

    def _task(self, description: str, *, total: float | None, completed: float,
              files: str) -> None:
        if self.task is None:
            self.task = self.progress.add_task(description, total=total, files=files)
        self.progress.update(self.task, description=description, total=total,
                             completed=completed, files=files)

    def close(self) -> None:
        self.progress.refresh()
        self.progress.stop()


def make_display(wanted: bool, stream: TextIO | None = None) -> Display:
    """A bar only when asked for and the output is a terminal."""
    stream = stream or sys.stdout
    if wanted and stream.isatty():
        return BarDisplay(stream)
    return QuietDisplay()
