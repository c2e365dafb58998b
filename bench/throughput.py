"""Throughput of uploaderd against its peers (s5cmd, rclone, aws s3) on one local S3 server.

Why this shape: a throughput figure means little on its own (it depends on the disk, the
CPU and above all the S3 server), so every tool uploads the same files to the same server
in the same run, interleaved repetition by repetition, and the table reports medians and
the ratio of uploaderd's time to each peer's.

uploaderd is measured the way it is used: a daemon already running (started, migrated and
READY=1 over a private NOTIFY_SOCKET, as systemd sees it) and files *moved* into its
watched directory, as instruments do. The clock starts at the first rename and stops when
the ledger shows every version ``uploaded``; the settle time is part of that latency, so
the figure minus the settle time is reported too. Peers are timed from process start to
exit, which includes their start-up (about 0.5 s of Python imports for ``aws``).

The sustained mode (``--sustained-rate``) measures latency instead of throughput: files
renamed in at a steady rate, each one's time from rename to ``uploaded_at`` in the ledger,
reported as p50/p99/max against settle + 0.5 s. uploaderd alone: the peers only copy a
finished batch.

Every measurement is checked by listing the destination prefix: a tool that "finished"
without uploading every file fails the run instead of producing a flattering number.

    .venv/bin/python bench/throughput.py [--s3 rclone moto] [--small 2000] [--medium 200]
        [--sustained-rate 100]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

import psycopg2
import psycopg2.extensions

from devstack import REGION, S3_SERVERS, PostgresCluster, S3Server
from devstack.relay import Relay
from uploaderd.policy.units import parse_size

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

KiB = 1024
MiB = 1024 * 1024
BUCKET = "bench"
POLL_SECONDS = 0.05
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SHUTDOWN_GRACE = 10.0
PEERS = ("s5cmd", "rclone", "aws")
RCLONE_TRANSFERS = 8  # rclone's --transfers when --workers is not given
SUSTAINED_POLL_SECONDS = 0.5  # the ledger keeps each upload's time: polling only watches health
SUSTAINED_MARGIN = 0.5  # the target: close-to-uploaded p99 <= settle + this


class BenchError(RuntimeError):
    """A measurement could not be taken or was wrong; the run stops with its message."""


# --- what is measured ------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """``count`` files of ``size`` bytes each."""

    name: str
    count: int
    size: int

    @property
    def total_bytes(self) -> int:
        return self.count * self.size

    def describe(self) -> str:
        return f"{self.name} {self.count}x{_size_text(self.size)}"


@dataclass(frozen=True)
class Sustained:
    """``rate`` files per second of ``size`` bytes for ``seconds``: an instrument's steady feed."""

    rate: float
    size: int
    seconds: float

    @property
    def workload(self) -> Workload:
        """The files it amounts to, for the listing check."""
        return Workload("sustained", round(self.rate * self.seconds), self.size)

    def describe(self) -> str:
        return f"{self.rate:g}/s x {_size_text(self.size)} for {self.seconds:g}s"


@dataclass(frozen=True)
class Sample:
    """One measurement: wall seconds, and the CPU seconds each party burnt meanwhile.

    On a small machine the CPU split says who the bottleneck is: a single-threaded Python
    process near one CPU second per wall second is saturated.
    """

    seconds: float
    tool_cpu: float
    s3_cpu: float
    db_cpu: float


@dataclass(frozen=True)
class SustainedSample:
    """One sustained run: each file's seconds from its rename to ``uploaded`` in the ledger,
    and the part of them after it was queued (its ``discovered_at``: the settle is over).

    ``late`` is how far the feeder fell behind its own schedule at worst: a feeder that
    could not keep the rate would measure a lighter load than it claims.
    """

    latencies: tuple[float, ...]
    queued: tuple[float, ...]  # discovered_at -> uploaded_at: claim, read, hash, PUT, record
    late: float
    sample: Sample  # first rename to last upload, and the CPU split


@dataclass(frozen=True)
class Latencies:
    """The figures of the sustained table."""

    count: int
    p50: float
    p99: float
    max: float


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least ``fraction`` of all values at or below
    it. No interpolation, so a p99 is always a latency some file really had."""
    if not values or not 0 < fraction <= 1:
        raise ValueError("percentile of no values, or a fraction outside (0, 1]")
    ordered = sorted(values)
    return ordered[math.ceil(fraction * len(ordered)) - 1]


def latencies_of(values: Sequence[float]) -> Latencies:
    return Latencies(len(values), percentile(values, 0.5), percentile(values, 0.99), max(values))


def due_offset(index: int, rate: float) -> float:
    """Seconds after the feed's start at which file ``index`` is due.

    Computed from the index, not by adding a period to the previous due time, so a late
    file delays nobody after it and no rounding accumulates: the schedule does not drift.
    """
    return index / rate


@dataclass
class Results:
    """Every repetition, by (S3 server, tool, workload); sustained runs by S3 server."""

    samples: dict[tuple[str, str, str], list[Sample]] = field(default_factory=dict)
    sustained: dict[str, list[SustainedSample]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # tool -> why

    def add(self, server: str, tool: str, workload: str, sample: Sample) -> None:
        self.samples.setdefault((server, tool, workload), []).append(sample)

    def get(self, server: str, tool: str, workload: str) -> list[Sample]:
        return self.samples.get((server, tool, workload), [])


def median_of(samples: Sequence[Sample], attribute: str) -> float:
    return float(statistics.median(float(getattr(sample, attribute)) for sample in samples))


def _size_text(size: int) -> str:
    if size % MiB == 0:
        return f"{size // MiB}MiB"
    if size % KiB == 0:
        return f"{size // KiB}KiB"
    return f"{size}B"


def make_files(directory: Path, workload: Workload, seed: int) -> list[Path]:
    """Write the workload's files (incompressible bytes, so no store can cheat by compressing).

    The seed only makes file names distinct between repetitions; contents are random.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(workload.count):
        path = directory / f"s{seed}-f{index:06d}.bin"
        with path.open("wb") as out:
            out.write(os.urandom(workload.size))
        paths.append(path)
    return paths


