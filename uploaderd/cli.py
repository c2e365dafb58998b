"""The ``uploaderd`` command: parse arguments, load config at the edge, map errors to exits."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from uploaderd import __version__, checks, explain, logs, schema, service
from uploaderd.config import (
    DEFAULT_CONFIG_PATH,
    DaemonConfig,
    Job,
    Retention,
    load_daemon_config,
    load_jobs,
    parse_retention,
)
from uploaderd.errors import (
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    UploaderdError,
    UsageError,
)
from uploaderd.ledger import Ledger, State
from uploaderd.oneshot import OneShot, Selection
from uploaderd.printable import printable
from uploaderd.progress import make_display
from uploaderd.register import Registrar
from uploaderd.retention import Pruner
from uploaderd.storage import Storage
from uploaderd.triggers import TriggerDispatcher
from uploaderd.units import format_bytes
from uploaderd.verify import verify

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
        for line in str(exc).split("\n"):
            _out(f"uploaderd: {line}", file=sys.stderr)
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
                       help="also reach the database, write to each bucket and reach each "
                            "trigger URL")
    upload = add("upload", cmd_upload, "one-shot: scan a job now and upload what is new, "
                                       "with a progress bar; prints the session id")
    upload.add_argument("job", metavar="JOB")
    upload.add_argument("--dry-run", action="store_true",
                        help="list what would be queued (path, size, key); change nothing")
    upload.add_argument("--no-progress", action="store_true", help="no progress bar")
    retry = add("retry", cmd_retry, "re-queue failed files (and registrations) now")
    selector = retry.add_mutually_exclusive_group(required=True)
    selector.add_argument("--session-id", type=int)
    selector.add_argument("--job")
    selector.add_argument("--all", action="store_true")
    retry.add_argument("--auto-retry", action="store_true",
                       help="then upload them here, with the job's backoff, until done or out "
                            "of attempts")
    retry.add_argument("--no-progress", action="store_true", help="no progress bar")
    trigger = add("trigger", cmd_trigger, "call the job's endpoint for a session now")
    trigger.add_argument("--session-id", type=int, required=True)
    trigger.add_argument("--force", action="store_true",
                         help="register again after a success (a new idempotency key), or "
                              "register what is uploaded of an incomplete session")
    pipeline = add("pipeline", cmd_pipeline, "upload, retry the failures, trigger: in one go")
    pipeline.add_argument("job", metavar="JOB")
    pipeline.add_argument("--no-progress", action="store_true", help="no progress bar")
    status = add("status", cmd_status, "per job: counts by state, bytes, oldest pending, last "
                                       "success, paused destinations, open sessions, errors")
    status.add_argument("--job")
    status.add_argument("--json", action="store_true")
    files = add("files", cmd_files, "list file versions with state, attempts and last error")
    files.add_argument("--job")
    files.add_argument("--state", choices=[s.value for s in State])
    files.add_argument("--session-id", type=int)
    files.add_argument("--limit", type=int, default=1000)
    files.add_argument("--json", action="store_true")
    check_bucket = add("verify", cmd_verify, "compare the ledger with an S3 listing: missing, "
                                             "extra, size or checksum mismatch")
    check_bucket.add_argument("job", metavar="JOB")
    check_bucket.add_argument("--json", action="store_true")
    why = add("explain", cmd_explain, "for one file: its job, filters, versions, attempts and "
                                      "why it was or was not uploaded")
    why.add_argument("path", metavar="PATH")
    prune = add("prune", cmd_prune, "remove finished history older than ledger.retention "
                                    "(live work and unsent registrations always stay)")
    prune.add_argument("--older-than", type=_retention_arg, metavar="DURATION",
                       help="versions older than this (e.g. 30d) instead of "
                            "ledger.retention.versions")
    prune.add_argument("--job", help="only this job (default: every job in jobs.d)")
    prune.add_argument("--dry-run", action="store_true",
                       help="count what would be removed; change nothing")
    return parser


# --- commands ----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, config: DaemonConfig) -> int:
    return service.run(config)


def cmd_migrate(args: argparse.Namespace, config: DaemonConfig) -> int:
    applied = schema.migrate(config.dsn)
    _out(*([f"applied {name}" for name in applied] or ["schema is up to date"]))
    return EXIT_OK


def cmd_check(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = load_jobs(config.jobs_dir, config.s3, config.job_policy)
    findings = [checks.Finding("error", str(p.file or "config"), str(p)) for p in jobs.problems]
    for job in jobs.jobs.values():
        findings.extend(checks.inspect_job(job))
    if args.connect:
        findings.extend(checks.connect_findings(config, dict(jobs.jobs)))
    for finding in findings:
        _out(finding.message if finding.level == "error" else str(finding))
    levels = {f.level for f in findings}
    _out(f"{len(jobs.jobs)} valid jobs, {len(jobs.problems)} problems")
    if "error" in levels:
        return EXIT_USAGE
    return EXIT_UNREACHABLE if "unreachable" in levels else EXIT_OK


def cmd_status(args: argparse.Namespace, config: DaemonConfig) -> int:
    with _ledger(config, "status") as ledger:
        counts = ledger.job_counts(args.job)
        errors = ledger.recent_errors(args.job)
        paused = ledger.paused_destinations(args.job)
        sessions = ledger.open_session_summaries(args.job)
    report: dict[str, dict[str, Any]] = {}
    for row in counts:
        job = report.setdefault(row.job, {"states": {}, "bytes": {}, "oldest_pending_seconds": None,
                                          "last_success": None})
        job["states"][row.state] = row.files
        job["bytes"][row.state] = row.bytes
        if row.state == State.PENDING:
            job["oldest_pending_seconds"] = row.oldest_age_seconds
        if row.last_uploaded_at is not None:
            job["last_success"] = max(job["last_success"] or "", row.last_uploaded_at.isoformat())
    if args.json:
        print(json.dumps({"jobs": report, "paused_destinations": paused,
                          "open_sessions": sessions, "recent_errors": errors},
                         default=_json_value, indent=2))
    else:
        _print_status(report, errors)
        _print_paused(paused)
        _print_sessions(sessions)
    failed = any(job["states"].get(State.FAILED, 0) for job in report.values())
    return EXIT_FAILURES if failed else EXIT_OK


def cmd_files(args: argparse.Namespace, config: DaemonConfig) -> int:
    with _ledger(config, "files") as ledger:
        rows = ledger.list_files(job=args.job, state=args.state, session_id=args.session_id,
                                 limit=args.limit)
    if args.json:
        print(json.dumps(rows, default=_json_value, indent=2))
        return EXIT_OK
    _out(f"{'ID':>8} {'JOB':<16} {'STATE':<10} {'TRIES':>5} {'SIZE':>10}  PATH")
    for row in rows:
        error = f"  ({row['last_error']})" if row["last_error"] else ""
        _out(f"{row['id']:>8} {row['job']:<16} {row['state']:<10} {row['attempts']:>5} "
              f"{format_bytes(row['size']):>10}  {row['relpath']}{error}")
    return EXIT_OK


def cmd_upload(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = _jobs(config)
    job = _job(config, jobs, args.job)
    with _ledger(config, "upload") as ledger:
        status, _ = _one_shot(config, jobs, ledger, args).upload(job, dry_run=args.dry_run)
    return status


def cmd_retry(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = _jobs(config)
    with _ledger(config, "retry") as ledger:
        if args.session_id is not None:
            session = ledger.session(args.session_id)
            if session is None:
                raise UsageError(f"there is no session {args.session_id}")
            selection = Selection((_job(config, jobs, session["job"]).name,),
                                  session_id=args.session_id)
        elif args.job is not None:
            selection = Selection((_job(config, jobs, args.job).name,), job=args.job)
        else:
            selection = Selection(tuple(sorted(jobs)), everything=True)
        return _one_shot(config, jobs, ledger, args).retry(selection, auto=args.auto_retry)


def cmd_trigger(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = _jobs(config)
    with _ledger(config, "trigger") as ledger:
        return _registrar(jobs, ledger).trigger(args.session_id, force=args.force)


def cmd_pipeline(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = _jobs(config)
    job = _job(config, jobs, args.job)
    with _ledger(config, "pipeline") as ledger:
        return _one_shot(config, jobs, ledger, args).pipeline(job, _registrar(jobs, ledger))


def cmd_verify(args: argparse.Namespace, config: DaemonConfig) -> int:
    job = _job(config, _jobs(config), args.job)
    client = Storage(pool_connections=config.workers).client(job.destination.s3)
    with _ledger(config, "verify") as ledger:
        report = verify(job, ledger, client, workers=config.workers)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        _out(*report.lines())
    return EXIT_FAILURES if report.problems else EXIT_OK


def cmd_explain(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = _jobs(config)
    with _ledger(config, "explain") as ledger:
        for line in explain.explain(args.path, jobs, ledger):
            _out(line)
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = _jobs(config)
    if args.job is not None:
        jobs = {args.job: _job(config, jobs, args.job)}
    retention = config.retention
    if args.older_than is not None:
        attempts = retention.attempts
        retention = Retention(args.older_than, args.older_than if attempts is None
                              else min(attempts, args.older_than))
    with _ledger(config, "prune") as ledger:
        report = Pruner(ledger, rest=lambda seconds: False).run(
            retention, jobs, dry_run=args.dry_run)
    _out(*report.describe(dry_run=args.dry_run).split("\n"))
    return EXIT_OK


def _retention_arg(value: str) -> float:
    try:
        seconds = parse_retention(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if seconds is None:
        raise argparse.ArgumentTypeError("expected a duration such as 30d")
    return seconds


# --- shared by the commands ------------------------------------------------------------------


@contextmanager
def _ledger(config: DaemonConfig, command: str) -> Iterator[Ledger]:
    ledger = Ledger(config.dsn, application_name=f"uploaderd {command}").connect()
    try:
        yield ledger
    finally:
        ledger.close()


def _jobs(config: DaemonConfig) -> dict[str, Job]:
    return dict(load_jobs(config.jobs_dir, config.s3, config.job_policy).jobs)


def _job(config: DaemonConfig, jobs: Mapping[str, Job], name: str) -> Job:
    """The named job, or a usage error that says what is there (and what is broken)."""
    if name in jobs:
        return jobs[name]
    job_set = load_jobs(config.jobs_dir, config.s3, config.job_policy)
    broken = [str(p) for p in job_set.problems if p.file is not None and p.file.stem == name]
    if broken:
        raise UsageError(f"job {name!r} has errors:\n" + "\n".join(broken))
    known = ", ".join(sorted(jobs)) or "none"
    raise UsageError(f"unknown job {name!r}: no such job in {config.jobs_dir} (jobs: {known})")


def _one_shot(
    config: DaemonConfig, jobs: Mapping[str, Job], ledger: Ledger, args: argparse.Namespace
) -> OneShot:
    wanted = not getattr(args, "no_progress", False)
    return OneShot(config, jobs, ledger, out=_out, display=lambda: make_display(wanted))


def _registrar(jobs: Mapping[str, Job], ledger: Ledger) -> Registrar:
    return Registrar(ledger, jobs, TriggerDispatcher(ledger), out=_out)


def _out(*lines: str, file: TextIO | None = None) -> None:
    """Every line printed for a person: one line each, control characters escaped (a file
    name cannot move the cursor, recolour the terminal or forge a line)."""
    for line in lines:
        print(printable(line), file=file or sys.stdout, flush=True)


def _print_status(report: dict[str, dict[str, Any]], errors: list[dict[str, Any]]) -> None:
    states = [s.value for s in State]
    _out(f"{'JOB':<20}" + "".join(f"{s:>12}" for s in states) + f"{'OLDEST PENDING':>16}"
         + f"{'BYTES':>12}  LAST SUCCESS")
    for name, job in sorted(report.items()):
        oldest = job["oldest_pending_seconds"]
        size = format_bytes(sum(job["bytes"].values()))
        last = (job["last_success"] or "-")[:19].replace("T", " ")
        _out(f"{name:<20}" + "".join(f"{job['states'].get(s, 0):>12}" for s in states)
             + f"{(f'{oldest:.0f}s' if oldest is not None else '-'):>16}{size:>12}  {last}")
    if errors:
        _out("", "recent errors:")
        for error in errors:
            _out(f"  {error['job']}: {error['relpath']} ({error['state']}, "
                 f"{error['attempts']} attempts): {error['last_error']}")


def _print_paused(paused: list[dict[str, Any]]) -> None:
    if paused:
        _out("", "paused destinations:")
    for row in paused:
        _out(f"  {row['job']}: {row['kind']} on {row['host']} paused until "
              f"{row['paused_until']:%Y-%m-%d %H:%M:%S%z} after {row['consecutive_failures']} "
              f"failures: {row['last_error']}")


def _print_sessions(sessions: list[dict[str, Any]]) -> None:
    if sessions:
        _out("", "open sessions:")
    for row in sessions:
        group = f" {row['group_key']!r}" if row["group_key"] else ""
        _out(f"  {row['id']:>6} {row['job']}{group} ({row['origin']}): {row['files']} files, "
              f"{row['uploaded']} uploaded, {row['failed']} failed; last activity "
              f"{row['last_activity_at']:%Y-%m-%d %H:%M:%S%z}")


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
