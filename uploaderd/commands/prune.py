"""``uploaderd prune``: remove finished history older than the retention (the work itself is
:mod:`uploaderd.ledger.retention`)."""

from __future__ import annotations

import argparse
import dataclasses

from uploaderd.commands.common import Parsers, job_named, jobs_of, open_ledger, print_json, show
from uploaderd.config.settings import MIN_RETENTION, DaemonConfig, Retention, parse_retention
from uploaderd.errors import EXIT_OK
from uploaderd.ledger.retention import Pruner
from uploaderd.policy.units import format_duration


def add_parser(parsers: Parsers) -> None:
    prune = parsers.add(
        "prune",
        run_prune,
        "remove finished history older than ledger.retention "
        "(live work and unsent registrations always stay)",
        "prune --dry-run",
        "prune --older-than 30d --job scope-a",
        json_help='{"dry_run", "versions", "attempts", "registrations", "sessions"}',
    )
    prune.add_argument(
        "--older-than",
        type=_retention_arg,
        metavar="DURATION",
        help=f"versions older than this, at least {format_duration(MIN_RETENTION)}, instead "
        "of ledger.retention.versions (e.g. --older-than 30d)",
    )
    prune.add_argument(
        "--job",
        metavar="J",
        help="only this job (default: every job in jobs.d; e.g. --job scope-a)",
    )
    prune.add_argument(
        "--dry-run",
        action="store_true",
        help="count what would be removed; change nothing (e.g. uploaderd prune --dry-run)",
    )


def run_prune(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = jobs_of(config)
    if args.job is not None:
        jobs = {args.job: job_named(config, jobs, args.job)}
    retention = config.retention
    if args.older_than is not None:
        attempts = retention.attempts
        retention = Retention(
            args.older_than, args.older_than if attempts is None else min(attempts, args.older_than)
        )
    with open_ledger(config, "prune") as ledger:
        # Rests between batches as the daemon's sweep does: the daemons' uploads go on.
        report = Pruner(ledger).run(retention, jobs, dry_run=args.dry_run)
    if args.json:
        print_json({"dry_run": args.dry_run, **dataclasses.asdict(report)})
    else:
        origin = "--older-than" if args.older_than is not None else "ledger.retention"
        show(f"retention ({origin}): {_described(retention)}")
        show(report.describe(dry_run=args.dry_run))
    return EXIT_OK


def _described(retention: Retention) -> str:
    """``versions older than 90d, attempts older than 30d`` (``forever``: kept)."""
    parts = []
    for name, seconds in (("versions", retention.versions), ("attempts", retention.attempts)):
        parts.append(
            f"{name} kept forever"
            if seconds is None
            else f"{name} older than {format_duration(seconds)}"
        )
    return ", ".join(parts)


def _retention_arg(value: str) -> float:
    try:
        seconds = parse_retention(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if seconds is None:
        raise argparse.ArgumentTypeError("expected a duration such as 30d")
    return seconds
