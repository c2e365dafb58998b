"""``uploaderd verify``: compare the ledger with an S3 listing (the comparison is
:mod:`uploaderd.upload.verify`)."""

from __future__ import annotations

import argparse
import socket

from uploaderd.commands.common import Parsers, job_named, jobs_of, open_ledger, print_json, show
from uploaderd.config.settings import DaemonConfig
from uploaderd.errors import EXIT_FAILURES, EXIT_OK, UsageError
from uploaderd.policy.units import plural


def add_parser(parsers: Parsers) -> None:
    verify = parsers.add(
        "verify",
        run_verify,
        "compare the ledger with an S3 listing: missing, extra, size or checksum mismatch; "
        "--repair requeues what the source files still hold",
        "verify scope-a",
        "verify scope-a --repair --dry-run",
        json_help='{"job", "prefix", "problems": [...], ...}',
    )
    verify.add_argument("job", metavar="JOB", help="a job in jobs.d (e.g. scope-a)")
    verify.add_argument(
        "--repair",
        action="store_true",
        help="requeue each missing, size- or checksum-mismatched object whose source file "
        "still holds the recorded bytes (SHA-256 checked now); say why for the others "
        "(e.g. uploaderd verify scope-a --repair)",
    )
    verify.add_argument(
        "--dry-run",
        action="store_true",
        help="with --repair: list what it would requeue; change nothing "
        "(e.g. uploaderd verify scope-a --repair --dry-run)",
    )


def run_verify(args: argparse.Namespace, config: DaemonConfig) -> int:
    from uploaderd.upload.storage import Storage
    from uploaderd.upload.verify import repair_plan, verify

    if args.dry_run and not args.repair:
        raise UsageError("--dry-run goes with --repair")
    job = job_named(config, jobs_of(config), args.job)
    client = Storage(pool_connections=config.workers).client(job.destination.s3)
    with open_ledger(config, "verify") as ledger:
        report = verify(job, ledger, client, workers=config.workers)
        plan = repair_plan(report) if args.repair else None
        if plan is not None and plan.requeued and not args.dry_run:
            reasons = {
                report.versions[(r.problem.bucket, r.problem.key)]["id"]: r.reason
                for r in plan.requeued
            }
            ledger.requeue_for_repair(socket.gethostname(), reasons)
    if args.json:
        print_json({**report.as_json(), **({"repair": plan.as_json()} if plan else {})})
    else:
        show(*report.lines())
        if plan is not None:
            show(*plan.lines(dry_run=args.dry_run))
            if plan.requeued and not args.dry_run:
                show(
                    f"the daemon uploads the {plural(len(plan.requeued), 'requeued file')}; "
                    f"without one, `uploaderd retry --job {job.name} --auto-retry` does now"
                )
    if plan is not None and not args.dry_run:
        return EXIT_FAILURES if plan.cannot or plan.left else EXIT_OK
    return EXIT_FAILURES if report.problems else EXIT_OK
