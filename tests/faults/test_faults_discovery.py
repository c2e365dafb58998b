"""Fault scenarios on the discovery side: poison files, silent rewrites, lost watches, hostile
names and config files (issue 9, items 1, 5, 8 and 9).

Each scenario reproduces what an adversarial run found and asserts what an operator would
check: the version's state and reason in the ledger and, where the file reaches S3, the bytes
there. A daemon subprocess where the whole process matters (restarts, reloads, metrics);
Discovery and the watcher in-process where a fault has to be injected.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, WatchDescriptor

from devstack import DaemonProcess, S3Server, free_port, metric, wait_for
from devstack.kernel import low_inotify_queue
from uploaderd.config.settings import Job, S3Settings, parse_job_text
from uploaderd.daemon.disposal import Disposer
from uploaderd.discovery.discovery import Discovery
from uploaderd.discovery.watcher import PathEvent, Watcher
from uploaderd.ledger.store import Ledger, NewVersion, Outcome, State
from uploaderd.policy.settle import Candidate, Signature

Sql = Callable[..., list[tuple[Any, ...]]]
MiB = 1024 * 1024
NS = 10**9
YEAR_2100 = 4_102_444_800 * NS
YEAR_2300 = 10_413_792_000 * NS  # past 2262-04-11: mtime_ns no longer fits a bigint
YEAR_10000 = 253_402_300_800 * NS  # datetime cannot even hold the year


# --- helpers -----------------------------------------------------------------------------------


def job_spec(root: Path, bucket: str, key: str = "${relpath}", **sections: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"paths": [str(root)], "settle": "0.5s", "rescan": "1h"},
        "destination": {"bucket": bucket, "key": key},
        "retry": {"max_attempts": 3, "backoff": {"initial": "0.5s", "max": "1s"}},
    }
    for section, values in sections.items():
        spec[section] = {**spec.get(section, {}), **values} if isinstance(values, dict) else values
    return spec


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes, mtime_ns: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """What `cp -p`, `tar` or `rsync --inplace -t` do: new bytes in place, the times put back."""
    before = path.stat()
    assert len(data) == before.st_size
    with path.open("r+b") as file:
        file.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    ), "only the ctime tells"


def versions(sql: Sql, job: str, relpath: str) -> list[tuple[Any, ...]]:
    """(state, sha256, last_error, key) of every version of a path, oldest first."""
    return sql(
        "SELECT state, sha256, last_error, key FROM file_versions "
        "WHERE job = %s AND relpath = %s ORDER BY id",
        job,
        relpath,
    )


def wait_state(
    sql: Sql,
    job: str,
    relpath: str,
    state: str,
    timeout: float = 30.0,
    daemon: DaemonProcess | None = None,
) -> tuple[Any, ...]:
    def newest() -> tuple[Any, ...] | None:
        rows = versions(sql, job, relpath)
        return rows[-1] if rows and rows[-1][0] == state else None

    try:
        return wait_for(newest, timeout=timeout, message=f"{job}/{relpath} {state}")
    except AssertionError as exc:
        log = daemon.log()[-4000:] if daemon else ""
        raise AssertionError(f"{exc}; versions {versions(sql, job, relpath)}\n{log}") from None


def s3_body(s3: S3Server, bucket: str, key: str) -> bytes:
    return bytes(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def lab_job(root: Path, name: str = "lab", **source: Any) -> Job:
    return parse_job_text(
        yaml.safe_dump(
            {
                "source": {"paths": [str(root)], "settle": "0.2s", **source},
                "destination": {"bucket": "lab-raw", "key": "${relpath}"},
            }
        ),
        name=name,
        defaults=S3Settings(),
    )


@pytest.fixture
def tmpfs_dir() -> Iterator[Path]:
    """A directory on tmpfs, which keeps mtimes that ext4 cannot (year 10000)."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    path = Path(tempfile.mkdtemp(prefix="uploaderd-faults-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- item 1: poison mtimes ---------------------------------------------------------------------


