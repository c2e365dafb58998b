"""``uploaderd top``'s frames on a real PostgreSQL: what a frame reads, that it outlives the
database going away and comes back with it, and what it says of a daemon that does not
answer."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from rich.console import Console

from devstack import PostgresCluster, free_port
from uploaderd.config.settings import S3Settings, parse_job_text
from uploaderd.ledger.store import Ledger
from uploaderd.observe.live_site import SiteSampler
from uploaderd.observe.top_screen import render

Sql = Callable[..., list[tuple[Any, ...]]]


def screen(frame: Any) -> str:
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(render(frame, live=False))
    return console.export_text()


def test_a_frame_outlives_the_database_going_away_and_follows_it_back(
    migrated_dsn: str, pg_cluster: PostgresCluster, sql: Sql
) -> None:
    jobs = {
        name: parse_job_text(
            "source: {paths: [/data], settle: 1s}\ndestination: {bucket: lab-raw}\n",
            name=name,
            defaults=S3Settings(),
        )
        for name in ("lab", "quiet")
    }
    sql(
        "INSERT INTO file_versions (job, scope, host, root, relpath, size, mtime_ns, inode, "
        "bucket, key, state, attempts, last_error) VALUES "
        "('lab', 'host-a', 'host-a', '/data', 'bad.raw', 10, 1, 1, 'lab-raw', 'bad.raw', "
        "'failed', 3, 'S3 AccessDenied: Access Denied'), "
        "('lab', 'host-a', 'host-a', '/data', 'next.raw', 10, 1, 2, 'lab-raw', 'next.raw', "
        "'pending', 0, NULL)"
    )
    sql(
        "INSERT INTO destination_health (job, host, kind, consecutive_failures, paused_until, "
        "last_error) VALUES ('lab', 'host-b', 'trigger', 5, now() + interval '1 hour', "
        "'HTTP 503 \x1b[2J')"
    )
    port = free_port()  # nothing listens there
    sampler = SiteSampler(Ledger(migrated_dsn), lambda: jobs, f"127.0.0.1:{port}")
    try:
        first = sampler.frame()
        assert first.ledger_problem is None
        lab, quiet = first.jobs
        assert (lab.name, dict(lab.states), quiet.name, dict(quiet.states)) == (
            "lab",
            {"failed": 1, "pending": 1},
            "quiet",
            {},
        )
        assert [e["relpath"] for e in first.errors] == ["bad.raw"]
        shown = screen(first)
        assert "lab: trigger on host-b until" in shown and "after 5 failures" in shown
        assert "HTTP 503 \\x1b[2J" in shown, "an endpoint's answer cannot clear the screen"
        assert "last errors" in shown and "bad.raw (failed, 3 attempts)" in shown
        assert first.uploads is None
        assert first.daemon.startswith(f"no answer from http://127.0.0.1:{port}")

        pg_cluster.stop(mode="fast")
        away = sampler.frame()
        assert away.ledger_problem is not None and "PostgreSQL" in away.ledger_problem
        assert away.jobs == first.jobs and away.errors == first.errors, "the last rows kept"
        shown = screen(away)
        assert "showing its last rows" in shown and "bad.raw" in shown

        pg_cluster.start()
        back = sampler.frame()
        assert back.ledger_problem is None
        assert [job.name for job in back.jobs] == ["lab", "quiet"]
        assert "uploads in flight unknown" in screen(back)
    finally:
        pg_cluster.start()
        sampler.ledger.close()
