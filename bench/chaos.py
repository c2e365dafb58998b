"""A seeded chaos soak with an oracle: faults fall together while a writer keeps a tree busy.

A writer adds, renames in, rewrites (slowly, or putting the old mtime back), deletes and
moves files, some of them over the multipart threshold, and logs the SHA-256 of each write.
Meanwhile faults fall at random, one after another: the daemon killed (-9) or stopped and
restarted, reloaded with a changed job file; PostgreSQL stopped (fast, immediate), made
read-only, or failed over to its streaming standby (which may have missed the last commits);
the S3 server killed, or behind a proxy that resets, stalls, answers 500 or 503 SlowDown;
the registration endpoint down or slow; an inotify queue overflow. Then every fault is
healed and the oracle checks the ledger, S3 and the endpoint against the writer's log
(docs/architecture.md, "The chaos soak").

    .venv/bin/python bench/chaos.py --minutes 30            # a new seed, printed first
    .venv/bin/python bench/chaos.py --minutes 3 --seed 42   # the same writes and faults

A seed replays the same writes and faults at the same offsets; the daemon's own timing
varies. A failing run prints its seed and the history of its faults.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import common
from devstack import (
    FaultProxy,
    PostgresCluster,
    PostgresReplica,
    RcloneS3Server,
    failover_dsn,
    free_port,
    wait_for,
)
from devstack.httpd import LocalEndpoint, QuietHandler
from devstack.kernel import low_inotify_queue
from devstack.process import WaitTimeout, tail
from uploaderd.ledger import schema

KiB, MiB = 1024, 1024 * 1024
BUCKET = "chaos"
DATABASE = "chaos"
SETTLE = 1.0  # a slow writer pauses at most a fifth of it: no half-written file settles
TREE_BYTES = 256 * MiB  # past this on disk, the writer deletes instead of writing
LOW_INOTIFY_QUEUE = 256  # for the soak's daemons, so that a burst overflows their queue
FAULTS = (
    "kill9",
    "sigterm",
    "reload",
    "pg_fast",
    "pg_immediate",
    "read_only",
    "failover",
    "s3_kill",
    "s3_reset",
    "s3_stall",
    "s3_500",
    "s3_slowdown",
    "endpoint_down",
    "endpoint_slow",
    "overflow",
)


@dataclass(frozen=True)
class Fault:
    at: float  # seconds since the soak began
    kind: str
    detail: str = ""


@dataclass
class Report:
    seed: int
    minutes: float
    faults: list[Fault]
    files_written: int
    lost: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    stuck: int = 0
    failed: list[str] = field(default_factory=list)
    deleted_early: list[str] = field(default_factory=list)
    unregistered: list[str] = field(default_factory=list)
    reregistered: int = 0  # sessions registered under two keys (lost commits of a failover)
    lost_commit_failovers: int = 0
    bytes_sent: int = 0
    bytes_needed: int = 0

    @property
    def ok(self) -> bool:
        broken = self.lost or self.torn or self.stuck or self.failed or self.deleted_early
        twice = self.reregistered and not self.lost_commit_failovers
        return not (broken or self.unregistered or twice)

    def text(self) -> str:
        kinds: dict[str, int] = {}
        for fault in self.faults:
            kinds[fault.kind] = kinds.get(fault.kind, 0) + 1
        amplification = self.bytes_sent / self.bytes_needed if self.bytes_needed else 0.0
        lines = [
            f"seed {self.seed}; {self.minutes:g} minutes; {self.files_written} writes; "
            f"{len(self.faults)} faults: "
            + ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items())),
            f"lost {len(self.lost)}, torn {len(self.torn)}, stuck {self.stuck}, "
            f"failed {len(self.failed)}, deleted before uploaded {len(self.deleted_early)}, "
            f"complete sessions unregistered {len(self.unregistered)}",
            f"sessions registered again after a failover that lost commits: "
            f"{self.reregistered} ({self.lost_commit_failovers} such failovers)",
            f"amplification {amplification:.2f} ({self.bytes_sent / MiB:.1f} MiB sent to S3 "
            f"for {self.bytes_needed / MiB:.1f} MiB of objects)",
        ]
        for name, paths in (
            ("lost", self.lost),
            ("torn", self.torn),
            ("failed", self.failed),
            ("deleted before uploaded", self.deleted_early),
            ("unregistered", self.unregistered),
        ):
            lines += [f"  {name}: {path}" for path in paths[:20]]
        if not self.ok:
            lines.append(f"FAILED; reproduce with --seed {self.seed}. Fault history:")
            lines += [f"  {f.at:7.1f}s {f.kind} {f.detail}".rstrip() for f in self.faults]
        return "\n".join(lines)


# --- the registration endpoint ---------------------------------------------------------------


class Endpoint(LocalEndpoint):
    """A catalog's registration endpoint: records every call; ``up``, ``down`` (503) or
    ``slow`` (answers after the daemon's timeout)."""

    def __init__(self) -> None:
        endpoint = self
        self.mode = "up"
        self.calls: list[dict[str, Any]] = []  # each accepted manifest
        self._lock = threading.Lock()

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                mode = endpoint.mode
                if mode == "slow":
                    time.sleep(4.0)
                if mode == "down":
                    self.send_response(503)
                else:
                    with endpoint._lock:
                        endpoint.calls.append(json.loads(body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        super().__init__(Handler)

    def keys_by_session(self) -> dict[tuple[str, int], set[str]]:
        with self._lock:
            found: dict[tuple[str, int], set[str]] = {}
            for call in self.calls:
                found.setdefault((call["job"], call["session"]), set()).add(call["idempotency_key"])
            return found


# --- the writer ------------------------------------------------------------------------------


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Writer:
    """Keeps ``main`` (a job with sessions and registrations) and ``outbox`` (a job that
    deletes after upload) busy; every complete write's SHA-256 is logged per path."""

    def __init__(self, main: Path, outbox: Path, rng: random.Random) -> None:
        self.main, self.outbox, self.rng = main, outbox, rng
        self.history: dict[str, set[str]] = {}  # relpath -> every content it ever held
        self.current: dict[str, str] = {}  # relpath -> its content now (files on disk)
        self.sizes: dict[str, int] = {}  # relpath -> its size now
        self.outbox_files: dict[str, str] = {}  # relpath -> its only content
        self.writes = 0
        self.run = 0
        self.counter = 0
        self.lock = threading.Lock()  # the fault thread's burst writes beside the writer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="writer", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _loop(self) -> None:
        operations: list[tuple[Callable[[], None], int]] = [
            (self.new_file, 40),
            (self.rename_in, 15),
            (self.rewrite, 10),
            (self.rewrite_keeping_mtime, 4),
            (self.slow_rewrite, 4),
            (self.delete, 8),
            (self.move_directory, 2),
            (self.vanish, 5),
            (self.new_outbox_file, 12),
        ]
        actions, weights = zip(*operations, strict=True)
        try:
            while not self._stop.wait(self.rng.uniform(0.02, 0.25)):
                if self.rng.random() < 0.02:
                    self.run += 1  # a new top directory: the last one's session can complete
                with self.lock:
                    full = sum(self.sizes.values()) > TREE_BYTES
                    (self.delete if full else self.rng.choices(actions, weights)[0])()
        except BaseException as exc:  # the soak reports it
            self.error = exc

    # --- helpers ---------------------------------------------------------------------------

    def _name(self, suffix: str = ".bin") -> str:
        self.counter += 1
        return f"run-{self.run:03d}/d{self.counter % 4}/f{self.counter:06d}{suffix}"

    def _content(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.02:  # over the 16 MiB multipart threshold
            size = self.rng.randint(16 * MiB + 1, 20 * MiB)
        elif roll < 0.15:
            size = self.rng.randint(64 * KiB, 2 * MiB)
        else:
            size = self.rng.randint(0, 64 * KiB)
        return self.rng.randbytes(size)

    def _record(self, relpath: str, data: bytes) -> None:
        sha = digest(data)
        self.history.setdefault(relpath, set()).add(sha)
        self.current[relpath] = sha
        self.sizes[relpath] = len(data)
        self.writes += 1

    def _write(self, relpath: str, data: bytes) -> None:
        path = self.main / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self._record(relpath, data)

    def _existing(self) -> str | None:
        return self.rng.choice(sorted(self.current)) if self.current else None

    # --- the operations --------------------------------------------------------------------

    def new_file(self) -> None:
        self._write(self._name(), self._content())

    def rename_in(self) -> None:
        relpath = self._name()
        temp = self.main / relpath
        temp = temp.with_name(f".{temp.name}.tmp")  # excluded by default: a dotfile
        temp.parent.mkdir(parents=True, exist_ok=True)
        data = self._content()
        temp.write_bytes(data)
        os.rename(temp, self.main / relpath)
        self._record(relpath, data)

    def rewrite(self) -> None:
        relpath = self._existing()
        if relpath is not None:
            self._write(relpath, self._content())

    def rewrite_keeping_mtime(self) -> None:
        """New bytes of the same size, the old mtime put back: only the ctime tells."""
        relpath = self._existing()
        if relpath is None:
            return
        path = self.main / relpath
        before = path.stat()
        data = self.rng.randbytes(before.st_size)
        path.write_bytes(data)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        self._record(relpath, data)

    def slow_rewrite(self) -> None:
        """Written in chunks over up to 2 s, never pausing near the settle time."""
        relpath = self._existing()
        if relpath is None:
            return
        data = self._content()
        chunks = max(1, min(10, len(data) // (64 * KiB)))
        step = -(-len(data) // chunks) if data else 1
        with (self.main / relpath).open("wb") as out:
            for start in range(0, max(len(data), 1), step):
                out.write(data[start : start + step])
                out.flush()
                time.sleep(self.rng.uniform(0.02, SETTLE / 5))
        self._record(relpath, data)

    def delete(self) -> None:
        relpath = self._existing()
        if relpath is not None:
            (self.main / relpath).unlink()
            self._forget(relpath)

    def _forget(self, relpath: str) -> None:
        del self.current[relpath]
        del self.sizes[relpath]

    def move_directory(self) -> None:
        """A whole directory renamed: its files appear under new paths."""
        relpath = self._existing()
        if relpath is None:
            return
        old = str(Path(relpath).parent)
        self.counter += 1
        new = f"{old}-m{self.counter}"
        os.rename(self.main / old, self.main / new)
        for path in [p for p in self.current if p.startswith(old + "/")]:
            moved = new + path[len(old) :]
            sha = self.current.pop(path)
            self.history.setdefault(moved, set()).add(sha)
            self.current[moved] = sha
            self.sizes[moved] = self.sizes.pop(path)

    def vanish(self) -> None:
        """A file deleted about when it settles: while queued, or while it uploads."""
        relpath = self._name()
        self._write(relpath, self._content())
        time.sleep(self.rng.uniform(0.8, 1.6) * SETTLE)
        (self.main / relpath).unlink()
        self._forget(relpath)

    def new_outbox_file(self) -> None:
        relpath = self._name(".dat")
        path = self.outbox / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self._content()
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_bytes(data)
        os.rename(temp, path)
        self.outbox_files[relpath] = digest(data)
        self.writes += 1

    def burst(self, count: int) -> None:
        """``count`` tiny files at once in a new directory: more events than the queue holds."""
        self.counter += 1
        directory = f"run-{self.run:03d}/burst-{self.counter}"
        (self.main / directory).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            self._write(f"{directory}/b{i:05d}.bin", self.rng.randbytes(self.rng.randint(0, 512)))


# --- the site and its faults -----------------------------------------------------------------


class Site:
    """PostgreSQL with a streaming standby in two fixed slots, rclone's S3 behind a fault
    proxy, the endpoint, and one daemon with two jobs."""

    def __init__(self, work: Path, rng: random.Random, stack: contextlib.ExitStack) -> None:
        self.work, self.rng, self.stack = work, rng, stack
        self.ports = (free_port(), free_port())
        # Durable commits, as in production: only a failover may lose what was committed.
        self.primary = PostgresCluster(work / "pg-0", self.ports[0], fast=False)
        self.primary.start()
        stack.callback(lambda: self.primary.cleanup())
        schema.migrate(self.primary.create_database(DATABASE))
        self.standby = self._new_standby(1)
        self.dsn = failover_dsn(self.ports, DATABASE)
        self.s3 = RcloneS3Server(work / "s3")
        self.s3.keep_data = True
        self.s3.start()
        stack.callback(self.s3.cleanup)
        self.s3.create_bucket(BUCKET)
        self.proxy = FaultProxy(self.s3.port)
        stack.callback(self.proxy.close)
        self.endpoint = Endpoint()
        stack.callback(self.endpoint.close)
        self.main, self.outbox = work / "tree" / "main", work / "tree" / "outbox"
        self.main.mkdir(parents=True)
        self.outbox.mkdir(parents=True)
        self.daemon = common.bench_daemon(
            work / "daemon", self.dsn, self.proxy.endpoint_url, self.s3, "info", workers=8
        )
        stack.callback(self.daemon.cleanup)
        self.settle = SETTLE
        self.write_jobs()
        self.lost_commit_failovers = 0

    def _new_standby(self, slot: int) -> PostgresReplica:
        base = self.work / f"pg-{slot}-{time.time_ns()}"
        standby = PostgresReplica(self.primary, base, self.ports[slot])
        standby.start()
        self.stack.callback(lambda: standby.cleanup())
        return standby

    def write_jobs(self) -> None:
        retry = {"max_attempts": 1000, "backoff": {"initial": "0.5s", "max": "4s"}}
        source = {"settle": f"{self.settle:g}s", "rescan": "30s"}
        self.daemon.write_job(
            "main",
            {
                "source": {"paths": [str(self.main)], **source},
                "destination": {"bucket": BUCKET, "key": "main/${relpath}"},
                "retry": retry,
                "session": {"group_by": "top_dir", "complete_when": {"idle": "4s"}},
                "trigger": {
                    "url": self.endpoint.url,
                    "on": "session_complete",
                    "timeout": "2s",
                    "schedule": {"interval": "2s"},
                },
            },
        )
        self.daemon.write_job(
            "outbox",
            {
                "source": {"paths": [str(self.outbox)], **source},
                "destination": {"bucket": BUCKET, "key": "outbox/${relpath}"},
                "retry": retry,
                "after_upload": "delete",
            },
        )

    def start_daemon(self) -> None:
        self.daemon.start(wait_ready=False)
        self.daemon.wait_ready(timeout=common.READY_TIMEOUT)

    # --- faults: each breaks something, waits, and heals it; returns what it did -----------

    def outage(self) -> float:
        return self.rng.uniform(1.0, 8.0)

    def kill9(self) -> str:
        self.daemon.kill9()
        time.sleep(self.rng.uniform(0.2, 3.0))
        self.start_daemon()
        return ""

    def sigterm(self) -> str:
        self.daemon.stop(timeout=common.SHUTDOWN_GRACE + 30.0)
        self.start_daemon()
        return ""

    def reload(self) -> str:
        self.settle = SETTLE * 1.2 if self.settle == SETTLE else SETTLE
        self.write_jobs()
        self.daemon.signal(signal.SIGHUP)
        return f"settle {self.settle:g}s"

    def pg_fast(self) -> str:
        return self._pg_stop("fast")

    def pg_immediate(self) -> str:
        return self._pg_stop("immediate")

    def _pg_stop(self, mode: str) -> str:
        seconds = self.outage()
        self.primary.stop(mode)
        time.sleep(seconds)
        self.primary.start()
        return f"{seconds:.1f}s"

    def read_only(self) -> str:
        seconds = self.outage()
        self.primary.query(f"ALTER DATABASE {DATABASE} SET default_transaction_read_only = on")
        self.primary.query(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE 'uploaderd%'",
            DATABASE,
        )
        time.sleep(seconds)
        self.primary.query(f"ALTER DATABASE {DATABASE} RESET default_transaction_read_only")
        return f"{seconds:.1f}s"

    def failover(self) -> str:
        """The primary dies; the standby is promoted; a new standby is made in the dead slot.
        Half the time the standby stopped receiving WAL a moment before: commits are lost."""
        lose = self.rng.random() < 0.5
        if lose:
            self.standby.detach()
            time.sleep(self.rng.uniform(0.5, 3.0))
            self.lost_commit_failovers += 1
        else:
            lsn = self.primary.wal_lsn()
            caught_up = f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'"
            wait_for(lambda: self.standby.query(caught_up) == "t", 60, message="replay")
        dead_slot = self.ports.index(self.primary.port)
        self.primary.stop("immediate")
        self.standby.promote()
        dead, self.primary = self.primary, self.standby
        dead.cleanup()
        self.standby = self._new_standby(dead_slot)
        return "commits lost" if lose else "nothing lost"

    def s3_kill(self) -> str:
        seconds = self.outage()
        if self.s3.pid is not None:
            os.kill(self.s3.pid, signal.SIGKILL)
        self.s3.stop()
        self.proxy.cut()
        time.sleep(seconds)
        self.s3.start()
        return f"{seconds:.1f}s"

    def _proxy(self, mode: str) -> str:
        seconds = self.outage()
        self.proxy.mode = mode
        self.proxy.cut()
        time.sleep(seconds)
        self.proxy.mode = "pass"
        self.proxy.cut()  # a stalled connection is let go at once
        return f"{seconds:.1f}s"

    def s3_reset(self) -> str:
        return self._proxy("reset")

    def s3_stall(self) -> str:
        return self._proxy("stall")

    def s3_500(self) -> str:
        return self._proxy("http500")

    def s3_slowdown(self) -> str:
        return self._proxy("slowdown")

    def _endpoint(self, mode: str) -> str:
        seconds = self.outage() * 2
        self.endpoint.mode = mode
        time.sleep(seconds)
        self.endpoint.mode = "up"
        return f"{seconds:.1f}s"

    def endpoint_down(self) -> str:
        return self._endpoint("down")

    def endpoint_slow(self) -> str:
        return self._endpoint("slow")


# --- the oracle ------------------------------------------------------------------------------


def objects(site: Site) -> dict[str, bytes]:
    """Every object in the bucket, by key (read straight from the server, not the proxy)."""
    client = site.s3.client()
    found: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            key = item["Key"]
            found[key] = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return found


def listing(site: Site) -> dict[str, str]:
    """key -> ETag (rclone's is the MD5 of the bytes, multipart or not)."""
    client = site.s3.client()
    return {
        item["Key"]: item["ETag"].strip('"')
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for item in page.get("Contents", [])
    }


def ledger_rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with common.connect(dsn, "bench chaos") as conn:
        return common.rows(conn, sql)


def settled(site: Site, writer: Writer, md5s: dict[str, str]) -> bool:
    """Nothing queued or in flight, no session open, every file on disk in S3 with its
    bytes, the outbox empty, every session registered: the soak may be judged."""
    live = (
        "SELECT (SELECT count(*) FROM file_versions WHERE state IN ('pending', 'uploading'))"
        " + (SELECT count(*) FROM sessions WHERE state = 'open' AND job = 'main')"
    )
    if ledger_rows(site.dsn, live)[0][0]:
        return False
    if any(p.is_file() for p in site.outbox.rglob("*")):
        return False
    held = listing(site)
    if any(held.get(f"main/{path}") != md5s.get(sha) for path, sha in writer.current.items()):
        return False
    return not unregistered(site)


def unregistered(site: Site) -> list[str]:
    sessions = ledger_rows(
        site.dsn,
        "SELECT s.job, s.id, t.state, t.idempotency_key::text FROM sessions s "
        "LEFT JOIN triggers t ON t.session_id = s.id WHERE s.state = 'complete' "
        "AND s.job = 'main'",
    )
    received = {key for keys in site.endpoint.keys_by_session().values() for key in keys}
    return [
        f"session {session} ({state or 'no registration'})"
        for job, session, state, key in sessions
        if state != "sent" or key not in received
    ]


def judge(site: Site, writer: Writer, report: Report) -> None:
    held = objects(site)
    for path, sha in writer.current.items():
        data = held.get(f"main/{path}")
        if data is None or digest(data) != sha:
            report.lost.append(path)
    for path, sha in writer.outbox_files.items():
        data = held.get(f"outbox/{path}")
        on_disk = (site.outbox / path).exists()
        if data is None or digest(data) != sha:
            (report.lost if on_disk else report.deleted_early).append(path)
    for key, data in held.items():
        area, _, path = key.partition("/")
        if area == "main":
            written = writer.history.get(path, set())
        else:
            written = {writer.outbox_files.get(path, "")}
        if digest(data) not in written:
            report.torn.append(key)
    report.stuck = int(
        ledger_rows(
            site.dsn,
            "SELECT count(*) FROM file_versions WHERE state IN ('pending', 'uploading')",
        )[0][0]
    )
    report.failed = [
        f"{job}:{relpath}: {error}"
        for job, relpath, error in ledger_rows(
            site.dsn, "SELECT job, relpath, last_error FROM file_versions WHERE state = 'failed'"
        )
    ]
    report.unregistered = unregistered(site)
    report.reregistered = sum(len(keys) > 1 for keys in site.endpoint.keys_by_session().values())
    report.lost_commit_failovers = site.lost_commit_failovers
    report.bytes_sent = site.proxy.forwarded
    report.bytes_needed = sum(len(data) for data in held.values())


# --- the soak --------------------------------------------------------------------------------


def soak(
    seed: int,
    minutes: float,
    work: Path,
    *,
    gap: tuple[float, float] = (5.0, 30.0),
    drain_timeout: float = 600.0,
    kinds: Sequence[str] = FAULTS,
    log: Callable[[str], None] = print,
) -> Report:
    """Run the soak in ``work`` (made with mode 0755, PostgreSQL runs as `postgres`)."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    with contextlib.ExitStack() as stack:
        overflow = stack.enter_context(low_inotify_queue(LOW_INOTIFY_QUEUE))
        kinds = [k for k in kinds if k != "overflow" or overflow]
        site = Site(work, random.Random(rng.random()), stack)
        site.start_daemon()
        writer = Writer(site.main, site.outbox, random.Random(rng.random()))
        writer.start()
        began = time.monotonic()
        end = began + minutes * 60
        while (now := time.monotonic()) < end and writer.error is None:
            time.sleep(min(rng.uniform(*gap), max(0.0, end - now)))
            if time.monotonic() >= end:
                break
            kind = rng.choice(kinds)
            at = time.monotonic() - began
            if kind == "overflow":
                with writer.lock:
                    writer.burst(LOW_INOTIFY_QUEUE * 8)
                detail = f"{LOW_INOTIFY_QUEUE * 8} files at once"
            else:
                detail = getattr(site, kind)()
            faults.append(Fault(round(at, 1), kind, detail))
            log(f"  {at:7.1f}s {kind} {detail}".rstrip())
            if not site.daemon.alive():
                raise common.BenchError(f"uploaderd died:\n{tail(site.daemon.log_path)}")
        writer.stop()
        if writer.error is not None:
            raise common.BenchError(f"the writer failed: {writer.error!r}")
        report = Report(seed, minutes, faults, writer.writes)
        md5s = writer_md5s(site, writer)
        log(f"  faults over after {time.monotonic() - began:.0f}s; waiting for the queue to drain")
        drained = time.monotonic()
        with contextlib.suppress(WaitTimeout):
            wait_for(lambda: settled(site, writer, md5s), drain_timeout, 2.0, "a drained queue")
        log(f"  drained in {time.monotonic() - drained:.0f}s")
        judge(site, writer, report)
        if not site.daemon.alive():
            raise common.BenchError(f"uploaderd died:\n{tail(site.daemon.log_path)}")
        return report


def writer_md5s(site: Site, writer: Writer) -> dict[str, str]:
    """SHA-256 -> MD5 of the files on disk now, to compare with the listing's ETags."""
    found = {}
    for path, sha in writer.current.items():
        found[sha] = hashlib.md5((site.main / path).read_bytes(), usedforsecurity=False).hexdigest()
    return found


@contextlib.contextmanager
def workspace(keep: Path | None) -> Iterator[Path]:
    """A work directory PostgreSQL (run as `postgres`) can enter; removed unless ``keep``."""
    work = keep.resolve() if keep else Path(tempfile.mkdtemp(prefix="uploaderd-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    try:
        yield work
    finally:
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--seed", type=int, help="replay a soak (default: a new seed, printed)")
    add("--minutes", type=float, default=30.0, help="how long faults fall")
    add(
        "--gap",
        type=float,
        nargs=2,
        default=(5.0, 30.0),
        metavar=("MIN", "MAX"),
        help="seconds between two faults",
    )
    add("--faults", nargs="+", choices=FAULTS, default=list(FAULTS), help="the kinds to draw")
    add("--keep", type=Path, metavar="DIR", help="work in DIR and keep it")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    print(f"chaos seed {seed}", flush=True)
    result: list[Report] = []

    def measure() -> str:
        with workspace(args.keep) as work:
            gap = (args.gap[0], args.gap[1])
            report = soak(seed, args.minutes, work, gap=gap, kinds=args.faults)
            result.append(report)
            return report.text()

    argv_seeded = [*argv, "--seed", str(seed)] if args.seed is None else list(argv)
    code = common.run("uploaderd chaos soak", measure, common.reproduce("chaos.py", argv_seeded))
    return code or (0 if result and result[0].ok else 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
