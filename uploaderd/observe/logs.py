"""Logging to stderr (journald keeps it) as text or one JSON object per line.

Under systemd, stderr is a journal stream and ``JOURNAL_STREAM`` names its device and inode.
Then every line starts with its syslog priority (``<3>`` error, ``<4>`` warning, ``<6>`` info,
``<7>`` debug: sd-daemon's ``SD_ERR`` … convention), which journald strips and stores, so
``journalctl -p err`` filters. Anywhere else (a terminal, a file, a container log) the lines
are plain.

Records may carry ``job``, ``session``, ``path`` and ``key`` (``extra=fields(...)``); the JSON
format writes them as fields of their own, the text format only inside the message.

Messages pass through ``printable``: a file name with a newline, an escape sequence or bytes
that are not UTF-8 is logged with backslash escapes (``\\x1b``, ``\\xff``), never raw and
never as ``?``, so the line is one line and the file can be found from it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

from uploaderd.policy.printable import printable
from uploaderd.policy.units import format_bytes, plural

FIELDS = ("job", "session", "path", "key")
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_DEBUG = 7

log = logging.getLogger("uploaderd.activity")


def fields(
    job: str | None = None,
    session: int | None = None,
    path: str | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """``extra=`` for a log call: the structured fields JSON logs carry."""
    values = {"job": job, "session": session, "path": path, "key": key}
    return {name: value for name, value in values.items() if value is not None}


def priority(level: int) -> int:
    """The syslog priority of a logging level."""
    return next((prio for floor, prio in _PRIORITIES if level >= floor), _DEBUG)


def journal_stream(stream: TextIO, env: Mapping[str, str]) -> bool:
    """True when ``stream`` is the journal stream systemd connected (``JOURNAL_STREAM``)."""
    expected = env.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": printable(record.getMessage()),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class PriorityFormatter(logging.Formatter):
    """Prefix every line of a record (a traceback's too) with its ``<N>`` priority."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


class TextFormatter(logging.Formatter):
    """One line per message: a file name cannot end the line or colour the terminal."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


@dataclass
class Console:
    """Lines a command writes to stderr itself (its error message), prefixed like the logs."""

    journal: bool = False

    def error(self, message: str) -> None:
        prefix = f"<{priority(logging.ERROR)}>" if self.journal else ""
        print("\n".join(prefix + printable(line) for line in message.split("\n")), file=sys.stderr)


console = Console()


def setup(level: str, fmt: str, env: Mapping[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    handler = logging.StreamHandler(sys.stderr)
    inner = JsonFormatter() if fmt == "json" else TextFormatter()
    console.journal = journal_stream(sys.stderr, env)
    handler.setFormatter(PriorityFormatter(inner) if console.journal else inner)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # botocore logs request details (never secrets, but far too much) at debug.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "apscheduler", "watchdog"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # A thread that dies of a bug, or a library's warning, is a log line with a priority too,
    # not bare text on stderr.
    threading.excepthook = _thread_died
    logging.captureWarnings(True)


def _thread_died(args: threading.ExceptHookArgs) -> None:
    exc_info: tuple[type[BaseException], BaseException, TracebackType | None] | None = None
    if args.exc_value is not None:
        exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("uploaderd").error("thread %s died", name, exc_info=exc_info)


# --- one line per upload, without flooding the journal ---------------------------------------

BURST = 20  # lines a job may log at once
REFILL_PER_SECOND = 2.0  # then this many a second
SUMMARY_SECONDS = 10.0


@dataclass
class _Bucket:
    tokens: float = BURST
    refilled: float = field(default_factory=time.monotonic)
    uploaded: int = 0  # suppressed since the last summary
    uploaded_bytes: int = 0
    failed: int = 0
    since: float | None = None

    def take(self, now: float) -> bool:
        self.tokens = min(BURST, self.tokens + (now - self.refilled) * REFILL_PER_SECOND)
        self.refilled = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        if self.since is None:
            self.since = now
        return False


@dataclass(frozen=True)
class Attempt:
    """One finished upload attempt, as the activity log reports it."""

    job: str
    session: int | None
    relpath: str
    bucket: str
    key: str
    size: int
    seconds: float
    attempt: int
    error: str | None = None  # None: uploaded
    retry_in: float | None = None  # failed with attempts left


class ActivityLog:
    """INFO per uploaded file, WARNING per failed attempt; per job a token bucket, and what it
    holds back is summarised in one line per job every ``SUMMARY_SECONDS``."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def record(self, attempt: Attempt) -> None:
        with self._lock:
            bucket = self._buckets.setdefault(attempt.job, _Bucket(refilled=self.clock()))
            if not bucket.take(self.clock()):
                if attempt.error is None:
                    bucket.uploaded += 1
                    bucket.uploaded_bytes += attempt.size
                else:
                    bucket.failed += 1
                return
        extra = fields(attempt.job, attempt.session, attempt.relpath, attempt.key)
        where = f"s3://{attempt.bucket}/{attempt.key}"
        if attempt.error is None:
            log.info(
                "job %s: uploaded %s as %s (%s in %.1fs, attempt %d)",
                attempt.job,
                attempt.relpath,
                where,
                format_bytes(attempt.size),
                attempt.seconds,
                attempt.attempt,
                extra=extra,
            )
            return
        then = (
            f"retry in {attempt.retry_in:.0f}s"
            if attempt.retry_in is not None
            else "no attempts left"
        )
        log.warning(
            "job %s: attempt %d of %s to %s failed after %.1fs (%s): %s; %s",
            attempt.job,
            attempt.attempt,
            attempt.relpath,
            where,
            attempt.seconds,
            format_bytes(attempt.size),
            attempt.error,
            then,
            extra=extra,
        )

    def flush(self, *, force: bool = False) -> None:
        """Summarise what each job held back, once its summary period is over."""
        now = self.clock()
        with self._lock:
            due = [
                (job, b)
                for job, b in self._buckets.items()
                if b.since is not None and (force or now - b.since >= SUMMARY_SECONDS)
            ]
            lines = [
                (job, b.uploaded, b.uploaded_bytes, b.failed, now - (b.since or now))
                for job, b in due
            ]
            for _, bucket in due:
                bucket.uploaded = bucket.uploaded_bytes = bucket.failed = 0
                bucket.since = None
        for job, uploaded, size, failed, seconds in lines:
            level = logging.WARNING if failed else logging.INFO
            log.log(
                level,
                "job %s: %s uploaded (%s) and %s in the last %.0fs",
                job,
                plural(uploaded, "more file"),
                format_bytes(size),
                plural(failed, "more failed attempt"),
                max(seconds, 1.0),
                extra=fields(job),
            )