def test_poison_mtimes_fail_alone_and_discovery_lives_on_across_a_restart(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    tmpfs_dir: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
) -> None:
    dated, plain = tmp_path / "dated", tmpfs_dir / "plain"
    this_year = datetime.now(UTC).strftime("%Y")
    write(dated / "normal.txt", b"normal")
    write(dated / "in-2100.txt", b"from 2100", YEAR_2100)
    write(dated / "in-2300.txt", b"from 2300", YEAR_2300)
    write(plain / "normal.txt", b"plain normal")
    write(plain / "in-2300.txt", b"plain 2300", YEAR_2300)
    write(plain / "in-10000.txt", b"plain 10000", YEAR_10000)
    assert (plain / "in-10000.txt").stat().st_mtime_ns == YEAR_10000, "tmpfs keeps the year"
    daemon = make_daemon()
    daemon.write_job("dated", job_spec(dated, bucket, "dated/${yyyy}/${relpath}"))
    daemon.write_job("plain", job_spec(plain, bucket, "plain/${relpath}"))
    daemon.start()

    # A template with a date cannot place a file whose date is unknown: that version fails,
    # with a reason an operator can act on; its neighbours upload.
    error = wait_state(sql, "dated", "in-2300.txt", "failed", daemon=daemon)[2]
    assert error.startswith("mtime out of range: ") and "touch it" in error
    for relpath, key, data in [
        ("normal.txt", f"dated/{this_year}/normal.txt", b"normal"),
        ("in-2100.txt", "dated/2100/in-2100.txt", b"from 2100"),
    ]:
        assert wait_state(sql, "dated", relpath, "uploaded", daemon=daemon)[3] == key
        assert s3_body(s3_server, bucket, key) == data
    # Without a date in the key, the same mtimes are no obstacle.
    for relpath, data in [
        ("normal.txt", b"plain normal"),
        ("in-2300.txt", b"plain 2300"),
        ("in-10000.txt", b"plain 10000"),
    ]:
        wait_state(sql, "plain", relpath, "uploaded", daemon=daemon)
        assert s3_body(s3_server, bucket, f"plain/{relpath}") == data

    write(dated / "later.txt", b"discovery is alive")
    wait_state(sql, "dated", "later.txt", "uploaded", daemon=daemon)
    assert daemon.stop() == 0

    daemon.start()  # the start-up scan meets the poison file again
    write(plain / "after-restart.txt", b"still alive")
    wait_state(sql, "plain", "after-restart.txt", "uploaded", daemon=daemon)
    assert s3_body(s3_server, bucket, "plain/after-restart.txt") == b"still alive"
    assert (
        sql("SELECT job, relpath FROM file_versions GROUP BY job, relpath HAVING count(*) > 1")
        == []
    ), "a restart queues nothing twice"
    assert [row[0] for row in versions(sql, "dated", "in-2300.txt")] == ["failed"]
    assert "Traceback" not in daemon.log()


class _CulpritLedger(Ledger):
    """A ledger that cannot write one file's version (as a value the database refuses)."""

    def enqueue(self, job: str, **kwargs: Any) -> tuple[int, int]:
        if any(v.relpath == "culprit.txt" and v.error is None for v in kwargs["versions"]):
            raise RuntimeError("value out of range for culprit.txt")
        return super().enqueue(job, **kwargs)


def test_a_file_the_ledger_refuses_is_failed_alone_and_its_batch_is_kept(
    migrated_dsn: str, tmp_path: Path, sql: Sql
) -> None:
    root = tmp_path / "root"
    for name in ("a.txt", "culprit.txt", "b.txt"):
        write(root / name, name.encode())
    discovery = Discovery(_CulpritLedger(migrated_dsn), host="host-a")
    discovery.start()
    try:
        discovery.set_jobs({"lab": lab_job(root)})
        for name in ("a.txt", "b.txt"):
            wait_state(sql, "lab", name, "pending")
        _, _, error, _ = wait_state(sql, "lab", "culprit.txt", "failed")
        assert error == "cannot queue this file: RuntimeError: value out of range for culprit.txt"
        write(root / "c.txt", b"after the fault")
        discovery.request_scan("lab")
        wait_state(sql, "lab", "c.txt", "pending")
        assert discovery.alive()
    finally:
        discovery.stop(time.monotonic() + 10)


# --- item 5: an in-place rewrite that restores the mtime ---------------------------------------


