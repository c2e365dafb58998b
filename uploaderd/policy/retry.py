"""The retry policy: exponential backoff with jitter, as a pure function of the attempt."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    initial: float = 30.0
    max: float = 3600.0
    multiplier: float = 2.0
    jitter: bool = True


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    backoff: Backoff = field(default_factory=Backoff)


def backoff_delay(
    attempt: int, backoff: Backoff, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    "Equal jitter": half the delay is fixed, half random, so retries of many files that failed
    together spread out without any of them retrying almost at once.
    """
    try:
        grown = backoff.initial * backoff.multiplier ** max(0, attempt - 1)
    except OverflowError:  # float power past ~1e308 (a large max_attempts): capped anyway
        grown = backoff.max
    delay = min(backoff.max, grown)
    if backoff.jitter:
        delay = delay / 2 + rand() * delay / 2
    return delay


def next_attempt_in(
    attempt: int, policy: RetryPolicy, rand: Callable[[], float] = random.random
) -> float | None:
    """The delay before the next attempt, or None when ``attempt`` was the last one allowed."""
    if attempt >= policy.max_attempts:
        return None
    return backoff_delay(attempt, policy.backoff, rand)


# Waiting out a database outage (the daemon's start, discovery, the upload pool): the first
# wait, doubled after each failed try up to the cap, so a long outage costs one try per 30 s.
OUTAGE_FIRST_WAIT = 0.5
OUTAGE_MAX_WAIT = 30.0


def next_outage_wait(wait: float) -> float:
    """The wait after one more failed try to reach the database."""
    return min(wait * 2, OUTAGE_MAX_WAIT)
