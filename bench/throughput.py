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
finished batch. The WAN mode (``--wan MS``) sends every tool through one relay that delays
each direction by MS milliseconds.

Every measurement is checked by listing the destination prefix: a tool that "finished"
without uploading every file fails the run instead of producing a flattering number.

    .venv/bin/python bench/throughput.py [--s3 rclone moto] [--small 2000] [--medium 200]
        [--sustained-rate 100] [--wan 20]
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
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import psycopg2

from bench import common
from bench.common import BenchError, postgres_cpu, process_cpu, rows
from devstack import REGION, S3_SERVERS, DevstackError, PostgresCluster, S3Server
from devstack.process import find_tool, tail, terminate
from devstack.relay import Relay
from uploaderd.policy.units import parse_size

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

KiB = 1024
MiB = 1024 * 1024
BUCKET = "bench"
POLL_SECONDS = 0.05
PEERS = ("s5cmd", "rclone", "aws")
RCLONE_TRANSFERS = 8  # rclone's --transfers when --workers is not given
SUSTAINED_POLL_SECONDS = 0.5  # the ledger keeps each upload's time: polling only watches health
SUSTAINED_MARGIN = 0.5  # the target: close-to-uploaded p99 <= settle + this


# --- what is measured ------------------------------------------------------------------------


def size_text(size: int) -> str:
    if size % MiB == 0:
        return f"{size // MiB}MiB"
    return f"{size // KiB}KiB" if size % KiB == 0 else f"{size}B"


@dataclass(frozen=True)
class Workload:
    """``count`` files of ``size`` bytes each."""

    name: str
    count: int
    size: int

    def describe(self) -> str:
        return f"{self.name} {self.count}x{size_text(self.size)}"


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
        return f"{self.rate:g}/s x {size_text(self.size)} for {self.seconds:g}s"


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

    def add(self, server: str, tool: str, workload: Workload, rep: int, sample: Sample) -> None:
        self.samples.setdefault((server, tool, workload.name), []).append(sample)
        print(
            f"  {tool:<10} {workload.describe():<22} rep {rep}: {sample.seconds:7.2f}s "
            f"({workload.count / sample.seconds:8.1f} files/s, "
            f"{workload.count * workload.size / MiB / sample.seconds:7.1f} MiB/s; "
            f"CPU s: {_cpu_text(sample)})"
        )


def _cpu_text(sample: Sample) -> str:
    return f"tool {sample.tool_cpu:.2f}, s3 {sample.s3_cpu:.2f}, db {sample.db_cpu:.2f}"


def median_of(samples: Sequence[Sample], attribute: str) -> float:
    return float(statistics.median(float(getattr(sample, attribute)) for sample in samples))


def make_files(directory: Path, workload: Workload, seed: int) -> list[Path]:
    """Write the workload's files (incompressible bytes, so no store can cheat by compressing).

    The seed only makes file names distinct between repetitions; contents are random.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"s{seed}-f{index:06d}.bin" for index in range(workload.count)]
    for path in paths:
        path.write_bytes(os.urandom(workload.size))
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
            start = time.monotonic()
            for index in range(self.sustained.workload.count):
                wait = start + due_offset(index, self.sustained.rate) - time.monotonic()
                if self._stop.wait(max(0.0, wait)):
                    return
                self.late = max(self.late, -wait)
                name = f"s{self.seed}-f{index:06d}.bin"
                (self.staging / name).write_bytes(os.urandom(self.sustained.size))
                os.rename(self.staging / name, self.target / name)
                self.renamed[name] = time.time()
        except Exception as exc:  # the measuring thread reports it
            self.error = exc


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


def children_cpu() -> float:
    """CPU seconds of every child we have reaped: a peer's share is the delta around it."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- the S3 side -----------------------------------------------------------------------------


