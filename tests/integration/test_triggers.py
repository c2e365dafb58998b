"""The trigger outbox and dispatcher against real PostgreSQL and a real HTTP endpoint."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from devstack import wait_for
from uploaderd.config.settings import Job, S3Settings, parse_job_text
from uploaderd.daemon.triggers import TriggerDispatcher, resolve_headers
from uploaderd.ledger.store import Ledger, NewVersion, Outcome, State
from uploaderd.policy.health import Breaker

Sql = Callable[..., list[tuple[Any, ...]]]
SHA = "ab" * 32


def make_job(
    url: str, *, on: str = "session_complete", headers: str = "{}", max_attempts: int = 3
) -> Job:
    return parse_job_text(
        "source: {paths: [/data/in]}\ndestination: {bucket: lab-raw}\n"
        f"retry: {{max_attempts: {max_attempts}, backoff: {{initial: 0.05s, max: 0.05s, "
        "jitter: false}}\n"
        f"trigger: {{url: '{url}', on: {on}, batch_size: 2, headers: {headers}}}\n",
        name="lab",
        defaults=S3Settings(),
    )


def upload_session(ledger: Ledger, relpaths: list[str], marker: str | None = None) -> int:
    """Queue, claim and complete versions in one session, as the daemon would."""
    session = ledger.open_sessions("lab", "host-a", ["run-1"])["run-1"]
    ledger.enqueue(
        "lab",
        scope="host-a",
        host="host-a",
        bucket="lab-raw",
        versions=[
            NewVersion("/data/in", p, 10 + i, 1, i, f"lab/{p}", session)
            for i, p in enumerate(relpaths)
        ],
        marker=marker,
    )
    claims = ledger.claim(
        worker="host-a:1:w",
        host="host-a",
        jobs=["lab"],
        scopes=["host-a"],
        limit=100,
        lease_seconds=60,
    )
    ledger.complete("host-a:1:w", [Outcome(c, State.UPLOADED, "uploaded", SHA) for c in claims])
    return session


def age_sessions(sql: Sql) -> None:
    """As if the sessions had been quiet a while: the sweep leaves just-touched ones alone."""
    sql("UPDATE sessions SET last_activity_at = now() - interval '1 minute'")


def test_completed_session_is_registered_once_with_its_manifest(
    ledger: Ledger, httpserver: HTTPServer, sql: Sql
) -> None:
    httpserver.expect_oneshot_request("/register", method="POST").respond_with_json({"ok": 1})
    job = make_job(httpserver.url_for("/register"))
    session = upload_session(ledger, ["run-1/a.tif", "run-1/b.tif"], marker="b.tif")
    age_sessions(sql)
    assert ledger.complete_sessions("lab", idle_seconds=None, marker="b.tif", register=True) == [
        session
    ]
    report = TriggerDispatcher(ledger, host="host-a").dispatch(job)
    assert (report.sent, report.failed) == (1, 0)
    [(request, _)] = httpserver.log
    body = json.loads(request.data)
    assert body["job"] == "lab" and body["session"] == session
    files = [(f["relpath"], f["bucket"], f["key"], f["size"], f["sha256"]) for f in body["files"]]
    assert files == [
        ("run-1/a.tif", "lab-raw", "lab/run-1/a.tif", 10, SHA),
        ("run-1/b.tif", "lab-raw", "lab/run-1/b.tif", 11, SHA),
    ]
    assert request.headers["Idempotency-Key"] == body["idempotency_key"]
    assert sql("SELECT state, last_status, attempts FROM triggers") == [("sent", 200, 1)]
    assert sql("SELECT count(*) FROM file_versions WHERE registered_at IS NULL") == [(0,)]
    assert sql("SELECT closed_reason FROM sessions") == [("marker",)]
    assert TriggerDispatcher(ledger).dispatch(job).sent == 0, "sent registrations stay sent"


def test_a_failed_call_is_retried_with_the_same_idempotency_key(
    ledger: Ledger, httpserver: HTTPServer, sql: Sql
) -> None:
    httpserver.expect_ordered_request("/r").respond_with_data("catalog down", status=503)
    httpserver.expect_ordered_request("/r").respond_with_data("", status=201)
    job = make_job(httpserver.url_for("/r"))
    upload_session(ledger, ["run-1/a.tif"])
    age_sessions(sql)
    ledger.complete_sessions("lab", idle_seconds=0.0, marker=None, register=True)
    dispatcher = TriggerDispatcher(ledger)
    assert dispatcher.dispatch(job).retrying == 1
    wait_for(lambda: dispatcher.dispatch(job).sent == 1, timeout=5, message="the retry")
    keys = [r.headers["Idempotency-Key"] for r, _ in httpserver.log]
    assert len(keys) == 2 and keys[0] == keys[1]
    calls = sql(
        "SELECT attempt, status, error, response_excerpt FROM trigger_calls ORDER BY attempt"
    )
    assert calls == [(1, 503, "HTTP 503", "catalog down"), (2, 201, None, "")]


def test_a_client_error_fails_at_once_and_max_attempts_bound_retries(
    ledger: Ledger, httpserver: HTTPServer, sql: Sql
) -> None:
    httpserver.expect_request("/bad").respond_with_data("no such project", status=422)
    upload_session(ledger, ["run-1/a.tif"])
    age_sessions(sql)
    ledger.complete_sessions("lab", idle_seconds=0.0, marker=None, register=True)
    report = TriggerDispatcher(ledger).dispatch(make_job(httpserver.url_for("/bad")))
    assert (report.failed, report.retrying) == (1, 0)
    assert sql("SELECT state, last_error FROM triggers") == [("failed", "HTTP 422")]


def test_file_uploaded_registrations_come_in_batches(
    ledger: Ledger, httpserver: HTTPServer, sql: Sql
) -> None:
    httpserver.expect_request("/batch").respond_with_data("", status=200)
    upload_session(ledger, ["a", "b", "c"])
    report = TriggerDispatcher(ledger).dispatch(
        make_job(httpserver.url_for("/batch"), on="file_uploaded")
    )
    assert report.sent == 2
    sizes = sorted(len(json.loads(r.data)["files"]) for r, _ in httpserver.log)
    assert sizes == [1, 2], "batch_size: 2"
    assert sql("SELECT count(DISTINCT trigger_id) FROM file_versions") == [(2,)]


def test_secret_headers_come_from_env_and_files_and_are_never_stored(
    ledger: Ledger, httpserver: HTTPServer, sql: Sql, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-secret\n")
    httpserver.expect_request("/s").respond_with_data("", status=200)
    headers = (
        f"{{Authorization: 'Bearer ${{env:CATALOG_TOKEN}}', X-Api-Key: '${{file:{token_file}}}'}}"
    )
    job = make_job(httpserver.url_for("/s"), headers=headers)
    upload_session(ledger, ["run-1/a"])
    age_sessions(sql)
    ledger.complete_sessions("lab", idle_seconds=0.0, marker=None, register=True)
    assert TriggerDispatcher(ledger, env={"CATALOG_TOKEN": "env-secret"}).dispatch(job).sent == 1
    [(request, _)] = httpserver.log
    assert request.headers["Authorization"] == "Bearer env-secret"
    assert request.headers["X-Api-Key"] == "file-secret"
    dump = json.dumps(
        sql("SELECT t::text FROM triggers t UNION ALL SELECT c::text FROM trigger_calls c")
    )
    assert "secret" not in dump


def test_a_missing_secret_is_a_clear_error_without_a_call(
    ledger: Ledger, httpserver: HTTPServer, sql: Sql
) -> None:
    job = make_job(httpserver.url_for("/s"), headers="{Authorization: '${env:NOPE}'}")
    upload_session(ledger, ["run-1/a"])
    age_sessions(sql)
    ledger.complete_sessions("lab", idle_seconds=0.0, marker=None, register=True)
    TriggerDispatcher(ledger, env={}).dispatch(job)
    assert httpserver.log == []
    assert sql("SELECT error FROM trigger_calls") == [
        (
            "configuration error: header Authorization names ${env:NOPE}, and the environment "
            "variable NOPE is not set for this process",
        )
    ]
    assert sql("SELECT consecutive_failures FROM destination_health") == [], "no pause"
    with pytest.raises(Exception, match="NOPE is not set"):
        resolve_headers({"A": "${env:NOPE}"}, {})


def test_a_sick_endpoint_is_paused_then_resumes(
    ledger: Ledger, httpserver: HTTPServer, sql: Sql
) -> None:
    state = {"down": True}

    def handler(request: Request) -> Response:
        return Response("", status=503 if state["down"] else 200)

    httpserver.expect_request("/sick").respond_with_handler(handler)
    job = make_job(httpserver.url_for("/sick"), max_attempts=20)
    for run in ("run-1", "run-2", "run-3"):
        session = ledger.open_sessions("lab", "host-a", [run])[run]
        ledger.enqueue(
            "lab",
            scope="host-a",
            host="host-a",
            bucket="lab-raw",
            versions=[NewVersion("/data/in", f"{run}/a", 1, 1, len(run), f"k/{run}", session)],
        )
    claims = ledger.claim(
        worker="w", host="host-a", jobs=["lab"], scopes=["host-a"], limit=9, lease_seconds=60
    )
    ledger.complete("w", [Outcome(c, State.UPLOADED, "uploaded", SHA) for c in claims])
    age_sessions(sql)
    ledger.complete_sessions("lab", idle_seconds=0.0, marker=None, register=True)
    dispatcher = TriggerDispatcher(ledger, breaker=lambda: Breaker(threshold=2, first_pause=0.5))
    report = dispatcher.dispatch(job)
    assert report.paused and len(httpserver.log) == 2, "paused after two failures in a row"
    assert sql(
        "SELECT kind, consecutive_failures, paused_until > now() FROM destination_health"
    ) == [("trigger", 2, True)]
    assert dispatcher.dispatch(job).paused and len(httpserver.log) == 2, "no calls while paused"
    state["down"] = False
    wait_for(lambda: dispatcher.dispatch(job).sent, timeout=10, message="resumed")
    wait_for(
        lambda: sql("SELECT count(*) FROM triggers WHERE state = 'sent'") == [(3,)],
        timeout=10,
        message="all sent",
    )
    assert sql("SELECT paused_until FROM destination_health") == [(None,)]


def test_only_one_dispatcher_per_job_in_the_cluster(
    ledger: Ledger, migrated_dsn: str, httpserver: HTTPServer
) -> None:
    job = make_job(httpserver.url_for("/r"))
    other = Ledger(migrated_dsn).connect()
    try:
        with other.named_lock("trigger:lab") as held:
            assert held
            assert TriggerDispatcher(ledger).dispatch(job).skipped
    finally:
        other.close()


def test_upload_sessions_left_open_are_closed_by_the_sweep_once_done(
    ledger: Ledger, sql: Sql
) -> None:
    session = ledger.open_run_session("lab", "host-a")
    ledger.enqueue(
        "lab",
        scope="host-a",
        host="host-a",
        bucket="lab-raw",
        versions=[NewVersion("/data/in", "a", 1, 1, 1, "lab/a", session)],
    )
    age_sessions(sql)
    assert ledger.complete_sessions("lab", idle_seconds=None, marker=None, register=True) == []
    [claim] = ledger.claim(
        worker="w", host="host-a", jobs=["lab"], scopes=["host-a"], limit=1, lease_seconds=60
    )
    ledger.complete("w", [Outcome(claim, State.UPLOADED, "uploaded", SHA)])
    age_sessions(sql)
    assert ledger.complete_sessions("lab", idle_seconds=None, marker=None, register=True) == [
        session
    ]
    assert sql("SELECT closed_reason FROM sessions") == [("run",)]
    assert sql("SELECT count(*) FROM triggers") == [(1,)]
    assert ledger.complete_run_session(session, register=True), "already complete counts"
    assert sql("SELECT count(*) FROM triggers") == [(1,)], "and registers nothing twice"


def test_a_forced_registration_of_a_session_without_uploads_writes_nothing(
    ledger: Ledger, sql: Sql
) -> None:
    session = ledger.open_run_session("lab", "host-a")
    assert ledger.create_session_trigger("lab", session) is None
    assert sql("SELECT count(*) FROM triggers") == [(0,)]


def test_a_session_touched_a_moment_ago_is_not_closed_under_new_files(
    ledger: Ledger, sql: Sql
) -> None:
    session = upload_session(ledger, ["run-1/a.tif", "run-1/DONE"], marker="DONE")
    # Discovery touches the session, then queues the next files: not yet closable.
    assert ledger.open_sessions("lab", "host-a", ["run-1"]) == {"run-1": session}
    assert ledger.complete_sessions("lab", idle_seconds=None, marker="DONE", register=False) == []
    age_sessions(sql)
    assert ledger.complete_sessions("lab", idle_seconds=None, marker="DONE", register=False) == [
        session
    ]


def test_the_marker_is_recorded_when_queued_and_searched_only_in_older_sessions(
    ledger: Ledger, sql: Sql
) -> None:
    session = upload_session(ledger, ["run-1/a.tif", "run-1/DONE"], marker="DONE")
    assert sql("SELECT marker_seen FROM sessions") == [(True,)]
    sql("UPDATE sessions SET marker_seen = false")
    age_sessions(sql)
    assert (
        ledger.complete_sessions("lab", idle_seconds=None, marker="DONE", register=False) == []
    ), "a recorded 'no marker' is trusted"
    sql("UPDATE sessions SET marker_seen = NULL")  # opened before migration 0005
    assert ledger.complete_sessions("lab", idle_seconds=None, marker="DONE", register=False) == [
        session
    ]
    assert sql("SELECT marker_seen FROM sessions") == [(True,)], "searched once, remembered"
