"""Destination health: pause a bucket or an endpoint that keeps failing, instead of letting
it burn every file's attempts. A small circuit breaker with an injectable clock.

After ``threshold`` failures in a row the destination is paused for a backoff that doubles
each time it trips again (up to ``max_pause``). When the pause ends one probe goes through:
its success closes the breaker, its failure pauses again for longer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Breaker:
    threshold: int = 5
    first_pause: float = 30.0
    max_pause: float = 600.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    trips: int = 0
    paused_until: float = 0.0
    last_error: str | None = None
    misconfigured: bool = False  # the last failure said the configuration is wrong

    def paused(self) -> bool:
        return self.clock() < self.paused_until

    def probing(self) -> bool:
        """Tripped before and the pause is over: let one attempt through to test the water."""
        return self.trips > 0 and not self.paused()

    def record_success(self) -> bool:
        """True when this success closed a tripped breaker (a resume worth logging)."""
        resumed = self.trips > 0
        self.failures = self.trips = 0
        self.paused_until = 0.0
        self.last_error = None
        self.misconfigured = False
        return resumed

    def record_failure(self, error: str, *, misconfigured: bool = False) -> float | None:
        """Count a failure; the pause in seconds when this one trips (or re-trips) the breaker.

        A ``misconfigured`` failure (a missing bucket, refused credentials) trips it at once:
        retrying cannot help, and the probes after each pause find the fix by themselves.
        """
        self.failures += 1
        self.last_error = error
        self.misconfigured = misconfigured
        if self.paused():
            return None  # sent before the pause began: already counted in its length
        if self.failures < self.threshold and not self.probing() and not misconfigured:
            return None
        pause = min(self.max_pause, self.first_pause * 2.0**self.trips)
        self.trips += 1
        self.paused_until = self.clock() + pause
        return pause
