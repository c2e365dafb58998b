"""Registering uploads with an external system: the trigger outbox and its dispatcher.

Registrations are rows in PostgreSQL written beside what they register (a completed session,
or a batch of uploaded files). The dispatcher takes a job's due rows under a cluster-wide
lock, records the attempt, POSTs a JSON manifest with the row's ``Idempotency-Key``, and
records the answer. A crash between the POST and that record leaves the row pending, so
the next call repeats the same key and the receiver can tell it is a repeat.

Header values may name secrets as ``${env:NAME}`` or ``${file:/path}``; they are resolved
at the moment of the call and never logged or stored.

``trigger.timeout`` is a deadline for the whole call (connect, send, the full answer): at the
deadline the socket is shut down, so an endpoint that trickles its answer a byte at a time
cannot hold the call longer.
"""

from __future__ import annotations

import contextlib
import functools
import http.client as http_client
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

from uploaderd import __version__
from uploaderd.config.settings import SECRET_REFERENCE, Job, TriggerSpec
from uploaderd.errors import UploaderdError
from uploaderd.ledger.store import DueTrigger, Ledger
from uploaderd.observe import metrics
from uploaderd.observe.logs import fields
from uploaderd.policy.health import Breaker
from uploaderd.policy.retry import next_attempt_in

log = logging.getLogger(__name__)

CONFIGURATION_ERROR = "configuration error"
_EXCERPT = 300


class TriggerSetupError(UploaderdError):
    """A header names a secret that is not there (unset variable, unreadable file)."""


@dataclass(frozen=True)
class CallResult:
    state: str  # sent | pending (retry later) | failed
    status: int | None
    error: str | None
    excerpt: str | None
    retryable: bool
    configuration: bool = False  # never sent: the job's config (a secret) is not usable here


@dataclass
class DispatchReport:
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    paused: bool = False
    skipped: bool = False  # another host holds the job's dispatch lock
    configuration: int = 0  # calls not made: a secret the headers name is missing
    errors: list[str] = field(default_factory=list)
    called: list[int] = field(default_factory=list)  # the registrations it tried, in order


