"""A job's ``bandwidth`` cap: one token bucket shared by every worker uploading for the job.

Bytes are taken from the bucket before they are sent (a small file's body, a part of a large
one); a worker that finds it empty waits until enough has trickled back. The bucket holds one
second's worth, so a short burst after an idle spell is allowed and the average holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Limiter:
    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = rate
        self._updated = clock()

    def consume(self, amount: int) -> None:
        """Block until ``amount`` bytes may be sent; larger than the bucket is fine (debt)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= amount
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            # Outside the lock: the debt is already booked, so others queue up behind it.
            self._sleep(wait)
