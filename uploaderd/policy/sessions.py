"""Which session a file version belongs to, by the job's ``session.group_by``."""

from __future__ import annotations

from uploaderd.policy.keys import file_day

UNDATED = "undated"


def group_key(group_by: str, relpath: str, mtime_ns: int) -> str:
    """``top_dir``: the first directory of the path ('' for files at the top);
    ``day``: the UTC day of the file's mtime (``undated`` when the mtime is out of range);
    ``none``: one rolling session per job ('')."""
    if group_by == "top_dir":
        head, sep, _ = relpath.partition("/")
        return head if sep else ""
    if group_by == "day":
        day = file_day(mtime_ns)
        return day.isoformat() if day is not None else UNDATED
    return ""
