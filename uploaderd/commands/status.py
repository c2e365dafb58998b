"""``uploaderd status``: per job, counts by state, bytes, oldest pending, last success,
unsent registrations, paused destinations, open sessions and recent errors."""

from __future__ import annotations

import argparse
from typing import Any

from uploaderd.commands.common import Parsers, open_ledger, print_json, show, unknown_job
from uploaderd.config.settings import DaemonConfig, load_jobs
from uploaderd.errors import (
    CONFIG_ERROR_HINT,
    EXIT_FAILURES,
    EXIT_OK,
    S3_CONFIG_ERRORS,
    UsageError,
    s3_error_code,
)
from uploaderd.ledger.store import State
from uploaderd.policy.units import format_bytes, plural


def add_parser(parsers: Parsers) -> None:
    status = parsers.add(
        "status",
        run_status,
        "per job: counts by state, bytes, oldest pending, last "
        "success, unsent registrations, paused destinations, "
        "open sessions, errors",
        "status",
        "status --job scope-a",
        json_help='{"jobs": {JOB: {...}}, "paused_destinations", "open_sessions", "recent_errors"}',
    )
    status.add_argument("--job", metavar="J", help="only this job (e.g. --job scope-a)")


def run_status(args: argparse.Namespace, config: DaemonConfig) -> int:
    job_set = load_jobs(config.jobs_dir, config.s3, config.job_policy)
    configured = job_set.jobs
    broken = [
        problem
        for problem in job_set.problems
        if args.job is None or (problem.file is not None and problem.file.stem == args.job)
    ]
    with open_ledger(config, "status") as ledger:
        counts = ledger.job_counts(args.job)
        registrations = ledger.registration_counts(args.job)
        if args.job is not None and args.job not in configured and not counts:
            raise UsageError(unknown_job(config, configured, args.job))
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
        print_json(
            {
                "jobs": report,
                "paused_destinations": paused,
                "open_sessions": sessions,
                "recent_errors": errors,
                "job_files_not_loaded": [
                    {
                        "file": str(p.file) if p.file else None,
                        "line": p.line,
                        "key": p.key,
                        "message": p.message,
                    }
                    for p in broken
                ],
            }
        )
    else:
        _print_states(report, errors)
        _print_registrations(report)
        _print_paused(paused)
        _print_sessions(sessions)
        if broken:
            show(
                "",
                "job files not loaded (the daemon keeps a file's previous version, or runs "
                "no job from it; fix it, then systemctl reload uploaderd):",
                *(f"  {problem}" for problem in broken),
            )
    failed = (
        broken
        or any(misconfigured(row) for row in paused)
        or any(
            job["states"].get(State.FAILED, 0) or job["registrations"]["failed"]
            for job in report.values()
        )
    )
    return EXIT_FAILURES if failed else EXIT_OK


def _print_states(report: dict[str, dict[str, Any]], errors: list[dict[str, Any]]) -> None:
    states = [s.value for s in State]
    show(
        f"{'JOB':<20}"
        + "".join(f"{s:>12}" for s in states)
        + f"{'OLDEST PENDING':>16}"
        + f"{'QUEUED BYTES':>14}{'UPLOADED BYTES':>16}  LAST SUCCESS"
    )
    for name, job in sorted(report.items()):
        oldest = job["oldest_pending_seconds"]
        # One header, one kind of bytes: what is still to send, and what was sent.
        queued = format_bytes(sum(job["bytes"].get(s, 0) for s in (State.PENDING, State.UPLOADING)))
        uploaded = format_bytes(job["bytes"].get(State.UPLOADED, 0))
        last = (job["last_success"] or "-")[:19].replace("T", " ")
        show(
            f"{name:<20}"
            + "".join(f"{job['states'].get(s, 0):>12}" for s in states)
            + f"{(f'{oldest:.0f}s' if oldest is not None else '-'):>16}"
            + f"{queued:>14}{uploaded:>16}  {last}"
        )
    if errors:
        show("", "recent errors:")
        for error in errors:
            show(
                f"  {error['job']}: {error['relpath']} ({error['state']}, "
                f"{plural(error['attempts'], 'attempt')}): {error['last_error']}"
            )


def _print_registrations(report: dict[str, dict[str, Any]]) -> None:
    """Registrations not sent yet, and the jobs the daemon leaves alone."""
    unsent = {
        name: job["registrations"]
        for name, job in sorted(report.items())
        if job["registrations"]["pending"] or job["registrations"]["failed"]
    }
    if unsent:
        show("", "unsent registrations:")
    for name, regs in unsent.items():
        parts = []
        if regs["pending"]:
            parts.append(
                f"{regs['pending']} pending (next attempt in {regs['next_attempt_in'] or 0:.0f}s)"
            )
        if regs["failed"]:
            parts.append(f"{regs['failed']} failed")
        show(
            f"  {name}: {', '.join(parts)}, oldest {regs['oldest_unsent_seconds']:.0f}s; "
            f"`uploaderd trigger --job {name} --pending` lists and sends them"
        )
    disabled = [name for name, job in sorted(report.items()) if job["enabled"] is False]
    if disabled:
        show(
            "",
            f"disabled (enabled: false; the daemon neither uploads nor registers, "
            f"`uploaderd upload` and `pipeline` do): {', '.join(disabled)}",
        )


def _print_paused(paused: list[dict[str, Any]]) -> None:
    if paused:
        show("", "paused destinations:")
    for row in paused:
        hint = CONFIG_ERROR_HINT if misconfigured(row) else ""
        show(
            f"  {row['job']}: {row['kind']} on {row['host']} paused until "
            f"{row['paused_until']:%Y-%m-%d %H:%M:%S%z} after "
            f"{plural(row['consecutive_failures'], 'failure')}: {row['last_error']}{hint}"
        )


def misconfigured(paused: dict[str, Any]) -> bool:
    """A bucket paused because S3 said its configuration is wrong: the operator must act."""
    return paused["kind"] == "upload" and s3_error_code(paused["last_error"]) in S3_CONFIG_ERRORS


def _print_sessions(sessions: list[dict[str, Any]]) -> None:
    if sessions:
        show("", "open sessions:")
    for row in sessions:
        group = f" {row['group_key']!r}" if row["group_key"] else ""
        files = plural(row["files"], "file")
        show(
            f"  {row['id']:>6} {row['job']}{group} ({row['origin']}): {files}, "
            f"{row['uploaded']} uploaded, {row['failed']} failed; last activity "
            f"{row['last_activity_at']:%Y-%m-%d %H:%M:%S%z}"
        )
