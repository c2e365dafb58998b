"""Local S3 servers, each a subprocess on 127.0.0.1 started empty: moto, rclone, SeaweedFS.

How they differ, and why the suite runs against all three, is in the package docstring.
"""

from __future__ import annotations

import abc
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from devstack.process import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    DevstackError,
    Service,
    find_tool,
    free_port,
    free_ports,
    tail,
    terminate,
    wait_until,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# A fixed pair, so one set of AWS_* variables fits every local server; they guard nothing.
ACCESS_KEY = "uploaderd-dev"
SECRET_KEY = "uploaderd-dev-secret"  # noqa: S105
REGION = "us-east-1"


class S3Server(Service):
    """An S3-compatible server on 127.0.0.1, started empty, as a subprocess.

    Every implementation accepts the same fixed key pair so that one set of
    AWS_* variables works for any of them. The class attributes say what the
    server enforces, for tests whose expectations differ between servers.
    """

    access_key = ACCESS_KEY
    secret_key = SECRET_KEY
    # A second PUT (or multipart completion) with If-None-Match: * is refused (412).
    honours_if_none_match = True
    # A wrong x-amz-checksum-sha256 is refused (BadDigest) instead of stored.
    verifies_checksums = False
    # A PUT into a bucket that does not exist creates it instead of failing NoSuchBucket.
    creates_buckets_on_put = False
    # Where readiness is polled, and how long SIGTERM is given before SIGKILL.
    ready_path = "/"
    stop_timeout = STOP_TIMEOUT

    def __init__(self, base_dir: Path | None = None, port: int | None = None):
        self._owns_dir = base_dir is None
        self.base_dir = (
            Path(tempfile.mkdtemp(prefix="uploaderd-s3-")) if base_dir is None else base_dir
        )
        self.log_file = self.base_dir / "server.log"
        self.port = port if port is not None else free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The command line that serves S3 on ``self.port``."""

    def _environment(self) -> dict[str, str] | None:
        """The server's environment (None: ours)."""
        return None

    def _ready(self, status: int) -> bool:
        """Whether this answer to ``GET ready_path`` means the server is up (any answer does)."""
        return True

    def _answers(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise DevstackError(
                f"{self._command()[0]} exited with {self._proc.returncode}:\n{tail(self.log_file)}"
            )
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", self.ready_path)
            response = conn.getresponse()
            response.read()
        except OSError:
            return False
        finally:
            conn.close()
        return self._ready(response.status)

    def start(self) -> None:
        """Start the server and wait until it answers HTTP."""
        if self._proc is not None:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_file.open("ab")
        self._proc = subprocess.Popen(
            self._command(),
            cwd=self.base_dir,
            env=self._environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(self._answers, START_TIMEOUT, f"S3 server at {self.endpoint_url}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a deadline); idempotent."""
        if self._proc is not None:
            terminate(self._proc, self.stop_timeout)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def client(self) -> S3Client:
        """A boto3 S3 client for this server (path-style, us-east-1)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name``."""
        self.client().create_bucket(Bucket=name)

    def cleanup(self) -> None:
        """Stop the server and delete its directory if this object made it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)


class MotoServer(S3Server):
    """moto's standalone server: in memory, the reference S3 emulation."""

    def _command(self) -> list[str]:
        return [find_tool("moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]


class RcloneS3Server(S3Server):
    """``rclone serve s3`` over a local directory: a second, independent S3 implementation.

    The directory is emptied on every start, so it behaves like moto: each
    start serves no buckets.
    """

    honours_if_none_match = False

    def _command(self) -> list[str]:
        return [
            find_tool("rclone"),
            "serve",
            "s3",
            "--config",
            str(self.base_dir / "rclone.conf"),
            "--addr",
            f"127.0.0.1:{self.port}",
            "--auth-key",
            f"{self.access_key},{self.secret_key}",
            f":local:{self.base_dir / 'data'}",
        ]

    def start(self) -> None:
        if self._proc is None:
            shutil.rmtree(self.base_dir / "data", ignore_errors=True)
            (self.base_dir / "data").mkdir(parents=True)
            # An empty config of its own keeps rclone from reading the user's remotes.
            (self.base_dir / "rclone.conf").touch()
        super().start()


_WEED_SERVERS = ("master", "volume", "filer", "s3")
_PROBE_BUCKET = "devstack-probe"


class SeaweedFSServer(S3Server):
    """``weed server -s3`` (SeaweedFS): master, volume server, filer and S3 gateway, one process.

    A production object store, and the one docker-compose.yml runs. Its data
    directory is emptied on every start, so each start serves no buckets. Every
    port is chosen here and passed explicitly: weed's default gRPC port is the
    HTTP port + 10000, which nothing guarantees to be free.
    """

    verifies_checksums = True
    creates_buckets_on_put = True
    ready_path = "/healthz"
    # weed spends 10 s saying goodbye to its master on SIGTERM; the data is throwaway.
    stop_timeout = 2.0

    def __init__(self, base_dir: Path | None = None, port: int | None = None):
        super().__init__(base_dir, port)
        ports = [p for p in free_ports(8) if p != self.port][:7]
        http_ports = dict(zip(_WEED_SERVERS[:3], ports[:3], strict=True))
        self._grpc_ports = dict(zip(_WEED_SERVERS, ports[3:], strict=True))
        self._options = {
            **{f"{name}.port": port for name, port in http_ports.items()},
            **{f"{name}.port.grpc": port for name, port in self._grpc_ports.items()},
        }

    def _command(self) -> list[str]:
        base = self.base_dir
        return [
            find_tool("weed"), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={base / 'data'}", "-master.telemetry=false",
            # Each bucket is a collection of its own volumes: keep them small and sparse.
            "-master.volumePreallocate=false", "-master.volumeSizeLimitMB=64", "-volume.max=0",
            *(f"-{name}={port}" for name, port in self._options.items()),
            "-s3", f"-s3.port={self.port}", f"-s3.config={base / 's3.json'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.localSocket={base / 's3.sock'}", f"-filer.localSocket={base / 'filer.sock'}",
        ]  # fmt: skip

    def _environment(self) -> dict[str, str]:
        # weed writes its own log files into TMPDIR.
        return os.environ | {"TMPDIR": str(self.base_dir)}

    def _ready(self, status: int) -> bool:
        return status == 200

    def _write_identity(self) -> None:
        identity = {
            "name": "uploaderd-dev",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (self.base_dir / "s3.json").write_text(json.dumps({"identities": [identity]}))

    def _accepts_writes(self) -> bool:
        """Whether an object can be written: the volume server has joined the master."""
        client = self.client()
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=_PROBE_BUCKET)
            client.put_object(Bucket=_PROBE_BUCKET, Key="probe", Body=b"")
            client.delete_object(Bucket=_PROBE_BUCKET, Key="probe")
            client.delete_bucket(Bucket=_PROBE_BUCKET)
        except (ClientError, BotoCoreError):
            return False
        return True

    def start(self) -> None:
        if self._proc is not None:
            return
        shutil.rmtree(self.base_dir / "data", ignore_errors=True)
        (self.base_dir / "data").mkdir(parents=True)
        self._write_identity()
        super().start()
        try:
            wait_until(self._accepts_writes, START_TIMEOUT, f"writes to {self.endpoint_url}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        super().stop()
        # weed also serves gRPC on sockets it names after the ports, always under /tmp.
        for name, port in self._grpc_ports.items():
            Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock").unlink(missing_ok=True)  # noqa: S108


S3_SERVERS: dict[str, type[S3Server]] = {
    "moto": MotoServer,
    "rclone": RcloneS3Server,
    "seaweedfs": SeaweedFSServer,
}
