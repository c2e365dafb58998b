"""``uploaderd files``: list file versions with their state, attempts and last error."""

from __future__ import annotations

import argparse

from uploaderd.commands.common import (
    Parsers,
    open_ledger,
    positive_int,
    print_json,
    show,
    unknown_job,
)
from uploaderd.config.settings import DaemonConfig, load_jobs
from uploaderd.errors import EXIT_OK, UsageError
from uploaderd.ledger.store import State
from uploaderd.policy.units import format_bytes


def add_parser(parsers: Parsers) -> None:
    files = parsers.add(
        "files",
        run_files,
        "list file versions with state, attempts and last error",
        "files --job scope-a --state failed",
        "files --session-id 42",
        json_help="a list of versions",
    )
    files.add_argument("--job", metavar="J", help="only this job (e.g. --job scope-a)")
    files.add_argument(
        "--state",
        choices=[s.value for s in State],
        help="only versions in this state (e.g. --state failed)",
    )
    files.add_argument(
        "--session-id",
        type=int,
        metavar="N",
        help="only this session's versions (e.g. --session-id 42)",
    )
    files.add_argument(
        "--limit",
        type=positive_int,
        default=1000,
        metavar="N",
        help="at most N versions, oldest first (default 1000; e.g. --limit 50)",
    )


def run_files(args: argparse.Namespace, config: DaemonConfig) -> int:
    with open_ledger(config, "files") as ledger:
        if args.session_id is not None and ledger.session(args.session_id) is None:
            raise UsageError(f"there is no session {args.session_id}")
        rows = ledger.list_files(
            job=args.job, state=args.state, session_id=args.session_id, limit=args.limit
        )
        if args.job is not None and not rows:
            configured = load_jobs(config.jobs_dir, config.s3, config.job_policy).jobs
            if args.job not in configured and not ledger.job_counts(args.job):
                raise UsageError(unknown_job(config, configured, args.job))
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:  # a header alone reads as a listing that broke off
        show(f"no file versions{_selection(args)}")
        return EXIT_OK
    show(f"{'ID':>8} {'JOB':<16} {'STATE':<10} {'TRIES':>5} {'SIZE':>10}  PATH")
    for row in rows:
        error = f"  ({row['last_error']})" if row["last_error"] else ""
        show(
            f"{row['id']:>8} {row['job']:<16} {row['state']:<10} {row['attempts']:>5} "
            f"{format_bytes(row['size']):>10}  {row['relpath']}{error}"
        )
    return EXIT_OK


def _selection(args: argparse.Namespace) -> str:
    """`` in state failed of job scope-a``: what ``files`` was asked for, in words."""
    parts = [f" in state {args.state}" if args.state else ""]
    parts.append(f" of job {args.job}" if args.job else "")
    parts.append(f" in session {args.session_id}" if args.session_id is not None else "")
    return "".join(parts)
