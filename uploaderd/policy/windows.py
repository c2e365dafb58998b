"""Upload windows such as ``Mon-Fri 19:00-07:00`` or ``Sat-Sun``: when a job may upload."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"^\s*(?P<days>[A-Za-z]{3}(?:-[A-Za-z]{3})?(?:,[A-Za-z]{3}(?:-[A-Za-z]{3})?)*)?"
    r"\s*(?:(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2}))?\s*$"
)


@dataclass(frozen=True)
class Window:
    """Days of the week (0 = Monday) and a local-time range; a range past midnight wraps."""

    days: frozenset[int]
    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> Window:
        match = _WINDOW.match(text)
        if not match or not (match.group("days") or match.group("start")):
            raise ValueError(
                f"{text!r}: expected e.g. 'Mon-Fri 19:00-07:00', 'Sat-Sun' or '22:00-06:00'"
            )
        days = _parse_days(match.group("days")) if match.group("days") else frozenset(range(7))
        if match.group("start"):
            start, end = _parse_time(match.group("start")), _parse_time(match.group("end"))
            if start == end and not (start == time(0, 0) and match.group("end").startswith("24")):
                raise ValueError(
                    f"{text!r}: the range starts where it ends; use 00:00-24:00 for whole days"
                )
        else:
            start = end = time(0, 0)
        return cls(days, start, end)

    def contains(self, moment: datetime) -> bool:
        now = moment.time()
        if self.start == self.end:  # whole days
            return moment.weekday() in self.days
        if self.start < self.end:
            return moment.weekday() in self.days and self.start <= now < self.end
        # Past midnight: the early-morning part belongs to the window that began the day before.
        if now >= self.start:
            return moment.weekday() in self.days
        return now < self.end and (moment.weekday() - 1) % 7 in self.days


def in_any_window(windows: Iterable[Window], moment: datetime) -> bool:
    """True when there are no windows (upload any time) or ``moment`` falls inside one."""
    windows = tuple(windows)
    return not windows or any(w.contains(moment) for w in windows)


def _parse_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.lower().partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise ValueError(f"{part!r}: days are Mon, Tue, Wed, Thu, Fri, Sat, Sun")
        a, b = _DAYS.index(first), _DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)


def _parse_time(text: str) -> time:
    hours, minutes = (int(x) for x in text.split(":"))
    if hours > 24 or minutes > 59 or (hours == 24 and minutes):
        raise ValueError(f"{text!r} is not a time of day")
    return time(0, 0) if hours == 24 else time(hours, minutes)
