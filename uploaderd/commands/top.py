"""``uploaderd top``: a live view of the site, redrawn every second until ``q``.

On a terminal it takes the screen (as ``top`` and ``htop`` do) and reads single keys; when
the output is not a terminal it prints one plain snapshot and exits, for a log or a mail.
What a frame holds and where it comes from is in ``observe/live_site``; rich, which draws
it, is loaded only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import termios
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from uploaderd.commands.common import Parsers, jobs_of, open_ledger, unknown_job
from uploaderd.config.settings import DaemonConfig
from uploaderd.errors import EXIT_OK, UsageError

REFRESH_SECONDS = 1.0
QUIT_KEYS = frozenset("qQ")


def add_parser(parsers: Parsers) -> None:
    top = parsers.add(
        "top",
        run_top,
        "a live view: per job files/s and bytes/s over the last minute, the queue, uploads "
        "in flight with their progress, paused destinations, unsent registrations, errors",
        "top",
        "top --job scope-a",
        "top > snapshot.txt",
    )
    top.add_argument("--job", metavar="J", help="only this job (e.g. --job scope-a)")


def run_top(args: argparse.Namespace, config: DaemonConfig) -> int:
    from rich.console import Console
    from rich.live import Live

    from uploaderd.observe.live_site import SiteSampler
    from uploaderd.observe.top_screen import render

    with open_ledger(config, "top") as ledger:
        if args.job is not None:
            jobs = jobs_of(config)
            if args.job not in jobs and not ledger.job_counts(args.job):
                raise UsageError(unknown_job(config, jobs, args.job))
        sampler = SiteSampler(ledger, lambda: jobs_of(config), config.metrics_listen, args.job)
        console = Console()
        if not console.is_terminal:
            console.print(render(sampler.frame(), live=False))
            return EXIT_OK
        try:
            with keys(sys.stdin) as pressed, Live(console=console, screen=True) as live:
                while True:
                    live.update(render(sampler.frame(), live=True), refresh=True)
                    if pressed(REFRESH_SECONDS) & QUIT_KEYS:
                        return EXIT_OK
        except KeyboardInterrupt:  # Ctrl-C quits a view as q does
            return EXIT_OK


@contextmanager
def keys(stream: TextIO) -> Iterator[Callable[[float], set[str]]]:
    """The keys pressed, read one at a time without Enter or echo (the terminal in cbreak
    mode until the block ends): a function that waits up to its timeout for them."""
    if not stream.isatty():  # keys cannot come; Ctrl-C still ends the view
        yield lambda timeout: _wait(timeout)
        return
    fd = stream.fileno()
    before = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:

        def pressed(timeout: float) -> set[str]:
            ready, _, _ = select.select([fd], [], [], timeout)
            return set(os.read(fd, 64).decode(errors="replace")) if ready else set()

        yield pressed
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, before)


def _wait(timeout: float) -> set[str]:
    select.select([], [], [], timeout)
    return set()
