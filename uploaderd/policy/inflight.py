"""The bound on file content the workers hold in memory at once, whatever ``workers`` says.

Small files are read whole into memory and a large file holds up to five parts; with many
workers (the default is sized for the round trip to a remote S3, not for memory) that
could add up to gigabytes. Each upload takes its share before it reads and gives it back
when done; one that does not fit waits for others to finish.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

MiB = 1024 * 1024
# What 8 workers, the old default, could hold at worst: 8 large files of five 16 MiB parts.
DEFAULT_LIMIT = 640 * MiB


class Budget:
    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._free = limit
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        """Hold ``amount`` bytes (at most the whole budget) while the block runs."""
        amount = min(amount, self.limit)
        with self._changed:
            self._changed.wait_for(lambda: self._free >= amount)
            self._free -= amount
        try:
            yield
        finally:
            with self._changed:
                self._free += amount
                self._changed.notify_all()

    def held(self) -> int:
        with self._changed:
            return self.limit - self._free
