"""The ``uploaderd`` command as a user runs it: output and exit status of each command."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from devstack import PostgresCluster, S3Server, free_port
from uploaderd import __version__
from uploaderd.ledger import schema


def uploaderd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "uploaderd", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def write_config(tmp_path: Path, dsn: str, endpoint_url: str = "http://127.0.0.1:9") -> Path:
    jobs = tmp_path / "jobs.d"
    jobs.mkdir(exist_ok=True)
    config = tmp_path / "uploaderd.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": {"dsn": dsn},
                "jobs_dir": str(jobs),
                "s3": {"endpoint_url": endpoint_url, "region": "us-east-1"},
            }
        )
    )
    return config


def write_lab_job(tmp_path: Path, bucket: str) -> Path:
    """jobs.d/lab.yaml watching ``tmp_path/data`` into ``bucket``."""
    (tmp_path / "data").mkdir()
    job = tmp_path / "jobs.d" / "lab.yaml"
    job.write_text(f"source: {{paths: [{tmp_path / 'data'}]}}\ndestination: {{bucket: {bucket}}}\n")
    return job


def test_version() -> None:
    result = uploaderd("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"uploaderd {__version__}")


def test_usage_errors_exit_2() -> None:
    assert uploaderd("frobnicate").returncode == 2
    assert uploaderd().returncode == 2


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    result = uploaderd("check", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert f"{tmp_path / 'nope.yaml'}: cannot read" in result.stderr


def test_config_errors_name_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "uploaderd.yaml"
    config.write_text("database:\n  dsn: postgresql://u:hunter2@db/x\nworkers: many\n")
    result = uploaderd("check", "-c", str(config))
    assert result.returncode == 2
    assert f"{config}:2: database.dsn: must not contain a password" in result.stderr
    assert f"{config}:3: workers: expected an integer, got a string ('many')" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_check_reports_every_problem_of_every_job_at_once(tmp_path: Path) -> None:
    config = write_config(tmp_path, "postgresql://127.0.0.1:1/x")
    jobs = tmp_path / "jobs.d"
    (tmp_path / "data").mkdir()
    (jobs / "good.yaml").write_text(
        f"source: {{paths: [{tmp_path / 'data'}]}}\ndestination: {{bucket: lab-raw}}\n"
    )
    (jobs / "bad.yaml").write_text(
        "source:\n  paths: [data]\ndestination:\n  key: '../${relpath}'\n"
    )
    (jobs / "broken.yaml").write_text("source: [unclosed\n")
    (jobs / "ignored.yaml.sample").write_text("not: [valid\n")
    result = uploaderd("check", "-c", str(config))
    assert result.returncode == 2, result.stdout
    lines = result.stdout.splitlines()
    assert f"{jobs / 'bad.yaml'}:2: source.paths.0: 'data' is not an absolute path" in lines
    assert f"{jobs / 'bad.yaml'}:3: destination.bucket: is required (a non-empty string)" in lines
    bad_key = f"{jobs / 'bad.yaml'}:4: destination.key: the key"
    assert any(line.startswith(bad_key) for line in lines)
    assert any(line.startswith(f"{jobs / 'broken.yaml'}:2: invalid YAML") for line in lines)
    assert (
        "ok          job good: 1 directories to watch"
        in result.stdout.replace(" (limit", "\n").splitlines()
    )
    assert lines[-1] == "1 valid job, 4 problems"


def test_env_overrides_config_path_and_dsn(tmp_path: Path, migrated_dsn: str) -> None:
    config = write_config(tmp_path, "postgresql://127.0.0.1:1/unreachable")
    env = {"UPLOADERD_CONFIG": str(config), "UPLOADERD_DATABASE_DSN": migrated_dsn}
    result = uploaderd("status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "jobs": {},
        "paused_destinations": [],
        "open_sessions": [],
        "recent_errors": [],
        "job_files_not_loaded": [],
    }


def test_unreachable_database_exits_3_without_the_password(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"postgresql://uploaderd@127.0.0.1:{free_port()}/x")
    for command in (["status"], ["files"], ["migrate"], ["check", "--connect"]):
        result = uploaderd(*command, "-c", str(config))
        assert result.returncode == 3, (command, result.stdout, result.stderr)
        assert "cannot connect to PostgreSQL" in result.stderr + result.stdout


def test_migrate_then_check_connect_reaches_database_and_bucket(
    tmp_path: Path, database_dsn: str, s3_server: S3Server, bucket: str
) -> None:
    config = write_config(tmp_path, database_dsn, s3_server.endpoint_url)
    write_lab_job(tmp_path, bucket)
    before = uploaderd("check", "--connect", "-c", str(config))
    assert before.returncode == 2 and "run `uploaderd migrate`" in before.stdout
    first = uploaderd("migrate", "-c", str(config))
    expected = "".join(f"applied {m.name}\n" for m in schema.available())
    assert (first.returncode, first.stdout) == (0, expected)
    assert expected.startswith("applied 0001_ledger.sql\napplied 0002_")
    assert uploaderd("migrate", "-c", str(config)).stdout == "schema is up to date\n"
    after = uploaderd("check", "--connect", "-c", str(config))
    assert after.returncode == 0, after.stdout
    assert f"ok          job lab: can write to s3://{bucket}" in after.stdout
    listing = s3_server.client().list_objects_v2(Bucket=bucket)
    assert listing.get("Contents", []) == [], "the probe object is deleted again"


def test_check_connect_reports_a_missing_bucket_as_unreachable(
    tmp_path: Path, migrated_dsn: str, s3_server: S3Server
) -> None:
    config = write_config(tmp_path, migrated_dsn, s3_server.endpoint_url)
    write_lab_job(tmp_path, "not-there")
    result = uploaderd("check", "--connect", "-c", str(config))
    assert result.returncode == 3
    assert "cannot write to s3://not-there: NoSuchBucket" in result.stdout


def test_status_and_files_show_the_ledger(tmp_path: Path, migrated_dsn: str, sql: object) -> None:
    from uploaderd.ledger.store import Ledger, NewVersion

    ledger = Ledger(migrated_dsn).connect()
    ledger.enqueue(
        "lab",
        scope="h",
        host="h",
        bucket="b",
        versions=[
            NewVersion("/d", "a.txt", 5, 1, 1, "k/a.txt", None),
            NewVersion("/d", "b.txt", 7, 1, 2, "", None, error="unsafe key: test"),
        ],
    )
    ledger.close()
    config = write_config(tmp_path, migrated_dsn)
    status = uploaderd("status", "-c", str(config))
    assert status.returncode == 1, "failed files make status exit 1"
    row = status.stdout.splitlines()[1].split()  # job, 6 states, oldest, 2 sizes, last success
    # Issue 25: one BYTES column summed every state; now the queued and the uploaded bytes.
    assert row[:7] == ["lab", "1", "0", "0", "1", "0", "0"] and row[8:] == ["5", "B", "0", "B", "-"]
    assert "lab: b.txt (failed, 0 attempts): unsafe key: test" in status.stdout
    status_json = uploaderd("status", "--json", "-c", str(config))
    assert status_json.stdout, status_json.stderr
    as_json = json.loads(status_json.stdout)
    assert as_json["jobs"]["lab"]["states"] == {"failed": 1, "pending": 1}
    listed = uploaderd("files", "--json", "--state", "pending", "-c", str(config))
    assert listed.returncode == 0, listed.stderr
    files = json.loads(listed.stdout)
    assert [(f["relpath"], f["state"], f["key"]) for f in files] == [
        ("a.txt", "pending", "k/a.txt")
    ]
    table = uploaderd("files", "-c", str(config)).stdout
    assert "b.txt  (unsafe key: test)" in table
    assert uploaderd("files", "--state", "lost", "-c", str(config)).returncode == 2
    none = uploaderd("files", "--state", "uploaded", "--job", "lab", "-c", str(config))
    assert none.stdout == "no file versions in state uploaded of job lab\n"  # not a header


def test_wheel_ships_the_sql(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
        check=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("uploaderd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(root)) for p in (root / "uploaderd").rglob("*.py")}
    assert len(modules) > 50
    assert {
        "uploaderd/sql/queries.sql",
        "uploaderd/sql/migrations/0001_ledger.sql",
    } | modules <= names


def test_status_on_an_unmigrated_database_says_what_to_do(
    tmp_path: Path, pg_cluster: PostgresCluster
) -> None:
    name = f"bare_{os.getpid()}"
    config = write_config(tmp_path, pg_cluster.create_database(name))
    try:
        result = uploaderd("status", "-c", str(config))
    finally:
        pg_cluster.drop_database(name)
    assert result.returncode == 2
    assert "the database has no uploaderd schema" in result.stderr
    assert "run `uploaderd migrate`" in result.stderr and "Traceback" not in result.stderr


def test_run_with_the_metrics_port_taken_is_a_clear_error(
    tmp_path: Path, migrated_dsn: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, migrated_dsn)
        config.write_text(config.read_text() + f"metrics: {{listen: '127.0.0.1:{port}'}}\n")
        result = uploaderd("run", "-c", str(config))
    assert result.returncode == 2
    assert f"metrics.listen: cannot listen on 127.0.0.1:{port}: Address already in use" in (
        result.stderr
    )


@pytest.mark.parametrize("command", ["run", "status"])
def test_commands_refuse_a_broken_daemon_config(tmp_path: Path, command: str) -> None:
    config = tmp_path / "uploaderd.yaml"
    config.write_text("metrics:\n  listen: 0.0.0.0\n")
    result = uploaderd(command, "-c", str(config))
    assert result.returncode == 2
    assert f"{config}:2: metrics.listen: expected host:port" in result.stderr


def test_check_applies_the_job_policy_from_config_and_env(tmp_path: Path) -> None:
    config = write_config(tmp_path, "postgresql://127.0.0.1:1/x")
    config.write_text(config.read_text() + "allowed_buckets: ['lab-*']\n")
    job = write_lab_job(tmp_path, "other")
    refused = uploaderd("check", "-c", str(config))
    assert refused.returncode == 2 and "destination.bucket" in refused.stdout
    job.write_text(job.read_text().replace("other", "lab-raw"))
    job.chmod(0o666)
    insecure = uploaderd("check", "-c", str(config))
    assert insecure.returncode == 2 and "chmod go-w" in insecure.stdout
    allowed = uploaderd("check", "-c", str(config), env={"UPLOADERD_ALLOW_INSECURE_JOB_FILES": "1"})
    assert allowed.returncode == 0, allowed.stdout