def test_a_rewrite_with_the_mtime_put_back_is_uploaded_again(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
) -> None:
    root = tmp_path / "root"
    old, new = b"first content \n" * 64, b"second content\n" * 64
    path = write(root / "data.bin", old, 1_700_000_000 * NS)
    daemon = make_daemon()
    daemon.write_job("lab", job_spec(root, bucket))
    daemon.start()
    wait_state(sql, "lab", "data.bin", "uploaded", daemon=daemon)

    rewrite_keeping_mtime(path, new)
    wait_for(
        lambda: (
            [r[:2] for r in versions(sql, "lab", "data.bin")]
            == [("uploaded", sha(old)), ("uploaded", sha(new))]
        ),
        timeout=30,
        message="the rewrite uploaded as a second version",
    )
    assert s3_body(s3_server, bucket, "data.bin") == new
    [(signatures, ctimes)] = sql(
        "SELECT count(DISTINCT (size, mtime_ns, inode)), count(DISTINCT ctime_ns) "
        "FROM file_versions WHERE relpath = 'data.bin'"
    )
    assert (signatures, ctimes) == (1, 2), "one (size, mtime, inode), two ctimes"


def test_a_rewrite_during_the_upload_is_uploaded_and_only_then_deleted(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
) -> None:
    root = tmp_path / "root"
    old, new = os.urandom(24 * MiB), os.urandom(24 * MiB)
    path = write(root / "big.bin", old, 1_700_000_000 * NS)
    daemon = make_daemon()
    # A bandwidth cap holds the multipart upload open for a few seconds.
    daemon.write_job(
        "lab", job_spec(root, bucket, after_upload="delete", destination={"bandwidth": "5MB/s"})
    )
    daemon.start()
    wait_for(
        lambda: sql(
            "SELECT 1 FROM file_versions WHERE relpath = 'big.bin' AND "
            "state = 'uploading' AND multipart_upload_id IS NOT NULL"
        ),
        timeout=30,
        message="the multipart upload under way",
    )
    rewrite_keeping_mtime(path, new)

    wait_for(lambda: not path.exists(), timeout=60, message="the new version deleted")
    rows = sql(
        "SELECT state, sha256, disposition, uploaded_at <= disposed_at, last_error "
        "FROM file_versions WHERE relpath = 'big.bin' ORDER BY id"
    )
    assert [row[:4] for row in rows] == [
        ("superseded", None, None, None),
        ("uploaded", sha(new), "deleted", True),
    ], rows
    assert rows[0][4].startswith("the file changed since it was queued")
    assert sha(s3_body(s3_server, bucket, "big.bin")) == sha(new)


def test_disposal_leaves_a_rewrite_alone_until_it_is_uploaded(
    ledger: Ledger, tmp_path: Path, sql: Sql
) -> None:
    job = parse_job_text(
        f"source: {{paths: [{tmp_path}]}}\ndestination: {{bucket: lab-raw}}\n"
        "after_upload: delete\n",
        name="lab",
        defaults=S3Settings(),
    )
    path = write(tmp_path / "data.bin", b"uploaded bytes", 1_700_000_000 * NS)
    ledger.enqueue(
        "lab",
        scope="host-a",
        host="host-a",
        bucket="lab-raw",
        versions=[
            NewVersion.of(
                Candidate(str(tmp_path), "data.bin", Signature.of(path.stat())),
                key="lab/data.bin",
                session_id=None,
            )
        ],
    )
    [claim] = ledger.claim(
        worker="w", host="host-a", jobs=["lab"], scopes=["host-a"], limit=1, lease_seconds=60
    )
    ledger.complete("w", [Outcome(claim, State.UPLOADED, "uploaded", sha(b"uploaded bytes"))])

    rewrite_keeping_mtime(path, b"other bytes!!!")
    assert Disposer(ledger, host="host-a").sweep(job) == 1
    assert path.read_bytes() == b"other bytes!!!", "content never uploaded stays on disk"
    assert sql("SELECT disposition FROM file_versions") == [
        ("skipped: the file changed after its upload",)
    ]


# --- item 8: lost watches and inotify overflow ---------------------------------------------------


