"""``uploaderd run``: the daemon in the foreground, as systemd starts it (Type=notify)."""

from __future__ import annotations

import argparse

from uploaderd.commands.common import Parsers
from uploaderd.config.settings import DaemonConfig


def add_parser(parsers: Parsers) -> None:
    parsers.add("run", run, "run the daemon in the foreground (systemd Type=notify)", "run")


def run(args: argparse.Namespace, config: DaemonConfig) -> int:
    from uploaderd.daemon import service  # watchdog, APScheduler, boto3: for this command only

    return service.run(config)
