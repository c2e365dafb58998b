"""What a person sees while a one-shot command works: a live bar on a terminal, else one line
of stats every few seconds (as rclone's ``--stats``).

Files and totals follow the ledger (the selection's files and bytes by state), so the
display shows the same truth whether this process or a running daemon uploads. The bytes of
the files this process is sending come from the workers' counter (``transfers``) as they go,
so a large file moves the bar part by part, not all at once when it ends. Sizes and speeds
are in binary units (KiB, MiB/s) everywhere.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, TextIO

from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.text import Text

from uploaderd.policy.transfers import STATS_SECONDS, Active
from uploaderd.policy.units import format_bytes, format_rate, plural

SPEED_WINDOW_SECONDS = 10.0
_SHOWN_FILES = 4


@dataclass(frozen=True)
class RunProgress:
    """Work of one run: what is finished (uploaded, failed or replaced) out of everything,
    with the bytes of the files in flight counted as they are sent."""

    done_files: int
    total_files: int
    done_bytes: int
    total_bytes: int
    uploading: int
    retry_in: float | None  # nothing uploading, pending files wait this long for their retry
    active: tuple[Active, ...] = ()
    last_error: str | None = None
    speed: float | None = None  # bytes per second over the last few seconds

    @property
    def waiting(self) -> bool:
        return self.retry_in is not None and self.retry_in > 0

    @property
    def status(self) -> str:
        if self.waiting:
            assert self.retry_in is not None
            return f"waiting {self.retry_in:.0f}s to retry"
        return "uploading"

    @property
    def eta(self) -> str:
        left = self.total_bytes - self.done_bytes
        if not self.speed or left <= 0:
            return "-" if left > 0 else "0:00:00"
        return str(timedelta(seconds=round(left / self.speed)))

    def summary(self) -> str:
        """``12.0 MiB/114.4 MiB (10%), 9.6 MiB/s, ETA 0:00:11, 0/1 files``"""
        percent = 100 * self.done_bytes // self.total_bytes if self.total_bytes else 100
        return (
            f"{format_bytes(self.done_bytes)}/{format_bytes(self.total_bytes)} "
            f"({percent}%), {format_rate(self.speed)}, ETA {self.eta}, "
            f"{self.done_files}/{plural(self.total_files, 'file')}"
        )


class Speed:
    """Bytes per second over a sliding window of samples of a growing byte count."""

    def __init__(
        self, window: float = SPEED_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self.clock = clock
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, total: int) -> float | None:
        now = self.clock()
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        first_time, first_total = self._samples[0]
        if now - first_time < 0.5:
            return None  # too soon to say
        return (total - first_total) / (now - first_time)


class Display(Protocol):
    def settling(self, files: int, remaining: float) -> None: ...

    def update(self, progress: RunProgress) -> None: ...

    def close(self) -> None: ...


class QuietDisplay:
    """``--no-progress``: draw nothing."""

    def settling(self, files: int, remaining: float) -> None:
        return None

    def update(self, progress: RunProgress) -> None:
        return None

    def close(self) -> None:
        return None


def current_files(active: Iterable[Active]) -> str:
    """``a.tif (12.0 MiB/114.4 MiB), b.tif (…) and 3 more``"""
    files = sorted(active, key=lambda a: a.relpath)
    shown = ", ".join(
        f"{a.relpath} ({format_bytes(a.sent)}/{format_bytes(a.size)})" for a in files[:_SHOWN_FILES]
    )
    more = len(files) - _SHOWN_FILES
    return shown + (f" and {more} more" if more > 0 else "")


class StatsDisplay:
    """Not a terminal: one line every ``interval`` seconds, and one at the end."""

    def __init__(
        self,
        stream: TextIO,
        interval: float = STATS_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.interval = interval
        self.clock = clock
        self._next = clock() + interval
        self._last: RunProgress | None = None

    def settling(self, files: int, remaining: float) -> None:
        if self._due():
            self._print(f"stats: settling {plural(files, 'file')}, {remaining:.0f}s left")

    def update(self, progress: RunProgress) -> None:
        self._last = progress
        if self._due():
            self._print(self._line(progress))

    def close(self) -> None:
        if self._last is not None:
            self._print(self._line(self._last))
            self._last = None

    def _due(self) -> bool:
        now = self.clock()
        if now < self._next:
            return False
        self._next = now + self.interval
        return True

    @staticmethod
    def _line(progress: RunProgress) -> str:
        line = f"stats: {progress.summary()}"
        if progress.active:
            line += f"; uploading {current_files(progress.active)}"
        if progress.waiting:
            line += f"; {progress.status}"
            if progress.last_error:
                line += f" after {progress.last_error}"
        return line

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


class _Bars(Progress):
    """rich's Progress, with a line under the bars: the error a retry waits out."""

    note: str = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.note:
            yield Text(self.note, overflow="ellipsis", no_wrap=True)


