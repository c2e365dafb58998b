"""Logging to stderr (journald keeps it) as text or one JSON object per line.

Messages pass through ``printable``: a file name with a newline, an escape sequence or bytes
that are not UTF-8 is logged with backslash escapes (``\\x1b``, ``\\xff``), never raw and
never as ``?``, so the line is one line and the file can be found from it.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from uploaderd.printable import printable


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": printable(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """One line per message: a file name cannot end the line or colour the terminal."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


def setup(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # botocore logs request details (never secrets, but far too much) at debug.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "apscheduler", "watchdog"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