def test_a_deleted_and_recreated_root_is_watched_again_at_once(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    bucket: str,
    s3_server: S3Server,
    sql: Sql,
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    port = free_port()
    daemon = make_daemon(metrics={"listen": f"127.0.0.1:{port}"})
    daemon.write_job("lab", job_spec(root, bucket))  # rescan: 1h, so only watches can tell
    daemon.start()
    write(root / "before.txt", b"before")
    wait_state(sql, "lab", "before.txt", "uploaded", daemon=daemon)
    assert metric(port, "uploaderd_watches", job="lab") == 1

    shutil.rmtree(root)
    wait_for(
        lambda: metric(port, "uploaderd_watches", job="lab") == 0,
        timeout=10,
        message="the gauge says the root is not watched",
    )
    assert (metric(port, "uploaderd_watch_errors_total", job="lab") or 0) >= 1
    root.mkdir()
    write(root / "dropped-early.txt", b"maybe before the new watch")
    wait_for(
        lambda: metric(port, "uploaderd_watches", job="lab") == 1,
        timeout=10,
        message="the new root watched",
    )
    write(root / "dropped-late.txt", b"after the new watch")
    for name, data in [
        ("dropped-early.txt", b"maybe before the new watch"),
        ("dropped-late.txt", b"after the new watch"),
    ]:
        wait_state(sql, "lab", name, "uploaded", timeout=20, daemon=daemon)
        assert s3_body(s3_server, bucket, name) == data
    log = daemon.log()
    assert f"job lab: lost the watch on {root}" in log
    assert f"job lab: watching {root} again; scanning it" in log


class _LossySink:
    """Events on their way to discovery, dropped while ``dropping`` (as the kernel does)."""

    def __init__(self, discovery: Discovery) -> None:
        self.discovery = discovery
        self.dropping = False
        self.dropped: list[str] = []

    def __call__(self, event: PathEvent) -> None:
        if self.dropping:
            self.dropped.append(event.path)
        else:
            self.discovery.submit(event)


class _MainLoop:
    """What the daemon's main loop does for the watcher: ``refresh()`` when a watch asks
    (``on_change``), on a thread of its own."""

    def __init__(self) -> None:
        self.watcher: Watcher | None = None
        self._asked = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def ask(self) -> None:
        self._asked.set()

    def start(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self._thread.start()

    def _run(self) -> None:
        assert self.watcher is not None
        while not self._stop.is_set():
            if self._asked.wait(0.1):
                self._asked.clear()
                self.watcher.refresh()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def overflow(watcher: Watcher, job: str) -> None:
    """What watchdog's reader thread does when read() returns IN_Q_OVERFLOW (wd -1)."""
    observer = watcher.watches[job].observer
    assert observer is not None
    observer._inotify_fd.handle_event(  # type: ignore[attr-defined]
        InotifyEvent(WatchDescriptor(-1), InotifyConstants.IN_Q_OVERFLOW, 0, b"")
    )


def test_an_inotify_overflow_rescans_the_job_at_once(
    migrated_dsn: str, tmp_path: Path, sql: Sql
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    job = lab_job(root, rescan="1h")
    discovery = Discovery(Ledger(migrated_dsn), host="host-a")
    sink = _LossySink(discovery)
    requests: list[PathEvent] = []  # all the watcher asked for, in order

    def record(event: PathEvent) -> None:
        requests.append(event)
        sink(event)

    errors: list[str] = []
    main_loop = _MainLoop()
    watcher = Watcher(record, lambda _job, message: errors.append(message), main_loop.ask)
    discovery.start()
    main_loop.start(watcher)
    try:
        discovery.set_jobs({"lab": job})
        watcher.apply({"lab": job})
        wait_for(discovery.settled, timeout=10, message="the start-up scan done")
        sink.dropping = True
        write(root / "missed.txt", b"its events were lost")
        wait_for(lambda: str(root / "missed.txt") in sink.dropped, message="events dropped")
        sink.dropping = False
        wait_for(discovery.settled, timeout=10, message="discovery idle")
        assert versions(sql, "lab", "missed.txt") == [], "nothing told discovery"

        before = len(requests)
        overflow(watcher, "lab")
        wait_state(sql, "lab", "missed.txt", "pending", timeout=10)

        # One overflow, one scan, after the new observer's watches exist: a directory made
        # now is reported by them.
        marker = root / "made-after-the-overflow"
        marker.mkdir()
        wait_for(
            lambda: PathEvent("lab", str(root), str(marker), True) in requests,
            message="the directory made after the overflow reported",
        )
        since = requests[before:]
        assert [e for e in since if e.path == str(root)] == [
            PathEvent("lab", str(root), str(root), True)
        ], "one overflow, one scan of the root"
        assert errors == [
            f"the inotify queue overflowed and events under {root} were lost "
            "(raise fs.inotify.max_queued_events); watching the job anew and scanning it"
        ]
    finally:
        main_loop.stop()
        watcher.stop(time.monotonic() + 5)
        discovery.stop(time.monotonic() + 10)


def test_an_overflow_of_more_directories_than_the_queue_holds_ends_and_spares_other_jobs(
    migrated_dsn: str, tmp_path: Path, sql: Sql
) -> None:
    """Found by the 30-minute chaos soak (seed 778969075): watchdog repairs an overflow by
    removing and re-adding every watch on the same kernel queue, and each removal queues an
    event. A tree of more directories than the queue holds overflowed it again, for ever,
    and each overflow queued a scan of the whole tree ahead of every other job's work: an
    outbox job's files were never discovered."""
    lab, outbox = tmp_path / "lab", tmp_path / "outbox"
    directories = [lab / f"d{i:03d}" for i in range(600)]
    for directory in directories:
        directory.mkdir(parents=True)
    outbox.mkdir()
    jobs = {"lab": lab_job(lab, rescan="1h"), "outbox": lab_job(outbox, "outbox", rescan="1h")}
    discovery = Discovery(Ledger(migrated_dsn), host="host-a")
    errors: list[tuple[str, str]] = []
    main_loop = _MainLoop()
    with low_inotify_queue(256) as lowered:
        if not lowered:
            pytest.skip("cannot lower fs.inotify.max_queued_events here")
        watcher = Watcher(discovery.submit, lambda *error: errors.append(error), main_loop.ask)
        discovery.start()
        main_loop.start(watcher)
        try:
            discovery.set_jobs(jobs)
            watcher.apply(jobs)
            wait_for(discovery.settled, timeout=10, message="the start-up scans done")
            overflow(watcher, "lab")
            write(outbox / "report.txt", b"another job's file")
            for directory in directories:
                write(directory / "data.bin", directory.name.encode())
            wait_state(sql, "outbox", "report.txt", "pending", timeout=20)
            wait_for(
                lambda: (
                    sql("SELECT count(*) FROM file_versions WHERE job = 'lab'")[0][0]
                    == len(directories)
                ),
                timeout=30,
                message="every file of the lab tree queued",
            )
            wait_for(discovery.settled, timeout=30, message="discovery idle")

            # The overflow is over: a file written now is found by its event (the rescan is
            # an hour away), and the queue did not overflow again.
            reported = list(errors)
            write(lab / "d000" / "after.bin", b"after the overflow")
            wait_state(sql, "lab", "d000/after.bin", "pending", timeout=10)
            assert errors == reported
            assert reported and {job for job, _ in reported} == {"lab"}
        finally:
            main_loop.stop()
            watcher.stop(time.monotonic() + 5)
            discovery.stop(time.monotonic() + 10)


def _mount_tmpfs(path: Path) -> None:
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "uploaderd-test", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")


def test_a_remounted_root_is_watched_again(migrated_dsn: str, tmp_path: Path, sql: Sql) -> None:
    root = tmp_path / "mnt"
    root.mkdir()
    _mount_tmpfs(root)
    discovery = Discovery(Ledger(migrated_dsn), host="host-a")
    errors: list[str] = []
    watcher = Watcher(discovery.submit, lambda _job, message: errors.append(message))
    try:
        discovery.start()
        job = lab_job(root, rescan="1h")
        discovery.set_jobs({"lab": job})
        watcher.apply({"lab": job})
        subprocess.run(["umount", str(root)], check=True)
        _mount_tmpfs(root)
        # The main loop refreshes every second; here the test is the main loop.
        wait_for(
            lambda: watcher.refresh() or any("lost the watch" in e for e in errors),
            timeout=10,
            message="the lost watch noticed",
        )
        wait_for(
            lambda: watcher.count("lab") == 1 and not watcher.refresh(),
            timeout=10,
            message="watched again",
        )
        write(root / "after-remount.txt", b"on the new filesystem")
        wait_state(sql, "lab", "after-remount.txt", "pending", timeout=10)
    finally:
        watcher.stop(time.monotonic() + 5)
        discovery.stop(time.monotonic() + 10)
        subprocess.run(["umount", str(root)], capture_output=True)


# --- item 9: hostile names and config files ----------------------------------------------------


def test_hostile_file_names_print_escaped_and_undecodable_ones_are_named(
    tmp_path: Path, migrated_dsn: str, s3_server: S3Server, bucket: str, sql: Sql
) -> None:
    data, jobs = tmp_path / "data", tmp_path / "jobs.d"
    jobs.mkdir()
    evil = "evil\x1b[2J\x1b[31mred\nFAKE LINE.txt"
    write(data / evil, b"the terminal must not run me")
    write(data / "plain.txt", b"plain")
    write(Path(os.fsdecode(os.fsencode(data) + b"/bad\xff\xfe.txt")), b"not UTF-8")
    (jobs / "lab.yaml").write_text(yaml.safe_dump(job_spec(data, bucket)))
    config = tmp_path / "uploaderd.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": {"dsn": migrated_dsn},
                "jobs_dir": str(jobs),
                "workers": 2,
                "s3": {"endpoint_url": s3_server.endpoint_url, "region": "us-east-1"},
            }
        )
    )

    def uploaderd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "uploaderd", *args, "-c", str(config)],
            capture_output=True,
            text=True,
            errors="surrogateescape",
            timeout=120,
        )

    upload = uploaderd("upload", "lab", "--no-progress")
    # The control characters make an unsafe key: recorded failed, the name escaped.
    assert upload.returncode == 1, upload.stdout + upload.stderr
    assert f"skipping {data}/bad\\xff\\xfe.txt: its name is not valid UTF-8" in upload.stderr
    assert sql("SELECT relpath, state FROM file_versions ORDER BY relpath") == [
        (evil, "failed"),
        ("plain.txt", "uploaded"),
    ]
    escaped = "evil\\x1b[2J\\x1b[31mred\\nFAKE LINE.txt"
    outputs = {"upload": upload.stdout}
    for command in (
        ["status"],
        ["files"],
        ["explain", str(data / evil)],
        ["explain", os.fsdecode(os.fsencode(data) + b"/bad\xff\xfe.txt")],
    ):
        result = uploaderd(*command)
        outputs[command[0] + str(len(outputs))] = result.stdout + result.stderr
    for name, output in outputs.items():
        assert "\x1b" not in output, f"{name} printed a raw escape sequence: {output!r}"
        assert not any(line.startswith("FAKE LINE") for line in output.splitlines()), name
        assert "\udcff" not in output, name
    assert escaped in outputs["status1"] and escaped in outputs["files2"]
    assert f"path: {data}/{escaped}" in outputs["explain3"]
    assert "why: its name is not valid UTF-8" in outputs["explain4"]
    assert f"path: {data}/bad\\xff\\xfe.txt" in outputs["explain4"]