def verify_and_delete(s3: S3Server, prefix: str, workload: Workload, tool: str) -> None:
    """The correctness check: the server lists every file under ``prefix``. The objects go
    afterwards, so moto's memory and rclone's disk stay bounded."""
    client = s3.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    found = 0
    for page in pages:
        keys: list[ObjectIdentifierTypeDef] = [{"Key": i["Key"]} for i in page.get("Contents", [])]
        found += len(keys)
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})
    if found != workload.count:
        raise BenchError(
            f"{tool}: {found} objects under s3://{BUCKET}/{prefix}, expected {workload.count}"
        )


# --- peers -----------------------------------------------------------------------------------


def peer_command(
    name: str, exe: str, endpoint: str, src: Path, prefix: str, workers: int
) -> list[str]:
    """How each reference tool copies a directory to ``s3://BUCKET/prefix/``."""
    dest = f"s3://{BUCKET}/{prefix}"
    if name == "s5cmd":  # --numworkers left at its default (256): s5cmd as people run it
        return [exe, "--endpoint-url", endpoint, "cp", f"{src}/*", dest]
    if name == "rclone":  # --config to a missing file: the remote is RCLONE_CONFIG_BENCH_*
        argv = [exe, "--config", os.devnull, "copy", str(src), f"bench:{BUCKET}/{prefix}"]
        return [*argv, "--transfers", str(workers), "--s3-no-check-bucket"]
    # awscli v1 defaults: 10 concurrent requests, multipart from 8 MiB.
    argv = [exe, "--endpoint-url", endpoint, "s3", "cp", str(src), dest, "--recursive"]
    return [*argv, "--only-show-errors"]


def peer_env(name: str, endpoint: str, s3: S3Server) -> dict[str, str]:
    env = os.environ | common.credentials(s3)
    if name == "rclone":
        settings = {"TYPE": "s3", "PROVIDER": "Other", "ENDPOINT": endpoint, "REGION": REGION}
        settings |= {"ACCESS_KEY_ID": s3.access_key, "SECRET_ACCESS_KEY": s3.secret_key}
        settings["FORCE_PATH_STYLE"] = "true"
        env |= {f"RCLONE_CONFIG_BENCH_{key}": value for key, value in settings.items()}
    return env


