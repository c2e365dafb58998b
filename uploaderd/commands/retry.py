"""``uploaderd retry``: re-queue failed files and registrations now, and with
``--auto-retry`` upload them here."""

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
)
from uploaderd.config.settings import DaemonConfig
from uploaderd.errors import UsageError


def add_parser(parsers: Parsers) -> None:
    retry = parsers.add(
        "retry",
        run_retry,
        "re-queue failed files (and registrations) now",
        "retry --job scope-a",
        "retry --session-id 42 --auto-retry",
        json_help="requeued_files, requeued_registrations, run",
    )
    selector = retry.add_mutually_exclusive_group(required=True)
    selector.add_argument(
        "--session-id",
        type=int,
        metavar="N",
        help="the failures of one session (e.g. --session-id 42)",
    )
    selector.add_argument("--job", metavar="J", help="the failures of one job (e.g. --job scope-a)")
    selector.add_argument(
        "--all", action="store_true", help="every failure of every job (e.g. uploaderd retry --all)"
    )
    retry.add_argument(
        "--auto-retry",
        action="store_true",
        help="then upload them here, with the job's backoff, until done or out "
        "of attempts (e.g. uploaderd retry --job scope-a --auto-retry)",
    )
    progress_options(retry)


def run_retry(args: argparse.Namespace, config: DaemonConfig) -> int:
    from uploaderd.commands.oneshot import Selection

    jobs = jobs_of(config)
    with open_ledger(config, "retry") as ledger:
        if args.session_id is not None:
            session = ledger.session(args.session_id)
            if session is None:
                raise UsageError(f"there is no session {args.session_id}")
            selection = Selection(
                (job_named(config, jobs, session["job"]).name,), session_id=args.session_id
            )
        elif args.job is not None:
            selection = Selection((job_named(config, jobs, args.job).name,), job=args.job)
        else:
            selection = Selection(tuple(sorted(jobs)), everything=True)
        runner = one_shot(config, jobs, ledger, args)
        status = runner.retry(selection, auto=args.auto_retry)
        return finish(args, status, runner.report.get("retry", {}))
