"""``uploaderd trigger``: register one session with its job's endpoint now.

The registration goes through the same outbox as the daemon's: a row in ``triggers`` with its
idempotency key, sent by ``TriggerDispatcher``. Calling again after a failed call resends the
same row (the same ``Idempotency-Key``, so the receiver can tell a repeat); ``--force`` after
a successful one writes a new row, a deliberate second registration with a new key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from uploaderd.config import Job
from uploaderd.errors import EXIT_FAILURES, EXIT_OK, UsageError
from uploaderd.ledger import Ledger, State
from uploaderd.triggers import TriggerDispatcher

Out = Callable[[str], None]
LOCK_WAIT_SECONDS = 10.0


class Registrar:
    def __init__(
        self, ledger: Ledger, jobs: Mapping[str, Job], dispatcher: TriggerDispatcher, *,
        out: Out, lock_wait: float = LOCK_WAIT_SECONDS,
    ) -> None:
        self.ledger = ledger
        self.jobs = jobs
        self.dispatcher = dispatcher
        self.out = out
        self.lock_wait = lock_wait

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
            self.out(f"session {session_id}: already registered (registration {last['id']}, "
                     f"HTTP {last['last_status']} at {last['sent_at']:%Y-%m-%d %H:%M:%S%z}); "
                     "--force registers it again with a new idempotency key")
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
            raise UsageError(f"session {session['id']} belongs to job {session['job']!r}, "
                             "which is not in the jobs directory")
        if job.trigger is None:
            raise UsageError(f"job {job.name} has no trigger block: nothing to call")
        return job

    def _incomplete(self, job: Job, session_id: int, force: bool) -> int:
        if force:
            return self._register_anew(job, session_id)
        progress = self.ledger.session_progress(session_id)
        counts = ", ".join(f"{files} {state}" for state, (files, _) in sorted(progress.items()))
        self.out(f"session {session_id} is not complete ({counts or 'no files'}); --force "
                 "registers what is uploaded so far")
        return EXIT_FAILURES

    def _register_anew(self, job: Job, session_id: int) -> int:
        uploaded, _ = self.ledger.session_progress(session_id).get(State.UPLOADED, (0, 0))
        if not uploaded:
            self.out(f"session {session_id}: nothing uploaded to register")
            return EXIT_FAILURES
        trigger_id = self.ledger.create_session_trigger(job.name, session_id)
        assert trigger_id is not None  # the session has uploaded files to carry
        return self._dispatch(job, session_id, [trigger_id])

    def _dispatch(self, job: Job, session_id: int, trigger_ids: list[int]) -> int:
        """Send now; if a daemon is sending this job's registrations, wait for it a little."""
        deadline = time.monotonic() + self.lock_wait
        while self.dispatcher.dispatch(job, session_id=session_id).skipped:
            if time.monotonic() >= deadline:
                self.out(f"job {job.name}: another uploaderd holds the dispatch lock; the "
                         "registration stays queued for it")
                break
            time.sleep(0.2)
        rows = {row["id"]: row for row in self.ledger.session_triggers(session_id)}
        for trigger_id in trigger_ids:
            self.out(f"session {session_id}: registration {trigger_id}: "
                     f"{describe_call(rows[trigger_id])}")
        return EXIT_OK if all(rows[t]["state"] == "sent" for t in trigger_ids) else EXIT_FAILURES


def describe_call(row: Mapping[str, Any]) -> str:
    """The outcome of a registration's last call, with its HTTP status."""
    status = f"HTTP {row['last_status']}" if row["last_status"] is not None else "no response"
    if row["state"] == "sent":
        return f"sent ({status})"
    error = row["last_error"] or status
    if row["state"] == "failed":
        return f"failed ({status}): {error}"
    return f"not sent ({status}): {error}; queued for retry"
