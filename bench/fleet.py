"""A fleet on one PostgreSQL: N daemons, each in its own UTS namespace (its own hostname), on
one stock server (``max_connections = 100``).

Each host runs a job of its own and one ``shared: true`` job on a common directory. The
bench waits for the fleet to idle, then drops a burst of small files into the shared
directory and reports, per fleet size: the daemons' connections idle and at their peak, idle
CPU, CPU per shared file (daemons and PostgreSQL), the time to drain the burst, whether
``uploaderd status`` answered during it, and how many times a daemon was refused a
connection.

    .venv/bin/python bench/fleet.py --hosts 1 10 30
    .venv/bin/python bench/fleet.py --hosts 45 --connections 2 --files 2000
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg2

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    BenchError,
    bench_daemon,
    command,
    postgres_cpu,
    process_cpu,
    reproduce,
    run,
    scalar,
    wait_alive,
    work_directory,
)
from devstack import S3_SERVERS, DaemonProcess, PostgresCluster, S3Server, wait_for

CONNECTIONS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'uploaderd'"
UPLOADED = "SELECT count(*) FROM file_versions WHERE job = 'shared' AND state = 'uploaded'"
UPLOADERS = (
    "SELECT count(DISTINCT a.host) FROM upload_attempts a JOIN file_versions v "
    "ON v.id = a.file_version_id WHERE v.job = 'shared' AND a.outcome = 'uploaded'"
)


class Host(DaemonProcess):
    """A daemon under its own hostname: ``unshare -u`` gives it a UTS namespace."""

    hostname = ""

    def command(self) -> list[str]:
        script = 'hostname "$0" && exec "$@"'
        return ["unshare", "-u", "sh", "-c", script, self.hostname, *self.cli("run")]


@dataclass(frozen=True)
class Result:
    hosts: int
    idle_connections: int
    peak_connections: int
    idle_cpu: tuple[float, float]  # % of a core: daemons, PostgreSQL
    cpu_per_file: tuple[float, float]  # ms: daemons, PostgreSQL
    drain: float
    uploaders: int  # hosts that uploaded some of the burst
    status_seconds: float | None  # None: status failed during the burst
    refused: int


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 10], help="fleet sizes")
    parser.add_argument("--files", type=int, default=2000, help="4 KiB files in the burst")
    parser.add_argument("--connections", type=int, default=2, help="database.connections")
    parser.add_argument("--workers", type=int, default=8, help="upload threads per host")
    parser.add_argument("--idle", type=float, default=20.0, help="idle window, seconds")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for a drain")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it")
    return parser.parse_args(argv)


class Peak:
    """The most daemon connections seen, sampled on a connection of the bench's own."""

    def __init__(self, dsn: str) -> None:
        self.most = 0
        self._stop = threading.Event()
        self._conn = psycopg2.connect(dsn, application_name="bench fleet")
        self._conn.autocommit = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.most = max(self.most, int(scalar(self._conn, CONNECTIONS)))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        self._conn.close()
        return self.most


@contextlib.contextmanager
def fleet(
    work: Path, dsn: str, s3: S3Server, bucket: str, args: argparse.Namespace, size: int
) -> Iterator[list[Host]]:
    shared = work / "shared"
    shared.mkdir(parents=True)
    hosts: list[Host] = []
    try:
        for n in range(size):
            home = work / f"host{n:03d}"
            own = home / "own"
            own.mkdir(parents=True)
            host = bench_daemon(
                home,
                dsn,
                s3.endpoint_url,
                s3,
                args.workers,
                "info",
                kind=Host,
                database={"dsn": dsn, "connections": args.connections},
            )
            assert isinstance(host, Host)
            host.hostname = f"host{n:03d}"
            for name, root, extra in (("own", own, {}), ("shared", shared, {"shared": True})):
                host.write_job(
                    name,
                    {
                        "source": {"paths": [str(root)], "settle": "1s", **extra},
                        "destination": {"bucket": bucket, "key": "${job}/${relpath}"},
                    },
                )
            host.start(wait_ready=False)
            hosts.append(host)
        for host in hosts:
            host.wait_ready(timeout=300)
        yield hosts
    finally:
        for host in hosts:
            with contextlib.suppress(Exception):
                host.stop(30)
            host.cleanup()


def cpu(hosts: list[Host], pg: PostgresCluster) -> tuple[float, float]:
    daemons = sum(process_cpu(h.proc.pid if h.proc else None) for h in hosts)
    return daemons, postgres_cpu(pg)


