"""What the commands share: adding a command's parser, the ledger and jobs they open, and
how they print for a person or as JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from uploaderd.config.settings import DaemonConfig, Job, load_jobs
from uploaderd.errors import UsageError
from uploaderd.ledger.store import Ledger
from uploaderd.policy.printable import printable
from uploaderd.policy.transfers import STATS_SECONDS
from uploaderd.policy.units import parse_duration

if TYPE_CHECKING:
    from uploaderd.commands.oneshot import OneShot
    from uploaderd.commands.registrar import Registrar

Command = Callable[[argparse.Namespace, DaemonConfig], int]


@dataclass(frozen=True)
class Parsers:
    """Where each command module adds its parser: the subcommands and the options every
    command takes after its name (``-c``)."""

    commands: argparse._SubParsersAction[argparse.ArgumentParser]  # no public name for it
    common: argparse.ArgumentParser

    def add(
        self,
        name: str,
        handler: Command,
        help_text: str,
        *examples: str,
        json_help: str | None = None,
    ) -> argparse.ArgumentParser:
        epilog = "examples:\n" + "\n".join(f"  uploaderd {e}" for e in examples)
        sub: argparse.ArgumentParser = self.commands.add_parser(
            name,
            parents=[self.common],
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
        type=duration_arg,
        default=STATS_SECONDS,
        metavar="DURATION",
        help="when stdout is not a terminal, print one line of progress this "
        "often and at the end (default 10s; 0 turns it off; e.g. "
        "--stats 30s)",
    )


def workers_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="upload with N threads instead of the config's workers (e.g. --workers 8)",
    )


def settle_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--no-settle",
        action="store_true",
        help="the files are complete now (a finished run): queue them without waiting for "
        "the job's settle time (e.g. uploaderd upload scope-a --no-settle)",
    )


def settled_as_asked(job: Job, args: argparse.Namespace) -> Job:
    """``job``, without its settle time under ``--no-settle``: one look at each file."""
    if not args.no_settle:
        return job
    return dataclasses.replace(job, source=dataclasses.replace(job.source, settle=0.0))


# --- what the commands open --------------------------------------------------------------------


@contextmanager
def open_ledger(config: DaemonConfig, command: str) -> Iterator[Ledger]:
    ledger = Ledger.of(config, f"uploaderd {command}").connect()
    try:
        yield ledger
    finally:
        ledger.close()


def jobs_of(config: DaemonConfig) -> dict[str, Job]:
    return dict(load_jobs(config.jobs_dir, config.s3, config.job_policy).jobs)


def job_named(config: DaemonConfig, jobs: Mapping[str, Job], name: str) -> Job:
    """The named job, or a usage error that says what is there (and what is broken)."""
    if name in jobs:
        return jobs[name]
    job_set = load_jobs(config.jobs_dir, config.s3, config.job_policy)
    broken = [str(p) for p in job_set.problems if p.file is not None and p.file.stem == name]
    if broken:
        raise UsageError(f"job {name!r} has errors:\n" + "\n".join(broken))
    known = ", ".join(sorted(jobs)) or "none"
    raise UsageError(f"unknown job {name!r}: no such job in {config.jobs_dir} (jobs: {known})")


def unknown_job(config: DaemonConfig, jobs: Mapping[str, Job], name: str) -> str:
    known = ", ".join(sorted(jobs)) or "none"
    return (
        f"unknown job {name!r}: not in {config.jobs_dir} (jobs: {known}) and nothing in the ledger"
    )


def one_shot(
    config: DaemonConfig, jobs: Mapping[str, Job], ledger: Ledger, args: argparse.Namespace
) -> OneShot:
    wanted = not args.no_progress
    # With --json, stdout carries the JSON alone: lines and progress go to stderr.
    stream = sys.stderr if args.json else sys.stdout
    out = printer(args)
    from uploaderd.commands.oneshot import OneShot
    from uploaderd.observe.progress import make_display

    return OneShot(
        config,
        jobs,
        ledger,
        out=out,
        display=lambda: make_display(wanted, stream, args.stats),
        registrar=registrar(jobs, ledger, out),
        workers=getattr(args, "workers", None),
    )


def registrar(jobs: Mapping[str, Job], ledger: Ledger, out: Callable[[str], None]) -> Registrar:
    from uploaderd.commands.registrar import Registrar
    from uploaderd.daemon.triggers import TriggerDispatcher

    return Registrar(ledger, jobs, TriggerDispatcher(ledger), out=out)


# --- printing ----------------------------------------------------------------------------------


def printer(args: argparse.Namespace) -> Callable[[str], None]:
    stream = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(printable(line), file=stream, flush=True)

    return say


def finish(args: argparse.Namespace, status: int, report: dict[str, Any]) -> int:
    """The exit status; with ``--json`` the report, and the status in it, on stdout."""
    if args.json:
        print_json({**report, "exit_status": status})
    return status


def show(*lines: str, file: TextIO | None = None) -> None:
    """Every line printed for a person: one line each, control characters escaped (a file
    name cannot move the cursor, recolour the terminal or forge a line)."""
    for line in lines:
        print(printable(line), file=file or sys.stdout, flush=True)


def print_json(value: object) -> None:
    print(json.dumps(value, default=_json_value, indent=2))


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- argument types ----------------------------------------------------------------------------


def duration_arg(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return number