def run_timed(argv: Sequence[str], env: dict[str, str], log: IO[bytes], timeout: float) -> float:
    """Run a peer to completion in its own process group; its wall seconds.

    Its own group so that Ctrl-C or a timeout kills the whole tool and nothing outlives
    the benchmark.
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
    if returncode != 0:
        raise BenchError(f"{shlex.join(argv)} exited with {returncode}; see {log.name}")
    return time.perf_counter() - started


# --- uploaderd -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonSettings:
    workers: int | None  # None: the daemon's default
    settle: float
    log_level: str


class UploaderdUnderTest:
    """One daemon for one S3 server: started once, fed each workload, stopped at the end.

    One job watches ``watched`` (settle ``--settle``, rescan 1 day); each measurement moves
    its files into a directory of its own there, from a staging directory on the same
    filesystem (so a move is a rename).
    """

    def __init__(
        self, work: Path, pg: PostgresCluster, s3: S3Server, endpoint: str, plan: Plan, server: str
    ) -> None:
        self.s3 = s3
        self.settings = settings = plan.daemon
        self.watched = work / "watched"
        self.staging = work / "staging"
        dsn = pg.create_database(f"bench_{server}")
        workers, level = settings.workers, settings.log_level
        self.daemon = common.bench_daemon(work, dsn, endpoint, s3, workers, level)
        source = {"paths": [str(self.watched)], "settle": f"{settings.settle}s", "rescan": "1d"}
        destination = {"bucket": BUCKET, "key": "uploaderd/${relpath}"}
        self.daemon.write_job("bench", {"source": source, "destination": destination})
        self.meter = CpuMeter(
            lambda: process_cpu(self.daemon.proc.pid if self.daemon.proc else None),
            lambda: process_cpu(s3.pid),
            lambda: postgres_cpu(pg),
        )
        self.dsn = dsn
        self.stack = contextlib.ExitStack()  # what start() started, stop() stops

    def start(self, labels: Sequence[str]) -> None:
        """Migrate, start, wait for READY=1.

        Each measurement's directory exists before the start, so its watch is in place
        when READY=1 arrives and no move-in can race the watch being added.
        """
        for label in labels:
            (self.watched / label).mkdir(parents=True, exist_ok=True)
        common.command(self.daemon, "migrate", timeout=60)
        self.stack.enter_context(common.running(self.daemon))
        db = psycopg2.connect(self.dsn, application_name="bench")
        self.db = self.stack.enter_context(contextlib.closing(db))
        self.db.autocommit = True

    def counts(self) -> tuple[int, int]:
        """(uploaded, failed) versions in the ledger."""
        sql = "SELECT count(*) FILTER (WHERE state = %s), count(*) FILTER (WHERE state = %s) "
        (uploaded, failed), *_ = rows(self.db, sql + "FROM file_versions", "uploaded", "failed")
        return int(uploaded), int(failed)

    def check(self, base_failed: int) -> int:
        """The uploaded versions; a failed version or the daemon's death stops the run."""
        uploaded, failed = self.counts()
        if failed > base_failed:
            last = rows(
                self.db,
                "SELECT relpath, last_error FROM file_versions "
                "WHERE last_error IS NOT NULL ORDER BY id DESC LIMIT 1",
            )
            error = f"{last[0][0]}: {last[0][1]}" if last else "no error recorded"
            raise BenchError(f"uploaderd failed {failed - base_failed} versions: {error}")
        if not self.daemon.alive():
            raise BenchError(f"uploaderd died:\n{tail(self.daemon.log_path)}")
        return uploaded

    def wait_uploaded(self, target: int, base_failed: int, timeout: float) -> None:
        done = lambda: self.check(base_failed) >= target  # noqa: E731
        common.wait_alive(self.daemon, done, timeout, f"{target} versions uploaded", POLL_SECONDS)

    def measure(self, workload: Workload, label: str, seed: int, timeout: float) -> Sample:
        """Move ``workload`` into the watched directory; seconds until all are ``uploaded``."""
        files = make_files(self.staging / label, workload, seed)
        os.sync()  # so no tool pays for the previous one's writes
        base_uploaded, base_failed = self.counts()
        target = self.watched / label
        # Fresh mtimes, as an instrument that has just finished writing: the settle check
        # would otherwise accept files whose mtime is already `settle` old at first sight.
        for path in files:
            os.utime(path)
        with self.meter.measuring() as cpu:
            started = time.perf_counter()
            for path in files:
                os.rename(path, target / path.name)
            self.wait_uploaded(base_uploaded + workload.count, base_failed, timeout)
            elapsed = time.perf_counter() - started
        verify_and_delete(self.s3, f"uploaderd/{label}/", workload, "uploaderd")
        for path in files:  # the disk footprint stays one workload deep
            (target / path.name).unlink()
        return Sample(elapsed, *cpu)

    def measure_sustained(
        self, sustained: Sustained, label: str, seed: int, timeout: float
    ) -> SustainedSample:
        """Feed ``sustained`` into the watched directory; each file's rename-to-uploaded time.

        ``timeout`` runs from the end of the feed.
        """
        base_uploaded, base_failed = self.counts()
        feeder = Feeder(self.staging / label, self.watched / label, sustained, seed)
        with self.meter.measuring() as cpu:
            started = time.perf_counter()
            feeder.start()
            try:
                while feeder.running(SUSTAINED_POLL_SECONDS):
                    self.check(base_failed)
            finally:
                feeder.stop()
            if feeder.error is not None:
                raise BenchError(f"the sustained feed stopped: {feeder.error}")
            self.wait_uploaded(base_uploaded + sustained.workload.count, base_failed, timeout)
            elapsed = time.perf_counter() - started
        verify_and_delete(self.s3, f"uploaderd/{label}/", sustained.workload, "uploaderd")
        # File name -> (discovered_at, uploaded_at), seconds since the epoch: when the
        # settled version was queued, and now() of the transaction that marked it uploaded.
        times = {
            path.split("/", 1)[1]: (float(queued), float(uploaded))
            for path, queued, uploaded in rows(
                self.db,
                "SELECT relpath, extract(epoch FROM discovered_at), extract(epoch FROM "
                "uploaded_at) FROM file_versions WHERE state = 'uploaded' AND relpath LIKE %s",
                f"{label}/%",
            )
        }
        missing = [name for name in feeder.renamed if name not in times]
        if missing:
            raise BenchError(f"no uploaded_at in the ledger for {len(missing)} files: {missing[0]}")
        for name in feeder.renamed:  # the disk footprint stays one run deep
            (self.watched / label / name).unlink()
        return SustainedSample(
            tuple(times[name][1] - renamed for name, renamed in feeder.renamed.items()),
            tuple(times[name][1] - times[name][0] for name in feeder.renamed),
            feeder.late,
            Sample(elapsed, *cpu),
        )

    def stop(self) -> None:
        self.stack.close()


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


