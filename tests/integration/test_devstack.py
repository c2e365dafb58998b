"""The local services the other tests stand on behave as those tests assume, and the demo
and ``services`` commands leave nothing running however they are stopped."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psycopg2
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from devstack import PostgresCluster, S3Server, wait_for

REPO = Path(__file__).parents[2]


def _select_one(dsn: str) -> int:
    with psycopg2.connect(dsn, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        (value,) = cur.fetchone()
    conn.close()
    return int(value)


def test_cluster_answers_stops_and_restarts_on_same_port(
    pg_cluster: PostgresCluster, database_dsn: str
) -> None:
    assert _select_one(database_dsn) == 1

    pg_cluster.stop()
    assert not pg_cluster.is_running()
    with pytest.raises(psycopg2.OperationalError):
        _select_one(database_dsn)
    pg_cluster.stop()  # idempotent

    pg_cluster.start()
    assert pg_cluster.is_running()
    assert _select_one(database_dsn) == 1


def test_drop_database_disconnects_its_clients(pg_cluster: PostgresCluster) -> None:
    dsn = pg_cluster.create_database("test_drop_busy")
    conn = psycopg2.connect(dsn)
    try:
        pg_cluster.drop_database("test_drop_busy")
        with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        conn.close()


def _metadata(server: S3Server, bucket: str, key: str) -> dict[str, str]:
    # rclone returns metadata keys in HTTP canonical case ("Sha256").
    head = server.client().head_object(Bucket=bucket, Key=key)
    return {name.lower(): value for name, value in head["Metadata"].items()}


def test_put_get_with_sha256_metadata(s3_backend: S3Server, backend_bucket: str) -> None:
    body = b"hello uploaderd\n" * 1000
    digest = hashlib.sha256(body).hexdigest()
    client = s3_backend.client()

    client.put_object(Bucket=backend_bucket, Key="a/b.txt", Body=body, Metadata={"sha256": digest})

    assert _metadata(s3_backend, backend_bucket, "a/b.txt") == {"sha256": digest}
    assert client.get_object(Bucket=backend_bucket, Key="a/b.txt")["Body"].read() == body


def test_multipart_upload(s3_backend: S3Server, backend_bucket: str) -> None:
    body = bytes(range(256)) * (11 * 4096)  # 11 MiB: three 5 MiB-or-less parts
    digest = hashlib.sha256(body).hexdigest()
    client = s3_backend.client()
    parts = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)

    client.upload_fileobj(
        io.BytesIO(body),
        backend_bucket,
        "big.bin",
        ExtraArgs={"Metadata": {"sha256": digest}},
        Config=parts,
    )

    assert _metadata(s3_backend, backend_bucket, "big.bin") == {"sha256": digest}
    assert client.get_object(Bucket=backend_bucket, Key="big.bin")["Body"].read() == body


def test_if_none_match_is_honoured_where_the_server_says_so(
    s3_backend: S3Server, backend_bucket: str
) -> None:
    """uploaderd cannot rely on conditional PUTs: rclone ignores them (see devstack's docstring)."""
    client = s3_backend.client()
    client.put_object(Bucket=backend_bucket, Key="k", Body=b"first", IfNoneMatch="*")

    if s3_backend.honours_if_none_match:
        with pytest.raises(ClientError) as refused:
            client.put_object(Bucket=backend_bucket, Key="k", Body=b"second", IfNoneMatch="*")
        assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
        expected = b"first"
    else:
        client.put_object(Bucket=backend_bucket, Key="k", Body=b"second", IfNoneMatch="*")
        expected = b"second"
    assert client.get_object(Bucket=backend_bucket, Key="k")["Body"].read() == expected


def test_a_wrong_sha256_checksum_is_refused_where_the_server_says_so(
    s3_backend: S3Server, backend_bucket: str
) -> None:
    """Only SeaweedFS checks x-amz-checksum-sha256; on the others a wrong one is stored."""
    client = s3_backend.client()
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()

    if s3_backend.verifies_checksums:
        with pytest.raises(ClientError) as refused:
            client.put_object(Bucket=backend_bucket, Key="k", Body=b"data", ChecksumSHA256=wrong)
        assert refused.value.response["Error"]["Code"] == "BadDigest"
        assert client.list_objects_v2(Bucket=backend_bucket).get("KeyCount") == 0
    else:
        client.put_object(Bucket=backend_bucket, Key="k", Body=b"data", ChecksumSHA256=wrong)
        # Stored as sent (a GET may then fail botocore's own check of the stored checksum).
        assert client.head_object(Bucket=backend_bucket, Key="k")["ContentLength"] == 4


# --- python -m devstack demo|services: stopped any way, nothing is left running ----------


def processes_under(directory: Path) -> dict[int, str]:
    """Live processes whose command line names ``directory`` or that work inside it."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")  # fails for zombies, which hold nothing
        except (OSError, UnicodeDecodeError):
            continue
        if str(directory) in cmdline or Path(cwd).is_relative_to(directory):
            found[int(entry.name)] = cmdline
    return found


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: as root the cluster runs as `postgres`, who must enter it.
    path = Path(tempfile.mkdtemp(prefix="uploaderd-devstack-"))
    path.chmod(0o755)
    yield path
    for pid in processes_under(path):  # only if the test failed: leave nothing behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def start_devstack(command: str, directory: Path) -> subprocess.Popen[bytes]:
    """``python -m devstack COMMAND`` as a terminal would run it: its own process group,
    stdout a pipe (``| tee``), stderr to a file."""
    with (directory / "stderr.log").open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "devstack", command, "--dir", str(directory)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )


def read_until(stream: IO[bytes], marker: bytes, timeout: float = 120.0) -> bytes:
    """What ``stream`` says up to ``marker`` (read unbuffered: select sees every byte)."""
    seen = b""

    def arrived() -> bool:
        nonlocal seen
        if select.select([stream], [], [], 0.2)[0]:
            chunk = os.read(stream.fileno(), 65536)
            assert chunk, f"stdout closed before {marker!r}:\n{seen.decode()}"
            seen += chunk
        return marker in seen

    wait_for(arrived, timeout=timeout, message=f"{marker!r} on stdout")
    return seen


def metrics_answer(config: Path) -> bool:
    listen = re.search(rb"listen: 127\.0\.0\.1:(\d+)", config.read_bytes())
    assert listen is not None
    port = int(listen.group(1))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def test_demo_interrupted_through_a_closed_pipe_leaves_no_process(demo_dir: Path) -> None:
    """``./dev demo | tee demo.log`` and Ctrl-C: tee is gone before the demo prints again."""
    demo = start_devstack("demo", demo_dir)
    banner = read_until(demo.stdout, b"UPLOADERD_CONFIG=")  # type: ignore[arg-type]
    found = re.search(rb"S3 at (http://127\.0\.0\.1:\d+)", banner)
    assert found is not None, banner
    endpoint = found.group(1).decode()
    assert f"AWS_ENDPOINT_URL={endpoint}".encode() in banner
    assert f"UPLOADERD_CONFIG={demo_dir / 'uploaderd.yaml'}".encode() in banner
    wait_for(
        lambda: metrics_answer(demo_dir / "uploaderd.yaml"),
        timeout=60,
        message="the daemon's metrics",
    )
    running = processes_under(demo_dir).values()
    assert any(" uploaderd run " in cmd for cmd in running), running
    assert any("postgres" in cmd for cmd in running) and any(
        "moto_server" in cmd for cmd in running
    ), running

    demo.stdout.close()  # type: ignore[union-attr]
    os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's foreground group

    assert demo.wait(timeout=60) == 130
    wait_for(lambda: not processes_under(demo_dir), timeout=30, message="no process left")
    assert "Traceback" not in (demo_dir / "stderr.log").read_text()


def test_services_stop_when_the_terminal_hangs_up(demo_dir: Path) -> None:
    services = start_devstack("services", demo_dir)
    exports = read_until(services.stdout, b"Ctrl-C stops both")  # type: ignore[arg-type]
    assert b"export AWS_ENDPOINT_URL=http://127.0.0.1:" in exports
    running = processes_under(demo_dir).values()
    assert any("postgres" in cmd for cmd in running) and any(
        "moto_server" in cmd for cmd in running
    ), running

    services.stdout.close()  # type: ignore[union-attr]  # the terminal is gone ...
    os.killpg(services.pid, signal.SIGHUP)  # ... and its foreground group hears of it

    assert services.wait(timeout=60) == 130
    wait_for(lambda: not processes_under(demo_dir), timeout=30, message="no process left")
    assert "Traceback" not in (demo_dir / "stderr.log").read_text()


def test_the_demo_shows_its_objects_names_kept_jobs_and_says_all_stopped(demo_dir: Path) -> None:
    """Issue 25: the banner offered `aws s3 ls`, which the demo does not install; it ran job
    files left from an earlier demo without a word; its shutdown never said that PostgreSQL
    and S3 had stopped."""
    (demo_dir / "jobs.d").mkdir()
    (demo_dir / "earlier").mkdir()
    kept = f"source:\n  paths: [{demo_dir / 'earlier'}]\ndestination:\n  bucket: demo\n"
    (demo_dir / "jobs.d" / "earlier.yaml").write_text(kept)
    demo = start_devstack("demo", demo_dir)
    banner = read_until(demo.stdout, b"Ctrl-C stops the daemon").decode()  # type: ignore[arg-type]
    assert "aws s3" not in banner and "python -m devstack objects" in banner
    assert "from an earlier demo: earlier.yaml" in banner
    exports = next(line for line in banner.splitlines() if "AWS_ENDPOINT_URL=" in line)
    env = dict(item.split("=", 1) for item in shlex.split(exports)[1:])
    (demo_dir / "inbox" / "hello.txt").write_bytes(b"hello")

    def listed() -> str:
        argv = [sys.executable, "-m", "devstack", "objects"]
        done = subprocess.run(
            argv, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    wait_for(lambda: "demo/hello.txt" in listed(), timeout=60, message="the object listed")
    assert "1 object in s3://demo/" in listed()
    os.killpg(demo.pid, signal.SIGINT)
    assert demo.wait(timeout=60) == 130
    said = demo.stdout.read().decode()  # type: ignore[union-attr]
    assert said.rstrip().endswith(f"PostgreSQL and S3 stopped; the demo's files stay in {demo_dir}")
    wait_for(lambda: not processes_under(demo_dir), timeout=30, message="no process left")
