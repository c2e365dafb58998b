"""Every error uploaderd reports to a person, each carrying what they need to act on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Exit statuses of every command (docs/commands.md lists them).
EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class UploaderdError(Exception):
    """Base of the errors the command line turns into a message and an exit status."""

    exit_status = EXIT_FAILURES


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in one file: where it is and what was expected."""

    file: Path | None
    line: int | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = str(self.file) if self.file else "<config>"
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(UploaderdError):
    """The daemon config or a job file is invalid; carries every problem, not just the first."""

    exit_status = EXIT_USAGE

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(UploaderdError):
    """The command line itself is wrong (unknown job, conflicting flags)."""

    exit_status = EXIT_USAGE


class SchemaMissing(UploaderdError):
    """The database has no (or an older) uploaderd schema."""

    exit_status = EXIT_USAGE


class DatabaseUnavailable(UploaderdError):
    """PostgreSQL cannot be reached; the message never includes the password."""

    exit_status = EXIT_UNREACHABLE


class StorageUnavailable(UploaderdError):
    """An S3 endpoint cannot be reached or refuses our credentials.

    ``code`` is S3's error code when S3 answered (``AccessDenied``, ``NoSuchBucket``), None
    when it could not be reached."""

    exit_status = EXIT_UNREACHABLE

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class StorageMisconfigured(StorageUnavailable):
    """S3 answered that the bucket, the credentials or the policy are wrong: a retry will not
    mend it, a change of configuration will."""

    exit_status = EXIT_USAGE


# S3 error codes that say the configuration is wrong, not that S3 is unwell: the job pauses
# at the first one (no retries burnt), `status` exits 1, a one-shot run exits 2.
S3_CONFIG_ERRORS = frozenset(
    {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
)


CONFIG_ERROR_HINT = (
    ": a configuration error (the bucket, the credentials or the policy); the uploads resume "
    "by themselves once it is fixed"
)


def s3_error_text(code: str, message: str) -> str:
    """How an S3 error is recorded (``last_error``, destination health): ``S3 CODE: message``."""
    return f"S3 {code}: {message}"[:300]


def s3_error_code(text: str | None) -> str | None:
    """The S3 error code of a text ``s3_error_text`` made; None for any other text."""
    if not text or not text.startswith("S3 ") or ":" not in text:
        return None
    return text[3:].split(":", 1)[0]


class KeyTemplateError(ValueError):
    """A destination key template, or a key rendered from it, is unsafe."""


class MtimeOutOfRange(KeyTemplateError):
    """The key needs the file's date, and its mtime is out of the range that can be stored."""