def run_server(server: str, plan: Plan, work: Path, pg: PostgresCluster, results: Results) -> None:
    """Every tool, workload and repetition against one fresh S3 server.

    In WAN mode every tool, uploaderd included, goes through one relay that holds each
    chunk ``plan.wan`` seconds in each direction; the correctness checks (listing,
    deleting) go straight to the server.
    """
    print(f"\n== S3 server: {server}")
    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(S3_SERVERS[server](work / "s3"))
        s3.create_bucket(BUCKET)
        endpoint = s3.endpoint_url
        if plan.wan:
            relay = Relay(s3.port, delay=plan.wan)
            relay.start()
            stack.callback(relay.stop)
            endpoint = relay.endpoint_url
        daemon = UploaderdUnderTest(work / "uploaderd", pg, s3, endpoint, plan, server)
        stack.callback(daemon.stop)
        names = [w.name for w in plan.workloads] + (["sustained"] if plan.sustained else [])
        daemon.start([f"{name}-r{rep}" for name in names for rep in range(1, plan.repeat + 1)])
        peers = {}
        for name in plan.peers:  # a peer that is not installed is skipped, not fatal
            try:
                peers[name] = find_tool(name)
            except DevstackError:
                results.skipped[name] = "not installed (.venv/bin/pip install -e '.[bench]')"
        log = stack.enter_context((work / "peers.log").open("ab"))
        meter = CpuMeter(children_cpu, lambda: process_cpu(s3.pid), lambda: postgres_cpu(pg))
        for workload in plan.workloads:
            src = work / "src" / workload.name
            make_files(src, workload, seed=0)
            for rep in range(1, plan.repeat + 1):
                label = f"{workload.name}-r{rep}"
                sample = daemon.measure(workload, label, rep, plan.timeout)
                results.add(server, "uploaderd", workload, rep, sample)
                for name, exe in peers.items():
                    prefix = f"{name}/{label}/"
                    workers = plan.daemon.workers or RCLONE_TRANSFERS
                    argv = peer_command(name, exe, endpoint, src, prefix, workers)
                    os.sync()
                    with meter.measuring() as cpu:
                        seconds = run_timed(argv, peer_env(name, endpoint, s3), log, plan.timeout)
                    verify_and_delete(s3, prefix, workload, name)
                    results.add(server, name, workload, rep, Sample(seconds, *cpu))
            shutil.rmtree(src)
        for rep in range(1, plan.repeat + 1) if plan.sustained else ():
            assert plan.sustained is not None
            run = daemon.measure_sustained(plan.sustained, f"sustained-r{rep}", rep, plan.timeout)
            results.sustained.setdefault(server, []).append(run)
            figures = latencies_of(run.latencies)
            print(
                f"  uploaderd  sustained {plan.sustained.describe()} rep {rep}: p50 "
                f"{figures.p50:.3f}s, p99 {figures.p99:.3f}s, max {figures.max:.3f}s over "
                f"{figures.count} files; feeder at most {run.late * 1000:.1f} ms late; "
                f"CPU s: {_cpu_text(run.sample)}"
            )


