"""The human units: durations and byte sizes in config files, sizes and counts in output."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?)?[bB]?\s*(/s)?\s*$")
_SIZE_FACTORS = {
    None: 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_duration(value: object) -> float:
    """Seconds from ``30s``, ``15m``, ``1h``, ``1d``, ``250ms`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 15m, 1h, 1d or a number of seconds")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _DURATION_FACTORS[match.group(2)]
    raise ValueError(
        f"expected a duration such as 30s, 15m, 1h, 1d or a number of seconds, got {value!r}"
    )


def format_duration(seconds: float) -> str:
    """The largest whole unit ``parse_duration`` reads back: ``30d``, ``36h``, ``90m``, ``45s``."""
    for unit in ("d", "h", "m"):
        factor = _DURATION_FACTORS[unit]
        if seconds >= factor and seconds % factor == 0:
            return f"{seconds / factor:.0f}{unit}"
    return f"{seconds:g}s"


def parse_size(value: object) -> int:
    """Bytes from ``512``, ``8MiB``, ``50MB``, ``50MB/s`` (decimal and binary prefixes)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            prefix = match.group(2).lower() if match.group(2) else None
            return int(float(match.group(1)) * _SIZE_FACTORS[prefix])
    raise ValueError(f"expected a size such as 512, 8MiB or 50MB/s, got {value!r}")


def format_bytes(count: float) -> str:
    """``1.5 MiB`` style, for people."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 file``, ``2 files`` (``nouns`` for an irregular plural)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def format_rate(bytes_per_second: float | None) -> str:
    """``12.3 MiB/s``, in the units ``format_bytes`` uses; ``-`` when not known yet."""
    return "-" if bytes_per_second is None else f"{format_bytes(bytes_per_second)}/s"
