"""``uploaderd migrate``: create or upgrade the database schema."""

from __future__ import annotations

import argparse

from uploaderd.commands.common import Parsers, print_json, show
from uploaderd.config.settings import DaemonConfig
from uploaderd.errors import EXIT_OK
from uploaderd.ledger import schema


def add_parser(parsers: Parsers) -> None:
    parsers.add(
        "migrate",
        migrate,
        "create or upgrade the database schema (idempotent)",
        "migrate",
        json_help='{"applied": [NAME, ...]}',
    )


def migrate(args: argparse.Namespace, config: DaemonConfig) -> int:
    applied = schema.migrate(config.dsn, pool_mode=config.pool_mode)
    if args.json:
        print_json({"applied": applied})
    else:
        show(*([f"applied {name}" for name in applied] or ["schema is up to date"]))
    return EXIT_OK