# --- the report ------------------------------------------------------------------------------


def report(plan: Plan, results: Results) -> str:
    """The tables: medians, throughput, uploaderd's time over each tool's and the CPU split;
    the sustained latencies against their target."""
    settle = plan.daemon.settle
    header = (
        f"{'tool':<16} {'workload':<18} {'seconds':>7} {'min-max':>11} {'files/s':>8} "
        f"{'MiB/s':>7} {'ud/tool':>7} {'ud-settle/tool':>14} "
        f"{'cpu tool':>8} {'cpu s3':>7} {'cpu db':>7}"
    )
    wan = f"WAN relay: {plan.wan * 1000:g} ms each way" if plan.wan else "no WAN relay"
    lines = [
        f"medians of {plan.repeat} runs; ud/tool = uploaderd time / tool time (>1: uploaderd "
        f"slower); ud-settle = uploaderd time minus the {settle:g}s settle; cpu = CPU seconds "
        "of the tool, the S3 server and PostgreSQL during the measurement",
        f"uploaderd workers: {plan.daemon.workers or 'default'}; {wan}",
    ]
    for server in plan.servers:
        lines += ["", f"S3 server: {server}"]
        if plan.workloads:
            lines += [header, "-" * len(header)]
        for workload in plan.workloads:
            ours = results.samples.get((server, "uploaderd", workload.name), [])
            if not ours:
                continue
            wall = median_of(ours, "seconds")
            net = max(wall - settle, 1e-9)
            lines.append(_row("uploaderd", workload, ours, wall, ""))
            lines.append(_row(f"uploaderd -{settle:g}s", workload, [], net, ""))
            for tool in PEERS:
                theirs = results.samples.get((server, tool, workload.name), [])
                if theirs:
                    seconds = median_of(theirs, "seconds")
                    ratios = f"{wall / seconds:>7.2f} {net / seconds:>14.2f}"
                    lines.append(_row(tool, workload, theirs, seconds, ratios))
        lines += _sustained_rows(plan, results.sustained.get(server, []))
    return "\n".join(lines + [f"skipped {tool}: {why}" for tool, why in results.skipped.items()])


def _row(
    tool: str, workload: Workload, samples: Sequence[Sample], seconds: float, ratios: str
) -> str:
    times = [sample.seconds for sample in samples]
    spread = f"{min(times):.2f}-{max(times):.2f}" if times else ""
    mib = workload.count * workload.size / MiB / seconds
    return (
        f"{tool:<16} {workload.describe():<18} {seconds:7.2f} {spread:>11} "
        f"{workload.count / seconds:8.1f} {mib:7.1f} {ratios:>22} {_cpu_medians(samples)}"
    )


