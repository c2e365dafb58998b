"""A fleet on one PostgreSQL: N daemons, each in its own UTS namespace (its own hostname), on
one stock server (``max_connections = 100``).

Each host runs a job of its own and one ``shared: true`` job; once the fleet idles, a burst of
small files lands in the shared directory. bench/README.md explains the report's columns.
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

from bench import common
from bench.common import BenchError, Spent, postgres_cpu, process_cpu, scalar
from devstack import (
    S3_SERVERS,
    DaemonProcess,
    PgBouncer,
    PostgresCluster,
    S3Server,
    WaitTimeout,
    wait_for,
)

# Server connections of the fleet (the daemons', their commands', or PgBouncer's for them).
CONNECTIONS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND backend_type = 'client backend' AND application_name NOT LIKE 'bench%%'"
)
QUEUED = "SELECT count(*) FROM file_versions WHERE job = 'shared'"
UPLOADED = QUEUED + " AND state = 'uploaded'"
UPLOADERS = (
    "SELECT count(DISTINCT a.host) FROM upload_attempts a JOIN file_versions v "
    "ON v.id = a.file_version_id WHERE v.job = 'shared' AND a.outcome = 'uploaded'"
)


@dataclass(frozen=True)
class Result:
    hosts: int
    idle_connections: int
    peak_connections: int
    idle: Spent  # the daemons' and PostgreSQL's CPU in the idle window
    burst: Spent  # and from the burst's first file until its last upload
    uploaders: int  # hosts that uploaded some of the burst
    status_seconds: float | None  # None: status failed during the burst
    refused: int


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--hosts", type=int, nargs="+", default=[1, 10], help="fleet sizes")
    add("--files", type=int, default=2000, help="4 KiB files in the burst")
    add("--connections", type=int, default=2, help="database.connections")
    add(
        "--pooler",
        choices=("none", "session", "transaction"),
        default="none",
        help="PgBouncer in front of PostgreSQL, in this pool_mode",
    )
    add("--pool-size", type=int, default=20, help="PgBouncer's default_pool_size")
    add("--workers", type=int, default=8, help="upload threads per host")
    add("--idle", type=float, default=20.0, help="idle window, seconds")
    add("--timeout", type=float, default=600.0, help="seconds for a drain")
    add("--keep", type=Path, metavar="DIR", help="work in DIR and keep it")
    return parser.parse_args(argv)


@contextlib.contextmanager
def peak(dsn: str) -> Iterator[list[int]]:
    """The most daemon connections seen during the block, sampled on a connection of its own."""
    most, stop = [0], threading.Event()
    with common.connect(dsn, "bench fleet") as conn:

        def sample() -> None:
            while not stop.wait(0.05):
                most[0] = max(most[0], int(scalar(conn, CONNECTIONS)))

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield most
        finally:
            stop.set()
            thread.join(10)


@contextlib.contextmanager
def fleet(
    work: Path, dsn: str, s3: S3Server, bucket: str, args: argparse.Namespace, size: int
) -> Iterator[list[DaemonProcess]]:
    shared = work / "shared"
    shared.mkdir(parents=True)
    mode = "transaction" if args.pooler == "transaction" else "session"
    database = {"dsn": dsn, "connections": args.connections, "pool_mode": mode}
    settings = {"workers": args.workers, "database": database}
    destination = {"bucket": bucket, "key": "${job}/${relpath}"}
    hosts: list[DaemonProcess] = []
    try:
        for n in range(size):
            home = work / f"host{n:03d}"
            own = home / "own"
            own.mkdir(parents=True)
            host = common.bench_daemon(home, dsn, s3.endpoint_url, s3, "info", **settings)
            host.hostname = f"host{n:03d}"  # unshare -u: a UTS namespace of its own
            for name, root, extra in (("own", own, {}), ("shared", shared, {"shared": True})):
                source = {"paths": [str(root)], "settle": "1s", **extra}
                host.write_job(name, {"source": source, "destination": destination})
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


def check_inotify(size: int) -> None:
    """Every daemon here runs as one user, whose inotify instances the kernel caps: a job
    and jobs.d take one each."""
    needed = 3 * size + 16
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    if limit < needed:
        raise BenchError(
            f"{size} hosts need {needed} inotify instances of one user, the limit is {limit}: "
            f"sysctl -w fs.inotify.max_user_instances={needed}"
        )


def measure_fleet(
    work: Path, pg: PostgresCluster, s3: S3Server, args: argparse.Namespace, size: int
) -> Result:
    check_inotify(size)
    direct = pg.create_database(f"fleet{size}")
    bucket = f"fleet{size}"
    s3.create_bucket(bucket)
    migrator = common.bench_daemon(work / "migrate", direct, s3.endpoint_url, s3, "info")
    common.command(migrator, "migrate", timeout=120)
    with (
        pooler(pg, args) as bouncer,
        common.connect(direct) as conn,
        fleet(work / f"fleet{size}", bouncer_dsn(bouncer, direct), s3, bucket, args, size) as hosts,
    ):
        # Past the start-up scans: the idle window starts once the fleet holds no more than
        # a connection a host, or after two minutes whatever it holds.
        with contextlib.suppress(WaitTimeout):
            wait_for(lambda: scalar(conn, CONNECTIONS) <= size, 120, 0.5, "an idle fleet")
        pids = [common.pid_of(host) for host in hosts]
        server = lambda: postgres_cpu(pg) + process_cpu(bouncer.pid if bouncer else None)  # noqa: E731
        meters = (lambda: sum(process_cpu(pid) for pid in pids), server)
        with Spent(*meters) as idle:
            time.sleep(args.idle)
        idle_connections = int(scalar(conn, CONNECTIONS))
        with peak(direct) as most, Spent(*meters) as burst:
            shared = work / f"fleet{size}" / "shared"
            for i in range(args.files):
                (shared / f"f{i:05d}.bin").write_bytes(i.to_bytes(4, "big") * 1024)
            wait_for(lambda: scalar(conn, QUEUED), timeout=60, message="the burst being queued")
            status = status_during_burst(hosts[0])
            uploaded = lambda: scalar(conn, UPLOADED) == args.files  # noqa: E731
            common.wait_alive(
                hosts[0], uploaded, args.timeout, f"{args.files} shared files uploaded"
            )
        refused = sum(host.log().count("too many clients") for host in hosts)
        uploaders = int(scalar(conn, UPLOADERS))
        return Result(size, idle_connections, most[0], idle, burst, uploaders, status, refused)


@contextlib.contextmanager
def pooler(pg: PostgresCluster, args: argparse.Namespace) -> Iterator[PgBouncer | None]:
    if args.pooler == "none":
        yield None
        return
    with PgBouncer(pg, pool_mode=args.pooler, pool_size=args.pool_size) as bouncer:
        yield bouncer


def bouncer_dsn(bouncer: PgBouncer | None, direct: str) -> str:
    return direct if bouncer is None else bouncer.dsn(direct.rsplit("/", 1)[1])


def status_during_burst(host: DaemonProcess) -> float | None:
    """Seconds ``uploaderd status`` took; None when it failed."""
    try:
        return common.command(host, "status", timeout=60, ok=(0, 1))
    except BenchError:
        return None


def report(results: Sequence[Result], args: argparse.Namespace) -> str:
    via = (
        "directly"
        if args.pooler == "none"
        else (
            f"through PgBouncer, pool_mode {args.pooler}, default_pool_size {args.pool_size} "
            "(its CPU counted with PG's)"
        )
    )
    lines = [
        f"{args.files} x 4 KiB into one shared job; database.connections {args.connections}; "
        f"{args.workers} workers a host; PostgreSQL with its defaults (max_connections 100), "
        f"{via}",
        "",
        "| hosts | connections idle / peak | idle CPU, daemons + PG | CPU per shared file, "
        "daemons + PG | drain | hosts that uploaded | status during the burst | refused |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        status = f"{r.status_seconds:.2f} s" if r.status_seconds is not None else "failed"
        idle, per_file = r.idle.percent(), [1000 * cpu / args.files for cpu in r.burst.cpu]
        lines.append(
            f"| {r.hosts} | {r.idle_connections} / {r.peak_connections} | "
            f"{idle[0]:.1f} % + {idle[1]:.1f} % | "
            f"{per_file[0]:.2f} + {per_file[1]:.2f} ms | {r.burst.seconds:.1f} s | "
            f"{r.uploaders} | {status} | {r.refused} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)

    def measure() -> str:
        with (
            common.workspace("uploaderd-fleet-", args.keep, fast=False) as (work, pg),
            S3_SERVERS["rclone"](work / "s3") as s3,
        ):
            results = []
            for size in args.hosts:
                print(f"{size} hosts ...", flush=True)
                results.append(measure_fleet(work, pg, s3, args, size))
                print(report(results[-1:], args).splitlines()[-1], flush=True)
            return report(results, args)

    return common.run("uploaderd fleet", measure, common.reproduce("fleet.py", argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
