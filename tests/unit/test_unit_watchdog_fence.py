"""The fence around watchdog's internals (docs/architecture.md, "watchdog's internals").

uploaderd/discovery/watcher.py reaches into watchdog's inotify observer where watchdog has no public
API (IN_UNMOUNT, the file fast path), and a fault test injects a kernel event through its
reader. A release may rename or reshape any of that without notice: mypy misses what hides
behind a ``type: ignore``, and a wrapper watchdog no longer calls fails nothing, it just
stops working. So setup.cfg caps watchdog at the minor release the suite ran against, and
these tests fail, naming the symbol and who relies on it, when one of those internals is
gone or has another shape. They are what to run before raising the cap.

``INTERNALS`` is the one list of them: a new use of watchdog's internals goes there.
"""

from __future__ import annotations

import configparser
import inspect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement  # a dependency of pytest itself
from watchdog.events import FileSystemEventHandler
from watchdog.observers.inotify import InotifyEmitter, InotifyObserver, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyEvent, InotifyFD

REPO = Path(__file__).resolve().parents[2]
WATCHER = "uploaderd/discovery/watcher.py's"
OVERFLOW_TEST = "tests/faults/test_faults_discovery.py's overflow test"


@dataclass
class Running:
    """watchdog's own inotify observer, watching one directory: where the internals live."""

    root: Path
    observer: InotifyObserver
    emitter: InotifyEmitter
    group: InotifyWatchGroup | None  # None when InotifyEmitter._inotify is gone
    fd: InotifyFD | None  # None when InotifyObserver._inotify_fd is gone

    def instance_of(self, owner: type) -> object:
        return next(
            (o for o in (self.observer, self.emitter, self.group, self.fd) if isinstance(o, owner)),
            None,
        )

    def reader_calls_on_event(self) -> bool:
        """Whether the reader calls the group's ``on_event`` through the attribute, so that
        replacing it (as ``_ReportingEmitter`` does) reroutes events: a file written in the
        root must reach a stand-in."""
        group = self.group
        if group is None:
            return False
        heard = threading.Event()
        original = group.on_event

        def stand_in(event: InotifyEvent) -> None:
            heard.set()
            original(event)

        group.on_event = stand_in  # type: ignore[method-assign]
        try:
            (self.root / "probe.dat").write_bytes(b"x")
            return heard.wait(timeout=5)
        finally:
            del group.on_event


def takes(method: Any, *params: str) -> bool:
    """A method (as its class defines it) whose parameters after ``self`` are ``params``."""
    return callable(method) and list(inspect.signature(method).parameters)[1:] == list(params)


@dataclass(frozen=True)
class Internal:
    owner: type  # watchdog's class
    name: str
    user: str  # who relies on it, as the failure names it
    shape: str  # what they rely on, completing "... is no longer ..."
    fits: Callable[[Any, Running], bool]  # the attribute, the running observer → has the shape

    @property
    def symbol(self) -> str:
        return f"{self.owner.__name__}.{self.name}"


INTERNALS = (
    Internal(
        InotifyObserver,
        "_emitter_class",
        f"{WATCHER} _InotifyObserver",
        "what the observer calls to make each watch's emitter",
        lambda value, running: type(running.emitter) is value,
    ),
    Internal(
        InotifyEmitter,
        "_inotify",
        f"{WATCHER} _ReportingEmitter",
        "the emitter's InotifyWatchGroup once on_thread_start() has run",
        lambda value, _: isinstance(value, InotifyWatchGroup),
    ),
    Internal(
        InotifyWatchGroup,
        "on_event",
        f"{WATCHER} _ReportingEmitter",
        "a method on_event(event) that the reader calls through the group's attribute",
        lambda value, running: takes(value, "event") and running.reader_calls_on_event(),
    ),
    Internal(
        InotifyWatchGroup,
        "_build_event_source_path",
        f"{WATCHER} _ReportingEmitter",
        "a method _build_event_source_path(event)",
        lambda value, _: takes(value, "event"),
    ),
    Internal(
        InotifyWatchGroup,
        "is_active",
        f"{WATCHER} _ReportingEmitter",
        "a property",
        lambda value, _: isinstance(value, property),
    ),
    Internal(
        InotifyObserver,
        "_inotify_fd",
        OVERFLOW_TEST,
        "the observer's InotifyFD once a watch is scheduled",
        lambda value, _: isinstance(value, InotifyFD),
    ),
    Internal(
        InotifyFD,
        "handle_event",
        OVERFLOW_TEST,
        "a method handle_event(event)",
        lambda value, _: takes(value, "event"),
    ),
)

_MISSING = object()


def failure(internal: Internal, what: str) -> str:
    return (
        f"watchdog {version('watchdog')}: {internal.symbol} {what}; {internal.user} relies "
        "on it (see docs/architecture.md, 'watchdog's internals')"
    )


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("fence")
    observer = InotifyObserver()
    observer.schedule(FileSystemEventHandler(), str(root), recursive=True)
    observer.start()
    try:
        (emitter,) = observer.emitters
        assert isinstance(emitter, InotifyEmitter)
        yield Running(
            root,
            observer,
            emitter,
            getattr(emitter, "_inotify", None),
            getattr(observer, "_inotify_fd", None),
        )
    finally:
        observer.stop()
        observer.join(5)


@pytest.mark.parametrize("internal", INTERNALS, ids=lambda internal: internal.symbol)
def test_each_internal_relied_on_is_there_with_its_shape(
    internal: Internal, running: Running
) -> None:
    # A method or property as the class defines it (an instance may carry a replacement);
    # an attribute set in __init__ on the running instance.
    value = inspect.getattr_static(internal.owner, internal.name, _MISSING)
    if value is _MISSING:
        value = getattr(running.instance_of(internal.owner), internal.name, _MISSING)
    assert value is not _MISSING, failure(internal, "is gone")
    assert internal.fits(value, running), failure(internal, f"is no longer {internal.shape}")


def test_the_installed_watchdog_is_within_the_cap_setup_cfg_names() -> None:
    setup = configparser.ConfigParser(interpolation=None)
    setup.read(REPO / "setup.cfg")
    lines = setup["options"]["install_requires"].splitlines()
    requirements = [Requirement(line) for line in lines if line.strip()]
    (watchdog,) = [r for r in requirements if r.name == "watchdog"]
    assert any(s.operator == "<" for s in watchdog.specifier), (
        f"setup.cfg requires {watchdog} without a cap; watchdog's internals are fenced only "
        "up to the minor release the suite ran against (docs/architecture.md, "
        "'watchdog's internals')"
    )
    installed = version("watchdog")
    assert watchdog.specifier.contains(installed), (
        f"watchdog {installed} is installed, outside setup.cfg's {watchdog}: raise the cap "
        "only once the fence tests above pass against it"
    )
