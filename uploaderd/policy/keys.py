"""Destination key templates: parsed and checked up front, rendered without ``str.format``.

A template is split once into literal text and ``${name}`` references to a fixed set of
variables, so no attribute or index access can ever be expressed. Rendered keys are checked
segment by segment: a key is a path in the bucket and must not climb (``..``), be empty or
carry control characters.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

from uploaderd.errors import KeyTemplateError, MtimeOutOfRange
from uploaderd.policy.settle import MTIME_MAX, MTIME_MIN

DATE_VARIABLES = frozenset({"yyyy", "mm", "dd"})
VARIABLES = (
    frozenset({"job", "relpath", "name", "stem", "ext", "dirname", "session", "hostname"})
    | DATE_VARIABLES
)
_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_MAX_KEY_BYTES = 1024
_NS_PER_DAY = 86_400 * 10**9
_EPOCH = date(1970, 1, 1)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # one regex search per key, not a loop per character


@dataclass(frozen=True)
class KeyTemplate:
    """A parsed key template: alternating literal text and variable names."""

    text: str
    parts: tuple[tuple[bool, str], ...]  # (is_variable, literal text or variable name)

    @classmethod
    def parse(cls, text: str) -> KeyTemplate:
        parts: list[tuple[bool, str]] = []
        position = 0
        for match in _REFERENCE.finditer(text):
            parts.append((False, text[position : match.start()]))
            name = match.group(1)
            if name not in VARIABLES:
                raise KeyTemplateError(
                    f"unknown variable ${{{name}}}; known: "
                    + ", ".join(f"${{{v}}}" for v in sorted(VARIABLES))
                )
            parts.append((True, name))
            position = match.end()
        parts.append((False, text[position:]))
        literal = "".join(value for is_var, value in parts if not is_var)
        if "$" in literal:
            raise KeyTemplateError("a '$' must start a ${variable} reference")
        if not any(is_var and value in {"relpath", "name", "stem"} for is_var, value in parts):
            raise KeyTemplateError(
                "the key must contain ${relpath}, ${name} or ${stem}, or every file would "
                "overwrite the same object"
            )
        template = cls(text, tuple(p for p in parts if p[0] or p[1]))
        # Render once with harmless values so a template that can only produce unsafe keys
        # (a literal '..' segment, '//', a leading '/') fails at load time, not per file.
        template.render(key_variables("job", "a/b.txt", session="1", hostname="host", mtime_ns=0))
        return template

    def render(self, values: Mapping[str, str]) -> str:
        """The key; ``MtimeOutOfRange`` when it needs a date the file's mtime cannot give."""
        try:
            key = "".join(values[value] if is_var else value for is_var, value in self.parts)
        except KeyError as exc:  # only the date variables can be missing (key_variables)
            raise MtimeOutOfRange(
                "mtime out of range: the file's mtime is after 2262-04-11 or before 1677-09-21, "
                f"so the key's ${{{exc.args[0]}}} has no value; give the file a real mtime "
                "(touch it) and it is queued again"
            ) from None
        validate_key(key)
        return key


def key_variables(
    job: str, relpath: str, *, session: str, hostname: str, mtime_ns: int
) -> dict[str, str]:
    """The values of the template variables for one file version.

    The date comes from the file's mtime (UTC), not the clock, so the key of a version never
    changes between attempts or hosts. A file whose date is unknown (``file_date``) gets no
    date variables: only a template that uses them fails.
    """
    name = posixpath.basename(relpath)
    stem, dot, ext = name.rpartition(".")
    if not stem:  # "README" or ".bashrc": no extension
        stem, ext = name, ""
    values = {
        "job": job,
        "relpath": relpath,
        "name": name,
        "stem": stem,
        "ext": ext if dot else "",
        "dirname": posixpath.dirname(relpath),
        "session": session,
        "hostname": hostname,
    }
    day = file_day(mtime_ns)
    if day is not None:
        values.update(yyyy=f"{day.year:04d}", mm=f"{day.month:02d}", dd=f"{day.day:02d}")
    return values


def file_date(mtime_ns: int) -> datetime | None:
    """The UTC time of a stored mtime, or None when the mtime was out of range (held at a
    bound of the stored range by ``Signature.of``): its true date is unknown."""
    if mtime_ns in (MTIME_MIN, MTIME_MAX):
        return None
    return datetime.fromtimestamp(mtime_ns / 1e9, tz=UTC)


def file_day(mtime_ns: int) -> date | None:
    """The UTC day of a stored mtime, or None as for ``file_date``. Keys and session groups
    ask it of every file queued, so each day's calendar is worked out once (a tree's files
    share a handful of days)."""
    if mtime_ns in (MTIME_MIN, MTIME_MAX):
        return None
    return _utc_day(mtime_ns // _NS_PER_DAY)


@lru_cache(maxsize=4096)
def _utc_day(days_since_epoch: int) -> date:
    return _EPOCH + timedelta(days=days_since_epoch)


def validate_key(key: str) -> None:
    """Raise KeyTemplateError unless ``key`` is a safe object key."""
    if not key:
        raise KeyTemplateError("the key is empty")
    if len(key.encode("utf-8", "surrogateescape")) > _MAX_KEY_BYTES:
        raise KeyTemplateError(f"the key is longer than {_MAX_KEY_BYTES} bytes")
    if any(segment in {"", ".", ".."} for segment in key.split("/")):
        raise KeyTemplateError(f"the key {key!r} has an empty, '.' or '..' segment")
    if _CONTROL.search(key):
        raise KeyTemplateError(f"the key {key!r} contains a control character")
