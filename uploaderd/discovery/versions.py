"""From a complete candidate file to the version the ledger queues: its key and its scope.

Shared by the daemon's discovery and the one-shot ``uploaderd upload``, so a file gets the
same object key whichever of them queues it.
"""

from __future__ import annotations

from uploaderd.config.settings import Job
from uploaderd.errors import KeyTemplateError, MtimeOutOfRange
from uploaderd.ledger.store import Ledger, NewVersion
from uploaderd.policy.keys import key_variables
from uploaderd.policy.settle import Candidate


def render_key(
    job: Job, candidate: Candidate, *, session: str, host: str
) -> tuple[str, str | None]:
    """(key, None), or ("", why) when the template cannot render a safe key for this file."""
    values = key_variables(
        job.name,
        candidate.relpath,
        session=session,
        hostname=host,
        mtime_ns=candidate.signature.mtime_ns,
    )
    try:
        return job.destination.key.render(values), None
    except MtimeOutOfRange as exc:
        return "", str(exc)
    except KeyTemplateError as exc:
        return "", f"unsafe key: {exc}"


def new_version(job: Job, candidate: Candidate, *, session_id: int, host: str) -> NewVersion:
    """The row to queue; a version without a safe key is recorded failed, with the reason."""
    key, error = render_key(job, candidate, session=str(session_id), host=host)
    if error is not None:
        return failed_version(candidate, session_id, error)
    return NewVersion.of(candidate, key=key, session_id=session_id)


def failed_version(candidate: Candidate, session_id: int | None, reason: str) -> NewVersion:
    """A version that can never upload, recorded ``failed`` at once with why."""
    return NewVersion.of(candidate, key="", session_id=session_id, error=reason)


def enqueue(ledger: Ledger, job: Job, host: str, versions: list[NewVersion]) -> tuple[int, int]:
    """Queue ``versions`` of ``job`` as found on ``host``: (inserted, superseded)."""
    return ledger.enqueue(
        job.name,
        scope=scope_of(job, host),
        host=host,
        bucket=job.destination.bucket,
        versions=versions,
        marker=job.session.marker,
    )


def scope_of(job: Job, host: str) -> str:
    """Whose roots hold the file: this host, or '' for a shared mount any host may upload."""
    return "" if job.source.shared else host
