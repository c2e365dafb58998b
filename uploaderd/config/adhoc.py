"""``uploaderd upload --source DIR --to s3://BUCKET/PREFIX``: a one-shot run without a job file.

The old tool's habit: point it at a directory and a bucket. The command builds a job from the
options through the same parser as ``jobs.d`` (the same validation and the same job policy),
named after the directory and the destination, so the run is recorded in the ledger as a
session of that job, and running the same command again uploads only what is new.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import yaml

from uploaderd.config.settings import DaemonConfig, Job, parse_job_text
from uploaderd.errors import UsageError

_S3_URL = re.compile(r"^s3://([^/]+)(?:/(.*))?$")


def job(
    config: DaemonConfig,
    source: Path | None,
    to: str | None,
    *,
    include: list[str] | None,
    bandwidth: str | None,
    named: str | None,
) -> Job:
    if named is not None:
        raise UsageError("give a JOB or --source/--to, not both")
    if source is None or to is None:
        raise UsageError("an ad-hoc upload needs both --source DIR and --to s3://BUCKET/PREFIX")
    match = _S3_URL.match(to)
    if match is None:
        raise UsageError(f"--to {to!r}: expected s3://BUCKET or s3://BUCKET/PREFIX")
    bucket, prefix = match.group(1), (match.group(2) or "").strip("/")
    root = Path(os.path.normpath(source.absolute()))
    if not root.is_dir():
        raise UsageError(f"--source {source}: not a directory")
    destination: dict[str, Any] = {
        "bucket": bucket,
        "key": f"{prefix}/${{relpath}}" if prefix else "${relpath}",
    }
    if bandwidth is not None:
        destination["bandwidth"] = bandwidth
    document: dict[str, Any] = {"source": {"paths": [str(root)]}, "destination": destination}
    if include:
        document["source"]["include"] = include
    return parse_job_text(
        yaml.safe_dump(document),
        name=name(root, f"{bucket}/{prefix}"),
        defaults=config.s3,
        policy=config.job_policy,
    )


def name(root: Path, destination: str) -> str:
    """``adhoc-run42-1a2b3c4d``: readable, and one per directory and destination."""
    stem = re.sub(r"[^a-z0-9_-]+", "-", root.name.lower()).strip("-_")[:32] or "root"
    digest = hashlib.sha256(f"{root}\0{destination}".encode()).hexdigest()[:8]
    return f"adhoc-{stem}-{digest}"
