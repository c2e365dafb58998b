"""``uploaderd pipeline``: upload, retry the failures, trigger and send the job's due
registrations, in one go."""

from __future__ import annotations

import argparse

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
from uploaderd.config.settings import DaemonConfig


def add_parser(parsers: Parsers) -> None:
    pipeline = parsers.add(
        "pipeline",
        run_pipeline,
        "upload, retry the failures, trigger, send the job's due registrations: in one go",
        "pipeline scope-a",
        json_help="upload, retry, registrations",
    )
    pipeline.add_argument("job", metavar="JOB", help="a job in jobs.d (e.g. scope-a)")
    workers_option(pipeline)
    settle_option(pipeline)
    progress_options(pipeline)


def run_pipeline(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = jobs_of(config)
    job = jobs[args.job] = settled_as_asked(job_named(config, jobs, args.job), args)
    with open_ledger(config, "pipeline") as ledger:
        runner = one_shot(config, jobs, ledger, args)
        return finish(args, runner.pipeline(job), runner.report)
