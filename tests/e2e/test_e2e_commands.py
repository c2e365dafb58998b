"""The one-shot commands as a user runs them: ``upload``, ``retry``, ``trigger``, ``pipeline``,
``status``, ``verify``, ``explain`` and ``check --connect``, each a real ``python -m uploaderd``
process on a real PostgreSQL, the moto S3 server and (for triggers) a real HTTP endpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pty
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pytest_httpserver import HTTPServer

from devstack import S3Server, free_port
from uploaderd.ledger.store import Ledger, NewVersion

Sql = Callable[..., list[tuple[Any, ...]]]
ESC = "\x1b"
FAST_RETRY = {"max_attempts": 2, "backoff": {"initial": "0.2s", "max": "0.2s", "jitter": False}}


class Workspace:
    """A config, a jobs directory and a data root for one test."""

    def __init__(self, tmp: Path, dsn: str, endpoint_url: str) -> None:
        self.data = tmp / "data"
        self.data.mkdir()
        self.jobs = tmp / "jobs.d"
        self.jobs.mkdir()
        self.config = tmp / "uploaderd.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "database": {"dsn": dsn},
                    "jobs_dir": str(self.jobs),
                    "workers": 2,
                    "s3": {"endpoint_url": endpoint_url, "region": "us-east-1"},
                    "shutdown_grace": "5s",
                }
            )
        )

    def job(self, bucket: str, name: str = "lab", **extra: Any) -> None:
        job = {
            "source": {"paths": [str(self.data)], "settle": 0},
            "destination": {"bucket": bucket, "key": "lab/${relpath}"},
            **extra,
        }
        (self.jobs / f"{name}.yaml").write_text(yaml.safe_dump(job))

    def write(self, relpath: str, data: bytes) -> Path:
        path = self.data / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def tree(self, files: dict[str, bytes]) -> None:
        for relpath, data in files.items():
            self.write(relpath, data)

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "uploaderd", *args, "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=cwd,
        )


@pytest.fixture
def ws(tmp_path: Path, migrated_dsn: str, s3_server: S3Server) -> Workspace:
    return Workspace(tmp_path, migrated_dsn, s3_server.endpoint_url)


def ok(result: subprocess.CompletedProcess[str], status: int = 0) -> str:
    assert result.returncode == status, (result.stdout, result.stderr)
    return result.stdout


def session_of(output: str) -> int:
    match = re.search(r"^session (\d+): queued", output, re.MULTILINE)
    assert match, output
    return int(match.group(1))


def objects(server: S3Server, bucket: str) -> dict[str, bytes]:
    client = server.client()
    listing = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {
        o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing
    }


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def trigger_job(ws: Workspace, bucket: str, httpserver: HTTPServer, **extra: Any) -> None:
    ws.job(
        bucket,
        trigger={"url": httpserver.url_for("/register"), "schedule": {"interval": "1h"}},
        **extra,
    )


def posted(httpserver: HTTPServer) -> list[tuple[str, dict[str, Any]]]:
    """(Idempotency-Key, manifest) of every call the endpoint received."""
    return [
        (request.headers["Idempotency-Key"], json.loads(request.data))
        for request, _ in httpserver.log
    ]


# --- upload --------------------------------------------------------------------------------


def test_upload_queues_a_tree_in_a_session_and_uploads_it(
    ws: Workspace, s3_server: S3Server, bucket: str, sql: Sql
) -> None:
    ws.job(bucket)
    ws.tree(
        {
            "a.txt": b"alpha",
            "run1/b.txt": b"bravo!",
            "run1/deep/c.txt": b"charlie",
            "run1/skip.tmp": b"temp",
        }
    )
    out = ok(ws.run("upload", "lab"))
    session = session_of(out)
    assert "job lab: 3 new complete files, 0 already in the ledger, 0 still being written" in out
    assert f"session {session}: queued 3 files (18 B)" in out
    assert f"session {session}: 3 uploaded, 0 failed" in out
    assert f"session {session}: complete" in out
    assert ESC not in out, "no control sequences when stdout is not a terminal"
    assert objects(s3_server, bucket) == {
        "lab/a.txt": b"alpha",
        "lab/run1/b.txt": b"bravo!",
        "lab/run1/deep/c.txt": b"charlie",
    }
    assert sql("SELECT state, origin, closed_reason FROM sessions") == [
        ("complete", "upload", "run")
    ]

    again = ok(ws.run("upload", "lab"))
    assert "3 already in the ledger" in again and "nothing new to upload" in again
    assert sql("SELECT count(*) FROM sessions") == [(1,)]

    ws.write("run1/b.txt", b"bravo, changed")
    changed = ok(ws.run("upload", "lab", "--no-progress"))
    assert f"session {session_of(changed)}: 1 uploaded" in changed
    assert objects(s3_server, bucket)["lab/run1/b.txt"] == b"bravo, changed"
    assert sql("SELECT state FROM file_versions WHERE relpath = 'run1/b.txt' ORDER BY id") == [
        ("uploaded",),
        ("uploaded",),
    ]


def test_dry_run_lists_what_would_be_queued_and_touches_nothing(
    ws: Workspace, s3_server: S3Server, bucket: str, sql: Sql
) -> None:
    ws.job(bucket)
    ws.tree({"a.txt": b"alpha", "run1/b.txt": b"bravo!", "x.part": b"partial"})
    out = ok(ws.run("upload", "lab", "--dry-run"))
    assert f"would queue 2 files (11 B) to s3://{bucket}:" in out
    assert "  a.txt  5 B  lab/a.txt" in out.splitlines()
    assert "  run1/b.txt  6 B  lab/run1/b.txt" in out.splitlines()
    assert "x.part" not in out
    assert sql("SELECT (SELECT count(*) FROM file_versions), (SELECT count(*) FROM sessions)") == [
        (0, 0)
    ]
    assert objects(s3_server, bucket) == {}


def test_a_missing_bucket_fails_the_upload_and_retry_recovers_it(
    ws: Workspace, s3_server: S3Server, sql: Sql, httpserver: HTTPServer
) -> None:
    bucket = f"later-{uuid.uuid4().hex[:12]}"
    trigger_job(ws, bucket, httpserver, retry=FAST_RETRY)
    ws.write("a.txt", b"alpha")
    ws.write("b.txt", b"bravo")
    refused = ws.run("upload", "lab")
    assert refused.returncode == 2, refused.stderr  # issue 25: a configuration error, not 3
    assert (
        f"job lab: s3://{bucket}: NoSuchBucket The specified bucket does not exist: the "
        "bucket, the credentials or the policy are wrong; nothing was queued"
    ) in refused.stderr
    assert sql("SELECT count(*) FROM file_versions") == [(0,)], "no attempt spent"
    # Queued while the bucket was there, uploaded after it went away: a configuration error
    # stops the run at its first failure (exit 2), and the files wait, their attempts kept.
    session = queue_files(ws, bucket, ["a.txt", "b.txt"])
    out = ok(ws.run("retry", "--session-id", str(session), "--auto-retry"), 2)
    assert "stopped: S3 says the bucket, credentials or policy are wrong (S3 NoSuchBucket" in out
    assert "2 files stay pending for the daemon or the next run" in out
    assert sql("SELECT count(*) FROM file_versions WHERE state = 'pending'") == [(2,)]
    incomplete = ok(ws.run("trigger", "--session-id", str(session)), 1)
    assert f"session {session} is not complete" in incomplete

    s3_server.create_bucket(bucket)
    retried = ok(ws.run("retry", "--job", "lab", "--auto-retry"))
    assert "job lab: requeued 0 failed files and 0 failed registrations" in retried
    assert "job lab: 2 uploaded, 0 failed" in retried
    assert f"session {session}: complete; registration queued" in retried
    assert set(objects(s3_server, bucket)) == {"lab/a.txt", "lab/b.txt"}
    assert sql("SELECT state FROM sessions") == [("complete",)]
    assert not httpserver.log, "retry queues the registration; it does not send it"


def test_upload_stops_at_a_missing_bucket_instead_of_probing_for_hours(
    ws: Workspace, sql: Sql
) -> None:
    bucket = f"never-{uuid.uuid4().hex[:12]}"
    ws.job(bucket, retry={"max_attempts": 1})
    ws.tree({f"f{index:02}.txt": b"x" for index in range(12)})
    queue_files(ws, bucket, [f"f{index:02}.txt" for index in range(12)])
    out = ok(ws.run("retry", "--job", "lab", "--auto-retry"), 2)
    assert "stopped: S3 says the bucket, credentials or policy are wrong (S3 NoSuchBucket" in out
    [(failed, pending)] = sql(
        "SELECT count(*) FILTER (WHERE state = 'failed'), "
        "count(*) FILTER (WHERE state = 'pending') FROM file_versions"
    )
    # The attempts running when the first answer came fail; the others were never tried.
    assert failed < 12 // 2 and pending >= 12 // 2 and failed + pending == 12
    assert f"{pending} files stay pending for the daemon or the next run" in out


def test_retry_without_auto_retry_only_requeues(ws: Workspace, sql: Sql) -> None:
    ws.job("some-bucket")
    ledger = Ledger(_dsn(ws)).connect()
    session = ledger.open_run_session("lab", "elsewhere")
    ledger.close()
    sql(
        "INSERT INTO file_versions (job, scope, host, root, relpath, size, mtime_ns, inode, "
        "bucket, key, state, session_id) VALUES ('lab', 'elsewhere', 'elsewhere', '/d', 'a', 1, "
        "1, 1, 'b', 'k', 'failed', %s)",
        session,
    )
    out = ok(ws.run("retry", "--session-id", str(session)))
    assert out == f"session {session}: requeued 1 failed file and 0 failed registrations\n"
    assert sql("SELECT state FROM file_versions") == [("pending",)]
    assert ok(ws.run("retry", "--all")) == (
        "all jobs: requeued 0 failed files and 0 failed registrations\n"
    )


def _dsn(ws: Workspace) -> str:
    return str(yaml.safe_load(ws.config.read_text())["database"]["dsn"])


def queue_files(ws: Workspace, bucket: str, relpaths: list[str]) -> int:
    """Queue files of ``ws.data`` in a run session of job lab, as ``upload`` does once its
    bucket check passed; the session id."""
    ledger = Ledger(_dsn(ws)).connect()
    session = ledger.open_run_session("lab", socket.gethostname())
    versions = []
    for relpath in relpaths:
        info = (ws.data / relpath).stat()
        versions.append(
            NewVersion(
                str(ws.data),
                relpath,
                info.st_size,
                info.st_mtime_ns,
                info.st_ino,
                f"lab/{relpath}",
                session,
                None,
            )
        )
    ledger.enqueue(
        "lab",
        scope=socket.gethostname(),
        host=socket.gethostname(),
        bucket=bucket,
        versions=versions,
    )
    ledger.close()
    return session


# --- trigger and pipeline ------------------------------------------------------------------


def test_trigger_sends_the_manifest_and_reuses_its_key_after_a_500(
    ws: Workspace, bucket: str, httpserver: HTTPServer
) -> None:
    trigger_job(ws, bucket, httpserver)
    ws.write("a.txt", b"alpha")
    ws.write("run1/b.txt", b"bravo!")
    httpserver.expect_oneshot_request("/register", method="POST").respond_with_data(
        "overloaded", status=500
    )
    first = ok(ws.run("upload", "lab"), 1)  # upload sends the job's due registrations
    session = session_of(first)
    assert "not sent (HTTP 500): HTTP 500; queued for retry" in first
    httpserver.expect_oneshot_request("/register", method="POST").respond_with_data("ok")
    second = ok(ws.run("trigger", "--session-id", str(session)))
    assert re.search(rf"session {session}: registration \d+: sent \(HTTP 200\)", second)
    [(key_500, _), (key_200, manifest)] = posted(httpserver)
    assert key_500 == key_200, "a repeat carries the same Idempotency-Key"
    assert (manifest["job"], manifest["session"]) == ("lab", session)
    assert [
        (f["relpath"], f["bucket"], f["key"], f["size"], f["sha256"]) for f in manifest["files"]
    ] == [
        ("a.txt", bucket, "lab/a.txt", 5, sha(b"alpha")),
        ("run1/b.txt", bucket, "lab/run1/b.txt", 6, sha(b"bravo!")),
    ]

    again = ok(ws.run("trigger", "--session-id", str(session)))
    assert f"session {session}: already registered" in again and "HTTP 200" in again
    assert len(httpserver.log) == 2
    httpserver.expect_oneshot_request("/register", method="POST").respond_with_data("ok")
    forced = ok(ws.run("trigger", "--session-id", str(session), "--force"))
    assert "sent (HTTP 200)" in forced
    key_forced, forced_manifest = posted(httpserver)[-1]
    assert key_forced != key_200 and len(forced_manifest["files"]) == 2


def test_trigger_refuses_bad_sessions(ws: Workspace, bucket: str, sql: Sql) -> None:
    ws.job(bucket)
    missing = ws.run("trigger", "--session-id", "999")
    assert missing.returncode == 2 and "there is no session 999" in missing.stderr
    assert ws.run("trigger").returncode == 2
    ledger = Ledger(_dsn(ws)).connect()
    session = ledger.open_run_session("lab", "h")
    ledger.close()
    result = ws.run("trigger", "--session-id", str(session))
    assert result.returncode == 2 and "job lab has no trigger block" in result.stderr


def test_pipeline_uploads_and_registers_in_one_go(
    ws: Workspace, s3_server: S3Server, bucket: str, httpserver: HTTPServer, sql: Sql
) -> None:
    trigger_job(ws, bucket, httpserver)
    ws.write("run1/a.txt", b"alpha")
    ws.write("run1/b.txt", b"bravo")
    httpserver.expect_oneshot_request("/register", method="POST").respond_with_json({"id": 7})
    out = ok(ws.run("pipeline", "lab"))
    session = session_of(out)
    assert f"session {session}: 2 uploaded, 0 failed" in out
    assert re.search(rf"session {session}: registration \d+: sent \(HTTP 200\)", out)
    [(_, manifest)] = posted(httpserver)
    assert [f["key"] for f in manifest["files"]] == ["lab/run1/a.txt", "lab/run1/b.txt"]
    assert set(objects(s3_server, bucket)) == {"lab/run1/a.txt", "lab/run1/b.txt"}
    assert sql("SELECT state FROM triggers") == [("sent",)]
    assert "nothing new to upload" in ok(ws.run("pipeline", "lab"))


# --- status, verify, explain, check --------------------------------------------------------


def test_status_shows_bytes_paused_destinations_and_open_sessions(
    ws: Workspace, bucket: str
) -> None:
    ws.job(bucket)
    ws.write("a.txt", b"alpha")
    ok(ws.run("upload", "lab"))
    ledger = Ledger(_dsn(ws)).connect()
    ledger.set_destination_health(
        "lab", "host-b", "trigger", failures=5, pause_seconds=600, error="HTTP 503"
    )
    session = ledger.open_run_session("lab", "host-b")
    ledger.close()
    table = ok(ws.run("status"))
    header, row = table.splitlines()[:2]
    assert header.split()[-6:] == ["QUEUED", "BYTES", "UPLOADED", "BYTES", "LAST", "SUCCESS"]
    assert row.split()[:8] == ["lab", "0", "0", "1", "0", "0", "0", "-"]
    assert row.split()[8:12] == ["0", "B", "5", "B"] and row.split()[12].startswith("20")
    assert "lab: trigger on host-b paused until" in table and "5 failures: HTTP 503" in table
    assert f"{session} lab (upload): 0 files, 0 uploaded, 0 failed" in table
    report = json.loads(ok(ws.run("status", "--json", "--job", "lab")))
    assert report["jobs"]["lab"]["bytes"] == {"uploaded": 5}
    assert report["jobs"]["lab"]["last_success"]
    assert [(p["job"], p["kind"]) for p in report["paused_destinations"]] == [("lab", "trigger")]
    assert [s["id"] for s in report["open_sessions"]] == [session]


def test_verify_finds_missing_extra_and_changed_objects(
    ws: Workspace, s3_server: S3Server, bucket: str
) -> None:
    ws.job(bucket)
    for name in ("a.txt", "b.txt", "c.txt"):
        ws.write(name, name.encode() * 3)
    ok(ws.run("upload", "lab"))
    clean = ok(ws.run("verify", "lab"))
    assert clean.splitlines() == [
        "job lab: 3 objects in the ledger, 3 listed under 'lab/': 0 missing, 0 extra, 0 size, "
        "0 checksum, 0 collision"
    ]
    client = s3_server.client()
    client.delete_object(Bucket=bucket, Key="lab/a.txt")
    client.put_object(Bucket=bucket, Key="lab/stray.bin", Body=b"who put this here")
    client.put_object(
        Bucket=bucket,
        Key="lab/b.txt",
        Body=b"B.TXTB.TXTB.TXT",
        Metadata={"sha256": sha(b"B.TXTB.TXTB.TXT")},
    )
    client.put_object(Bucket=bucket, Key="elsewhere/x", Body=b"not under the prefix")
    out = ok(ws.run("verify", "lab"), 1)
    lines = out.splitlines()
    assert f"missing   s3://{bucket}/lab/a.txt: in the ledger as uploaded, not in S3" in lines
    assert f"extra     s3://{bucket}/lab/stray.bin: 17 bytes, not in the ledger" in lines
    assert any(
        line.startswith(
            f"checksum  s3://{bucket}/lab/b.txt: S3 metadata sha256 {sha(b'B.TXTB.TXTB.TXT')}"
        )
        for line in lines
    )
    assert lines[-1].endswith("1 missing, 1 extra, 0 size, 1 checksum, 0 collision")
    report = json.loads(ok(ws.run("verify", "lab", "--json"), 1))
    assert sorted((p["kind"], p["key"]) for p in report["problems"]) == [
        ("checksum", "lab/b.txt"),
        ("extra", "lab/stray.bin"),
        ("missing", "lab/a.txt"),
    ]


def test_no_settle_uploads_a_finished_run_without_waiting_for_settle(
    ws: Workspace, bucket: str
) -> None:
    """Issue 25: a directory the user knows is complete still waited for the settle."""
    ws.job(bucket)
    job = yaml.safe_load((ws.jobs / "lab.yaml").read_text())
    job["source"]["settle"] = "1h"  # without --no-settle: a budget of two hours
    (ws.jobs / "lab.yaml").write_text(yaml.safe_dump(job))
    ws.write("run9/a.txt", b"just written")
    out = ok(ws.run("upload", "lab", "--no-settle", "--no-progress"))
    assert "settling" not in out
    explained = ok(ws.run("explain", str(ws.data / "run9/a.txt")))
    assert "why: uploaded at" in explained and f"s3://{bucket}/lab/run9/a.txt" in explained


@pytest.mark.parametrize("server_name", ["moto", pytest.param("rclone", marks=pytest.mark.rclone)])
def test_verify_repair_requeues_what_the_source_still_holds(
    tmp_path: Path,
    migrated_dsn: str,
    sql: Sql,
    server_name: str,
    request: pytest.FixtureRequest,
) -> None:
    """Issue 25: after `aws s3 rm` of an uploaded object nothing could put it back. Deleted
    and corrupted objects are requeued when their source holds the recorded bytes; a source
    that changed or is gone is reported with why; the ledger records each repair."""
    server: S3Server = request.getfixturevalue(f"{server_name}_server")
    server.start()
    bucket = f"repair-{uuid.uuid4().hex[:12]}"
    server.create_bucket(bucket)
    ws = Workspace(tmp_path, migrated_dsn, server.endpoint_url)
    ws.job(bucket)
    files = {name: f"{name} content".encode() for name in ("gone.txt", "bent.txt", "moved.txt")}
    ws.tree({**files, "kept.txt": b"kept"})
    ok(ws.run("upload", "lab"))
    client = server.client()
    client.delete_object(Bucket=bucket, Key="lab/gone.txt")
    client.put_object(Bucket=bucket, Key="lab/bent.txt", Body=b"other bytes")  # no sha256
    client.delete_object(Bucket=bucket, Key="lab/moved.txt")
    (ws.data / "moved.txt").write_bytes(b"rewritten since its upload")

    dry = ok(ws.run("verify", "lab", "--repair", "--dry-run"), 1)
    assert f"would requeue gone.txt for s3://{bucket}/lab/gone.txt" in dry
    assert f"would requeue bent.txt for s3://{bucket}/lab/bent.txt" in dry
    assert f"cannot repair s3://{bucket}/lab/moved.txt: the source file holds other bytes" in dry
    assert sql("SELECT count(*) FROM file_versions WHERE state = 'pending'") == [(0,)]

    repaired = ws.run("verify", "lab", "--repair", "--json")
    assert repaired.returncode == 1, "moved.txt cannot be repaired"
    plan = json.loads(repaired.stdout)["repair"]
    assert sorted(r["relpath"] for r in plan["requeued"]) == ["bent.txt", "gone.txt"]
    assert [r["relpath"] for r in plan["cannot_repair"]] == ["moved.txt"]
    records = sql(
        "SELECT v.relpath, v.state, a.outcome, a.error FROM upload_attempts a "
        "JOIN file_versions v ON v.id = a.file_version_id WHERE a.outcome = 'repair' "
        "ORDER BY v.relpath"
    )
    assert [(r[0], r[1], r[2]) for r in records] == [
        ("bent.txt", "pending", "repair"),
        ("gone.txt", "pending", "repair"),
    ]
    assert records[1][3].startswith("repair: missing: in the ledger as uploaded, not in S3")
    assert ok(ws.run("verify", "lab", "--repair"), 1).count("requeued") == 0, "nothing twice"

    ok(ws.run("retry", "--job", "lab", "--auto-retry"))
    held = objects(server, bucket)
    assert held["lab/gone.txt"] == files["gone.txt"] and held["lab/bent.txt"] == files["bent.txt"]
    ok(ws.run("upload", "lab"))  # moved.txt's new content: a version of its own
    assert ok(ws.run("verify", "lab")).endswith(
        "0 missing, 0 extra, 0 size, 0 checksum, 0 collision\n"
    )


def test_explain_says_why_for_uploaded_excluded_and_outside_paths(
    ws: Workspace, bucket: str, tmp_path: Path
) -> None:
    ws.job(bucket)
    ws.write("run1/a.txt", b"alpha")
    ok(ws.run("upload", "lab"))
    ws.write("run1/b.tmp", b"temp")
    uploaded = ok(ws.run("explain", "run1/a.txt", cwd=ws.data))
    assert f"job: lab (root {ws.data}, relpath run1/a.txt)" in uploaded
    assert "filter: included" in uploaded
    assert re.search(
        r"^version \d+: uploaded, 1 attempt, 5 bytes, key "
        rf"s3://{bucket}/lab/run1/a.txt",
        uploaded,
        re.MULTILINE,
    )
    assert re.search(r"^  attempt 1 on .+: uploaded$", uploaded, re.MULTILINE)
    assert re.search(
        rf"^why: uploaded at .+ UTC as s3://{bucket}/lab/run1/a.txt$", uploaded, re.MULTILINE
    )
    excluded = ok(ws.run("explain", str(ws.data / "run1/b.tmp")))
    assert "why: excluded by **/*.tmp" in excluded and "versions: none in the ledger" in excluded
    missing = ws.run("explain", str(tmp_path / "elsewhere.txt"))
    assert ok(missing, 2).splitlines() == [
        f"path: {tmp_path / 'elsewhere.txt'}",
        "why: not under any job",
    ]
    assert "elsewhere.txt: no such file, and the ledger holds no version of it" in missing.stderr
    (ws.data / "run1" / "a.txt").unlink()  # gone from disk, known to the ledger: an answer
    assert "why: uploaded at" in ok(ws.run("explain", str(ws.data / "run1/a.txt")))
    directory = ws.run("explain", str(ws.data / "run1"))
    assert directory.returncode == 2 and directory.stdout == ""
    assert "run1 is a directory: explain looks at one file" in directory.stderr
    ws.write("new.txt", b"new")
    assert "why: complete but not queued yet" in ok(ws.run("explain", str(ws.data / "new.txt")))


def test_check_connect_probes_trigger_urls_without_secrets(
    ws: Workspace, bucket: str, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/register", method="HEAD").respond_with_data("", status=405)
    ws.job(
        bucket,
        trigger={
            "url": httpserver.url_for("/register"),
            "headers": {"Authorization": "Bearer ${env:CATALOG_TOKEN}"},
        },
    )
    ws.job(bucket, name="gone", trigger={"url": f"http://127.0.0.1:{free_port()}/register"})
    env = {**os.environ, "CATALOG_TOKEN": "s3cr3t"}
    result = subprocess.run(
        [sys.executable, "-m", "uploaderd", "check", "--connect", "-c", str(ws.config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    out = ok(result, 3)
    assert (
        f"ok          job lab: the trigger URL {httpserver.url_for('/register')} answers "
        "(HTTP 405 to HEAD)"
    ) in out
    assert "unreachable job gone: cannot reach the trigger URL" in out
    [(request, _)] = httpserver.log
    assert "Authorization" not in request.headers and "s3cr3t" not in str(request.headers)


def test_bad_arguments_exit_2_with_a_clear_message(ws: Workspace, bucket: str) -> None:
    ws.job(bucket)
    (ws.jobs / "broken.yaml").write_text("source: {paths: [relative]}\n")
    for args in (
        ["upload"],
        ["pipeline"],
        ["verify"],
        ["explain"],
        ["retry"],
        ["retry", "--job", "lab", "--all"],
        ["retry", "--session-id", "x"],
    ):
        assert ws.run(*args).returncode == 2, args
    conflict = ws.run("retry", "--job", "lab", "--all")
    assert "not allowed with argument" in conflict.stderr
    for command in ("upload", "pipeline", "verify"):
        unknown = ws.run(command, "nope")
        assert unknown.returncode == 2
        assert f"unknown job 'nope': no such job in {ws.jobs} (jobs: lab)" in unknown.stderr
    broken = ws.run("upload", "broken")
    assert broken.returncode == 2 and "job 'broken' has errors:" in broken.stderr
    assert "source.paths.0: 'relative' is not an absolute path" in broken.stderr
    assert "unknown job 'nope'" in ws.run("retry", "--job", "nope").stderr
    assert "there is no session 42" in ws.run("retry", "--session-id", "42").stderr


# --- the progress bar ----------------------------------------------------------------------


def run_in_pty(ws: Workspace, *args: str) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as stdout and stderr; (status, all output)."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uploaderd", *args, "-c", str(ws.config)],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env=env,
    )
    os.close(terminal)
    chunks = []
    with contextlib.suppress(OSError):  # EIO once the child closed the terminal
        while chunk := os.read(controller, 65536):
            chunks.append(chunk)
    os.close(controller)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


def test_upload_on_a_terminal_draws_a_bar_with_files_and_bytes(ws: Workspace, bucket: str) -> None:
    ws.job(bucket)
    for index in range(3):
        ws.write(f"f{index}.bin", bytes(1000))
    status, output = run_in_pty(ws, "upload", "lab")
    assert status == 0, output
    assert ESC in output, "a terminal gets a live bar"
    assert "3/3 files" in output
    assert "2.9 KiB/2.9 KiB" in output, output


def test_no_progress_on_a_terminal_writes_no_control_sequences(ws: Workspace, bucket: str) -> None:
    ws.job(bucket)
    ws.write("a.txt", b"alpha")
    status, output = run_in_pty(ws, "upload", "lab", "--no-progress")
    assert status == 0, output
    assert ESC not in output and "1 uploaded, 0 failed" in output


def test_commands_exit_3_when_the_database_is_unreachable(tmp_path: Path) -> None:
    ws = Workspace(
        tmp_path, f"postgresql://uploaderd@127.0.0.1:{free_port()}/x", "http://127.0.0.1:9"
    )
    ws.job("lab-raw")
    for args in (
        ["upload", "lab"],
        ["retry", "--all"],
        ["trigger", "--session-id", "1"],
        ["pipeline", "lab"],
        ["verify", "lab"],
        ["explain", str(ws.data / "a.txt")],
    ):
        result = ws.run(*args)
        assert result.returncode == 3, (args, result.stderr)
        assert "cannot connect to PostgreSQL" in result.stderr
