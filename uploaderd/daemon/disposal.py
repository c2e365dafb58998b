"""``after_upload``: delete or move a source file once its upload is confirmed.

Runs as a sweep on the host that holds the files, never inside the upload: the ledger must
say ``uploaded`` (or, with ``after_upload_when: registered``, registered) before a file is
touched, so a crash can never lose a file whose upload was not recorded. A file that no
longer matches the uploaded version (it changed, was rewritten with its mtime put back, or
was replaced) is left alone: its signature holds the ctime, which every write changes.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from uploaderd.config.settings import Job
from uploaderd.ledger.store import Ledger
from uploaderd.policy.settle import Signature

log = logging.getLogger(__name__)


class Disposer:
    def __init__(self, ledger: Ledger, *, host: str | None = None) -> None:
        self.ledger = ledger
        self.host = host or socket.gethostname()
        self._reported: set[int] = set()  # versions whose error was logged once already

    def sweep(self, job: Job) -> int:
        """Dispose of every waiting file of ``job``; the number disposed of.

        On a shared mount every host sees the same files: one host at a time disposes.
        """
        if job.after_upload.action == "keep":
            return 0
        if not job.source.shared:
            return self._sweep(job, [self.host])
        with self.ledger.named_lock(f"dispose:{job.name}") as held:
            return self._sweep(job, [""]) if held else 0

    def _sweep(self, job: Job, scopes: list[str]) -> int:
        done = 0
        while rows := self.ledger.undisposed_files(
            job.name, scopes, registered_only=job.after_upload.when == "registered"
        ):
            dispositions = {row["id"]: d for row in rows if (d := self._dispose(job, row))}
            if not dispositions:
                break  # every file in this batch hit an error; try again next sweep
            self.ledger.mark_disposed(dispositions)
            done += len(dispositions)
        return done

    def _dispose(self, job: Job, row: dict[str, Any]) -> str | None:
        source = Path(row["root"]) / row["relpath"]
        expected = Signature(row["size"], row["mtime_ns"], row["inode"], row["ctime_ns"])
        try:
            if Signature.of(source.lstat()) != expected:
                return "skipped: the file changed after its upload"
            if job.after_upload.action == "delete":
                source.unlink()
                return "deleted"
            assert job.after_upload.move_to is not None
            target = job.after_upload.move_to / row["relpath"]
            _move(source, target)
            return f"moved to {target}"
        except FileNotFoundError:
            return "skipped: the file is gone"
        except OSError as exc:
            if row["id"] not in self._reported:
                self._reported.add(row["id"])
                log.error(
                    "job %s: after_upload %s of %s failed: %s (retried every sweep)",
                    job.name,
                    job.after_upload.action,
                    source,
                    exc.strerror,
                )
            return None


def _move(source: Path, target: Path) -> None:
    """Rename, or across filesystems copy, rename into place and unlink the source.

    Never half a file at the target, and never two copies: if the source cannot be removed
    (a read-only mount), the copy is taken back and the error reported, so the next sweep
    tries the whole move again instead of finding "the target exists".
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise FileExistsError(errno.EEXIST, "the target exists", str(target))
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        staging = target.with_name(f".{target.name}.uploaderd-part")
        try:
            shutil.copy2(source, staging)
            os.rename(staging, target)
            source.unlink()
        except OSError:
            staging.unlink(missing_ok=True)
            if target.exists() and source.exists():
                target.unlink()
            raise
