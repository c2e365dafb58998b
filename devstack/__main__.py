"""``python -m devstack demo|services [--dir DIR] [--s3 moto|rclone|seaweedfs]``, and
``python -m devstack objects [--bucket B]`` (the demo bucket's objects).

Run from the repository root (``./dev demo`` does): devstack is not part of the installed
package.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from devstack.demo import BUCKET, demo, objects, say, services
from devstack.process import DevstackError, stop_on_signals
from devstack.s3 import S3_SERVERS

COMMANDS = {
    "demo": (demo, "run uploaderd against local PostgreSQL and S3"),
    "services": (services, "start local PostgreSQL and S3, print the environment, wait"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack", description="uploaderd's local services, for trying it out"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser(
        "objects", help="list a bucket of the S3 server the environment points at (AWS_*)"
    )
    listing.add_argument("--bucket", default=BUCKET, help=f"default {BUCKET}")
    for name, (_, text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument(
            "--dir", type=Path, default=Path(".demo"), help="state directory (default ./.demo)"
        )
        cmd.add_argument(
            "--s3", choices=sorted(S3_SERVERS), default="moto", help="S3 server (default moto)"
        )
    args = parser.parse_args(argv)
    if args.command == "objects":
        return objects(args.bucket)
    directory: Path = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    stop_on_signals()
    run = COMMANDS[args.command][0]
    try:
        return run(directory, args.s3)
    except (DevstackError, subprocess.CalledProcessError) as exc:
        say(f"devstack: {exc}", sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
