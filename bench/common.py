"""What the benchmarks share: the daemon as they run it, CPU accounting and a run's frame.

The daemon runs as systemd would, after ``uploaderd migrate``, metrics off, from ``/``: there no
checkout shadows the uploaderd on PYTHONPATH that is being measured.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from devstack import REGION, DaemonProcess, DevstackError, PostgresCluster, S3Server, wait_for
from devstack.process import WaitTimeout, stop_on_signals, tail

SHUTDOWN_GRACE = 10.0
READY_TIMEOUT = 180.0
NEUTRAL_CWD = Path("/")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A measurement could not be taken or was wrong; the run stops with its message."""


def credentials(s3: S3Server) -> dict[str, str]:
    """What every tool runs with: the server's keys, and no user AWS config file."""
    keys = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    region = {"AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION}
    files = {"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    return keys | region | files


def bench_daemon(
    work: Path, dsn: str, endpoint: str, s3: S3Server | None, level: str, **settings: Any
) -> DaemonProcess:
    """A daemon in ``work`` (its log: uploaderd.log); ``settings`` are more keys of its config
    (``workers=None``: the shipped default)."""
    log, grace = {"level": level, "format": "text"}, f"{SHUTDOWN_GRACE:.0f}s"
    daemon = DaemonProcess(work, dsn, endpoint, log=log, shutdown_grace=grace, **settings)
    daemon.log_path = work / "uploaderd.log"
    daemon.cwd = NEUTRAL_CWD
    daemon.extra_env = credentials(s3) if s3 is not None else {}
    return daemon


def pid_of(daemon: DaemonProcess) -> int | None:
    return daemon.proc.pid if daemon.proc else None


def command(daemon: DaemonProcess, *args: str, timeout: float, ok: tuple[int, ...] = (0,)) -> float:
    """Run ``uploaderd ARGS`` on the daemon's config; the seconds it took. Another exit status
    than ``ok`` stops the run."""
    argv, env, started = daemon.cli(*args), daemon.environment(), time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=daemon.cwd, capture_output=True, timeout=timeout)
    if done.returncode not in ok:
        error = done.stderr.decode(errors="replace").strip()
        raise BenchError(f"uploaderd {args[0]} exited {done.returncode}: {error}")
    return time.perf_counter() - started


@contextlib.contextmanager
def running(daemon: DaemonProcess) -> Iterator[float]:
    """The daemon started and READY=1 for the block (yields the seconds it took to READY),
    then stopped with SIGTERM, SIGKILL after the grace and a margin."""
    try:
        daemon.start(wait_ready=False)
        daemon.wait_ready(timeout=READY_TIMEOUT)
        yield time.perf_counter() - daemon.started
    finally:
        if daemon.alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.stop(SHUTDOWN_GRACE + 30.0)
        daemon.cleanup()


def wait_alive(
    daemon: DaemonProcess,
    predicate: Callable[[], object],
    timeout: float,
    message: str,
    interval: float = 0.05,
) -> float:
    """Poll ``predicate`` while the daemon lives; seconds it took. Its death or the timeout
    stops the run, with the end of its log."""
    started = time.perf_counter()

    def done() -> object:
        if not daemon.alive():
            code = daemon.proc.returncode if daemon.proc else None
            raise BenchError(f"uploaderd died ({code}):\n{tail(daemon.log_path)}")
        return predicate()

    try:
        wait_for(done, timeout, interval, message)
    except WaitTimeout as exc:
        raise BenchError(f"{exc}\n{tail(daemon.log_path)}") from None
    return time.perf_counter() - started


@contextlib.contextmanager
def connect(dsn: str, name: str = "bench") -> Iterator[psycopg2.extensions.connection]:
    """An autocommit connection of the bench's own, closed after the block."""
    with contextlib.closing(psycopg2.connect(dsn, application_name=name)) as conn:
        conn.autocommit = True
        yield conn


def rows(conn: psycopg2.extensions.connection, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """The rows of a query (a literal % is written %%: the parameters are always bound)."""
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []


def scalar(conn: psycopg2.extensions.connection, sql: str, *params: object) -> Any:
    found = rows(conn, sql, *params)
    return found[0][0] if found else None


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


class Spent:
    """Over a ``with`` block: its wall ``seconds`` and the CPU seconds each meter counted."""

    def __init__(self, *meters: Callable[[], float]) -> None:
        self.meters = meters
        self.seconds, self.cpu = 0.0, [0.0] * len(meters)

    def __enter__(self) -> Spent:
        self._before = [meter() for meter in self.meters]
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._started
        self.cpu = [meter() - b for meter, b in zip(self.meters, self._before, strict=True)]

    def percent(self) -> list[float]:
        """The CPU of each meter in % of a core over the block."""
        return [100 * cpu / self.seconds for cpu in self.cpu]


@contextlib.contextmanager
def workspace(
    prefix: str, keep: Path | bool | None, fast: bool = True
) -> Iterator[tuple[Path, PostgresCluster]]:
    """A work directory (``keep``: one to use and keep, or True to keep a new one under /tmp,
    where PostgreSQL run as `postgres` reaches it) and a PostgreSQL cluster started in it."""
    work = keep.resolve() if isinstance(keep, Path) else Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    pg = PostgresCluster(work / "postgres", fast=fast)
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(pg.stop)
            pg.start()
            yield work, pg
    finally:
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def reproduce(script: str, argv: Sequence[str]) -> str:
    """The command line of a rerun, with the PYTHONPATH that chose the uploaderd."""
    path = [f"PYTHONPATH={os.environ['PYTHONPATH']}"] if "PYTHONPATH" in os.environ else []
    return shlex.join([*path, ".venv/bin/python", f"bench/{script}", *argv])


def run(title: str, measure: Callable[[], str], command_line: str) -> int:
    """Run ``measure`` and print its report, with the load and a rerun's command line. Ctrl-C,
    SIGTERM and SIGHUP stop all it started; no AWS_* or RCLONE_* variable reaches a tool."""
    stop_on_signals()
    if isinstance(sys.stdout, io.TextIOWrapper):  # progress lines as they come, into a pipe too
        sys.stdout.reconfigure(line_buffering=True)
    for key in [k for k in os.environ if k.startswith(("AWS_", "RCLONE_"))]:
        del os.environ[key]
    load_before = os.getloadavg()[0]
    code = "import uploaderd; print(uploaderd.__file__)"  # run from /, as the daemon is
    found = subprocess.check_output([sys.executable, "-c", code], cwd=NEUTRAL_CWD, text=True)
    package = Path(found.strip()).parent
    print(f"{title}; {os.cpu_count()} CPUs; uploaderd from {package}", flush=True)
    try:
        report = measure()
    except (BenchError, DevstackError, psycopg2.Error) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    print(
        f"\n{report}\n\n{os.cpu_count()} CPUs; 1-minute load average {load_before:.2f} "
        f"before, {os.getloadavg()[0]:.2f} after; uploaderd from {package}\n"
        f"reproduce: {command_line}"
    )
    return 0