def _cpu_medians(samples: Sequence[Sample]) -> str:
    return " ".join(
        f"{median_of(samples, name):>{width}.2f}" if samples else " " * width
        for name, width in (("tool_cpu", 8), ("s3_cpu", 7), ("db_cpu", 7))
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
    header = (
        f"{'tool':<10} {'sustained feed':<26} {'files':>6} {'p50 s':>6} {'p99 s':>6} "
        f"{'max s':>6} {'target p99':>14} {'late ms':>7} {'cpu tool':>8} {'cpu s3':>7} "
        f"{'cpu db':>7}"
    )
    verdict = f"<= {target:g} {'met' if figures.p99 <= target else 'MISSED'}"
    late = max(run.late for run in runs) * 1000
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
        f"{figures.p50:>6.3f} {figures.p99:>6.3f} {figures.max:>6.3f} {verdict:>14} "
        f"{late:>7.1f} {_cpu_medians([run.sample for run in runs])}",
        f"{'':<10} {'  queued -> uploaded':<26} {queued.count:>6} "
        f"{queued.p50:>6.3f} {queued.p99:>6.3f} {queued.max:>6.3f}",
    ]


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    servers = sorted(S3_SERVERS)
    add("--s3", nargs="+", choices=servers, default=["rclone"], help="S3 server(s), in turn")
    for name, count, size in (("small", 2000, 4), ("medium", 200, 1024), ("large", 0, 256 * 1024)):
        add(f"--{name}", type=int, default=count, help=f"{name} files (default {count}; 0: none)")
        add(f"--{name}-size", type=parse_size, default=size * KiB, help="bytes, or e.g. 64KiB")
    rate_help = "after the batches, feed uploaderd this many files a second (default 0: off)"
    add("--sustained-rate", type=float, default=0.0, metavar="FILES_PER_S", help=rate_help)
    add("--sustained-size", type=parse_size, default=64 * KiB, help="default 64KiB")
    add("--sustained-seconds", type=float, default=60.0, help="feed duration (default 60)")
    add("--repeat", type=int, default=3, help="runs of each measurement (median; default 3)")
    add(
        "--workers",
        type=int,
        help="uploaderd's workers and rclone's --transfers (default: "
        f"the daemon's own and {RCLONE_TRANSFERS})",
    )
    wan_help = "send every tool through a relay that delays each direction by MS ms (0: none)"
    add("--wan", type=float, default=0.0, metavar="MS", help=wan_help)
    add("--settle", type=float, default=1.0, help="the job's settle seconds (default 1)")
    add("--peers", nargs="*", choices=PEERS, default=list(PEERS), help="reference tools (all)")
    add("--timeout", type=float, default=300.0, help="seconds per measurement (default 300)")
    add("--log-level", choices=("debug", "info", "warning", "error"), default="warning")
    add("--json", type=Path, metavar="FILE", help="also write every sample")
    add("--keep", action="store_true", help="keep the work directory (logs, database cluster)")
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
    workloads = (
        Workload("small", args.small, args.small_size),
        Workload("medium", args.medium, args.medium_size),
        Workload("large", args.large, args.large_size),
    )
    rate = args.sustained_rate
    return Plan(
        tuple(args.s3),
        tuple(w for w in workloads if w.count),
        tuple(args.peers),
        args.repeat,
        args.timeout,
        DaemonSettings(args.workers, args.settle, args.log_level),
        wan=args.wan / 1000,
        sustained=Sustained(rate, args.sustained_size, args.sustained_seconds) if rate else None,
    )


# How a run is watched and kept, not what it measures: left out of the command of a rerun.
NOT_REPRODUCED = {"timeout", "log_level", "json", "keep"}


def reproduce_command(args: argparse.Namespace) -> str:
    """The full command line with every default spelled out, so a rerun measures the same."""
    argv: list[str] = []
    for name, value in vars(args).items():
        if value is not None and name not in NOT_REPRODUCED:
            argv.append(f"--{name.replace('_', '-')}")
            for item in value if isinstance(value, list) else [value]:
                argv.append(f"{item:g}" if isinstance(item, float) else str(item))
    return common.reproduce("throughput.py", argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_of(args)

    def measure() -> str:
        results = Results()
        with common.work_directory("uploaderd-bench-", None, args.keep) as work:
            pg = PostgresCluster(work / "postgres")
            try:
                pg.start()
                for server in plan.servers:
                    run_server(server, plan, work / server, pg, results)
            finally:
                pg.stop()
        if args.json:
            samples = [
                {"server": s, "tool": t, "workload": w, **asdict(sample)}
                for (s, t, w), samples in results.samples.items()
                for sample in samples
            ]
            sustained = {k: [asdict(run) for run in v] for k, v in results.sustained.items()}
            data = {"plan": asdict(plan), "samples": samples, "sustained": sustained}
            args.json.write_text(json.dumps(data | {"skipped": results.skipped}, default=str))
        return report(plan, results)

    feeds = [w.describe() for w in plan.workloads]
    if plan.sustained:
        feeds.append(f"sustained {plan.sustained.describe()} (uploaderd only)")
    title = f"uploaderd throughput: {', '.join(feeds)}; {plan.repeat} repetitions"
    return common.run(title, measure, reproduce_command(args))


if __name__ == "__main__":
    sys.exit(main())
