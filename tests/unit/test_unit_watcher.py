"""The inotify watcher on its own: which changes reach the sink, and which do not.

File events skip watchdog's move grouper and threads (see ``_ReportingEmitter``); these
tests hold the result to what the daemon needs: every way a file can appear or change is
reported under its own job and root, and reading a file (as the daemon's own upload does)
is not. A negative is proven without sleeping: a marker file written afterwards is
reported, and inotify reports one watch's events in order.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    WatchDescriptor,
)

from devstack import wait_for
from uploaderd.config.settings import Job, S3Settings, parse_job_text
from uploaderd.discovery.watcher import PathEvent, Watcher


def job_on(name: str, root: Path) -> Job:
    return parse_job_text(
        yaml.safe_dump(
            {
                "source": {"paths": [str(root)], "settle": "1s", "polling": False},
                "destination": {"bucket": "lab-raw", "key": "${relpath}"},
            }
        ),
        name=name,
        defaults=S3Settings(),
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[PathEvent] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, event: PathEvent) -> None:
        with self._lock:
            self.events.append(event)

    def error(self, job: str, message: str) -> None:
        self.errors.append(f"{job}: {message}")

    def paths(self, job: str = "lab") -> list[tuple[str, bool]]:
        with self._lock:
            return [(e.path, e.is_dir) for e in self.events if e.job == job]

    def seen(self, path: Path, job: str = "lab", is_dir: bool = False) -> bool:
        return (str(path), is_dir) in self.paths(job)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def watcher(root: Path, recorder: Recorder) -> Iterator[Watcher]:
    watcher = Watcher(recorder, recorder.error)
    watcher.apply({"lab": job_on("lab", root)})
    watcher.start()
    yield watcher
    watcher.stop(time.monotonic() + 5)
    assert recorder.errors == []


def written(path: Path, data: bytes = b"x") -> Path:
    path.write_bytes(data)
    return path


def test_a_file_written_in_place_is_reported(
    watcher: Watcher, root: Path, recorder: Recorder
) -> None:
    path = written(root / "a.dat")
    wait_for(lambda: recorder.seen(path), message="a.dat reported")
    assert {e.root for e in recorder.events} == {str(root)}


def test_a_file_renamed_in_from_outside_and_within_is_reported(
    watcher: Watcher, root: Path, recorder: Recorder, tmp_path: Path
) -> None:
    outside = written(tmp_path / "staged.dat")
    inside = written(root / "old-name.dat")
    wait_for(lambda: recorder.seen(inside), message="old-name.dat reported")
    os.rename(outside, root / "moved-in.dat")
    os.rename(inside, root / "new-name.dat")
    wait_for(lambda: recorder.seen(root / "moved-in.dat"), message="moved-in.dat reported")
    wait_for(lambda: recorder.seen(root / "new-name.dat"), message="new-name.dat reported")


def test_reading_a_file_is_not_a_change(watcher: Watcher, root: Path, recorder: Recorder) -> None:
    path = written(root / "read-me.dat", b"payload")
    first = written(root / "first-marker.dat")
    wait_for(lambda: recorder.seen(first), message="the write's events all in")
    before = recorder.paths().count((str(path), False))
    assert before >= 1
    assert path.read_bytes() == b"payload"
    os.stat(path)
    second = written(root / "second-marker.dat")
    wait_for(lambda: recorder.seen(second), message="the read's events (if any) all in")
    assert recorder.paths().count((str(path), False)) == before


def test_a_new_directory_and_the_files_in_it_are_reported(
    watcher: Watcher, root: Path, recorder: Recorder
) -> None:
    deep = root / "run-1" / "raw"
    deep.mkdir(parents=True)
    early = written(deep / "early.dat")
    wait_for(lambda: recorder.seen(root / "run-1", is_dir=True), message="run-1 reported")
    # Whether early.dat came before or after the watch on raw/, it is reported or its
    # directory is (and then scanned); a file written later always is.
    wait_for(
        lambda: recorder.seen(early) or recorder.seen(deep, is_dir=True),
        message="early.dat or raw/ reported",
    )
    late = written(deep / "late.dat")
    wait_for(lambda: recorder.seen(late), message="late.dat reported")


class Ignored:
    """An inotify watch's callback that ignores what it is told."""

    def on_event(self, event: InotifyEvent) -> None:
        pass

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        pass

    def on_queue_overflow(self) -> None:
        pass

    def on_events_lost(self) -> None:
        pass


def test_watchdogs_warning_of_a_directory_watched_twice_stays_out_of_the_journal(
    watcher: Watcher, root: Path
) -> None:
    # What watchdog does when a `mkdir -p` races its walk of a new directory (above): the
    # same callback added twice to one watch. Nothing is lost, so nothing is printed.
    inotify = InotifyFD()
    inotify.start()
    one = CallbackId(1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            for _ in range(2):
                wd = inotify.add_callback(bytes(root), InotifyConstants.IN_CREATE, Ignored(), one)
        inotify.remove_callbacks([(wd, one)])
    finally:
        inotify.stop()
        inotify.join(5)
    assert [str(w.message) for w in caught] == []


def test_two_jobs_on_one_root_each_hear_of_a_file(root: Path, recorder: Recorder) -> None:
    watcher = Watcher(recorder, recorder.error)
    watcher.apply({"lab": job_on("lab", root), "copy": job_on("copy", root)})
    watcher.start()
    try:
        path = written(root / "both.dat")
        wait_for(lambda: recorder.seen(path, "lab"), message="lab heard of both.dat")
        wait_for(lambda: recorder.seen(path, "copy"), message="copy heard of both.dat")
    finally:
        watcher.stop(time.monotonic() + 5)
    assert recorder.errors == []
