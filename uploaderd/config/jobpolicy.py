"""Job files are a privilege boundary: who may write them, and what they may name.

Whoever can write a job file can make the daemon read (and with ``after_upload``, delete or
move) anything its user can reach and send it to any bucket its credentials reach. So job
files and their directory must be writable only by root or the daemon's own user, and the
daemon config may narrow the roots and buckets a job can name.
"""

from __future__ import annotations

import fnmatch
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uploaderd.errors import ConfigProblem

INSECURE_JOB_FILES_ENV = "UPLOADERD_ALLOW_INSECURE_JOB_FILES"


@dataclass(frozen=True)
class JobPolicy:
    """Whose job files are trusted, and which roots and buckets jobs may name."""

    trusted_uids: frozenset[int] = frozenset({0})
    allow_insecure_files: bool = False  # development only: env UPLOADERD_ALLOW_INSECURE_JOB_FILES
    allowed_roots: tuple[Path, ...] | None = None  # None: any directory
    allowed_buckets: tuple[str, ...] | None = None  # None: any bucket; else fnmatch globs

    @classmethod
    def for_this_process(cls, **settings: Any) -> JobPolicy:
        """Trust root and the user running the daemon (the service user)."""
        return cls(trusted_uids=frozenset({0, os.geteuid()}), **settings)


def unsafe_file_problems(path: Path, policy: JobPolicy, what: str) -> list[ConfigProblem]:
    """Why ``path`` (a job file or the jobs directory) may have been written by someone else."""
    if policy.allow_insecure_files:
        return []
    try:
        info = path.stat()  # a symlinked job file: its target is what gets read
    except OSError as exc:
        return [ConfigProblem(path, None, None, f"cannot check {what}: {exc.strerror}")]
    problems = []
    hint = f"or set {INSECURE_JOB_FILES_ENV}=1 for development"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problems.append(
            ConfigProblem(
                path,
                None,
                None,
                (
                    f"{what} is writable by group or others "
                    f"(mode {stat.S_IMODE(info.st_mode):04o}) and is refused: whoever can write "
                    f"it controls what the daemon reads and uploads; "
                    f"fix: chmod go-w {path} ({hint})"
                ),
            )
        )
    if info.st_uid not in policy.trusted_uids:
        trusted = " or ".join(_user_name(uid) for uid in sorted(policy.trusted_uids))
        problems.append(
            ConfigProblem(
                path,
                None,
                None,
                (
                    f"{what} is owned by {_user_name(info.st_uid)} and is refused: it must be "
                    f"owned by {trusted} (the user running the daemon); fix: chown root {path} "
                    f"({hint})"
                ),
            )
        )
    return problems


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def outside_allowed_roots(path: Path, policy: JobPolicy) -> str | None:
    """Why ``path`` is outside the daemon config's ``allowed_roots``; None when inside."""
    allowed = policy.allowed_roots
    if allowed is None:
        return None
    listed = ", ".join(str(a) for a in allowed) or "empty"
    if not any(_within(path, a) for a in allowed):
        return f"{path} is not allowed: it is outside the daemon config's allowed_roots ({listed})"
    # The path as written is inside; a symlink on the way must not lead out again.
    real = Path(os.path.realpath(path))
    if not any(_within(real, Path(os.path.realpath(a))) for a in allowed):
        return (
            f"{path} is not allowed: it resolves to {real}, outside the daemon config's "
            f"allowed_roots ({listed})"
        )
    return None


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def bucket_refusal(bucket: str, policy: JobPolicy) -> str | None:
    """Why ``bucket`` is refused by the daemon config's ``allowed_buckets``; None if allowed."""
    allowed = policy.allowed_buckets
    if allowed is None or any(fnmatch.fnmatchcase(bucket, pattern) for pattern in allowed):
        return None
    return (
        f"{bucket!r} is not allowed: the daemon config's allowed_buckets "
        f"({', '.join(allowed) or 'empty'}) does not match it"
    )
