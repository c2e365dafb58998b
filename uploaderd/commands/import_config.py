"""``uploaderd import-config OLD.json``: a job file from one of the old data_uploader configs.

The old tool read one JSON file per run (``local_directory``, ``s3_bucket``, ``s3_prefix``,
``aws_*``, ``max_workers``, ``supported_extensions``, ``max_retries``). Each key it knew maps
to job YAML, to ``uploaderd.yaml`` or to a command-line option; credentials never go into
YAML (the importer says where they belong instead), and a key it does not know is reported,
never dropped in silence. docs/migrating.md has the same table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from uploaderd.commands.common import Parsers, show
from uploaderd.config.jobpolicy import JobPolicy
from uploaderd.config.settings import DaemonConfig, parse_job_text
from uploaderd.errors import EXIT_FAILURES, EXIT_OK, UsageError

CREDENTIAL_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
_CREDENTIALS_NOTE = (
    "credentials ({keys}) are not copied into YAML. Put them in the shared-credentials file "
    "the daemon reads (/etc/uploaderd/credentials/aws-credentials, passed with "
    "LoadCredential=; docs/install.md), or, for a one-shot run by hand, in ~/.aws/credentials "
    "or the "
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment variables"
)


@dataclass
class Imported:
    job: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what went elsewhere than the job file
    unknown: list[str] = field(default_factory=list)  # keys with no mapping: reported

    def yaml(self, source: Path) -> str:
        header = [f"# Imported from {source} by `uploaderd import-config`."]
        header += [f"# note: {note}" for note in self.notes]
        header += [f"# not imported (unknown key): {key}" for key in self.unknown]
        body = yaml.safe_dump(self.job, sort_keys=False, allow_unicode=True)
        return "\n".join(header) + "\n" + body


def add_parser(parsers: Parsers) -> None:
    imported = parsers.add(
        "import-config",
        run_import_config,
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
        help="the job's name, written into the job file as `name:` (without it the job "
        "takes its file's name; e.g. --name run42)",
    )
    imported.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="write the job file there instead of printing it; never over an "
        "existing file (e.g. --output /etc/uploaderd/jobs.d/run42.yaml)",
    )
    # Converting a file needs no daemon: without /etc/uploaderd/uploaderd.yaml the job is
    # checked against the built-in S3 defaults.
    imported.set_defaults(config_optional=True)


def run_import_config(args: argparse.Namespace, config: DaemonConfig) -> int:
    old = read_old_config(args.old_config)
    result = convert(old)
    name = args.name or job_name(args.old_config)
    if args.name:  # written out: the job keeps it whatever the file is called
        result.job = {"name": args.name, **result.job}
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
        show(
            f"not imported: {args.old_config}: unknown key {key!r} "
            f"(value {json.dumps(old[key])}); see docs/migrating.md",
            file=sys.stderr,
        )
    return EXIT_FAILURES if result.unknown else EXIT_OK


def read_old_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}: not JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object of settings")
    return data


def job_name(path: Path) -> str:
    """A valid job name from the old file's name: ``Run 42.json`` → ``run-42``."""
    name = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower()).strip("-_")
    return name or "imported"


def convert(old: Mapping[str, Any]) -> Imported:
    result = Imported()
    source: dict[str, Any] = {}
    destination: dict[str, Any] = {}
    credentials = [key for key in CREDENTIAL_KEYS if key in old]
    if credentials:
        result.notes.append(_CREDENTIALS_NOTE.format(keys=", ".join(credentials)))
    for key, value in old.items():
        if key in CREDENTIAL_KEYS:
            continue
        handler = _KEYS.get(key)
        if handler is None:
            result.unknown.append(key)
        else:
            handler(value, source, destination, result)
    result.job = {"source": source, "destination": destination, **result.job}
    return result


def _local_directory(value: Any, source: dict[str, Any], _d: dict[str, Any], _r: Imported) -> None:
    source["paths"] = [str(value)]


def _extensions(value: Any, source: dict[str, Any], _d: dict[str, Any], r: Imported) -> None:
    extensions = [value] if isinstance(value, str) else list(value or [])
    source["include"] = [f"**/*.{str(ext).lstrip('.')}" for ext in extensions]
    r.notes.append(
        "supported_extensions became include patterns; they match case-"
        "sensitively (add **/*.TIF for upper-case names)"
    )


def _bucket(value: Any, _s: dict[str, Any], destination: dict[str, Any], _r: Imported) -> None:
    destination["bucket"] = str(value)


def _prefix(value: Any, _s: dict[str, Any], destination: dict[str, Any], _r: Imported) -> None:
    prefix = str(value or "").strip("/")
    destination["key"] = f"{prefix}/${{relpath}}" if prefix else "${relpath}"


def _region(value: Any, _s: dict[str, Any], destination: dict[str, Any], _r: Imported) -> None:
    destination["region"] = str(value)


def _endpoint(value: Any, _s: dict[str, Any], destination: dict[str, Any], _r: Imported) -> None:
    destination["endpoint_url"] = str(value)


def _workers(value: Any, _s: dict[str, Any], _d: dict[str, Any], r: Imported) -> None:
    r.notes.append(
        f"max_workers: {value} is daemon-wide in uploaderd: `workers: {value}` in "
        f"uploaderd.yaml, or `--workers {value}` on `uploaderd upload`"
    )


def _retries(value: Any, _s: dict[str, Any], _d: dict[str, Any], r: Imported) -> None:
    # The old tool retried max_retries times after the first try.
    r.job["retry"] = {"max_attempts": int(value) + 1}


_Handler = Callable[[Any, dict[str, Any], dict[str, Any], Imported], None]
_KEYS: dict[str, _Handler] = {
    "local_directory": _local_directory,
    "supported_extensions": _extensions,
    "s3_bucket": _bucket,
    "s3_prefix": _prefix,
    "aws_region": _region,
    "s3_endpoint_url": _endpoint,
    "endpoint_url": _endpoint,
    "max_workers": _workers,
    "max_retries": _retries,
}