BOMB = """\
source: {paths: [/tmp]}
destination: {bucket: lab-raw}
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def _limit_memory() -> None:  # in the child: 1 GiB of address space, far below 2.6 GB
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_a_yaml_alias_bomb_is_refused_with_its_file_and_line(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path, bucket: str, sql: Sql
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    daemon = make_daemon()
    daemon.write_job("lab", job_spec(root, bucket))
    daemon.start()
    bomb = daemon.write_job("bomb", BOMB)  # the auto-reload reads it at once
    check = subprocess.run(
        [sys.executable, "-m", "uploaderd", "check", "-c", str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_memory,
    )
    assert check.returncode == 2, check.stdout + check.stderr
    assert (
        f"{bomb}:7: aliases (*name) here stand for more than 10,000 values once expanded"
    ) in check.stdout
    wait_for(
        lambda: f"job file error: {bomb}:7: aliases" in daemon.log(),
        timeout=10,
        message="the reload refused the file",
    )
    write(root / "still.txt", b"the daemon runs on")
    wait_state(sql, "lab", "still.txt", "uploaded", daemon=daemon)
    assert daemon.alive()


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """In-process scenarios stop what they start: no observer or discovery thread survives."""
    before = set(threading.enumerate())
    yield
    wait_for(
        lambda: (
            not [
                t
                for t in set(threading.enumerate()) - before
                if t.name == "discovery" or "Observer" in type(t).__name__
            ]
        ),
        timeout=10,
        message="the test's threads stopped",
    )