def resolve_headers(headers: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """Header values with ``${env:NAME}`` and ``${file:/path}`` replaced by the secret."""

    def secret(header: str, match: re.Match[str]) -> str:
        kind, name = match.group(1), match.group(2)
        if kind == "env":
            if name not in env:
                raise TriggerSetupError(
                    f"header {header} names ${{env:{name}}}, and the environment variable "
                    f"{name} is not set for this process"
                )
            return env[name]
        try:
            return Path(name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TriggerSetupError(
                f"header {header} names ${{file:{name}}}, which cannot be read: {exc.strerror}"
            ) from exc

    return {
        header: SECRET_REFERENCE.sub(functools.partial(secret, header), value)
        for header, value in headers.items()
    }


def manifest(job: Job, due: DueTrigger, files: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "job": job.name,
        "session": due.session_id,
        "registration": due.id,
        "idempotency_key": due.idempotency_key,
        "files": [
            {
                "relpath": f["relpath"],
                "bucket": f["bucket"],
                "key": f["key"],
                "size": f["size"],
                "sha256": f["sha256"],
                "uploaded_at": _iso(f["uploaded_at"]),
            }
            for f in files
        ],
    }


def safe_url(url: str) -> str:
    """The URL without query or user info, for logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


class TriggerDispatcher:
    def __init__(
        self,
        ledger: Ledger,
        *,
        host: str | None = None,
        env: Mapping[str, str] | None = None,
        breaker: Callable[[], Breaker] = Breaker,
        breakers: dict[str, Breaker] | None = None,
    ) -> None:
        self.ledger = ledger
        self._new_breaker = breaker
        self.host = host or socket.gethostname()
        self.env = os.environ if env is None else env
        # Per job; shared by the dispatchers of several threads (one job runs on one at a time).
        self.breakers: dict[str, Breaker] = {} if breakers is None else breakers

    def batch_uploads(self, job: Job) -> int:
        """on: file_uploaded — move uploaded files into registrations, a batch at a time."""
        assert job.trigger is not None
        total = 0
        while batched := self.ledger.batch_uploaded_files(job.name, job.trigger.batch_size):
            total += batched
        return total

    def dispatch(self, job: Job, *, session_id: int | None = None) -> DispatchReport:
        """Call the endpoint for every due registration of ``job`` (or of one session)."""
        report = DispatchReport()
        spec = job.trigger
        if spec is None:
            return report
        breaker = self.breakers.setdefault(job.name, self._new_breaker())
        if breaker.paused():
            report.paused = True
            return report
        with self.ledger.named_lock(f"trigger:{job.name}") as held:
            if not held:
                report.skipped = True
                return report
            if spec.on == "file_uploaded":
                self.batch_uploads(job)
            for due in self.ledger.due_triggers(job.name, limit=50, session_id=session_id):
                if not self._call(job, spec, due, breaker, report):
                    break
        return report

    def _call(
        self,
        job: Job,
        spec: TriggerSpec,
        due: DueTrigger,
        breaker: Breaker,
        report: DispatchReport,
    ) -> bool:
        """One registration; False when the endpoint is now paused."""
        started = self.ledger.start_trigger_call(due.id, self.host)
        if started is None:
            return True
        attempt, tries = started
        report.called.append(due.id)
        body = manifest(job, due, self.ledger.trigger_manifest(due.id))
        if due.session_id is not None:
            body["gone"] = [
                {"relpath": f["relpath"], "size": f["size"], "reason": f["last_error"]}
                for f in self.ledger.session_gone_files(due.id)
            ]
        result = self._post(spec, due, body)
        retry_in = next_attempt_in(tries, job.retry) if result.retryable else None
        state = result.state if result.state == "sent" or retry_in is not None else "failed"
        self.ledger.finish_trigger_call(
            due.id,
            attempt,
            state=state,
            status=result.status,
            error=result.error,
            excerpt=result.excerpt,
            retry_in=retry_in if state == "pending" else None,
        )
        metrics.trigger_requests.labels(job.name, state).inc()
        if state == "sent":
            report.sent += 1
            log.info(
                "job %s: registration %d sent (HTTP %s)",
                job.name,
                due.id,
                result.status,
                extra=fields(job.name, due.session_id),
            )
            if breaker.record_success():
                self._set_health(job, breaker, None)
                log.info("job %s: the trigger endpoint answers again; resumed", job.name)
            return True
        report.errors.append(result.error or "")
        extra = fields(job.name, due.session_id)
        if result.configuration:
            report.configuration += 1
            log.error(
                "job %s: registration %d not sent: %s", job.name, due.id, result.error, extra=extra
            )
            return True  # the endpoint is not to blame: no pause
        if state == "failed":
            report.failed += 1
            log.error(
                "job %s: registration %d failed for good: %s",
                job.name,
                due.id,
                result.error,
                extra=extra,
            )
        else:
            report.retrying += 1
            log.warning(
                "job %s: registration %d: %s; retrying in %.0fs",
                job.name,
                due.id,
                result.error,
                retry_in,
                extra=extra,
            )
        pause = breaker.record_failure(result.error or "") if result.retryable else None
        if pause is not None:
            self._set_health(job, breaker, pause)
            log.error(
                "job %s: pausing calls to %s for %.0fs after %d failures",
                job.name,
                safe_url(spec.url),
                pause,
                breaker.failures,
            )
            report.paused = True
            return False
        return True

    def _post(self, spec: TriggerSpec, due: DueTrigger, body: dict[str, Any]) -> CallResult:
        try:
            headers = {
                "Content-Type": "application/json",
                "User-Agent": f"uploaderd/{__version__}",
                **resolve_headers(spec.headers, self.env),
                "Idempotency-Key": due.idempotency_key,
            }
        except TriggerSetupError as exc:
            return CallResult(
                "pending",
                None,
                f"{CONFIGURATION_ERROR}: {exc}",
                None,
                retryable=True,
                configuration=True,
            )
        call = _Call(spec)
        try:
            status, data = call.send(json.dumps(body).encode(), headers)
        except (OSError, urllib3.exceptions.HTTPError, http_client.HTTPException) as exc:
            error = (
                f"no response within the {spec.timeout:g}s timeout"
                if call.cut
                else f"no response: {type(exc).__name__}"
            )
            return CallResult("pending", None, error, None, retryable=True)
        excerpt = _excerpt(data)
        if 200 <= status < 300:
            return CallResult("sent", status, None, excerpt, retryable=False)
        # 408, 429 and 5xx are the endpoint's trouble and pass; other 4xx are about the
        # request and would fail the same way again.
        retryable = status in (408, 429) or status >= 500
        return CallResult("pending", status, f"HTTP {status}", excerpt, retryable)

    def _set_health(self, job: Job, breaker: Breaker, pause: float | None) -> None:
        metrics.destination_paused.labels(job.name, "trigger").set(1 if pause else 0)
        self.ledger.set_destination_health(
            job.name,
            self.host,
            "trigger",
            failures=breaker.failures,
            pause_seconds=pause,
            error=breaker.last_error,
        )


class _Call:
    """One HTTP request with a deadline for all of it: a timer shuts the socket down when
    ``timeout`` has passed, whatever it is waiting on (urllib3's timeouts bound each socket
    operation, so an answer trickled a byte at a time would never trip them)."""

    def __init__(self, spec: TriggerSpec) -> None:
        self.spec = spec
        self.cut = False
        url = urllib3.util.parse_url(spec.url)
        cls = HTTPSConnection if url.scheme == "https" else HTTPConnection
        self.path = url.request_uri
        self.conn = cls(url.host or "", url.port, timeout=spec.timeout)
        self.sock: socket.socket | None = None

    def send(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """(status, the first bytes of the answer)."""
        timer = threading.Timer(self.spec.timeout, self._cut)
        timer.daemon = True
        timer.start()
        try:
            self.conn.connect()
            # Kept: http.client hands the socket to the response and forgets it.
            self.sock = self.conn.sock
            self._check_deadline()
            self.conn.request(
                self.spec.method, self.path, body=body, headers=headers, preload_content=False
            )
            response = self.conn.getresponse()
            data = response.read(_EXCERPT * 4)
            self._check_deadline()  # an answer cut short is no answer
            return response.status, data
        finally:
            timer.cancel()
            self.conn.close()

    def _check_deadline(self) -> None:
        if self.cut:
            raise TimeoutError("the trigger timeout passed")

    def _cut(self) -> None:
        self.cut = True
        sock = self.sock or self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _excerpt(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else " " for ch in text)[:_EXCERPT]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
