"""``uploaderd upload``: scan a job, or a directory given on the command line, now and upload
what is new, with progress (the work itself is :mod:`uploaderd.commands.oneshot`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from uploaderd.commands.common import (
    Parsers,
    finish,
    job_named,
    jobs_of,
    one_shot,
    open_ledger,
    progress_options,
    settle_option,
    settled_as_asked,
    workers_option,
)
from uploaderd.config import adhoc
from uploaderd.config.settings import DaemonConfig
from uploaderd.errors import UsageError


def add_parser(parsers: Parsers) -> None:
    upload = parsers.add(
        "upload",
        run_upload,
        "one-shot: scan a job (or a directory) now and upload "
        "what is new, with progress; prints the session id",
        "upload scope-a",
        "upload scope-a --dry-run",
        "upload --source /data/run42 --to s3://lab-raw/run42 --include '**/*.tif'",
        json_help="found, queued, session, run, registrations",
    )
    upload.add_argument(
        "job",
        metavar="JOB",
        nargs="?",
        help="a job in jobs.d (e.g. scope-a); or give --source and --to",
    )
    upload.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would be queued (path, size, key); change nothing "
        "(e.g. uploaderd upload scope-a --dry-run)",
    )
    upload.add_argument(
        "--source",
        type=Path,
        metavar="DIR",
        help="ad-hoc run without a job file: upload this directory "
        "(e.g. --source /data/run42); needs --to",
    )
    upload.add_argument(
        "--to",
        metavar="S3URL",
        help="with --source: the bucket and key prefix (e.g. --to s3://lab-raw/run42)",
    )
    upload.add_argument(
        "--include",
        action="append",
        metavar="PATTERN",
        help="with --source: only paths matching this glob, repeatable "
        "(e.g. --include '**/*.tif' --include '**/*.json')",
    )
    upload.add_argument(
        "--bandwidth",
        metavar="RATE",
        help="with --source: cap the upload rate (e.g. --bandwidth 20MiB/s)",
    )
    workers_option(upload)
    settle_option(upload)
    progress_options(upload)


def run_upload(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = jobs_of(config)
    if args.source is not None or args.to is not None:
        job = adhoc.job(
            config,
            args.source,
            args.to,
            include=args.include,
            bandwidth=args.bandwidth,
            named=args.job,
        )
        jobs[job.name] = job
    elif args.job is None:
        raise UsageError("upload needs a JOB, or --source DIR and --to s3://BUCKET/PREFIX")
    elif args.include or args.bandwidth:
        raise UsageError("--include and --bandwidth go with --source; a job sets them in its file")
    else:
        job = job_named(config, jobs, args.job)
    job = jobs[job.name] = settled_as_asked(job, args)
    with open_ledger(config, "upload") as ledger:
        runner = one_shot(config, jobs, ledger, args)
        return finish(args, runner.upload(job, dry_run=args.dry_run), runner.report)
