"""Creating and upgrading the database schema from the numbered files in ``sql/migrations``.

Each migration runs in its own transaction and is recorded in ``uploaderd_migrations``. In
that transaction a transaction-level advisory lock serialises ``uploaderd migrate`` across
hosts, and the file is applied only if no other host recorded it first: two running at
once apply each file exactly once, through a transaction pooler too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from uploaderd.ledger.store import Ledger

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    folder = resources.files("uploaderd.sql").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


def applied(ledger: Ledger) -> set[int]:
    return ledger.applied_migrations()


def pending(ledger: Ledger) -> list[Migration]:
    done = applied(ledger)
    return [m for m in available() if m.version not in done]


def migrate(dsn: str, *, pool_mode: str = "session") -> list[str]:
    """Apply every pending migration; returns the names applied (empty when up to date)."""
    ledger = Ledger(dsn, application_name="uploaderd migrate", pool_mode=pool_mode).connect()
    try:
        return [
            migration.name
            for migration in pending(ledger)
            if ledger.apply_migration(migration.version, migration.name, migration.sql)
        ]
    finally:
        ledger.close()
