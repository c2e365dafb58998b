"""``uploaderd trigger``: call a job's endpoint for a session now, or list and resend a job's
unsent registrations (the work itself is :mod:`uploaderd.commands.registrar`)."""

from __future__ import annotations

import argparse

from uploaderd.commands.common import Parsers, finish, job_named, jobs_of, open_ledger, printer
from uploaderd.commands.common import registrar as make_registrar
from uploaderd.config.settings import DaemonConfig
from uploaderd.errors import UsageError


def add_parser(parsers: Parsers) -> None:
    trigger = parsers.add(
        "trigger",
        run_trigger,
        "call the job's endpoint for a session now, or "
        "list and resend a job's unsent registrations",
        "trigger --session-id 42",
        "trigger --job scope-a --pending",
        "trigger --job scope-a --pending --dry-run",
        json_help='{"registrations": [{"registration", "session", "state", '
        '"http_status", "error"}]}',
    )
    target = trigger.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--session-id", type=int, metavar="N", help="register this session (e.g. --session-id 42)"
    )
    target.add_argument(
        "--job", metavar="J", help="with --pending: this job's registrations (e.g. --job scope-a)"
    )
    trigger.add_argument(
        "--pending",
        action="store_true",
        help="with --job: list the registrations not sent yet (pending or "
        "failed) and send them now with fresh attempts "
        "(e.g. uploaderd trigger --job scope-a --pending)",
    )
    trigger.add_argument(
        "--dry-run",
        action="store_true",
        help="with --pending: only list them (e.g. uploaderd trigger --job "
        "scope-a --pending --dry-run)",
    )
    trigger.add_argument(
        "--force",
        action="store_true",
        help="register again after a success (a new idempotency key), or "
        "register what is uploaded of an incomplete session "
        "(e.g. uploaderd trigger --session-id 42 --force)",
    )


def run_trigger(args: argparse.Namespace, config: DaemonConfig) -> int:
    if args.pending != (args.job is not None):
        raise UsageError("--pending goes with --job J (--session-id N registers one session)")
    if args.dry_run and not args.pending:
        raise UsageError("--dry-run goes with --job J --pending")
    jobs = jobs_of(config)
    with open_ledger(config, "trigger") as ledger:
        registrar = make_registrar(jobs, ledger, printer(args))
        if args.job is not None:
            status = registrar.send_pending(job_named(config, jobs, args.job), dry_run=args.dry_run)
        else:
            status = registrar.trigger(args.session_id, force=args.force)
        return finish(args, status, {"registrations": registrar.calls})
