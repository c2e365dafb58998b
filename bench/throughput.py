"""Throughput of uploaderd against its peers (s5cmd, rclone, aws s3) on one local S3 server.

Every tool uploads the same files to the same server, run after run, and a listing checks
each: the table gives medians and uploaderd's time over each peer's. bench/README.md has the
method, the sustained mode (``--sustained-rate``) and the WAN mode (``--wan MS``).
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from bench import common
from bench.common import BenchError, Spent, postgres_cpu, process_cpu, rows
from devstack import REGION, S3_SERVERS, DevstackError, PostgresCluster, S3Server
from devstack.process import find_tool, tail, terminate
from devstack.relay import Relay
from uploaderd.policy.units import parse_size

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

KiB = 1024
MiB = 1024 * 1024
BUCKET = "bench"
PEERS = ("s5cmd", "rclone", "aws")
RCLONE_TRANSFERS = 8  # rclone's --transfers when --workers is not given
SUSTAINED_POLL_SECONDS = 0.5  # the ledger keeps each upload's time: polling only watches health
SUSTAINED_MARGIN = 0.5  # the target: close-to-uploaded p99 <= settle + this


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
    def workload(self) -> Workload:  # the files it amounts to, for the listing check
        return Workload("sustained", round(self.rate * self.seconds), self.size)

    def describe(self) -> str:
        return f"{self.rate:g}/s x {size_text(self.size)} for {self.seconds:g}s"


@dataclass(frozen=True)
class Sample:
    """One measurement: wall seconds, and the CPU seconds each party burnt meanwhile."""

    seconds: float
    tool_cpu: float
    s3_cpu: float
    db_cpu: float


@dataclass(frozen=True)
class SustainedSample:
    """One sustained run: each file's seconds from its rename to ``uploaded`` in the ledger."""

    latencies: tuple[float, ...]
    queued: tuple[float, ...]  # discovered_at -> uploaded_at: claim, read, hash, PUT, record
    late: float  # how far the feeder fell behind its schedule at worst
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
    """When file ``index`` is due, from the index: a late file delays none after it."""
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
    """The workload's files, of random bytes (no store can compress them), named by ``seed``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"s{seed}-f{index:06d}.bin" for index in range(workload.count)]
    for path in paths:
        path.write_bytes(os.urandom(workload.size))
    return paths


class Feeder:
    """A thread that writes each file and renames it into the watched directory on schedule,
    stamping each rename with the wall clock (that of the ledger's ``uploaded_at``)."""

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


def children_cpu() -> float:
    """CPU seconds of every child we have reaped: a peer's share is the delta around it."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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


def peer_command(name: str, exe: str, url: str, src: Path, prefix: str, workers: int) -> list[str]:
    """How each reference tool copies a directory to ``s3://BUCKET/prefix/``."""
    dest = f"s3://{BUCKET}/{prefix}"
    if name == "s5cmd":  # --numworkers left at its default (256): s5cmd as people run it
        return [exe, "--endpoint-url", url, "cp", f"{src}/*", dest]
    if name == "rclone":  # --config to a missing file: the remote is RCLONE_CONFIG_BENCH_*
        argv = [exe, "--config", os.devnull, "copy", str(src), f"bench:{BUCKET}/{prefix}"]
        return [*argv, "--transfers", str(workers), "--s3-no-check-bucket"]
    # awscli v1 defaults: 10 concurrent requests, multipart from 8 MiB.
    argv = [exe, "--endpoint-url", url, "s3", "cp", str(src), dest, "--recursive"]
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
    """A peer's wall seconds, run in a process group that Ctrl-C or a timeout kills whole."""
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


@dataclass(frozen=True)
class DaemonSettings:
    workers: int | None  # None: the daemon's default
    settle: float
    log_level: str


class UploaderdUnderTest:
    """One daemon for one S3 server, its job watching ``watched``: each measurement renames
    its files from ``staging`` into a directory of its own there."""

    def __init__(
        self, work: Path, pg: PostgresCluster, s3: S3Server, endpoint: str, plan: Plan, server: str
    ) -> None:
        self.s3 = s3
        settings = plan.daemon
        self.watched = work / "watched"
        self.staging = work / "staging"
        self.dsn = pg.create_database(f"bench_{server}")
        self.daemon = common.bench_daemon(
            work, self.dsn, endpoint, s3, settings.log_level, workers=settings.workers
        )
        source = {"paths": [str(self.watched)], "settle": f"{settings.settle}s", "rescan": "1d"}
        destination = {"bucket": BUCKET, "key": "uploaderd/${relpath}"}
        self.daemon.write_job("bench", {"source": source, "destination": destination})
        daemon_cpu = lambda: process_cpu(common.pid_of(self.daemon))  # noqa: E731
        self.meters = (daemon_cpu, lambda: process_cpu(s3.pid), lambda: postgres_cpu(pg))
        self.stack = contextlib.ExitStack()  # what start() started, stop() stops

    def start(self, labels: Sequence[str]) -> None:
        """Migrate, start, wait for READY=1, each measurement's directory (and watch) ready."""
        for label in labels:
            (self.watched / label).mkdir(parents=True, exist_ok=True)
        common.command(self.daemon, "migrate", timeout=60)
        self.stack.enter_context(common.running(self.daemon))
        self.db = self.stack.enter_context(common.connect(self.dsn))

    def counts(self) -> tuple[int, int]:
        """(uploaded, failed) versions in the ledger."""
        sql = "SELECT count(*) FILTER (WHERE state = %s), count(*) FILTER (WHERE state = %s) "
        (uploaded, failed), *_ = rows(self.db, sql + "FROM file_versions", "uploaded", "failed")
        return int(uploaded), int(failed)

    def check(self, base_failed: int) -> int:
        """The uploaded versions; a failed version or the daemon's death stops the run."""
        uploaded, failed = self.counts()
        if failed > base_failed:
            sql = "SELECT relpath, last_error FROM file_versions WHERE last_error IS NOT NULL"
            last = rows(self.db, sql + " ORDER BY id DESC LIMIT 1")
            error = f"{last[0][0]}: {last[0][1]}" if last else "no error recorded"
            raise BenchError(f"uploaderd failed {failed - base_failed} versions: {error}")
        if not self.daemon.alive():
            raise BenchError(f"uploaderd died:\n{tail(self.daemon.log_path)}")
        return uploaded

    def wait_uploaded(self, target: int, base_failed: int, timeout: float) -> None:
        done = lambda: self.check(base_failed) >= target  # noqa: E731
        common.wait_alive(self.daemon, done, timeout, f"{target} versions uploaded")

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
        with Spent(*self.meters) as spent:
            for path in files:
                os.rename(path, target / path.name)
            self.wait_uploaded(base_uploaded + workload.count, base_failed, timeout)
        verify_and_delete(self.s3, f"uploaderd/{label}/", workload, "uploaderd")
        for path in files:  # the disk footprint stays one workload deep
            (target / path.name).unlink()
        return Sample(spent.seconds, *spent.cpu)

    def measure_sustained(
        self, sustained: Sustained, label: str, seed: int, timeout: float
    ) -> SustainedSample:
        """Feed ``sustained`` in; each file's rename-to-uploaded time (``timeout``: after it)."""
        base_uploaded, base_failed = self.counts()
        feeder = Feeder(self.staging / label, self.watched / label, sustained, seed)
        with Spent(*self.meters) as spent:
            feeder.start()
            try:
                while feeder.running(SUSTAINED_POLL_SECONDS):
                    self.check(base_failed)
            finally:
                feeder.stop()
            if feeder.error is not None:
                raise BenchError(f"the sustained feed stopped: {feeder.error}")
            self.wait_uploaded(base_uploaded + sustained.workload.count, base_failed, timeout)
        verify_and_delete(self.s3, f"uploaderd/{label}/", sustained.workload, "uploaderd")
        # File name -> (discovered_at, uploaded_at), seconds since the epoch.
        sql = "SELECT relpath, extract(epoch FROM discovered_at), extract(epoch FROM uploaded_at) "
        sql += "FROM file_versions WHERE state = 'uploaded' AND relpath LIKE %s"
        times = {
            path.split("/", 1)[1]: (float(queued), float(uploaded))
            for path, queued, uploaded in rows(self.db, sql, f"{label}/%")
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
            Sample(spent.seconds, *spent.cpu),
        )

    def stop(self) -> None:
        self.stack.close()


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
    """Every tool, workload and repetition against one fresh S3 server (and its relay, in WAN
    mode: the listings go straight to the server)."""
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
        meters = (children_cpu, lambda: process_cpu(s3.pid), lambda: postgres_cpu(pg))
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
                    with Spent(*meters) as spent:
                        seconds = run_timed(argv, peer_env(name, endpoint, s3), log, plan.timeout)
                    verify_and_delete(s3, prefix, workload, name)
                    results.add(server, name, workload, rep, Sample(seconds, *spent.cpu))
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


def _sustained_rows(plan: Plan, runs: Sequence[SustainedSample]) -> list[str]:
    """Latency percentiles over every file of every run, against the target."""
    if not plan.sustained or not runs:
        return []
    figures = latencies_of([latency for run in runs for latency in run.latencies])
    queued = latencies_of([latency for run in runs for latency in run.queued])
    target = plan.daemon.settle + SUSTAINED_MARGIN
    header = (
        f"{'tool':<10} {'sustained feed':<26} {'files':>6} {'p50 s':>6} {'p99 s':>6} {'max s':>6} "
        f"{'target p99':>14} {'late ms':>7} {'cpu tool':>8} {'cpu s3':>7} {'cpu db':>7}"
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
    workers = f"uploaderd's workers, rclone's --transfers (default: its own, {RCLONE_TRANSFERS})"
    add("--workers", type=int, help=workers)
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
        min(args.small, args.medium, args.large, args.sustained_rate) < 0
        or args.repeat < 1
        or (args.workers is not None and args.workers < 1)
        or not 0 <= args.wan <= 1000
        or (args.sustained_rate and args.sustained_rate * args.sustained_seconds < 1)
    ):
        parser.error("counts >= 0, --repeat and --workers >= 1, --wan 0-1000, a feed >= 1 file")
    return args


def plan_of(args: argparse.Namespace) -> Plan:
    workloads = (
        Workload("small", args.small, args.small_size),
        Workload("medium", args.medium, args.medium_size),
        Workload("large", args.large, args.large_size),
    )
    rate, daemon = args.sustained_rate, DaemonSettings(args.workers, args.settle, args.log_level)
    sustained = Sustained(rate, args.sustained_size, args.sustained_seconds) if rate else None
    servers, peers, kept = tuple(args.s3), tuple(args.peers), tuple(w for w in workloads if w.count)
    return Plan(servers, kept, peers, args.repeat, args.timeout, daemon, args.wan / 1000, sustained)


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
        with common.workspace("uploaderd-bench-", args.keep) as (work, pg):
            for server in plan.servers:
                run_server(server, plan, work / server, pg, results)
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
