"""``uploaderd verify``: compare the ledger with an S3 listing (the comparison is
:mod:`uploaderd.upload.verify`)."""

from __future__ import annotations

import argparse

from uploaderd.commands.common import Parsers, job_named, jobs_of, open_ledger, print_json, show
from uploaderd.config.settings import DaemonConfig
from uploaderd.errors import EXIT_FAILURES, EXIT_OK


def add_parser(parsers: Parsers) -> None:
    verify = parsers.add(
        "verify",
        run_verify,
        "compare the ledger with an S3 listing: missing, extra, size or checksum mismatch",
        "verify scope-a",
        json_help='{"job", "prefix", "problems": [...], ...}',
    )
    verify.add_argument("job", metavar="JOB", help="a job in jobs.d (e.g. scope-a)")


def run_verify(args: argparse.Namespace, config: DaemonConfig) -> int:
    from uploaderd.upload.storage import Storage
    from uploaderd.upload.verify import verify

    job = job_named(config, jobs_of(config), args.job)
    client = Storage(pool_connections=config.workers).client(job.destination.s3)
    with open_ledger(config, "verify") as ledger:
        report = verify(job, ledger, client, workers=config.workers)
    if args.json:
        print_json(report.as_json())
    else:
        show(*report.lines())
    return EXIT_FAILURES if report.problems else EXIT_OK
