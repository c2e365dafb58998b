"""What an operator sees (issue 11): byte progress, unsent registrations, journald priorities,
exit statuses and ``--json`` of every command, ad-hoc uploads and ``import-config``. Each
command is a real ``python -m uploaderd`` process on a real PostgreSQL and the moto server.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from test_e2e_commands import Workspace as CommandsWorkspace

from devstack import DaemonProcess, S3Server, wait_for
from uploaderd import cli
from uploaderd.config.jobpolicy import JobPolicy
from uploaderd.config.settings import S3Settings, load_jobs
from uploaderd.ledger.store import Ledger

Sql = Callable[..., list[tuple[Any, ...]]]
MiB = 1024 * 1024
FAST_RETRY = {"max_attempts": 2, "backoff": {"initial": "0.2s", "max": "0.2s", "jitter": False}}


class Workspace(CommandsWorkspace):
    """test_e2e_commands' workspace, whose commands may also get environment variables."""

    def __init__(self, tmp: Path, dsn: str, endpoint_url: str) -> None:
        super().__init__(tmp, dsn, endpoint_url)
        self.dsn = dsn

    def run(
        self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "uploaderd", *args, "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=cwd,
            env={**os.environ, **(env or {})},
        )


@pytest.fixture
def ws(tmp_path: Path, migrated_dsn: str, s3_server: S3Server) -> Workspace:
    return Workspace(tmp_path, migrated_dsn, s3_server.endpoint_url)


def ok(result: subprocess.CompletedProcess[str], status: int = 0) -> str:
    assert result.returncode == status, (result.stdout, result.stderr)
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str], status: int = 0) -> Any:
    return json.loads(ok(result, status))


def trigger_job(ws: Workspace, bucket: str, httpserver: HTTPServer, **extra: Any) -> None:
    ws.job(
        bucket,
        trigger={"url": httpserver.url_for("/register"), "schedule": {"interval": "1h"}},
        retry=FAST_RETRY,
        **extra,
    )


# --- 1. progress ----------------------------------------------------------------------------


def test_a_multipart_file_shows_byte_progress_in_periodic_stats_lines(
    ws: Workspace, bucket: str
) -> None:
    # 64 MiB at 16 MiB/s: four 16 MiB parts over about three seconds.
    ws.job(bucket, destination={"bucket": bucket, "key": "lab/${relpath}", "bandwidth": "16MiB/s"})
    ws.write("big.bin", os.urandom(64 * MiB))
    out = ok(ws.run("upload", "lab", "--stats", "0.3s"))
    stats = [line for line in out.splitlines() if line.startswith("stats: ")]
    sent = [
        float(m.group(1))
        for line in stats
        if (m := re.match(r"stats: ([\d.]+) MiB/64\.0 MiB \(\d+%\), ", line)) and "0/1 file" in line
    ]
    assert any(0 < mib < 64 for mib in sent), stats  # bytes moved before the file ended
    assert sent == sorted(sent), "bytes only grow"
    assert any("uploading big.bin (" in line and "MiB/s" in line for line in stats), stats
    assert stats[-1].startswith("stats: 64.0 MiB/64.0 MiB (100%)") and "1/1 file" in stats[-1]
    assert "MB/s" not in out, "binary units only"


# --- 2. registrations -----------------------------------------------------------------------


def test_unsent_registrations_show_in_status_and_the_next_pipeline_sends_them(
    ws: Workspace, bucket: str, httpserver: HTTPServer
) -> None:
    trigger_job(ws, bucket, httpserver)
    ws.write("a.txt", b"alpha")
    httpserver.expect_oneshot_request("/register").respond_with_data("busy", status=503)
    first = ok(ws.run("pipeline", "lab"), 1)
    assert re.search(r"registration \d+: not sent \(HTTP 503\): HTTP 503; queued", first)
    table = ok(ws.run("status"))  # pending: not a failure yet
    assert "unsent registrations:\n  lab: 1 pending (next attempt in" in table
    assert "`uploaderd trigger --job lab --pending` lists and sends them" in table
    listed = as_json(ws.run("trigger", "--job", "lab", "--pending", "--dry-run", "--json"))
    assert [(r["state"], r["http_status"]) for r in listed["registrations"]] == [("pending", 503)]

    httpserver.expect_oneshot_request("/register").respond_with_data("busy", status=503)
    wait_for(lambda: ws.run("pipeline", "lab").returncode == 1, message="second attempt")
    failed = ws.run("status", "--json")
    assert failed.returncode == 1, "a failed registration fails status, as a failed file does"
    assert json.loads(failed.stdout)["jobs"]["lab"]["registrations"]["failed"] == 1
    assert "lab: 1 failed" in ok(ws.run("status"), 1)

    httpserver.expect_oneshot_request("/register").respond_with_data("ok")
    resent = ok(ws.run("trigger", "--job", "lab", "--pending"))
    assert re.search(r"registration \d+: sent \(HTTP 200\)", resent)
    report = as_json(ws.run("status", "--json"))
    assert report["jobs"]["lab"]["registrations"]["pending"] == 0
    assert "unsent registrations" not in ok(ws.run("status"))
    assert len(httpserver.log) == 3