class Feeder:
    """Writes files to a staging directory and renames each into the watched one on a fixed
    schedule, in a thread of its own; records the wall-clock time of every rename.

    Paced on the monotonic clock. The renames are stamped with ``time.time()`` because the
    ledger's ``uploaded_at`` they are compared with is PostgreSQL's wall clock, on this
    same machine. The file's mtime is its write, just before the rename, as for an
    instrument that closes a file and moves it in.
    """

    def __init__(self, staging: Path, target: Path, sustained: Sustained, seed: int) -> None:
        self.staging = staging
        self.target = target
        self.sustained = sustained
        self.seed = seed
        self.renamed: dict[str, float] = {}  # file name -> wall-clock time of its rename
        self.late = 0.0  # the furthest behind schedule a file was written, seconds
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def running(self, wait: float) -> bool:
        """Whether the feed is still going after waiting up to ``wait`` seconds for its end."""
        self._thread.join(wait)
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            self._feed()
        except Exception as exc:  # the measuring thread reports it
            self.error = exc

    def _feed(self) -> None:
        start = time.monotonic()
        for index in range(self.sustained.workload.count):
            wait = start + due_offset(index, self.sustained.rate) - time.monotonic()
            if self._stop.wait(max(0.0, wait)):
                return
            self.late = max(self.late, -wait)
            self._deliver(f"s{self.seed}-f{index:06d}.bin")

    def _deliver(self, name: str) -> None:
        staged = self.staging / name
        with staged.open("wb") as out:
            out.write(os.urandom(self.sustained.size))
        os.rename(staged, self.target / name)
        self.renamed[name] = time.time()


def settle_disk() -> None:
    """Flush dirty pages before a clock starts, so no tool pays for the previous one's writes."""
    os.sync()


# --- processes -------------------------------------------------------------------------------


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int | None) -> float:
    """User+system CPU seconds of a live process, all its threads (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def children_cpu() -> float:
    """CPU seconds of every child we have reaped: a peer's share is the delta around it."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def postgres_cpu(pg: PostgresCluster) -> float:
    """The postmaster and its live children (the daemon's backends among them)."""
    try:
        postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = process_cpu(postmaster)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    total += process_cpu(int(entry.name))
    return total


def server_pid(s3: S3Server) -> int | None:
    """devstack keeps the server's Popen private; its pid is read here for CPU accounting."""
    proc: subprocess.Popen[bytes] | None = getattr(s3, "_proc", None)
    return proc.pid if proc is not None else None


@dataclass(frozen=True)
class CpuMeter:
    """CPU seconds of the tool under test, the S3 server and PostgreSQL over one measurement."""

    tool: Callable[[], float]
    s3: Callable[[], float]
    db: Callable[[], float]

    @contextlib.contextmanager
    def measuring(self) -> Iterator[list[float]]:
        """Yields a list that holds [tool, s3, db] CPU seconds once the block is left."""
        before = (self.tool(), self.s3(), self.db())
        spent: list[float] = []
        yield spent
        after = (self.tool(), self.s3(), self.db())
        spent.extend(b - a for a, b in zip(before, after, strict=True))


def find_tool(name: str) -> str | None:
    """The tool installed next to this interpreter (the venv's bench extra) or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    return shutil.which(name)


def terminate(proc: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGTERM) -> None:
    """Signal the process group of ``proc``; SIGKILL it if it outlives ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_timed(argv: Sequence[str], env: dict[str, str], log: IO[bytes], timeout: float) -> float:
    """Run a peer to completion in its own process group; its wall seconds.

    Its own group so that Ctrl-C or a timeout kills the whole tool (aws spawns no
    children, but rclone and s5cmd are free to) and nothing outlives the benchmark.
    """
    log.write(f"$ {shlex.join(argv)}\n".encode())
    log.flush()
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        returncode = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{Path(argv[0]).name} did not finish within {timeout:.0f}s") from None
    finally:
        terminate(proc, 5.0)
    elapsed = time.perf_counter() - started
    if returncode != 0:
        raise BenchError(f"{shlex.join(argv)} exited with {returncode}; see {log.name}")
    return elapsed


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- the S3 side -----------------------------------------------------------------------------


def count_objects(s3: S3Server, prefix: str) -> int:
    """How many objects the server lists under ``prefix``: the correctness check."""
    paginator = s3.client().get_paginator("list_objects_v2")
    return sum(page.get("KeyCount", 0) for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix))


def delete_prefix(s3: S3Server, prefix: str) -> None:
    """Drop a measurement's objects, so moto's memory and rclone's disk stay bounded."""
    client = s3.client()
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix):
        keys: list[ObjectIdentifierTypeDef] = [
            {"Key": item["Key"]} for item in page.get("Contents", [])
        ]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})


