"""Leases in the ledger (table ``leases``, migration 0011): the sweeps' turns and the
discovering host of each shared job, as rows that hold through any connection pooler."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from devstack import wait_for
from uploaderd.config.settings import Retention, S3Settings, parse_job_text
from uploaderd.daemon.leadership import Leadership
from uploaderd.daemon.scheduler import Scheduler
from uploaderd.ledger import store
from uploaderd.ledger.store import Ledger, lease_holder

Sql = Callable[..., list[tuple[Any, ...]]]
OTHER = "other-host:4242:feed"


def held_by(sql: Sql, name: str) -> str | None:
    rows = sql("SELECT holder FROM leases WHERE name = %s", name)
    return str(rows[0][0]) if rows else None


def test_a_lease_is_one_process_s_until_it_expires(ledger: Ledger, sql: Sql) -> None:
    assert ledger.take_lease("retry-sweep", 60)
    assert held_by(sql, "retry-sweep") == lease_holder()
    assert not ledger.take_lease("retry-sweep", 60)  # taken: not even by its holder again
    assert ledger.take_lease("retry-sweep", 60, renew=True)  # but renewed by it
    sql("UPDATE leases SET holder = %s", OTHER)
    assert not ledger.take_lease("retry-sweep", 60, renew=True)  # another's, still valid
    ledger.drop_lease("retry-sweep")  # only the holder's drop counts
    assert held_by(sql, "retry-sweep") == OTHER
    sql("UPDATE leases SET expires_at = now() - interval '1 second'")
    assert ledger.take_lease("retry-sweep", 60)  # expired: anyone's
    assert held_by(sql, "retry-sweep") == lease_holder()
    ledger.drop_lease("retry-sweep")
    assert held_by(sql, "retry-sweep") is None


def test_a_sweep_holds_its_lease_for_the_block_and_renews_it_while_it_works(
    ledger: Ledger, migrated_dsn: str, sql: Sql, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "SWEEP_LEASE_SECONDS", 1.5)  # renewed every 0.5 s of work
    other = Ledger(migrated_dsn).connect()
    try:
        with ledger.named_lock("sessions:lab") as held:
            assert held
            with other.named_lock("sessions:lab") as also:
                assert not also  # one turn at a time, across threads and hosts alike
            first = sql("SELECT expires_at FROM leases")[0][0]

            def renewed() -> bool:
                ledger.ping()  # the sweep's next transaction renews, once it is due
                return bool(sql("SELECT expires_at > %s FROM leases", first)[0][0])

            wait_for(renewed, timeout=10, message="the lease renewed by the sweep's work")
        assert held_by(sql, "sessions:lab") is None  # dropped when the sweep ends
    finally:
        other.close()


def test_the_leases_of_a_dead_process_of_this_host_are_freed(ledger: Ledger, sql: Sql) -> None:
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])  # a pid that no longer runs
    dead.wait()
    rows = {
        "trigger:lab": f"{host}:{dead.pid}:dead",
        "dispose:lab": f"{host}:{os.getpid()}:predecessor",  # our pid, not our token
        "retry-sweep": OTHER,  # another host's: its own daemon decides
    }
    for name, holder in rows.items():
        sql(
            "INSERT INTO leases VALUES (%s, %s, split_part(%s, ':', 1), now() + interval '1h')",
            name,
            holder,
            holder,
        )
    assert ledger.take_lease("prune", 60)  # ours, alive
    scheduler = Scheduler(
        ledger,
        lambda: ledger,
        ledger,
        host=host,
        me=f"{host}:{os.getpid()}:worker",
        rescan=lambda job: None,
        retention=Retention(),
    )
    scheduler.reclaim_leases()  # its task at start and every 30 s
    assert sorted(r[0] for r in sql("SELECT name FROM leases")) == ["prune", "retry-sweep"]


def shared_job(name: str, shared: bool = True) -> Any:
    return parse_job_text(
        f"source: {{paths: [/data/{name}], shared: {str(shared).lower()}}}\n"
        "destination: {bucket: lab-raw}\n",
        name=name,
        defaults=S3Settings(),
    )


def test_one_host_discovers_a_shared_job_and_another_takes_over_when_it_goes(
    ledger: Ledger, sql: Sql
) -> None:
    changes: list[tuple[str, bool]] = []
    watchable = {"lab": True}
    leadership = Leadership(
        ledger, can_lead=lambda job: watchable[job], on_change=lambda *c: changes.append(c)
    )
    jobs = {"lab": shared_job("lab"), "local": shared_job("local", shared=False)}
    sql("INSERT INTO leases VALUES ('discover:lab', %s, 'other-host', now() + '1h')", OTHER)
    leadership.round(jobs)
    assert changes == [] and leadership.leading == set()  # another host discovers it
    sql("UPDATE leases SET expires_at = now() - interval '1 second'")  # that host died
    leadership.round(jobs)
    assert changes == [("lab", True)]  # this host takes over (and rescans the roots)
    assert held_by(sql, "discover:lab") == lease_holder()
    leadership.round(jobs)  # renewed, nothing changes
    assert changes == [("lab", True)] and held_by(sql, "discover:lab") == lease_holder()
    watchable["lab"] = False  # its roots are gone from this host: it steps aside
    leadership.round(jobs)
    assert changes[-1] == ("lab", False) and held_by(sql, "discover:lab") is None
    watchable["lab"] = True
    leadership.round(jobs)
    leadership.round({"local": jobs["local"]})  # the job removed from this host
    assert changes[-2:] == [("lab", True), ("lab", False)]
    assert sql("SELECT count(*) FROM leases") == [(0,)]  # never a lease for a local job
    leadership.round(jobs)
    leadership.release()  # a clean stop: the next host need not wait for the expiry
    assert changes[-1] == ("lab", False) and sql("SELECT count(*) FROM leases") == [(0,)]