def test_pipeline_sends_a_disabled_jobs_registrations_refused_earlier(
    ws: Workspace, bucket: str, httpserver: HTTPServer
) -> None:
    trigger_job(ws, bucket, httpserver, enabled=False)
    ws.write("a.txt", b"alpha")
    httpserver.expect_oneshot_request("/register").respond_with_data("busy", status=503)
    ok(ws.run("pipeline", "lab"), 1)
    httpserver.expect_oneshot_request("/register").respond_with_data("ok")
    again = wait_for(
        lambda: (r := ws.run("pipeline", "lab")).returncode == 0 and r,
        message="the retry coming due",
    )
    assert "job lab: nothing new to upload" in again.stdout
    assert re.search(r"registration \d+: sent \(HTTP 200\)", again.stdout)
    status = ok(ws.run("status"))
    assert "disabled (enabled: false;" in status and status.rstrip().endswith(": lab")


def test_a_missing_secret_is_a_configuration_error(
    ws: Workspace, bucket: str, httpserver: HTTPServer
) -> None:
    trigger_job(ws, bucket, httpserver)
    (ws.jobs / "lab.yaml").write_text(
        (ws.jobs / "lab.yaml")
        .read_text()
        .replace(
            "schedule:", "headers: {Authorization: 'Bearer ${env:LAB_TOKEN_UNSET}'}\n  schedule:"
        )
    )
    ws.write("a.txt", b"alpha")
    result = ws.run("upload", "lab")
    assert result.returncode == 2, result.stdout
    assert (
        "not sent: configuration error: header Authorization names "
        "${env:LAB_TOKEN_UNSET}, and the environment variable LAB_TOKEN_UNSET is not set "
        "for this process; queued for retry"
    ) in result.stdout
    assert "no response" not in result.stdout and httpserver.log == []


# --- 3. journald ----------------------------------------------------------------------------


def test_daemon_lines_carry_priorities_on_a_journal_stream(
    make_daemon: Callable[..., DaemonProcess], bucket: str, tmp_path: Path
) -> None:
    daemon = make_daemon(log={"level": "info", "format": "text"})
    daemon.log_path.touch()
    info = daemon.log_path.stat()
    daemon.extra_env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"alpha")
    daemon.write_job(
        "lab", {"source": {"paths": [str(data)], "settle": 0}, "destination": {"bucket": bucket}}
    )
    daemon.write_job(
        "gone",
        {
            "source": {"paths": [str(data)], "settle": 0},
            "destination": {"bucket": "no-such-bucket-here"},
            "retry": {"max_attempts": 1},
        },
    )
    daemon.start()
    wait_for(
        lambda: (
            "<6>INFO uploaderd.activity: job lab: uploaded a.txt as "
            f"s3://{bucket}/lab/a.txt (5 B in" in daemon.log()
        ),
        timeout=30,
        message="the upload's info line",
    )
    wait_for(
        lambda: (
            "<4>WARNING uploaderd.activity: job gone: attempt 1 of a.txt to "
            "s3://no-such-bucket-here/gone/a.txt failed after" in daemon.log()
        ),
        timeout=30,
        message="the failed attempt's warning",
    )
    (daemon.jobs_dir / "gone.yaml").unlink()
    daemon.write_job(
        "lab",
        {
            "source": {"paths": [str(data)], "settle": 0},
            "destination": {"bucket": bucket},
            "enabled": False,
        },
    )
    daemon.signal(signal.SIGHUP)
    wait_for(
        lambda: (
            "<6>INFO uploaderd.daemon.service: job gone: removed" in daemon.log()
            and "<6>INFO uploaderd.daemon.service: job lab: disabled (enabled: false)"
            in daemon.log()
        ),
        timeout=30,
        message="reload lines per job",
    )
    assert daemon.stop() == 0
    lines = daemon.log().splitlines()
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), [
        line for line in lines if not re.match(r"<[2-7]>", line)
    ]
    assert "<6>INFO uploaderd.daemon.service: job lab: added:" in daemon.log()


