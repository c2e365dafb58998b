"""``uploaderd check``: everything that can be known before the daemon runs.

Config and job files are validated in full; each job's directories are counted against the
inotify limits and its roots tested for network filesystems; with ``--connect`` the database,
its schema, every bucket (a real write and delete) and every trigger URL are reached too.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from uploaderd.commands.common import Parsers, print_json, show
from uploaderd.config.settings import DaemonConfig, Job, load_jobs
from uploaderd.discovery.scanner import network_filesystem
from uploaderd.errors import EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from uploaderd.policy.units import plural

_INOTIFY_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")


@dataclass(frozen=True)
class Finding:
    level: str  # ok | warning | error | unreachable
    subject: str
    message: str

    def __str__(self) -> str:
        return f"{self.level:<11} {self.subject}: {self.message}"


def add_parser(parsers: Parsers) -> None:
    check = parsers.add(
        "check",
        run_check,
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


def run_check(args: argparse.Namespace, config: DaemonConfig) -> int:
    jobs = load_jobs(config.jobs_dir, config.s3, config.job_policy)
    findings = [Finding("error", str(p.file or "config"), str(p)) for p in jobs.problems]
    for job in jobs.jobs.values():
        findings.extend(inspect_job(job))
    if args.connect:
        from uploaderd.commands.probes import connect_findings  # boto3, urllib3: only here

        findings.extend(connect_findings(config, dict(jobs.jobs)))
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
        print_json(
            {
                "valid_jobs": len(jobs.jobs),
                "problems": problems,
                "unreachable": unreachable,
                "findings": [dataclasses.asdict(f) for f in findings],
            }
        )
    else:
        for finding in findings:
            show(finding.message if finding.level == "error" else str(finding))
        show(summary)
    if "error" in levels:
        return EXIT_USAGE
    return EXIT_UNREACHABLE if unreachable else EXIT_OK


def inspect_job(job: Job) -> Iterator[Finding]:
    subject = f"job {job.name}"
    directories = 0
    for root in job.source.paths:
        if not root.is_dir():
            yield Finding("warning", subject, f"root {root} does not exist (yet)")
            continue
        fs = network_filesystem(root)
        if fs and job.source.polling is False:
            yield Finding(
                "warning",
                subject,
                f"{root} is on {fs}: inotify misses changes made by other hosts; "
                "use polling: auto or true",
            )
        elif fs:
            yield Finding("ok", subject, f"{root} is on {fs}: polled")
        directories += count_directories(root) if job.source.recursive else 1
    limit = inotify_limit()
    message = f"{directories} directories to watch"
    if limit is not None and directories > limit * 0.8 and job.source.polling is not True:
        yield Finding("warning", subject, f"{message}, near fs.inotify.max_user_watches={limit}")
    else:
        yield Finding("ok", subject, message + (f" (limit {limit})" if limit else ""))


def count_directories(root: Path) -> int:
    count = 1
    for _, dirnames, _ in os.walk(root, followlinks=False):
        count += len(dirnames)
    return count


def inotify_limit() -> int | None:
    try:
        return int(_INOTIFY_WATCHES.read_text().strip())
    except (OSError, ValueError):
        return None