def verify_upload(s3: S3Server, prefix: str, workload: Workload, tool: str) -> None:
    found = count_objects(s3, prefix)
    if found != workload.count:
        raise BenchError(
            f"{tool}: {found} objects under s3://{BUCKET}/{prefix}, expected {workload.count}"
        )


def daemon_package() -> str:
    """The uploaderd package the daemon runs (as it is started: from a directory of its
    own, so PYTHONPATH or the installed package decides), named in the report."""
    done = subprocess.run(
        [sys.executable, "-c", "import uploaderd; print(uploaderd.__file__)"],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return str(Path(done.stdout.strip()).parent)


def credentials_env(s3: Route | S3Server) -> dict[str, str]:
    """The environment every tool runs with: the server's keys, and no user AWS config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    return env | {
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


# --- peers -----------------------------------------------------------------------------------


class Route:
    """Where the tools send their requests: the S3 server itself, or a delaying relay to it.

    In WAN mode (``--wan MS``) every tool, uploaderd included, goes through one relay that
    holds each chunk MS milliseconds in each direction; the correctness checks (listing,
    deleting) go straight to the server.
    """

    def __init__(self, s3: S3Server, relay: Relay | None) -> None:
        self.s3 = s3
        self.relay = relay

    @property
    def endpoint_url(self) -> str:
        return self.relay.endpoint_url if self.relay else self.s3.endpoint_url

    @property
    def access_key(self) -> str:
        return self.s3.access_key

    @property
    def secret_key(self) -> str:
        return self.s3.secret_key


@dataclass(frozen=True)
class Peer:
    """One reference tool: how to call it to copy a directory to ``s3://BUCKET/prefix/``."""

    name: str
    executable: str
    argv: Callable[[str, Route, Path, str, int], list[str]]
    extra_env: Callable[[Route], dict[str, str]] = lambda s3: {}

    def command(self, s3: Route, src: Path, prefix: str, workers: int) -> list[str]:
        return self.argv(self.executable, s3, src, prefix, workers)


def _s5cmd_argv(exe: str, s3: Route, src: Path, prefix: str, workers: int) -> list[str]:
    # --numworkers left at its default (256): s5cmd as people run it.
    return [exe, "--endpoint-url", s3.endpoint_url, "cp", f"{src}/*", f"s3://{BUCKET}/{prefix}"]


def _rclone_argv(exe: str, s3: Route, src: Path, prefix: str, workers: int) -> list[str]:
    # --config to a missing file: the remote comes from RCLONE_CONFIG_BENCH_* only.
    return [
        exe,
        "--config",
        os.devnull,
        "copy",
        str(src),
        f"bench:{BUCKET}/{prefix}",
        "--transfers",
        str(workers),
        "--s3-no-check-bucket",
    ]


def _rclone_env(s3: Route) -> dict[str, str]:
    return {
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENDPOINT": s3.endpoint_url,
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": s3.access_key,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": s3.secret_key,
        "RCLONE_CONFIG_BENCH_REGION": REGION,
        "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
    }


def _aws_argv(exe: str, s3: Route, src: Path, prefix: str, workers: int) -> list[str]:
    # awscli v1 defaults: 10 concurrent requests, multipart from 8 MiB.
    return [
        exe,
        "--endpoint-url",
        s3.endpoint_url,
        "s3",
        "cp",
        str(src),
        f"s3://{BUCKET}/{prefix}",
        "--recursive",
        "--only-show-errors",
    ]


_PEER_ARGV = {"s5cmd": _s5cmd_argv, "rclone": _rclone_argv, "aws": _aws_argv}


def available_peers(names: Sequence[str], results: Results) -> list[Peer]:
    """The requested peers that are installed; the others are noted as skipped, not fatal."""
    peers = []
    for name in names:
        exe = find_tool(name)
        if exe is None:
            results.skipped[name] = "not installed (.venv/bin/pip install -e '.[bench]')"
            continue
        peers.append(
            Peer(name, exe, _PEER_ARGV[name], _rclone_env if name == "rclone" else lambda s3: {})
        )
    return peers


# --- uploaderd -------------------------------------------------------------------------------


class NotifySocket:
    """The systemd side of sd_notify: a datagram socket we read READY=1 from.

    It is drained until closed because the daemon's sd_notify sends are blocking: a full
    socket buffer would stall its main loop and distort the measurement.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._ready = threading.Event()
        self._closed = threading.Event()
        self.last_status = ""
        self._thread = threading.Thread(target=self._drain, name="notify", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._closed.is_set():
            try:
                message = self._sock.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            except OSError:
                return
            for line in message.splitlines():
                if line == "READY=1":
                    self._ready.set()
                elif line.startswith("STATUS="):
                    self.last_status = line.removeprefix("STATUS=")

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if proc.poll() is not None:
                raise BenchError(f"uploaderd exited with {proc.returncode} before READY=1")
            if time.monotonic() > deadline:
                raise BenchError(
                    f"no READY=1 from uploaderd within {timeout:.0f}s "
                    f"(last STATUS: {self.last_status!r})"
                )

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self._sock.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class DaemonSettings:
    workers: int | None  # None: the daemon's default
    settle: float
    log_level: str
    py_spy: Path | None
    py_spy_gil: bool = False


def write_config(work: Path, dsn: str, s3: Route, watched: Path, settings: DaemonSettings) -> Path:
    """The daemon config and one job; metrics off (no port to collide with).

    Without ``--workers`` the config leaves ``workers`` out: the shipped default is measured.
    """
    jobs = work / "jobs.d"
    jobs.mkdir(parents=True, exist_ok=True)
    config = work / "uploaderd.yaml"
    config.write_text(
        f"database:\n  dsn: {dsn}\n"
        f"jobs_dir: {json.dumps(str(jobs))}\n"
        + (f"workers: {settings.workers}\n" if settings.workers else "")
        + 'metrics:\n  listen: ""\n'
        f"s3:\n  endpoint_url: {s3.endpoint_url}\n  region: {REGION}\n"
        f"log:\n  level: {settings.log_level}\n  format: text\n"
        f"shutdown_grace: {SHUTDOWN_GRACE:.0f}s\n"
    )
    (jobs / "bench.yaml").write_text(
        "name: bench\n"
        f"source:\n  paths: [{json.dumps(str(watched))}]\n"
        f"  settle: {settings.settle}s\n  rescan: 1d\n"
        f'destination:\n  bucket: {BUCKET}\n  key: "uploaderd/${{relpath}}"\n'
    )
    return config


class UploaderdUnderTest:
    """One daemon for one S3 server: started once, fed each workload, stopped at the end."""

    def __init__(
        self,
        work: Path,
        pg: PostgresCluster,
        s3: S3Server,
        route: Route,
        server: str,
        settings: DaemonSettings,
    ) -> None:
        self.work = work
        self.s3 = s3
        self.route = route
        self.settings = settings
        self.watched = work / "watched"
        self.staging = work / "staging"  # same filesystem, so a move is a rename
        self.log_path = work / "uploaderd.log"
        self.env = credentials_env(s3)
        self.dsn = pg.create_database(f"bench_{server}")
        self.meter = CpuMeter(
            lambda: process_cpu(self._proc.pid if self._proc else None),
            lambda: process_cpu(server_pid(s3)),
            lambda: postgres_cpu(pg),
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._spy: subprocess.Popen[bytes] | None = None
        self._notify: NotifySocket | None = None
        self._log: IO[bytes] | None = None
        self._db: psycopg2.extensions.connection | None = None

    def start(self, labels: Sequence[str]) -> None:
        """Migrate, start, wait for READY=1.

        Each measurement's directory exists before the start, so its watch is in place
        when READY=1 arrives and no move-in can race the watch being added.
        """
        for label in labels:
            (self.watched / label).mkdir(parents=True, exist_ok=True)
        config = write_config(self.work, self.dsn, self.route, self.watched, self.settings)
        migrate = [sys.executable, "-m", "uploaderd", "migrate", "-c", str(config)]
        # Run from the work directory: `-m` puts the current directory first on the path,
        # and a checkout's there would shadow the tree on PYTHONPATH being measured.
        done = subprocess.run(
            migrate,
            env=self.env,
            cwd=self.work,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            raise BenchError(f"uploaderd migrate failed: {done.stderr.strip()}")
        self._notify = NotifySocket(self.work / "notify.sock")
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "uploaderd", "run", "-c", str(config)],
            env=self.env | {"NOTIFY_SOCKET": str(self._notify.path)},
            cwd=self.work,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._notify.wait_ready(self._proc, READY_TIMEOUT)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{tail(self.log_path)}") from None
        self._db = psycopg2.connect(self.dsn, application_name="bench")
        self._db.autocommit = True
        self._start_py_spy()

    def _start_py_spy(self) -> None:
        """Sample the daemon for the whole run: every busy thread, or with ``--py-spy-gil``
        only the GIL holder (where CPU goes, rather than where threads wait)."""
        if self.settings.py_spy is None or self._proc is None:
            return
        exe = find_tool("py-spy")
        if exe is None:
            raise BenchError("--py-spy needs py-spy: .venv/bin/pip install py-spy")
        out = self.settings.py_spy
        fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(out.suffix, "raw")
        self._spy = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(self._proc.pid),
                "--rate",
                "200",
                "--format",
                fmt,
                "--output",
                str(out),
                "--nonblocking",
                *(["--gil"] if self.settings.py_spy_gil else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )

    def _ledger_counts(self) -> tuple[int, int]:
        """(uploaded, failed) versions in the ledger."""
        assert self._db is not None
        with self._db.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FILTER (WHERE state = 'uploaded'), "
                "count(*) FILTER (WHERE state = 'failed') FROM file_versions"
            )
            uploaded, failed = cursor.fetchone() or (0, 0)
        return int(uploaded), int(failed)

    def _first_error(self) -> str:
        assert self._db is not None
        with self._db.cursor() as cursor:
            cursor.execute(
                "SELECT relpath, last_error FROM file_versions "
                "WHERE last_error IS NOT NULL ORDER BY id DESC LIMIT 1"
            )
            row = cursor.fetchone()
        return f"{row[0]}: {row[1]}" if row else "no error recorded"

    def measure(self, workload: Workload, label: str, seed: int, timeout: float) -> Sample:
        """Move ``workload`` into the watched directory; seconds until all are ``uploaded``."""
        files = make_files(self.staging / label, workload, seed)
        settle_disk()
        base_uploaded, base_failed = self._ledger_counts()
        target = self.watched / label
        # Fresh mtimes, as an instrument that has just finished writing: the settle check
        # would otherwise accept files whose mtime is already `settle` old at first sight.
        for path in files:
            os.utime(path)
        with self.meter.measuring() as cpu:
            started = time.perf_counter()
            for path in files:
                os.rename(path, target / path.name)
            elapsed = self._wait_uploaded(
                base_uploaded + workload.count, base_failed, started, timeout
            )
        verify_upload(self.s3, f"uploaderd/{label}/", workload, "uploaderd")
        for path in files:  # the disk footprint stays one workload deep
            (target / path.name).unlink()
        return Sample(elapsed, *cpu)

    def measure_sustained(
        self, sustained: Sustained, label: str, seed: int, timeout: float
    ) -> SustainedSample:
        """Feed ``sustained`` into the watched directory; each file's rename-to-uploaded time.

        ``timeout`` runs from the end of the feed.
        """
        workload = sustained.workload
        base_uploaded, base_failed = self._ledger_counts()
        feeder = Feeder(self.staging / label, self.watched / label, sustained, seed)
        with self.meter.measuring() as cpu:
            started = time.perf_counter()
            feeder.start()
            try:
                while feeder.running(SUSTAINED_POLL_SECONDS):
                    self._raise_if_broken(self._ledger_counts()[1], base_failed)
            finally:
                feeder.stop()
            if feeder.error is not None:
                raise BenchError(f"the sustained feed stopped: {feeder.error}")
            elapsed = self._wait_uploaded(
                base_uploaded + workload.count, base_failed, started, sustained.seconds + timeout
            )
        verify_upload(self.s3, f"uploaderd/{label}/", workload, "uploaderd")
        times = self._ledger_times(label, feeder.renamed)
        for name in feeder.renamed:  # the disk footprint stays one run deep
            (self.watched / label / name).unlink()
        return SustainedSample(
            tuple(uploaded - feeder.renamed[name] for name, (_, uploaded) in times.items()),
            tuple(uploaded - queued for queued, uploaded in times.values()),
            feeder.late,
            Sample(elapsed, *cpu),
        )

    def _ledger_times(
        self, label: str, renamed: dict[str, float]
    ) -> dict[str, tuple[float, float]]:
        """File name -> (``discovered_at``, ``uploaded_at``) in seconds since the epoch: when
        the settled version was queued, and ``now()`` of the transaction that marked it
        uploaded."""
        assert self._db is not None
        with self._db.cursor() as cursor:
            cursor.execute(
                "SELECT relpath, extract(epoch FROM discovered_at), "
                "extract(epoch FROM uploaded_at) FROM file_versions "
                "WHERE state = 'uploaded' AND relpath LIKE %s",
                (f"{label}/%",),
            )
            rows = {str(path): (float(queued), float(up)) for path, queued, up in cursor.fetchall()}
        missing = [name for name in renamed if f"{label}/{name}" not in rows]
        if missing:
            raise BenchError(f"no uploaded_at in the ledger for {len(missing)} files: {missing[0]}")
        return {name: rows[f"{label}/{name}"] for name in renamed}

    def _raise_if_broken(self, failed: int, base_failed: int) -> None:
        """A failed version or a dead daemon ends the measurement with the reason."""
        if failed > base_failed:
            raise BenchError(
                f"uploaderd failed {failed - base_failed} versions: {self._first_error()}"
            )
        if self._proc is not None and self._proc.poll() is not None:
            raise BenchError(f"uploaderd died ({self._proc.returncode}):\n{tail(self.log_path)}")

    def _wait_uploaded(
        self, target: int, base_failed: int, started: float, timeout: float
    ) -> float:
        while True:
            uploaded, failed = self._ledger_counts()
            if uploaded >= target:
                return time.perf_counter() - started
            self._raise_if_broken(failed, base_failed)
            if time.perf_counter() - started > timeout:
                raise BenchError(
                    f"uploaderd: {uploaded} of {target} uploaded after "
                    f"{timeout:.0f}s:\n{tail(self.log_path)}"
                )
            time.sleep(POLL_SECONDS)

    def stop(self) -> None:
        """SIGTERM as systemd does (py-spy first: SIGINT makes it write its profile)."""
        if self._spy is not None:
            terminate(self._spy, 20.0, signal.SIGINT)
            self._spy = None
        if self._proc is not None:
            terminate(self._proc, SHUTDOWN_GRACE + STOP_TIMEOUT)
            self._proc = None
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        if self._log is not None:
            self._log.close()
            self._log = None


# --- one S3 server's run ---------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    servers: tuple[str, ...]
    workloads: tuple[Workload, ...]
    peers: tuple[str, ...]
    repeat: int
    timeout: float
    daemon: DaemonSettings
    wan: float = 0.0  # seconds of delay each way through a relay; 0: straight to the server
    sustained: Sustained | None = None  # uploaderd alone, after the batch workloads


def labels_for(plan: Plan) -> list[str]:
    names = [w.name for w in plan.workloads] + (["sustained"] if plan.sustained else [])
    return [f"{name}-r{rep}" for name in names for rep in range(1, plan.repeat + 1)]


def run_server(server: str, plan: Plan, work: Path, pg: PostgresCluster, results: Results) -> None:
    """Every tool, workload and repetition against one fresh S3 server."""
    print(f"\n== S3 server: {server}", flush=True)
    with contextlib.ExitStack() as stack:
        s3 = S3_SERVERS[server](work / "s3")
        stack.callback(s3.cleanup)
        s3.start()
        s3.create_bucket(BUCKET)
        relay = None
        if plan.wan:
            relay = Relay(s3.port, delay=plan.wan)
            relay.start()
            stack.callback(relay.stop)
        route = Route(s3, relay)
        daemon = UploaderdUnderTest(work / "uploaderd", pg, s3, route, server, plan.daemon)
        stack.callback(daemon.stop)
        daemon.start(labels_for(plan))
        peers = available_peers(plan.peers, results)
        peer_log = stack.enter_context((work / "peers.log").open("ab"))
        for workload in plan.workloads:
            src = work / "src" / workload.name
            make_files(src, workload, seed=0)
            for rep in range(1, plan.repeat + 1):
                label = f"{workload.name}-r{rep}"
                sample = daemon.measure(workload, label, rep, plan.timeout)
                _record(results, server, "uploaderd", workload, rep, sample)
                delete_prefix(s3, f"uploaderd/{label}/")
                meter = CpuMeter(
                    children_cpu, lambda: process_cpu(server_pid(s3)), lambda: postgres_cpu(pg)
                )
                for peer in peers:
                    sample = measure_peer(
                        peer, s3, route, src, workload, label, plan, peer_log, meter
                    )
                    _record(results, server, peer.name, workload, rep, sample)
            shutil.rmtree(src)
        if plan.sustained:
            run_sustained(server, plan, plan.sustained, daemon, results)


def run_sustained(
    server: str, plan: Plan, sustained: Sustained, daemon: UploaderdUnderTest, results: Results
) -> None:
    """uploaderd alone: the peers are batch copiers (s5cmd has no watching mode), so there
    is no close-to-uploaded latency of theirs to set beside it."""
    for rep in range(1, plan.repeat + 1):
        label = f"sustained-r{rep}"
        run = daemon.measure_sustained(sustained, label, rep, plan.timeout)
        results.sustained.setdefault(server, []).append(run)
        delete_prefix(daemon.s3, f"uploaderd/{label}/")
        figures = latencies_of(run.latencies)
        print(
            f"  uploaderd  sustained {sustained.describe()} rep {rep}: p50 {figures.p50:.3f}s, "
            f"p99 {figures.p99:.3f}s, max {figures.max:.3f}s over {figures.count} files; "
            f"feeder at most {run.late * 1000:.1f} ms late; CPU s: tool "
            f"{run.sample.tool_cpu:.2f}, s3 {run.sample.s3_cpu:.2f}, db {run.sample.db_cpu:.2f}",
            flush=True,
        )


def measure_peer(
    peer: Peer,
    s3: S3Server,
    route: Route,
    src: Path,
    workload: Workload,
    label: str,
    plan: Plan,
    log: IO[bytes],
    meter: CpuMeter,
) -> Sample:
    prefix = f"{peer.name}/{label}/"
    env = credentials_env(s3) | peer.extra_env(route)
    settle_disk()
    with meter.measuring() as cpu:
        seconds = run_timed(
            peer.command(route, src, prefix, plan.daemon.workers or RCLONE_TRANSFERS),
            env,
            log,
            plan.timeout,
        )
    verify_upload(s3, prefix, workload, peer.name)
    delete_prefix(s3, prefix)
    return Sample(seconds, *cpu)


def _record(
    results: Results, server: str, tool: str, workload: Workload, rep: int, sample: Sample
) -> None:
    results.add(server, tool, workload.name, sample)
    seconds = sample.seconds
    print(
        f"  {tool:<10} {workload.describe():<22} rep {rep}: {seconds:7.2f}s "
        f"({workload.count / seconds:8.1f} files/s, "
        f"{workload.total_bytes / MiB / seconds:7.1f} MiB/s; CPU s: tool "
        f"{sample.tool_cpu:.2f}, s3 {sample.s3_cpu:.2f}, db {sample.db_cpu:.2f})",
        flush=True,
    )


# --- the report ------------------------------------------------------------------------------


def report(
    plan: Plan, results: Results, command: str, load: tuple[float, float], package: str = ""
) -> str:
    """The table: medians, throughput, uploaderd's time over each tool's and the CPU split.

    The load averages are there because a busy machine (other builds, tests) skews every
    figure; a run on a loaded machine is worth repeating.
    """
    header = (
        f"{'tool':<16} {'workload':<18} {'seconds':>7} {'min-max':>11} {'files/s':>8} "
        f"{'MiB/s':>7} {'ud/tool':>7} {'ud-settle/tool':>14} "
        f"{'cpu tool':>8} {'cpu s3':>7} {'cpu db':>7}"
    )
    lines = [
        f"medians of {plan.repeat} runs; ud/tool = uploaderd time / tool time "
        f"(>1: uploaderd slower); ud-settle = uploaderd time minus the "
        f"{plan.daemon.settle:g}s settle; cpu = CPU seconds of the tool, the S3 server "
        "and PostgreSQL during the measurement",
        f"{os.cpu_count()} CPUs; 1-minute load average {load[0]:.2f} before, "
        f"{load[1]:.2f} after; uploaderd workers: "
        f"{plan.daemon.workers or 'default'}; "
        + (f"WAN relay: {plan.wan * 1000:g} ms each way" if plan.wan else "no WAN relay")
        + (f"; uploaderd from {package}" if package else ""),
    ]
    for server in plan.servers:
        lines += ["", f"S3 server: {server}"]
        if plan.workloads:
            lines += [header, "-" * len(header)]
        for workload in plan.workloads:
            lines += _workload_rows(plan, results, server, workload)
        lines += _sustained_rows(plan, results.sustained.get(server, []))
    for tool, why in results.skipped.items():
        lines.append(f"skipped {tool}: {why}")
    lines += ["", f"reproduce: {command}"]
    return "\n".join(lines)


def _workload_rows(plan: Plan, results: Results, server: str, workload: Workload) -> list[str]:
    ours = results.get(server, "uploaderd", workload.name)
    if not ours:
        return []
    wall = median_of(ours, "seconds")
    net = max(wall - plan.daemon.settle, 1e-9)
    rows = [
        _row("uploaderd", workload, ours, wall, None, None),
        _row(f"uploaderd -{plan.daemon.settle:g}s", workload, [], net, None, None),
    ]
    for tool in PEERS:
        theirs = results.get(server, tool, workload.name)
        if theirs:
            seconds = median_of(theirs, "seconds")
            rows.append(_row(tool, workload, theirs, seconds, wall / seconds, net / seconds))
    return rows


def _row(
    tool: str,
    workload: Workload,
    samples: Sequence[Sample],
    seconds: float,
    ratio: float | None,
    net_ratio: float | None,
) -> str:
    times = [sample.seconds for sample in samples]
    spread = f"{min(times):.2f}-{max(times):.2f}" if times else ""
    cpu = "".join(
        f" {median_of(samples, name):>7.2f}" if samples else f" {'':>7}"
        for name in ("tool_cpu", "s3_cpu", "db_cpu")
    )
    return (
        f"{tool:<16} {workload.describe():<18} {seconds:7.2f} {spread:>11} "
        f"{workload.count / seconds:8.1f} {workload.total_bytes / MiB / seconds:7.1f} "
        f"{_ratio(ratio):>7} {_ratio(net_ratio):>14} {cpu[1:]:>8}"
    )


def sustained_target(plan: Plan) -> float:
    """The issue's target for the p99 of close-to-uploaded: the settle time plus 0.5 s."""
    return plan.daemon.settle + SUSTAINED_MARGIN


def _sustained_rows(plan: Plan, runs: Sequence[SustainedSample]) -> list[str]:
    """Latency percentiles over every file of every run, against the target."""
    if not plan.sustained or not runs:
        return []
    figures = latencies_of([latency for run in runs for latency in run.latencies])
    queued = latencies_of([latency for run in runs for latency in run.queued])
    target = sustained_target(plan)
    samples = [run.sample for run in runs]
    header = (
        f"{'tool':<10} {'sustained feed':<26} {'files':>6} {'p50 s':>6} {'p99 s':>6} "
        f"{'max s':>6} {'target p99':>14} {'late ms':>7} {'cpu tool':>8} {'cpu s3':>7} "
        f"{'cpu db':>7}"
    )
    cpu = " ".join(
        f"{median_of(samples, name):>{width}.2f}"
        for name, width in (("tool_cpu", 8), ("s3_cpu", 7), ("db_cpu", 7))
    )
    verdict = "met" if figures.p99 <= target else "MISSED"
    return [
        "",
        f"sustained: seconds from each file's rename to its uploaded_at in the ledger, "
        f"{len(runs)} run(s) pooled; uploaderd alone (the peers copy a finished batch: "
        "s5cmd, rclone copy and aws s3 cp have no watching mode); late = how far the feeder "
        "fell behind its schedule at worst; cpu = medians per run; the second row is the "
        "part after the settle: from discovered_at (queued) to uploaded_at",
        header,
        "-" * len(header),
        f"{'uploaderd':<10} {plan.sustained.describe():<26} {figures.count:>6} "
        f"{figures.p50:>6.3f} {figures.p99:>6.3f} {figures.max:>6.3f} "
        f"{f'<= {target:g} {verdict}':>14} {max(run.late for run in runs) * 1000:>7.1f} {cpu}",
        f"{'':<10} {'  queued -> uploaded':<26} {queued.count:>6} "
        f"{queued.p50:>6.3f} {queued.p99:>6.3f} {queued.max:>6.3f}",
    ]


def _ratio(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else ""


def results_json(plan: Plan, results: Results) -> dict[str, object]:
    return {
        "settle_seconds": plan.daemon.settle,
        "workloads": {w.name: {"count": w.count, "size": w.size} for w in plan.workloads},
        "samples": [
            {"server": s, "tool": t, "workload": w, **sample.__dict__}
            for (s, t, w), samples in results.samples.items()
            for sample in samples
        ],
        "sustained": {
            "feed": plan.sustained.__dict__ if plan.sustained else None,
            "target_p99_seconds": sustained_target(plan),
            "runs": [
                {
                    "server": server,
                    **latencies_of(run.latencies).__dict__,
                    "queued_to_uploaded": latencies_of(run.queued).__dict__,
                    "late_seconds": run.late,
                    **run.sample.__dict__,
                }
                for server, runs in results.sustained.items()
                for run in runs
            ],
        },
        "skipped": results.skipped,
    }


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--s3",
        nargs="+",
        choices=sorted(S3_SERVERS),
        default=["rclone"],
        help="S3 server(s), one after the other (default: rclone)",
    )
    parser.add_argument("--small", type=int, default=2000, help="small files (default 2000)")
    parser.add_argument(
        "--small-size", type=parse_size, default=4 * KiB, help="bytes or 4KiB (default 4 KiB)"
    )
    parser.add_argument("--medium", type=int, default=200, help="medium files (default 200)")
    parser.add_argument(
        "--medium-size", type=parse_size, default=MiB, help="bytes or 1MiB (default 1 MiB)"
    )
    parser.add_argument("--large", type=int, default=0, help="large files (default 0)")
    parser.add_argument(
        "--large-size", type=parse_size, default=256 * MiB, help="bytes (default 256 MiB)"
    )
    parser.add_argument(
        "--sustained-rate",
        type=float,
        default=0.0,
        metavar="FILES_PER_S",
        help="after the batches, feed uploaderd this many files per second and report "
        "close-to-uploaded latencies (default 0: off; the issue's target: 100)",
    )
    parser.add_argument(
        "--sustained-size", type=parse_size, default=64 * KiB, help="bytes (default 64 KiB)"
    )
    parser.add_argument(
        "--sustained-seconds", type=float, default=60.0, help="feed duration (default 60)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument(
        "--workers",
        type=int,
        help="uploaderd workers and rclone --transfers (default: uploaderd's "
        f"own default, rclone {RCLONE_TRANSFERS})",
    )
    parser.add_argument(
        "--wan",
        type=float,
        default=0.0,
        metavar="MS",
        help="send every tool through a relay that delays each direction by "
        "MS milliseconds (default 0: no relay)",
    )
    parser.add_argument("--settle", type=float, default=1.0, help="job settle seconds")
    parser.add_argument(
        "--peers",
        nargs="*",
        choices=PEERS,
        default=list(PEERS),
        help="reference tools (default: all installed)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds allowed per measurement (default 300)"
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="uploaderd's log level (default warning)",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="FILE",
        help="profile the daemon with py-spy (.svg, .json speedscope, else raw)",
    )
    parser.add_argument(
        "--py-spy-gil",
        action="store_true",
        help="with --py-spy: sample only the thread holding the GIL",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every sample")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, database cluster)"
    )
    args = parser.parse_args(argv)
    if (
        min(args.small, args.medium, args.large) < 0
        or args.repeat < 1
        or (args.workers is not None and args.workers < 1)
        or not 0 <= args.wan <= 1000
        or args.sustained_rate < 0
        or (args.sustained_rate and args.sustained_rate * args.sustained_seconds < 1)
    ):
        parser.error(
            "counts must be >= 0, --repeat and --workers >= 1, --wan 0-1000, and a "
            "sustained feed at least one file"
        )
    return args


def plan_of(args: argparse.Namespace) -> Plan:
    workloads = tuple(
        w
        for w in (
            Workload("small", args.small, args.small_size),
            Workload("medium", args.medium, args.medium_size),
            Workload("large", args.large, args.large_size),
        )
        if w.count
    )
    py_spy = args.py_spy.resolve() if args.py_spy else None
    return Plan(
        tuple(args.s3),
        workloads,
        tuple(args.peers),
        args.repeat,
        args.timeout,
        DaemonSettings(args.workers, args.settle, args.log_level, py_spy, args.py_spy_gil),
        wan=args.wan / 1000,
        sustained=(
            Sustained(args.sustained_rate, args.sustained_size, args.sustained_seconds)
            if args.sustained_rate
            else None
        ),
    )


def reproduce_command(args: argparse.Namespace) -> str:
    """The full command line with every default spelled out, so a rerun measures the same."""
    argv = [
        ".venv/bin/python",
        "bench/throughput.py",
        "--s3",
        *args.s3,
        "--small",
        str(args.small),
        "--small-size",
        str(args.small_size),
        "--medium",
        str(args.medium),
        "--medium-size",
        str(args.medium_size),
        "--large",
        str(args.large),
        "--large-size",
        str(args.large_size),
        "--sustained-rate",
        f"{args.sustained_rate:g}",
        "--sustained-size",
        str(args.sustained_size),
        "--sustained-seconds",
        f"{args.sustained_seconds:g}",
        "--repeat",
        str(args.repeat),
        *(["--workers", str(args.workers)] if args.workers else []),
        "--wan",
        f"{args.wan:g}",
        "--settle",
        f"{args.settle:g}",
        "--peers",
        *args.peers,
    ]
    return shlex.join(argv)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def work_directory(keep: bool) -> Iterator[Path]:
    """Under /tmp: PostgreSQL runs as `postgres` when we are root and must reach it."""
    work = Path(tempfile.mkdtemp(prefix="uploaderd-bench-"))
    work.chmod(0o755)
    try:
        yield work
    finally:
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_of(args)
    results = Results()
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler of its own.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    load_before = os.getloadavg()[0]
    feeds = [w.describe() for w in plan.workloads]
    if plan.sustained:
        feeds.append(f"sustained {plan.sustained.describe()} (uploaderd only)")
    print(
        f"uploaderd throughput: {', '.join(feeds)}; "
        f"{plan.repeat} repetitions; {os.cpu_count()} CPUs",
        flush=True,
    )
    try:
        with work_directory(args.keep) as work:
            pg = PostgresCluster(work / "postgres")
            try:
                pg.start()
                for server in plan.servers:
                    run_server(server, plan, work / server, pg, results)
            finally:
                pg.stop()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    load = (load_before, os.getloadavg()[0])
    print("\n" + report(plan, results, reproduce_command(args), load, daemon_package()))
    if args.json:
        args.json.write_text(json.dumps(results_json(plan, results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