# --- 4. the command line --------------------------------------------------------------------


def test_unknown_jobs_and_sessions_exit_2_and_config_goes_before_the_command(
    ws: Workspace, bucket: str
) -> None:
    ws.job(bucket)
    for args in (
        ["status", "--job", "nope"],
        ["files", "--job", "nope"],
        ["files", "--session-id", "999"],
    ):
        result = ws.run(*args)
        assert result.returncode == 2, (args, result.stdout)
        assert "unknown job 'nope'" in result.stderr or "no session 999" in result.stderr
    before = subprocess.run(
        [sys.executable, "-m", "uploaderd", "-c", str(ws.config), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert before.returncode == 0, before.stderr
    assert set(json.loads(before.stdout)["jobs"]) == {"lab"}


def test_status_lists_configured_jobs_without_files_and_disabled_ones(
    ws: Workspace, bucket: str
) -> None:
    ws.job(bucket)
    ws.job(bucket, name="manual", enabled=False)
    report = as_json(ws.run("status", "--json"))
    assert {name: job["enabled"] for name, job in report["jobs"].items()} == {
        "lab": True,
        "manual": False,
    }
    assert report["jobs"]["lab"]["registrations"] == {
        "pending": 0,
        "failed": 0,
        "oldest_unsent_seconds": None,
        "next_attempt_in": None,
    }
    table = ok(ws.run("status"))
    assert [line.split()[0] for line in table.splitlines()[1:3]] == ["lab", "manual"]


def test_status_names_job_files_not_loaded_and_exits_1(ws: Workspace, bucket: str) -> None:
    """Issue 25: the daemon logged `typo.yaml:3: source.setle: unknown key`, and `status`
    listed the other jobs and exited 0."""
    ws.job(bucket)
    typo = ws.jobs / "typo.yaml"
    typo.write_text(f"destination:\n  bucket: {bucket}\nsource:\n  setle: 5s\n  paths: [/data]\n")
    text = ws.run("status")
    assert text.returncode == 1, text.stderr
    assert "job files not loaded" in text.stdout
    assert f"  {typo}:4: source.setle: unknown key" in text.stdout
    report = as_json(ws.run("status", "--json"), 1)
    [problem] = report["job_files_not_loaded"]
    assert (problem["file"], problem["line"], problem["key"]) == (str(typo), 4, "source.setle")
    assert ok(ws.run("status", "--job", "lab")).count("not loaded") == 0  # another job's file
    typo.unlink()
    assert "not loaded" not in ok(ws.run("status"))


def test_status_exits_1_for_a_bucket_paused_by_a_configuration_error(
    ws: Workspace, bucket: str
) -> None:
    """Issue 25: a missing bucket looked like an outage: the file stayed pending, retried
    for ever, and `status` exited 0."""
    ws.job(bucket)
    ledger = Ledger(ws.dsn).connect()
    try:
        outage = "S3: Could not connect to the endpoint URL"
        ledger.set_destination_health(
            "lab", "host-a", "upload", failures=5, pause_seconds=60, error=outage
        )
        assert "paused until" in ok(ws.run("status")), "an outage: the daemon probes, exit 0"
        wrong = "S3 NoSuchBucket: The specified bucket does not exist"
        ledger.set_destination_health(
            "lab", "host-a", "upload", failures=1, pause_seconds=60, error=wrong
        )
    finally:
        ledger.close()
    out = ok(ws.run("status"), 1)
    assert f"after 1 failure: {wrong}: a configuration error (the bucket, the credentials" in out


def test_every_reporting_command_answers_in_json(
    ws: Workspace, bucket: str, httpserver: HTTPServer
) -> None:
    trigger_job(ws, bucket, httpserver)
    ws.write("a.txt", b"alpha")
    httpserver.expect_request("/register").respond_with_data("ok")
    upload = as_json(ws.run("upload", "lab", "--json"))
    assert upload["upload"]["found"] == {"complete": 1, "known": 0, "unsettled": 0}
    assert (upload["upload"]["queued"], upload["upload"]["run"]["uploaded"]) == (1, 1)
    assert upload["sessions"] == [{"session": upload["upload"]["session"], "state": "complete"}]
    assert [r["state"] for r in upload["registrations"]] == ["sent"]
    assert upload["exit_status"] == 0
    session = upload["upload"]["session"]
    dry = as_json(ws.run("upload", "lab", "--dry-run", "--json"))
    assert dry["upload"]["would_queue"] == []
    retry = as_json(ws.run("retry", "--job", "lab", "--auto-retry", "--json"))
    assert (retry["requeued_files"], retry["run"]["uploaded"]) == (0, 0)
    trigger = as_json(ws.run("trigger", "--session-id", str(session), "--force", "--json"))
    assert [r["session"] for r in trigger["registrations"]] == [session]
    pipeline = as_json(ws.run("pipeline", "lab", "--json"))
    assert pipeline["upload"]["found"]["known"] == 1 and pipeline["exit_status"] == 0
    assert as_json(ws.run("migrate", "--json")) == {"applied": []}
    check = as_json(ws.run("check", "--json"))
    assert (check["valid_jobs"], check["problems"]) == (1, 0)
    assert {"level", "subject", "message"} == set(check["findings"][0])
    files = as_json(ws.run("files", "--json"))
    assert [f["relpath"] for f in files] == ["a.txt"]
    assert as_json(ws.run("verify", "lab", "--json"))["problems"] == []
    explained = as_json(ws.run("explain", str(ws.data / "a.txt"), "--json"))
    assert explained["why"][0].startswith("uploaded at")
    assert as_json(ws.run("prune", "--dry-run", "--json"))["dry_run"] is True


def test_prune_says_its_retention_and_its_help_the_shortest(ws: Workspace) -> None:
    """Issue 25: `prune --older-than 0s` said "expected at least 1h", which --help did not;
    `prune --dry-run` did not say which retention it used."""
    assert "at least 1h" in " ".join(ok(ws.run("prune", "--help")).split())
    dry = ok(ws.run("prune", "--dry-run")).splitlines()
    assert (
        dry[0] == "retention (ledger.retention): versions older than 90d, attempts older than 30d"
    )
    chosen = ok(ws.run("prune", "--dry-run", "--older-than", "36h")).splitlines()
    assert chosen[0] == "retention (--older-than): versions older than 36h, attempts older than 36h"
    too_short = ws.run("prune", "--older-than", "0s")
    assert too_short.returncode == 2 and "expected at least 1h, or forever" in too_short.stderr


def test_check_connect_counts_what_it_could_not_reach(ws: Workspace) -> None:
    ws.job("no-such-bucket-for-check")
    result = ws.run("check", "--connect")
    assert result.returncode == 3
    assert result.stdout.splitlines()[-1] == "1 valid job, 0 problems, 1 unreachable"


def test_a_one_shot_success_clears_the_pause_this_host_recorded(ws: Workspace, bucket: str) -> None:
    ws.job(bucket)
    ws.write("a.txt", b"alpha")
    ledger = Ledger(ws.dsn).connect()
    ledger.set_destination_health(
        "lab", socket.gethostname(), "upload", failures=5, pause_seconds=600, error="S3 SlowDown"
    )
    ledger.close()
    assert as_json(ws.run("status", "--json"))["paused_destinations"]
    ok(ws.run("upload", "lab"))
    assert as_json(ws.run("status", "--json"))["paused_destinations"] == []


def test_every_option_has_help_with_an_example_and_every_command_examples() -> None:
    parser = cli.parser({})
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        assert sub.epilog and sub.epilog.startswith("examples:\n  uploaderd "), name
        for action in sub._actions:
            if action.dest in ("help", "config"):
                continue
            assert action.help and "e.g." in action.help, (name, action.dest)


# --- 5. the old tool's habits ---------------------------------------------------------------


def test_an_ad_hoc_upload_needs_no_job_file_and_is_a_session_of_its_own(
    ws: Workspace, s3_server: S3Server, bucket: str, sql: Sql
) -> None:
    ws.write("run42/a.tif", b"tiff")
    ws.write("run42/notes.txt", b"skip me")
    args = (
        "upload",
        "--source",
        str(ws.data / "run42"),
        "--to",
        f"s3://{bucket}/raw/run42",
        "--include",
        "**/*.tif",
        "--workers",
        "1",
        "--bandwidth",
        "10MiB/s",
    )
    out = ok(ws.run(*args))
    assert "1 uploaded, 0 failed" in out
    listing = s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    assert [o["Key"] for o in listing] == ["raw/run42/a.tif"]
    [(job, origin)] = sql("SELECT job, origin FROM sessions")
    assert job.startswith("adhoc-run42-") and origin == "upload"
    assert "nothing new to upload" in ok(ws.run(*args))
    missing = ws.run(
        "upload", "--source", str(ws.data), "--to", f"s3://missing-{os.getpid()}-{bucket[-12:]}/x"
    )
    assert missing.returncode == 2 and "nothing was queued" in missing.stderr
    assert ws.run("upload", "--source", str(ws.data)).returncode == 2


OLD_CONFIG = {
    "local_directory": "/data/run42",
    "s3_bucket": "lab-raw",
    "s3_prefix": "run42/",
    "aws_access_key_id": "AKIAEXAMPLEKEYID0000",
    "aws_secret_access_key": "s3cr3t/EXAMPLE",
    "aws_region": "eu-west-1",
    "max_workers": 8,
    "supported_extensions": [".tif", ".json"],
    "max_retries": 3,
    "compress_before_upload": True,
}


def test_import_config_writes_the_name_given_and_needs_no_daemon_config(
    ws: Workspace, tmp_path: Path
) -> None:
    """Issue 25: --name was dropped (the job took its file's name), and a machine without
    /etc/uploaderd/uploaderd.yaml could not convert a file."""
    old = tmp_path / "run42.json"
    old.write_text(json.dumps({"local_directory": "/data/run42", "s3_bucket": "lab-raw"}))
    target = ws.jobs / "imported.yaml"
    ok(ws.run("import-config", str(old), "--name", "scope-b", "--output", str(target)))
    assert "name: scope-b" in target.read_text()
    jobs = load_jobs(ws.jobs, S3Settings(), JobPolicy(allow_insecure_files=True))
    assert not jobs.problems, jobs.problems
    assert "scope-b" in jobs.jobs and "imported" not in jobs.jobs
    missing = tmp_path / "etc" / "uploaderd.yaml"  # the default config, absent here
    bare = [sys.executable, "-m", "uploaderd", "import-config", str(old)]
    env = {**os.environ, "UPLOADERD_CONFIG": str(missing)}
    converted = subprocess.run(bare, capture_output=True, text=True, env=env, timeout=60)
    assert converted.returncode == 0, converted.stderr
    assert "bucket: lab-raw" in converted.stdout
    named = subprocess.run(
        [*bare, "-c", str(tmp_path / "typo.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert named.returncode == 2 and "typo.yaml" in named.stderr  # a file asked for must exist


def test_import_config_writes_a_job_that_loads_and_never_copies_credentials(
    ws: Workspace, tmp_path: Path
) -> None:
    old = tmp_path / "run42.json"
    old.write_text(json.dumps(OLD_CONFIG))
    printed = ws.run("import-config", str(old))
    assert printed.returncode == 1, "an unknown key is a problem found"
    assert "AKIA" not in printed.stdout and "s3cr3t" not in printed.stdout
    assert "not imported: " in printed.stderr and "'compress_before_upload'" in printed.stderr
    assert "credentials (aws_access_key_id, aws_secret_access_key) are not copied" in (
        printed.stderr
    )
    assert "LoadCredential=" in printed.stderr and "workers: 8" in printed.stderr
    target = ws.jobs / "run42.yaml"
    written = ws.run("import-config", str(old), "--output", str(target))
    assert written.returncode == 1 and target.read_text() == printed.stdout
    assert ws.run("import-config", str(old), "--output", str(target)).returncode == 2
    jobs = load_jobs(ws.jobs, S3Settings(), JobPolicy(allow_insecure_files=True))
    assert not jobs.problems, jobs.problems
    job = jobs.jobs["run42"]
    assert (job.source.paths, job.source.filter.include) == (
        (Path("/data/run42"),),
        ("**/*.tif", "**/*.json"),
    )
    assert (job.destination.bucket, job.destination.s3.region) == ("lab-raw", "eu-west-1")
    assert job.destination.key.text == "run42/${relpath}"
    assert job.retry.max_attempts == 4
    clean = {k: v for k, v in OLD_CONFIG.items() if k != "compress_before_upload"}
    old.write_text(json.dumps(clean))
    assert ws.run("import-config", str(old)).returncode == 0
