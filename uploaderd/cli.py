"""The ``uploaderd`` command: assemble each command's parser, load config at the edge, map
errors to exits.

Each command lives in ``uploaderd/commands/`` under its own name. Those that talk to S3 or
run the daemon import what they need (boto3, rich, watchdog, APScheduler) when they run:
``status``, ``files`` and ``explain`` start in a fraction of the time, which is what an
operator or a monitoring check calling them every few seconds feels.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from uploaderd import __version__
from uploaderd.commands import (
    check,
    explain,
    files,
    import_config,
    migrate,
    pipeline,
    prune,
    retry,
    run,
    status,
    top,
    trigger,
    upload,
    verify,
)
from uploaderd.commands.common import Command, Parsers
from uploaderd.config.settings import DEFAULT_CONFIG_PATH, load_daemon_config
from uploaderd.errors import EXIT_FAILURES, UploaderdError
from uploaderd.observe import logs

# In the order ``uploaderd --help`` lists them.
COMMANDS = (
    run,
    migrate,
    check,
    upload,
    retry,
    trigger,
    pipeline,
    status,
    top,
    files,
    verify,
    explain,
    prune,
    import_config,
)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    logs.console.journal = logs.journal_stream(sys.stderr, env)
    args = parser(env).parse_args(argv)
    try:
        # Only `check --reload` (the unit's ExecReload=) runs without the unit's credentials.
        credentials = not getattr(args, "reload", False)
        config_file: Path | None = args.config
        if getattr(args, "config_optional", False) and config_file == default_config(env):
            # A command that works without a daemon (import-config) takes the file if there
            # is one, and built-in defaults on a machine without it.
            config_file = config_file if config_file.exists() else None
        config = load_daemon_config(config_file, env=env, credentials=credentials)
        logs.setup(config.log_level if args.command == "run" else "warning", config.log_format, env)
        command: Command = args.handler
        return command(args, config)
    except UploaderdError as exc:
        logs.console.error(f"uploaderd: {exc}")
        return exc.exit_status
    except KeyboardInterrupt:
        return EXIT_FAILURES


def default_config(env: Mapping[str, str]) -> Path:
    return Path(env.get("UPLOADERD_CONFIG") or DEFAULT_CONFIG_PATH)


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="uploaderd",
        description="Ship every complete file in watched folders to S3.",
        epilog="examples:\n  uploaderd status\n  uploaderd -c ./uploaderd.yaml upload scope-a\n"
        "  uploaderd upload --source /data/run42 --to s3://lab-raw/run42\n\n"
        "exit: 0 done, 1 finished with failures, 2 usage or config error, 3 database "
        "or S3 unreachable",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--version", action="version", version=f"uploaderd {__version__}")
    config_help = (
        "daemon config, before or after the command (default: $UPLOADERD_CONFIG or "
        f"{DEFAULT_CONFIG_PATH}; e.g. -c ./uploaderd.yaml)"
    )
    root.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help=config_help,
        default=default_config(env),
    )
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given after the command it wins; not given, the one before the command stays.
    common.add_argument(
        "-c", "--config", type=Path, metavar="FILE", default=argparse.SUPPRESS, help=config_help
    )
    parsers = Parsers(root.add_subparsers(dest="command", required=True, metavar="COMMAND"), common)
    for command in COMMANDS:
        command.add_parser(parsers)
    return root


if __name__ == "__main__":
    sys.exit(main())