def measure_fleet(
    work: Path, pg: PostgresCluster, s3: S3Server, args: argparse.Namespace, size: int
) -> Result:
    dsn = pg.create_database(f"fleet{size}")
    bucket = f"fleet{size}"
    s3.create_bucket(bucket)
    with psycopg2.connect(dsn) as conn:
        conn.autocommit = True
        subprocess_migrate(work, dsn, s3, args)
        with fleet(work / f"fleet{size}", dsn, s3, bucket, args, size) as hosts:
            time.sleep(3.0)  # past the start-up scans: the idle window starts after
            before, start = cpu(hosts, pg), time.perf_counter()
            time.sleep(args.idle)
            after, elapsed = cpu(hosts, pg), time.perf_counter() - start
            idle_cpu = tuple(100 * (a - b) / elapsed for a, b in zip(after, before, strict=True))
            idle_connections = int(scalar(conn, CONNECTIONS))
            peak = Peak(dsn)
            before, start = cpu(hosts, pg), time.perf_counter()
            shared = work / f"fleet{size}" / "shared"
            for i in range(args.files):
                (shared / f"f{i:05d}.bin").write_bytes(i.to_bytes(4, "big") * 1024)
            wait_for(
                lambda: scalar(conn, "SELECT count(*) FROM file_versions WHERE job = 'shared'"),
                timeout=60,
                message="the burst being queued",
            )
            status = status_during_burst(hosts[0])
            uploaded = (
                "SELECT count(*) FROM file_versions WHERE job = 'shared' AND state = 'uploaded'"
            )
            wait_alive(
                hosts[0],
                lambda: scalar(conn, uploaded) == args.files,
                args.timeout,
                f"{args.files} shared files uploaded",
            )
            drain = time.perf_counter() - start
            after = cpu(hosts, pg)
            per_file = tuple(
                1000 * (a - b) / args.files for a, b in zip(after, before, strict=True)
            )
            refused = sum(
                h.log_path.read_text(errors="replace").count("too many clients") for h in hosts
            )
            return Result(
                size,
                idle_connections,
                peak.stop(),
                (idle_cpu[0], idle_cpu[1]),
                (per_file[0], per_file[1]),
                drain,
                int(scalar(conn, UPLOADERS)),
                status,
                refused,
            )


def subprocess_migrate(work: Path, dsn: str, s3: S3Server, args: argparse.Namespace) -> None:
    migrator = bench_daemon(work / "migrate", dsn, s3.endpoint_url, s3, args.workers, "info")
    command(migrator, "migrate", timeout=120)


def status_during_burst(host: Host) -> float | None:
    """Seconds ``uploaderd status`` took; None when it failed."""
    started = time.perf_counter()
    try:
        command(host, "status", timeout=60, ok=(0, 1))
    except BenchError:
        return None
    return time.perf_counter() - started


def report(results: Sequence[Result], args: argparse.Namespace) -> str:
    lines = [
        f"{args.files} x 4 KiB into one shared job; database.connections {args.connections}; "
        f"{args.workers} workers a host; PostgreSQL with its defaults (max_connections 100)",
        "",
        "| hosts | connections idle / peak | idle CPU, daemons + PG | CPU per shared file, "
        "daemons + PG | drain | hosts that uploaded | status during the burst | refused |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        status = f"{r.status_seconds:.2f} s" if r.status_seconds is not None else "failed"
        lines.append(
            f"| {r.hosts} | {r.idle_connections} / {r.peak_connections} | "
            f"{r.idle_cpu[0]:.1f} % + {r.idle_cpu[1]:.1f} % | "
            f"{r.cpu_per_file[0]:.2f} + {r.cpu_per_file[1]:.2f} ms | {r.drain:.1f} s | "
            f"{r.uploaders} | "
            f"{status} | {r.refused} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)

    def measure() -> str:
        with (
            work_directory("uploaderd-fleet-", args.keep, keep=args.keep is not None) as work,
            contextlib.ExitStack() as stack,
        ):
            pg = stack.enter_context(PostgresCluster(work / "postgres", fast=False))
            s3 = stack.enter_context(S3_SERVERS["rclone"](work / "s3"))
            results = []
            for size in args.hosts:
                print(f"{size} hosts ...", flush=True)
                results.append(measure_fleet(work, pg, s3, args, size))
                print(report(results[-1:], args).splitlines()[-1], flush=True)
            return report(results, args)

    return run("uploaderd fleet", measure, reproduce("fleet.py", argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
