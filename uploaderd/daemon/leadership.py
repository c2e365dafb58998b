"""One discovering host per shared job, under a lease in the ledger.

Every host of a ``shared: true`` job watches the same roots, so each would settle, look up
and queue every file: the ledger's cost per file grew with the number of hosts. Instead the
hosts compete for the lease ``discover:JOB``. Its holder discovers the job's files (and
renews the lease every ``RENEW_SECONDS``); the others ignore the job's events and scans,
and still upload its queued files. A holder that stops drops its lease, and one that dies
leaves it to expire after ``LEASE_SECONDS``: another host then takes it and rescans the
roots, which finds whatever arrived in between. A host whose roots are not watched (a
mount missing here) does not compete.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from uploaderd.config.settings import Job
from uploaderd.errors import DatabaseUnavailable
from uploaderd.ledger.store import Ledger
from uploaderd.observe import metrics

log = logging.getLogger(__name__)

LEASE_SECONDS = 30.0
RENEW_SECONDS = 10.0


def lease_name(job: str) -> str:
    return f"discover:{job}"


class Leadership:
    """Which shared jobs this host discovers; ``on_change(job, leading)`` on each change."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        can_lead: Callable[[str], bool],
        on_change: Callable[[str, bool], None],
    ) -> None:
        self.ledger = ledger
        self.can_lead = can_lead
        self.on_change = on_change
        self.leading: set[str] = set()

    def round(self, jobs: Mapping[str, Job]) -> None:
        """Take or renew the lease of every shared job this host can discover; give up the
        others. An outage changes nothing: the leases expire by themselves."""
        shared = {name for name, job in jobs.items() if job.source.shared}
        for name in sorted(self.leading - shared):
            self._give_up(name)
        for name in sorted(shared):
            if not self.can_lead(name):
                if name in self.leading:
                    self._give_up(name)
                continue
            held = self.ledger.take_lease(lease_name(name), LEASE_SECONDS, renew=True)
            if held != (name in self.leading):
                self._changed(name, held)

    def release(self) -> None:
        """Give every lease up (a clean stop): another host takes over at its next round."""
        for name in sorted(self.leading):
            try:
                self._give_up(name)
            except DatabaseUnavailable as exc:
                log.warning("job %s: the discovery lease expires by itself: %s", name, exc)

    def _give_up(self, name: str) -> None:
        self.ledger.drop_lease(lease_name(name))
        self._changed(name, False)

    def _changed(self, name: str, leading: bool) -> None:
        if leading:
            self.leading.add(name)
            log.info("job %s: this host discovers the shared roots now", name)
        else:
            self.leading.discard(name)
            log.info("job %s: this host no longer discovers the shared roots", name)
        metrics.discovery_leading.labels(name).set(int(leading))
        self.on_change(name, leading)