class BarDisplay:
    """A live bar on a terminal: files, bytes, speed, time left, and a bar per file sent."""

    def __init__(self, stream: TextIO) -> None:
        self.progress = _Bars(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            console=Console(file=stream),
        )
        self.task: TaskID | None = None
        self.files: dict[str, TaskID] = {}
        self.progress.start()

    def settling(self, files: int, remaining: float) -> None:
        self._main(
            f"settling {plural(files, 'file')}",
            total=None,
            completed=0,
            detail=f"{remaining:.0f}s left",
        )

    def update(self, progress: RunProgress) -> None:
        self._main(
            progress.status,
            total=max(1, progress.total_bytes),
            completed=progress.done_bytes,
            detail=f"{progress.done_files}/{plural(progress.total_files, 'file')} "
            f"{format_bytes(progress.done_bytes)}/"
            f"{format_bytes(progress.total_bytes)} "
            f"{format_rate(progress.speed)} ETA {progress.eta}",
        )
        self._files(progress.active)
        more = len(progress.active) - _SHOWN_FILES
        notes = [f"and {plural(more, 'more file')} uploading"] if more > 0 else []
        if progress.waiting and progress.last_error:
            notes.append(f"last error: {progress.last_error}")
        self.progress.note = "\n".join(notes)

    def _files(self, active: tuple[Active, ...]) -> None:
        shown = {a.relpath: a for a in sorted(active, key=lambda a: a.relpath)[:_SHOWN_FILES]}
        for relpath in set(self.files) - set(shown):
            self.progress.remove_task(self.files.pop(relpath))
        for relpath, file in shown.items():
            detail = f"{format_bytes(file.sent)}/{format_bytes(file.size)}"
            if relpath not in self.files:
                self.files[relpath] = self.progress.add_task(
                    "  " + _shorten(relpath, 22), total=max(1, file.size), detail=detail
                )
            self.progress.update(self.files[relpath], completed=file.sent, detail=detail)

    def _main(
        self, description: str, *, total: float | None, completed: float, detail: str
    ) -> None:
        if self.task is None:
            self.task = self.progress.add_task(description, total=total, detail=detail)
        self.progress.update(
            self.task, description=description, total=total, completed=completed, detail=detail
        )

    def close(self) -> None:
        self._files(())
        self.progress.note = ""
        self.progress.refresh()
        self.progress.stop()


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def make_display(
    wanted: bool, stream: TextIO | None = None, stats_interval: float = STATS_SECONDS
) -> Display:
    """A bar on a terminal, stats lines elsewhere; nothing with ``--no-progress`` (or a
    stats interval of 0 off a terminal)."""
    stream = stream or sys.stdout
    if not wanted:
        return QuietDisplay()
    if stream.isatty():
        return BarDisplay(stream)
    return StatsDisplay(stream, stats_interval) if stats_interval > 0 else QuietDisplay()
