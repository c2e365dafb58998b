"""The ``uploaderd`` command: parse arguments, load config at the edge, map errors to exits.

Commands that talk to S3 or run the daemon import what they need (boto3, rich, watchdog,
APScheduler) when they run: ``status``, ``files`` and ``explain`` start in a fraction of the
time, which is what an operator or a monitoring check calling them every few seconds feels.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from uploaderd import __version__
from uploaderd.commands import explain
from uploaderd.commands import import_config as importer
from uploaderd.config import adhoc
from uploaderd.config.jobpolicy import JobPolicy
from uploaderd.config.settings import (
    DEFAULT_CONFIG_PATH,
    DaemonConfig,
    Job,
    Retention,
    load_daemon_config,
    load_jobs,
    parse_job_text,
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
from uploaderd.ledger import schema
from uploaderd.ledger.retention import Pruner
from uploaderd.ledger.store import Ledger, State
from uploaderd.observe import logs
from uploaderd.policy.printable import printable
from uploaderd.policy.transfers import STATS_SECONDS
from uploaderd.policy.units import format_bytes, parse_duration, plural

if TYPE_CHECKING:
    from uploaderd.commands.oneshot import OneShot
    from uploaderd.commands.registrar import Registrar

Command = Callable[[argparse.Namespace, DaemonConfig], int]


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    logs.console.journal = logs.journal_stream(sys.stderr, env)
    parser = build_parser(env)
    args = parser.parse_args(argv)
    try:
        # Only `check --reload` (the unit's ExecReload=) runs without the unit's credentials.
        credentials = not getattr(args, "reload", False)
        config = load_daemon_config(args.config, env=env, credentials=credentials)
        logs.setup(config.log_level if args.command == "run" else "warning", config.log_format, env)
        command: Command = args.handler
        return command(args, config)
    except UploaderdError as exc:
        logs.console.error(f"uploaderd: {exc}")
        return exc.exit_status
    except KeyboardInterrupt:
        return EXIT_FAILURES


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uploaderd",
        description="Ship every complete file in watched folders to S3.",
        epilog="examples:\n  uploaderd status\n  uploaderd -c ./uploaderd.yaml upload scope-a\n"
        "  uploaderd upload --source /data/run42 --to s3://lab-raw/run42\n\n"
        "exit: 0 done, 1 finished with failures, 2 usage or config error, 3 database "
        "or S3 unreachable",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"uploaderd {__version__}")
    config_help = (
        "daemon config, before or after the command (default: $UPLOADERD_CONFIG or "
        f"{DEFAULT_CONFIG_PATH}; e.g. -c ./uploaderd.yaml)"
    )
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help=config_help,
        default=Path(env.get("UPLOADERD_CONFIG") or DEFAULT_CONFIG_PATH),
    )
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given after the command it wins; not given, the one before the command stays.
    common.add_argument(
        "-c", "--config", type=Path, metavar="FILE", default=argparse.SUPPRESS, help=config_help
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, handler: Command, help_text: str, *examples: str, json_help: str | None = None
    ) -> argparse.ArgumentParser:
        epilog = "examples:\n" + "\n".join(f"  uploaderd {e}" for e in examples)
        sub = commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        if json_help is not None:
            sub.add_argument(
                "--json",
                action="store_true",
                help=f"one JSON document on stdout instead of text ({json_help}; "
                f"e.g. uploaderd {examples[0]} --json)",
            )
        return sub

    def progress_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--no-progress",
            action="store_true",
            help="no progress bar on a terminal and no stats lines elsewhere (e.g. in cron jobs)",
        )
        sub.add_argument(
            "--stats",
            type=_duration_arg,
            default=STATS_SECONDS,
            metavar="DURATION",
            help="when stdout is not a terminal, print one line of progress this "
            "often and at the end (default 10s; 0 turns it off; e.g. "
            "--stats 30s)",
        )

    add("run", cmd_run, "run the daemon in the foreground (systemd Type=notify)", "run")
    add(
        "migrate",
        cmd_migrate,
        "create or upgrade the database schema (idempotent)",
        "migrate",
        json_help='{"applied": [NAME, ...]}',
    )
    check = add(
        "check",
        cmd_check,
        "validate config and jobs; count watches; spot network mounts",
        "check",
        "check --connect",
        json_help='{"valid_jobs", "problems", "unreachable", "findings": [...]}',
    )
    check.add_argument(
        "--connect",
        action="store_true",
        help="also reach the database, write to each bucket and reach each "
        "trigger URL (e.g. uploaderd check --connect)",
    )
    check.add_argument(
        "--reload",
        action="store_true",
        help="as systemctl reload runs it (ExecReload=): the unit's credential files are "
        "not checked, since systemd hands them to the running daemon only "
        "(e.g. uploaderd check --reload)",
    )
    upload = add(
        "upload",
        cmd_upload,
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
    upload.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="upload with N threads instead of the config's workers (e.g. --workers 8)",
    )
    progress_options(upload)
    retry = add(
        "retry",
        cmd_retry,
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
    trigger = add(
        "trigger",
        cmd_trigger,
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
    pipeline = add(
        "pipeline",
        cmd_pipeline,
        "upload, retry the failures, trigger, send the job's due registrations: in one go",
        "pipeline scope-a",
        json_help="upload, retry, registrations",
    )
    pipeline.add_argument("job", metavar="JOB", help="a job in jobs.d (e.g. scope-a)")
    pipeline.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="upload with N threads instead of the config's workers (e.g. --workers 8)",
    )
    progress_options(pipeline)
    status = add(
        "status",
        cmd_status,
        "per job: counts by state, bytes, oldest pending, last "
        "success, unsent registrations, paused destinations, "
        "open sessions, errors",
        "status",
        "status --job scope-a",
        json_help='{"jobs": {JOB: {...}}, "paused_destinations", "open_sessions", "recent_errors"}',
    )
    status.add_argument("--job", metavar="J", help="only this job (e.g. --job scope-a)")
    files = add(
        "files",
        cmd_files,
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
        type=_positive_int,
        default=1000,
        metavar="N",
        help="at most N versions, oldest first (default 1000; e.g. --limit 50)",
    )
    check_bucket = add(
        "verify",
        cmd_verify,
        "compare the ledger with an S3 listing: missing, extra, size or checksum mismatch",
        "verify scope-a",
        json_help='{"job", "prefix", "problems": [...], ...}',
    )
    check_bucket.add_argument("job", metavar="JOB", help="a job in jobs.d (e.g. scope-a)")
    why = add(
        "explain",
        cmd_explain,
        "for one file: its job, filters, versions, attempts and why it was or was not uploaded",
        "explain /data/scope-a/run1/a.tif",
        json_help='{"path", "lines", "why"}',
    )
    why.add_argument(
        "path",
        metavar="PATH",
        help="the file, absolute or relative (e.g. /data/scope-a/run1/a.tif)",
    )
    prune = add(
        "prune",
        cmd_prune,
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
        help="versions older than this instead of ledger.retention.versions "
        "(e.g. --older-than 30d)",
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
    imported = add(
        "import-config",
        cmd_import_config,
        "print a job file made from an old data_uploader JSON config (credentials "
        "are never copied; unknown keys are reported)",
        "import-config run42.json",
        "import-config run42.json --output /etc/uploaderd/jobs.d/run42.yaml",
    )
    imported.add_argument(
        "old_config",
        metavar="OLD.json",
        type=Path,
        help="the old tool's config (e.g. /opt/data_uploader/run42.json)",
    )
    imported.add_argument(
        "--name",
        metavar="NAME",
        help="the job's name (default: from the file name; e.g. --name run42)",
    )
    imported.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="write the job file there instead of printing it; never over an "
        "existing file (e.g. --output /etc/uploaderd/jobs.d/run42.yaml)",
    )
    return parser


# --- commands ----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, config: DaemonConfig) -> int:
    from uploaderd.daemon import service

    return service.run(config)


def cmd_migrate(args: argparse.Namespace, config: DaemonConfig) -> int:
    applied = schema.migrate(config.dsn)
    if args.json:
        _print_json({"applied": applied})
    else:
        _show(*([f"applied {name}" for name in applied] or ["schema is up to date"]))
    return EXIT_OK


def cmd_check(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = load_jobs(config.jobs_dir, config.s3, config.job_policy)
    from uploaderd.commands import check as checks

    findings = [checks.Finding("error", str(p.file or "config"), str(p)) for p in jobs.problems]
    for job in jobs.jobs.values():
        findings.extend(checks.inspect_job(job))
    if args.connect:
        findings.extend(checks.connect_findings(config, dict(jobs.jobs)))
    levels = [f.level for f in findings]
    unreachable = levels.count("unreachable")
    # Problems of the database or the schema are findings too, not only job-file problems.
    problems = len(jobs.problems) + sum(
        1 for f in findings if f.level == "error" and f.subject == "database"
    )
    summary = f"{plural(len(jobs.jobs), 'valid job')}, {plural(problems, 'problem')}"
    if args.connect:
        summary += f", {unreachable} unreachable"
    if args.json:
        _print_json(
            {
                "valid_jobs": len(jobs.jobs),
                "problems": problems,
                "unreachable": unreachable,
                "findings": [dataclasses.asdict(f) for f in findings],
            }
        )
    else:
        for finding in findings:
            _show(finding.message if finding.level == "error" else str(finding))
        _show(summary)
    if "error" in levels:
        return EXIT_USAGE
    return EXIT_UNREACHABLE if unreachable else EXIT_OK


def cmd_status(args: argparse.Namespace, config: DaemonConfig) -> int:
    configured = load_jobs(config.jobs_dir, config.s3, config.job_policy).jobs
    with _ledger(config, "status") as ledger:
        counts = ledger.job_counts(args.job)
        registrations = ledger.registration_counts(args.job)
        if args.job is not None and args.job not in configured and not counts:
            raise UsageError(_unknown_job(config, configured, args.job))
        errors = ledger.recent_errors(args.job)
        paused = ledger.paused_destinations(args.job)
        sessions = ledger.open_session_summaries(args.job)
    report: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        job = configured.get(name)
        return report.setdefault(
            name,
            {
                "states": {},
                "bytes": {},
                "oldest_pending_seconds": None,
                "last_success": None,
                "enabled": job.enabled if job is not None else None,
                "registrations": {
                    "pending": 0,
                    "failed": 0,
                    "oldest_unsent_seconds": None,
                    "next_attempt_in": None,
                },
            },
        )

    for name in configured:
        if args.job in (None, name):
            entry(name)
    for row in counts:
        job = entry(row.job)
        job["states"][row.state] = row.files
        job["bytes"][row.state] = row.bytes
        if row.state == State.PENDING:
            job["oldest_pending_seconds"] = row.oldest_age_seconds
        if row.last_uploaded_at is not None:
            job["last_success"] = max(job["last_success"] or "", row.last_uploaded_at.isoformat())
    for reg in registrations:
        unsent = entry(reg["job"])["registrations"]
        unsent[reg["state"]] = reg["registrations"]
        unsent["oldest_unsent_seconds"] = max(
            unsent["oldest_unsent_seconds"] or 0.0, reg["oldest_age_seconds"]
        )
        if reg["state"] == "pending":
            unsent["next_attempt_in"] = reg["next_in"]
    if args.json:
        _print_json(
            {
                "jobs": report,
                "paused_destinations": paused,
                "open_sessions": sessions,
                "recent_errors": errors,
            }
        )
    else:
        _print_status(report, errors)
        _print_registrations(report)
        _print_paused(paused)
        _print_sessions(sessions)
    failed = any(
        job["states"].get(State.FAILED, 0) or job["registrations"]["failed"]
        for job in report.values()
    )
    return EXIT_FAILURES if failed else EXIT_OK


def cmd_files(args: argparse.Namespace, config: DaemonConfig) -> int:
    with _ledger(config, "files") as ledger:
        if args.session_id is not None and ledger.session(args.session_id) is None:
            raise UsageError(f"there is no session {args.session_id}")
        rows = ledger.list_files(
            job=args.job, state=args.state, session_id=args.session_id, limit=args.limit
        )
        if args.job is not None and not rows:
            configured = load_jobs(config.jobs_dir, config.s3, config.job_policy).jobs
            if args.job not in configured and not ledger.job_counts(args.job):
                raise UsageError(_unknown_job(config, configured, args.job))
    if args.json:
        _print_json(rows)
        return EXIT_OK
    _show(f"{'ID':>8} {'JOB':<16} {'STATE':<10} {'TRIES':>5} {'SIZE':>10}  PATH")
    for row in rows:
        error = f"  ({row['last_error']})" if row["last_error"] else ""
        _show(
            f"{row['id']:>8} {row['job']:<16} {row['state']:<10} {row['attempts']:>5} "
            f"{format_bytes(row['size']):>10}  {row['relpath']}{error}"
        )
    return EXIT_OK


def cmd_upload(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = _jobs(config)
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
        job = _job(config, jobs, args.job)
    with _ledger(config, "upload") as ledger:
        one_shot = _one_shot(config, jobs, ledger, args)
        return _finish(args, one_shot.upload(job, dry_run=args.dry_run), one_shot.report)


def cmd_retry(args: argparse.Namespace, config: DaemonConfig) -> int:
    from uploaderd.commands.oneshot import Selection

    jobs = _jobs(config)
    with _ledger(config, "retry") as ledger:
        if args.session_id is not None:
            session = ledger.session(args.session_id)
            if session is None:
                raise UsageError(f"there is no session {args.session_id}")
            selection = Selection(
                (_job(config, jobs, session["job"]).name,), session_id=args.session_id
            )
        elif args.job is not None:
            selection = Selection((_job(config, jobs, args.job).name,), job=args.job)
        else:
            selection = Selection(tuple(sorted(jobs)), everything=True)
        one_shot = _one_shot(config, jobs, ledger, args)
        status = one_shot.retry(selection, auto=args.auto_retry)
        return _finish(args, status, one_shot.report.get("retry", {}))


def cmd_trigger(args: argparse.Namespace, config: DaemonConfig) -> int:
    if args.pending != (args.job is not None):
        raise UsageError("--pending goes with --job J (--session-id N registers one session)")
    if args.dry_run and not args.pending:
        raise UsageError("--dry-run goes with --job J --pending")
    jobs = _jobs(config)
    with _ledger(config, "trigger") as ledger:
        registrar = _registrar(jobs, ledger, _out(args))
        if args.job is not None:
            status = registrar.send_pending(_job(config, jobs, args.job), dry_run=args.dry_run)
        else:
            status = registrar.trigger(args.session_id, force=args.force)
        return _finish(args, status, {"registrations": registrar.calls})


def cmd_pipeline(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = _jobs(config)
    job = _job(config, jobs, args.job)
    with _ledger(config, "pipeline") as ledger:
        one_shot = _one_shot(config, jobs, ledger, args)
        return _finish(args, one_shot.pipeline(job), one_shot.report)


def cmd_verify(args: argparse.Namespace, config: DaemonConfig) -> int:
    from uploaderd.upload.storage import Storage
    from uploaderd.upload.verify import verify

    job = _job(config, _jobs(config), args.job)
    client = Storage(pool_connections=config.workers).client(job.destination.s3)
    with _ledger(config, "verify") as ledger:
        report = verify(job, ledger, client, workers=config.workers)
    if args.json:
        _print_json(report.as_json())
    else:
        _show(*report.lines())
    return EXIT_FAILURES if report.problems else EXIT_OK


def cmd_explain(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = _jobs(config)
    with _ledger(config, "explain") as ledger:
        lines = list(explain.explain(args.path, jobs, ledger))
    if args.json:
        _print_json(
            {
                "path": args.path,
                "lines": lines,
                "why": [line.removeprefix("why: ") for line in lines if line.startswith("why: ")],
            }
        )
    else:
        _show(*lines)
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = _jobs(config)
    if args.job is not None:
        jobs = {args.job: _job(config, jobs, args.job)}
    retention = config.retention
    if args.older_than is not None:
        attempts = retention.attempts
        retention = Retention(
            args.older_than, args.older_than if attempts is None else min(attempts, args.older_than)
        )
    with _ledger(config, "prune") as ledger:
        # Rests between batches as the daemon's sweep does: the daemons' uploads go on.
        report = Pruner(ledger).run(retention, jobs, dry_run=args.dry_run)
    if args.json:
        _print_json({"dry_run": args.dry_run, **dataclasses.asdict(report)})
    else:
        _show(report.describe(dry_run=args.dry_run))
    return EXIT_OK


def cmd_import_config(args: argparse.Namespace, config: DaemonConfig) -> int:
    old = importer.read_old_config(args.old_config)
    result = importer.convert(old)
    name = args.name or importer.job_name(args.old_config)
    text = result.yaml(args.old_config)
    # What a person would get from this file: the job must load as it is written.
    parse_job_text(text, name=name, defaults=config.s3, policy=JobPolicy())
    if args.output is None:
        print(text, end="")
    else:
        try:
            with args.output.open("x", encoding="utf-8") as file:
                file.write(text)
        except FileExistsError as exc:
            raise UsageError(f"{args.output} exists; not overwritten") from exc
        except OSError as exc:
            raise UsageError(f"{args.output}: cannot write: {exc.strerror}") from exc
        print(f"wrote job {name} to {args.output}", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for key in result.unknown:
        _show(
            f"not imported: {args.old_config}: unknown key {key!r} "
            f"(value {json.dumps(old[key])}); see docs/migrating.md",
            file=sys.stderr,
        )
    return EXIT_FAILURES if result.unknown else EXIT_OK


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


def _unknown_job(config: DaemonConfig, jobs: Mapping[str, Job], name: str) -> str:
    known = ", ".join(sorted(jobs)) or "none"
    return (
        f"unknown job {name!r}: not in {config.jobs_dir} (jobs: {known}) and nothing in the ledger"
    )


def _one_shot(
    config: DaemonConfig, jobs: Mapping[str, Job], ledger: Ledger, args: argparse.Namespace
) -> OneShot:
    wanted = not args.no_progress
    # With --json, stdout carries the JSON alone: lines and progress go to stderr.
    stream = sys.stderr if args.json else sys.stdout
    out = _out(args)
    from uploaderd.commands.oneshot import OneShot
    from uploaderd.observe.progress import make_display

    return OneShot(
        config,
        jobs,
        ledger,
        out=out,
        display=lambda: make_display(wanted, stream, args.stats),
        registrar=_registrar(jobs, ledger, out),
        workers=getattr(args, "workers", None),
    )


def _registrar(jobs: Mapping[str, Job], ledger: Ledger, out: Callable[[str], None]) -> Registrar:
    from uploaderd.commands.registrar import Registrar
    from uploaderd.daemon.triggers import TriggerDispatcher

    return Registrar(ledger, jobs, TriggerDispatcher(ledger), out=out)


def _out(args: argparse.Namespace) -> Callable[[str], None]:
    stream = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(printable(line), file=stream, flush=True)

    return say


def _finish(args: argparse.Namespace, status: int, report: dict[str, Any]) -> int:
    """The exit status; with ``--json`` the report, and the status in it, on stdout."""
    if args.json:
        _print_json({**report, "exit_status": status})
    return status


def _show(*lines: str, file: TextIO | None = None) -> None:
    """Every line printed for a person: one line each, control characters escaped (a file
    name cannot move the cursor, recolour the terminal or forge a line)."""
    for line in lines:
        print(printable(line), file=file or sys.stdout, flush=True)


def _print_json(value: object) -> None:
    print(json.dumps(value, default=_json_value, indent=2))


def _print_status(report: dict[str, dict[str, Any]], errors: list[dict[str, Any]]) -> None:
    states = [s.value for s in State]
    _show(
        f"{'JOB':<20}"
        + "".join(f"{s:>12}" for s in states)
        + f"{'OLDEST PENDING':>16}"
        + f"{'BYTES':>12}  LAST SUCCESS"
    )
    for name, job in sorted(report.items()):
        oldest = job["oldest_pending_seconds"]
        size = format_bytes(sum(job["bytes"].values()))
        last = (job["last_success"] or "-")[:19].replace("T", " ")
        _show(
            f"{name:<20}"
            + "".join(f"{job['states'].get(s, 0):>12}" for s in states)
            + f"{(f'{oldest:.0f}s' if oldest is not None else '-'):>16}{size:>12}  {last}"
        )
    if errors:
        _show("", "recent errors:")
        for error in errors:
            _show(
                f"  {error['job']}: {error['relpath']} ({error['state']}, "
                f"{error['attempts']} attempts): {error['last_error']}"
            )


def _print_registrations(report: dict[str, dict[str, Any]]) -> None:
    """Registrations not sent yet, and the jobs the daemon leaves alone."""
    unsent = {
        name: job["registrations"]
        for name, job in sorted(report.items())
        if job["registrations"]["pending"] or job["registrations"]["failed"]
    }
    if unsent:
        _show("", "unsent registrations:")
    for name, regs in unsent.items():
        parts = []
        if regs["pending"]:
            parts.append(
                f"{regs['pending']} pending (next attempt in {regs['next_attempt_in'] or 0:.0f}s)"
            )
        if regs["failed"]:
            parts.append(f"{regs['failed']} failed")
        _show(
            f"  {name}: {', '.join(parts)}, oldest {regs['oldest_unsent_seconds']:.0f}s; "
            f"`uploaderd trigger --job {name} --pending` lists and sends them"
        )
    disabled = [name for name, job in sorted(report.items()) if job["enabled"] is False]
    if disabled:
        _show(
            "",
            f"disabled (enabled: false; the daemon neither uploads nor registers, "
            f"`uploaderd upload` and `pipeline` do): {', '.join(disabled)}",
        )


def _print_paused(paused: list[dict[str, Any]]) -> None:
    if paused:
        _show("", "paused destinations:")
    for row in paused:
        _show(
            f"  {row['job']}: {row['kind']} on {row['host']} paused until "
            f"{row['paused_until']:%Y-%m-%d %H:%M:%S%z} after {row['consecutive_failures']} "
            f"failures: {row['last_error']}"
        )


def _print_sessions(sessions: list[dict[str, Any]]) -> None:
    if sessions:
        _show("", "open sessions:")
    for row in sessions:
        group = f" {row['group_key']!r}" if row["group_key"] else ""
        _show(
            f"  {row['id']:>6} {row['job']}{group} ({row['origin']}): {row['files']} files, "
            f"{row['uploaded']} uploaded, {row['failed']} failed; last activity "
            f"{row['last_activity_at']:%Y-%m-%d %H:%M:%S%z}"
        )


def _duration_arg(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return number


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
