"""The ``uploaderd`` command: parse arguments, load config at the edge, map errors to exits."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from uploaderd import __version__, checks, logs, schema, service
from uploaderd.config import DEFAULT_CONFIG_PATH, DaemonConfig, load_daemon_config, load_jobs
from uploaderd.errors import (
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    UploaderdError,
)
from uploaderd.ledger import Ledger, State
from uploaderd.units import format_bytes

Command = Callable[[argparse.Namespace, DaemonConfig], int]


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = build_parser(env)
    args = parser.parse_args(argv)
    try:
        config = load_daemon_config(args.config, env=env)
        logs.setup(config.log_level if args.command == "run" else "warning", config.log_format)
        command: Command = args.handler
        return command(args, config)
    except UploaderdError as exc:
        print(f"uploaderd: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return EXIT_FAILURES


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uploaderd", description="Ship every complete file in watched folders to S3.")
    parser.add_argument("--version", action="version", version=f"uploaderd {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", type=Path,
        default=Path(env.get("UPLOADERD_CONFIG") or DEFAULT_CONFIG_PATH),
        help="daemon config (default: $UPLOADERD_CONFIG or %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Command, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    add("run", cmd_run, "run the daemon in the foreground (systemd Type=notify)")
    add("migrate", cmd_migrate, "create or upgrade the database schema (idempotent)")
    check = add("check", cmd_check, "validate config and jobs; count watches; spot network mounts")
    check.add_argument("--connect", action="store_true",
                       help="also reach the database and write to each bucket")
    status = add("status", cmd_status, "per job: counts by state, bytes, oldest pending, errors")
    status.add_argument("--job")
    status.add_argument("--json", action="store_true")
    files = add("files", cmd_files, "list file versions with state, attempts and last error")
    files.add_argument("--job")
    files.add_argument("--state", choices=[s.value for s in State])
    files.add_argument("--session-id", type=int)
    files.add_argument("--limit", type=int, default=1000)
    files.add_argument("--json", action="store_true")
    return parser


# --- commands ----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, config: DaemonConfig) -> int:
    return service.run(config)


def cmd_migrate(args: argparse.Namespace, config: DaemonConfig) -> int:
    applied = schema.migrate(config.dsn)
    print("\n".join(f"applied {name}" for name in applied) or "schema is up to date")
    return EXIT_OK


def cmd_check(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = load_jobs(config.jobs_dir, config.s3)
    findings = [checks.Finding("error", str(p.file or "config"), str(p)) for p in jobs.problems]
    for job in jobs.jobs.values():
        findings.extend(checks.inspect_job(job))
    if args.connect:
        findings.extend(checks.connect_findings(config, dict(jobs.jobs)))
    for finding in findings:
        print(finding.message if finding.level == "error" else str(finding))
    levels = {f.level for f in findings}
    print(f"{len(jobs.jobs)} valid jobs, {len(jobs.problems)} problems")
    if "error" in levels:
        return EXIT_USAGE
    return EXIT_UNREACHABLE if "unreachable" in levels else EXIT_OK


def cmd_status(args: argparse.Namespace, config: DaemonConfig) -> int:
    ledger = Ledger(config.dsn, application_name="uploaderd status").connect()
    try:
        counts = ledger.job_counts(args.job)
        errors = ledger.recent_errors(args.job)
    finally:
        ledger.close()
    report: dict[str, dict[str, Any]] = {}
    for row in counts:
        job = report.setdefault(row.job, {"states": {}, "bytes": {}, "oldest_pending_seconds": None,
                                          "last_success": None})
        job["states"][row.state] = row.files
        job["bytes"][row.state] = row.bytes
        if row.state == State.PENDING:
            job["oldest_pending_seconds"] = row.oldest_age_seconds
        if row.last_uploaded_at is not None:
            job["last_success"] = row.last_uploaded_at.isoformat()
    if args.json:
        print(json.dumps({"jobs": report, "recent_errors": errors}, default=_json_value, indent=2))
    else:
        _print_status(report, errors)
    failed = any(job["states"].get(State.FAILED, 0) for job in report.values())
    return EXIT_FAILURES if failed else EXIT_OK


def cmd_files(args: argparse.Namespace, config: DaemonConfig) -> int:
    ledger = Ledger(config.dsn, application_name="uploaderd files").connect()
    try:
        rows = ledger.list_files(job=args.job, state=args.state, session_id=args.session_id,
                                 limit=args.limit)
    finally:
        ledger.close()
    if args.json:
        print(json.dumps(rows, default=_json_value, indent=2))
        return EXIT_OK
    print(f"{'ID':>8} {'JOB':<16} {'STATE':<10} {'TRIES':>5} {'SIZE':>10}  PATH")
    for row in rows:
        error = f"  ({row['last_error']})" if row["last_error"] else ""
        print(f"{row['id']:>8} {row['job']:<16} {row['state']:<10} {row['attempts']:>5} "
              f"{format_bytes(row['size']):>10}  {row['relpath']}{error}")
    return EXIT_OK


def _print_status(report: dict[str, dict[str, Any]], errors: list[dict[str, Any]]) -> None:
    states = [s.value for s in State]
    print(f"{'JOB':<20}" + "".join(f"{s:>12}" for s in states) + f"{'OLDEST PENDING':>16}")
    for name, job in sorted(report.items()):
        oldest = job["oldest_pending_seconds"]
        print(f"{name:<20}" + "".join(f"{job['states'].get(s, 0):>12}" for s in states)
              + f"{(f'{oldest:.0f}s' if oldest is not None else '-'):>16}")
    if errors:
        print("\nrecent errors:")
        for error in errors:
            print(f"  {error['job']}: {error['relpath']} ({error['state']}, "
                  f"{error['attempts']} attempts): {error['last_error']}")


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
