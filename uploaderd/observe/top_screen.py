"""How ``uploaderd top`` draws a frame (``live_site``): a table of jobs, this host's uploads
in flight with a bar for each, paused destinations and the newest errors, times in UTC.
One drawing for the live screen and for the plain snapshot printed when the output is not
a terminal."""

from __future__ import annotations

from datetime import UTC

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from uploaderd.ledger.store import State
from uploaderd.observe.live_site import Frame, JobLine
from uploaderd.policy.printable import printable
from uploaderd.policy.transfers import Active
from uploaderd.policy.units import format_bytes, format_rate, plural

UPLOADS_SHOWN = 10  # the largest; the rest are counted
_BAR_WIDTH = 24
_STATES = (State.PENDING, State.UPLOADING, State.FAILED)


def _safe(text: str, style: str = "") -> Text:
    """Text from outside (names, errors): escaped, and never read as rich markup."""
    return Text(printable(text), style)


def render(frame: Frame, *, live: bool) -> RenderableType:
    parts: list[RenderableType] = [_title(frame, live)]
    if frame.ledger_problem:
        parts.append(_safe(f"ledger: {frame.ledger_problem}; showing its last rows", "bold red"))
    parts += [_jobs(frame), Text(""), *_uploads(frame), *_paused(frame), *_errors(frame)]
    return Group(*parts)


def _title(frame: Frame, live: bool) -> Text:
    reach = f"rates over {frame.rate_seconds:.0f}s" if frame.rate_seconds else "rates: next frame"
    title = Text.assemble(
        ("uploaderd top", "bold"),
        f"  {frame.host}  {frame.taken_at:%Y-%m-%d %H:%M:%S} UTC  {reach}, all hosts",
    )
    if live:
        title.append("  q quits", "dim")
    return title


def _jobs(frame: Frame) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("JOB")
    for heading in ("FILES/S", "BYTES/S", *(s.upper() for s in _STATES)):
        table.add_column(heading, justify="right")
    table.add_column("OLDEST", justify="right")  # pending version
    table.add_column("UNSENT REGS", justify="right")
    for job in frame.jobs:
        table.add_row(
            _job_name(job),
            "-" if job.files_per_second is None else f"{job.files_per_second:.1f}",
            format_rate(job.bytes_per_second),
            *(str(job.states.get(state, 0)) for state in _STATES),
            "-" if job.oldest_pending_seconds is None else f"{job.oldest_pending_seconds:.0f}s",
            str(job.unsent_registrations),
            style="red" if job.states.get(State.FAILED) else None,
        )
    if not frame.jobs:
        table.add_row("(no jobs)")
    return table


def _job_name(job: JobLine) -> Text:
    if job.enabled is None:
        return _safe(f"{job.name} (not configured)")
    return _safe(job.name if job.enabled else f"{job.name} (disabled)")


def _uploads(frame: Frame) -> list[RenderableType]:
    heading = _safe(f"uploads in flight on {frame.host}", "bold")
    if frame.uploads is None:
        return [heading, _safe(f"  {frame.daemon}", "yellow")]
    if not frame.uploads:
        return [heading, Text("  none")]
    table = Table(box=None, pad_edge=False, show_header=False)
    for justify in ("left", "left", "left", "right", "right"):
        table.add_column(justify=justify)
    largest = sorted(frame.uploads, key=lambda u: (-u.size, u.job, u.relpath))
    for upload in largest[:UPLOADS_SHOWN]:
        table.add_row(*_upload_row(upload))
    rest = len(largest) - UPLOADS_SHOWN
    more = [Text(f"  and {rest} more")] if rest > 0 else []
    return [heading, table, *more]


def _upload_row(upload: Active) -> tuple[RenderableType, ...]:
    share = upload.sent / upload.size if upload.size else 1.0
    return (
        _safe(f"  {upload.job}"),
        _safe(upload.relpath),
        ProgressBar(total=max(upload.size, 1), completed=upload.sent, width=_BAR_WIDTH),
        f"{share:.0%}",
        f"{format_bytes(upload.sent)} / {format_bytes(upload.size)}",
    )


def _paused(frame: Frame) -> list[RenderableType]:
    return _section(
        "paused destinations",
        [
            f"  {row['job']}: {row['kind']} on {row['host']} until "
            f"{row['paused_until'].astimezone(UTC):%H:%M:%S} after "
            f"{plural(row['consecutive_failures'], 'failure')}: {row['last_error']}"
            for row in frame.paused
        ],
        "yellow",
    )


def _errors(frame: Frame) -> list[RenderableType]:
    return _section(
        "last errors",
        [
            f"  {error['updated_at'].astimezone(UTC):%H:%M:%S} {error['job']}: "
            f"{error['relpath']} ({error['state']}, {plural(error['attempts'], 'attempt')}): "
            f"{error['last_error']}"
            for error in frame.errors
        ],
    )


def _section(heading: str, lines: list[str], style: str = "") -> list[RenderableType]:
    """A blank line, a heading and its lines; nothing when there are none."""
    if not lines:
        return []
    return [Text(""), Text(heading, "bold"), *(_safe(line, style) for line in lines)]
