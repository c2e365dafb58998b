"""``uploaderd run`` with one fault injected, for the lifecycle tests (never shipped).

    python tests/faulty_daemon.py FAULT TRIGGER_FILE run -c CONFIG

A killing fault waits, harmlessly, until TRIGGER_FILE exists, so the test decides when it
strikes; until then the daemon is the real one, in this process:

- ``kill-dispatcher``: the upload pool's dispatcher thread raises (an exception no loop
  catches, as a bug in the loop itself would).
- ``kill-discovery``: the same for the discovery thread.
- ``hang-upload``: every upload blocks (a worker stuck in a request), so a shutdown waits
  for the whole ``shutdown_grace``.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from uploaderd.cli import main
from uploaderd.discovery.discovery import Discovery
from uploaderd.upload.uploader import Uploader
from uploaderd.upload.workers import UploadPool


def _dies(component: str, stop: Any, trigger: str) -> None:
    while not os.path.exists(trigger):
        if stop.wait(0.05):
            return
    raise RuntimeError(f"{component} killed by the test")


def _hangs(*_args: Any, **_kwargs: Any) -> Any:
    threading.Event().wait()  # never set: only the process's exit ends the upload


def inject(fault: str, trigger: str) -> None:
    if fault == "kill-dispatcher":
        UploadPool._dispatch_until_stopped = (  # type: ignore[method-assign]
            lambda self: _dies("dispatcher", self._stop, trigger)
        )
    elif fault == "kill-discovery":
        Discovery._run = (  # type: ignore[method-assign]
            lambda self: _dies("discovery", self._stop, trigger)
        )
    elif fault == "hang-upload":
        Uploader.upload = _hangs  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    inject(sys.argv[1], sys.argv[2])
    raise SystemExit(main(sys.argv[3:]))
