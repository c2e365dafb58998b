"""Which session a file version belongs to, by the job's ``session.group_by``."""

from __future__ import annotations

from datetime import UTC, datetime


def group_key(group_by: str, relpath: str, mtime_ns: int) -> str:
    """``top_dir``: the first directory of the path ('' for files at the top);
    ``day``: the UTC day of the file's mtime; ``none``: one rolling session per job ('')."""
    if group_by == "top_dir":
        head, sep, _ = relpath.partition("/")
        return head if sep else ""
    if group_by == "day":
        return datetime.fromtimestamp(mtime_ns / 1e9, tz=UTC).strftime("%Y-%m-%d")
    return ""
