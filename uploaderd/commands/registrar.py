"""``uploaderd trigger``: register one session, or resend a job's unsent registrations, now.

The registration goes through the same outbox as the daemon's: a row in ``triggers`` with its
idempotency key, sent by ``TriggerDispatcher``. Calling again after a failed call resends the
same row (the same ``Idempotency-Key``, so the receiver can tell a repeat); ``--force`` after
a successful one writes a new row, a deliberate second registration with a new key.
``upload`` and ``pipeline`` send their job's due registrations the same way (``send_due``):
for a job with ``enabled: false`` nothing else does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from uploaderd.config.settings import Job
from uploaderd.daemon.triggers import CONFIGURATION_ERROR, TriggerDispatcher
from uploaderd.errors import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, UsageError
from uploaderd.ledger.store import Ledger, State
from uploaderd.policy.units import plural

Out = Callable[[str], None]
LOCK_WAIT_SECONDS = 10.0


class Registrar:
    def __init__(
        self,
        ledger: Ledger,
        jobs: Mapping[str, Job],
        dispatcher: TriggerDispatcher,
        *,
        out: Out,
        lock_wait: float = LOCK_WAIT_SECONDS,
    ) -> None:
        self.ledger = ledger
        self.jobs = jobs
        self.dispatcher = dispatcher
        self.out = out
        self.lock_wait = lock_wait
        self.calls: list[dict[str, Any]] = []  # every registration this run tried (--json)

    def trigger(self, session_id: int, *, force: bool) -> int:
        session = self._session(session_id)
        job = self._job_of(session)
        if session["state"] != "complete" and session["origin"] == "upload":
            # A run whose failures were since uploaded (by retry or the daemon) is done now.
            register = job.trigger is not None and job.trigger.on == "session_complete"
            if self.ledger.complete_run_session(session_id, register=register):
                session = self._session(session_id)
        if session["state"] != "complete":
            return self._incomplete(job, session_id, force)
        unsent = [r for r in self.ledger.session_triggers(session_id) if r["state"] != "sent"]
        if unsent:
            for row in unsent:
                self.ledger.reset_trigger(row["id"])  # due now, with a fresh set of attempts
            return self._dispatch(job, session_id, [row["id"] for row in unsent])
        sent = self.ledger.session_triggers(session_id)
        if sent and not force:
            last = sent[-1]
            self.out(
                f"session {session_id}: already registered (registration {last['id']}, "
                f"HTTP {last['last_status']} at {last['sent_at']:%Y-%m-%d %H:%M:%S%z}); "
                "--force registers it again with a new idempotency key"
            )
            return EXIT_OK
        return self._register_anew(job, session_id)

    def _session(self, session_id: int) -> dict[str, Any]:
        session = self.ledger.session(session_id)
        if session is None:
            raise UsageError(f"there is no session {session_id}")
        return session

    def _job_of(self, session: dict[str, Any]) -> Job:
        job = self.jobs.get(session["job"])
        if job is None:
            raise UsageError(
                f"session {session['id']} belongs to job {session['job']!r}, "
                "which is not in the jobs directory"
            )
        if job.trigger is None:
            raise UsageError(f"job {job.name} has no trigger block: nothing to call")
        return job

    def _incomplete(self, job: Job, session_id: int, force: bool) -> int:
        if force:
            return self._register_anew(job, session_id)
        progress = self.ledger.session_progress(session_id)
        counts = ", ".join(f"{files} {state}" for state, (files, _) in sorted(progress.items()))
        self.out(
            f"session {session_id} is not complete ({counts or 'no files'}); --force "
            "registers what is uploaded so far"
        )
        return EXIT_FAILURES

    def _register_anew(self, job: Job, session_id: int) -> int:
        uploaded, _ = self.ledger.session_progress(session_id).get(State.UPLOADED, (0, 0))
        if not uploaded:
            self.out(f"session {session_id}: nothing uploaded to register")
            return EXIT_FAILURES
        trigger_id = self.ledger.create_session_trigger(job.name, session_id)
        assert trigger_id is not None  # the session has uploaded files to carry
        return self._dispatch(job, session_id, [trigger_id])

    # --- a job's registrations -------------------------------------------------------------

    def send_due(self, job: Job) -> int:
        """What ``upload`` and ``pipeline`` do last: send the job's registrations that are due,
        and say when the others are."""
        if job.trigger is None:
            return EXIT_OK
        report = self.dispatcher.dispatch(job)
        if report.skipped:
            self.out(f"job {job.name}: another uploaderd is sending this job's registrations")
            return EXIT_OK
        status = self._print_calls(report.called)
        later = [r for r in self.ledger.unsent_triggers(job.name) if r["state"] == "pending"]
        if later:
            self.out(
                f"job {job.name}: {plural(len(later), 'registration')} not sent yet, next "
                f"attempt in {min(r['next_in'] for r in later):.0f}s (`uploaderd trigger "
                f"--job {job.name} --pending` sends now)"
            )
        return status

    def send_pending(self, job: Job, *, dry_run: bool) -> int:
        """``trigger --job J --pending``: list the job's unsent registrations; send them now,
        with a fresh set of attempts, unless ``dry_run``."""
        if job.trigger is None:
            raise UsageError(f"job {job.name} has no trigger block: nothing to call")
        rows = self.ledger.unsent_triggers(job.name)
        if not rows:
            self.out(f"job {job.name}: every registration is sent")
            return EXIT_OK
        self.out(f"job {job.name}: {plural(len(rows), 'registration')} not sent:")
        for row in rows:
            self.out(
                f"  registration {row['id']} (session {row['session_id'] or '-'}, "
                f"{plural(row['attempts'], 'attempt')}): {describe_call(row)}"
            )
        if dry_run:
            self.calls = [_call_json(row) for row in rows]
            return EXIT_FAILURES if any(r["state"] == "failed" for r in rows) else EXIT_OK
        for row in rows:
            self.ledger.reset_trigger(row["id"])
        return self._dispatch(job, None, [row["id"] for row in rows])

    def _dispatch(self, job: Job, session_id: int | None, trigger_ids: list[int]) -> int:
        """Send now; if a daemon is sending this job's registrations, wait for it a little."""
        deadline = time.monotonic() + self.lock_wait
        while self.dispatcher.dispatch(job, session_id=session_id).skipped:
            if time.monotonic() >= deadline:
                self.out(
                    f"job {job.name}: another uploaderd holds the dispatch lock; the "
                    "registration stays queued for it"
                )
                break
            time.sleep(0.2)
        return self._print_calls(trigger_ids)

    def _print_calls(self, trigger_ids: list[int]) -> int:
        """One line per registration, as the ledger has it now; the status they add up to."""
        rows = self.ledger.triggers_by_id(trigger_ids)
        for row in rows:
            session = f"session {row['session_id']}: " if row["session_id"] else ""
            self.out(f"{session}registration {row['id']}: {describe_call(row)}")
            self.calls.append(_call_json(row))
        if any(_configuration(row) for row in rows):
            return EXIT_USAGE
        return EXIT_OK if all(row["state"] == "sent" for row in rows) else EXIT_FAILURES


def describe_call(row: Mapping[str, Any]) -> str:
    """The outcome of a registration's last call, with its HTTP status when there was one."""
    status = f" (HTTP {row['last_status']})" if row["last_status"] is not None else ""
    if row["state"] == "sent":
        return f"sent{status}"
    error = row["last_error"] or "not called yet"
    if row["state"] == "failed":
        return f"failed{status}: {error}"
    return f"not sent{status}: {error}; queued for retry"


def _configuration(row: Mapping[str, Any]) -> bool:
    return row["state"] != "sent" and (row["last_error"] or "").startswith(CONFIGURATION_ERROR)


def _call_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "registration": row["id"],
        "session": row["session_id"],
        "state": row["state"],
        "http_status": row["last_status"],
        "error": row["last_error"],
    }
