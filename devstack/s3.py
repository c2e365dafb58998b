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
from typing import IO, TYPE_CHECKING, NamedTuple

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
    wait_for,
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
            wait_for(self._answers, START_TIMEOUT, message=f"S3 server at {self.endpoint_url}")
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

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (the benchmarks count its CPU)."""
        return self._proc.pid if self._proc is not None else None

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
    keep_data = False  # True: a restart serves the objects of before (metadata is lost)

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
        if self._proc is None and not (self.keep_data and (self.base_dir / "data").is_dir()):
            shutil.rmtree(self.base_dir / "data", ignore_errors=True)
            (self.base_dir / "data").mkdir(parents=True)
            # An empty config of its own keeps rclone from reading the user's remotes.
            (self.base_dir / "rclone.conf").touch()
        super().start()


_WEED_SERVERS = ("master", "volume", "filer", "s3")
_PROBE_BUCKET = "devstack-probe"
_MIB = 1 << 20


class Volumes(NamedTuple):
    """SeaweedFS's volume count, as its master sees it (``GET /dir/status``)."""

    total: int  # the budget: -volume.max of the one volume server
    free: int  # not yet grown
    by_collection: dict[str, int]  # writable volumes of each collection (a bucket's name)


class SeaweedFSServer(S3Server):
    """``weed server -s3`` (SeaweedFS): master, volume server, filer and S3 gateway, one process.

    A production object store, and the one docker-compose.yml runs. Its data
    directory is emptied on every start, so each start serves no buckets. Every
    port is chosen here and passed explicitly: weed's default gRPC port is the
    HTTP port + 10000, which nothing guarantees to be free.

    Each bucket is a collection with volumes of its own, and a PutObject into a bucket
    whose collection cannot get a volume answers InternalError. Left to its defaults weed
    grows 7 volumes for a new collection and allows as many as fit, at the volume size
    limit each, in the free disk space (``-volume.max=0``): 34 on a 2.4 GB tmpfs, all taken
    by the fifth bucket. So a new bucket grows one volume here, and the number of volumes
    is a fixed count (``max_volumes``), not a function of free disk: volumes are sparse
    (not preallocated; an empty one takes about 12 KiB), so the disk they use is what is
    written to them. ``create_bucket`` refuses, naming the count, when none is left.
    """

    verifies_checksums = True
    creates_buckets_on_put = True
    ready_path = "/healthz"
    # weed spends 10 s saying goodbye to its master on SIGTERM; the data is throwaway.
    stop_timeout = 2.0
    # Volumes the volume server may hold: one per bucket that was written to, and one more
    # per 64 MB (-master.volumeSizeLimitMB) a bucket holds. A deleted bucket frees its own.
    max_volumes = 256
    # Below this much free space weed makes every volume read-only (-volume.minFreeSpace;
    # its default, 1% of the disk, differs from disk to disk).
    min_free_space = 64 * _MIB
    # What start() wants free under base_dir on top of min_free_space: the data and logs
    # of the run (DevstackError, naming the numbers, when there is less).
    disk_needed = 64 * _MIB

    def __init__(
        self,
        base_dir: Path | None = None,
        port: int | None = None,
        *,
        max_volumes: int | None = None,
        disk_needed: int | None = None,
    ):
        super().__init__(base_dir, port)
        if max_volumes is not None:
            self.max_volumes = max_volumes
        if disk_needed is not None:
            self.disk_needed = disk_needed
        ports = [p for p in free_ports(8) if p != self.port][:7]
        http_ports = dict(zip(_WEED_SERVERS[:3], ports[:3], strict=True))
        self._grpc_ports = dict(zip(_WEED_SERVERS, ports[3:], strict=True))
        self._options = {
            **{f"{name}.port": port for name, port in http_ports.items()},
            **{f"{name}.port.grpc": port for name, port in self._grpc_ports.items()},
        }
        self.master_port = http_ports["master"]

    def _command(self) -> list[str]:
        base = self.base_dir
        return [
            # Logs to stderr (server.log) only, not also to files of its own in TMPDIR.
            find_tool("weed"), "-logtostderr", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={base / 'data'}", "-master.telemetry=false",
            # Each bucket is a collection of its own volumes: few, small and sparse ones.
            "-master.volumePreallocate=false", "-master.volumeSizeLimitMB=64",
            f"-volume.max={self.max_volumes}",
            f"-volume.minFreeSpace={self.min_free_space // _MIB}MiB",
            *(f"-{name}={port}" for name, port in self._options.items()),
            "-s3", f"-s3.port={self.port}", f"-s3.config={base / 's3.json'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.localSocket={base / 's3.sock'}", f"-filer.localSocket={base / 'filer.sock'}",
        ]  # fmt: skip

    def _environment(self) -> dict[str, str]:
        return os.environ | {
            # Whatever temporary files weed makes go with its directory.
            "TMPDIR": str(self.base_dir),
            # master.toml's [master.volume_growth] copy_1 (7): volumes a new collection grows.
            # The environment outranks any master.toml weed finds in ~/.seaweedfs or /etc.
            "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1",
        }

    def _ready(self, status: int) -> bool:
        return status == 200

    def _write_identity(self) -> None:
        identity = {
            "name": "uploaderd-dev",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (self.base_dir / "s3.json").write_text(json.dumps({"identities": [identity]}))

    def _check_free_space(self) -> None:
        """DevstackError, naming the directory and the numbers, if the disk is too small."""
        free = shutil.disk_usage(self.base_dir).free
        needed = self.disk_needed + self.min_free_space
        if free < needed:
            where = f"TMPDIR ({self.base_dir.parent})" if self._owns_dir else str(self.base_dir)
            raise DevstackError(
                f"{where} has {free // _MIB} MiB free; SeaweedFS needs {needed // _MIB} MiB"
                f" there: {self.disk_needed // _MIB} MiB for its data and log, and"
                f" {self.min_free_space // _MIB} MiB below which it makes every volume"
                " read-only (then every PutObject answers InternalError)"
            )

    def volumes(self) -> Volumes:
        """The master's count of volumes: the budget, the free ones and those of each bucket."""
        conn = http.client.HTTPConnection("127.0.0.1", self.master_port, timeout=5)
        try:
            conn.request("GET", "/dir/status")
            topology = json.loads(conn.getresponse().read())["Topology"]
        finally:
            conn.close()
        return Volumes(
            total=int(topology["Max"]),
            free=int(topology["Free"]),
            by_collection={
                layout["collection"]: len(layout.get("writables") or [])
                for layout in topology.get("Layouts") or []
            },
        )

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name``; DevstackError if no volume is left for its objects."""
        volumes = self.volumes()
        if volumes.total == 0:
            log = tail(self.log_file)
            raise DevstackError(f"SeaweedFS's master knows no volume server:\n{log}")
        if volumes.free < 1:
            raise DevstackError(
                f"SeaweedFS has no volume left for bucket {name}: all {volumes.total}"
                f" (max_volumes) are taken, {len(volumes.by_collection)} collections hold"
                " writable ones; delete buckets or raise max_volumes"
            )
        super().create_bucket(name)

    def _accepts_writes(self) -> bool:
        """Whether an object can be written: the volume server has joined the master.

        Not an empty one: the filer keeps that without asking the master for a volume,
        which it can do seconds before the volume server has joined (after the master's
        election at start, or the volume server's retry once a heartbeat was refused).
        """
        client = self.client()
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=_PROBE_BUCKET)
            client.put_object(Bucket=_PROBE_BUCKET, Key="probe", Body=b"probe")
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
        self._check_free_space()
        self._write_identity()
        super().start()
        try:
            wait_for(self._accepts_writes, START_TIMEOUT, message=f"writes to {self.endpoint_url}")
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
