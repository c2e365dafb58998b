"""/metrics of a running daemon: the values move as files upload, fail and queue.

Scrapes the real endpoint of an ``uploaderd run`` subprocess, as Prometheus would, and
checks the exposition with promtool when it is installed (``./dev test`` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from devstack import DaemonProcess, free_port, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def listeners(pid: int) -> set[tuple[str, int]]:
    """(address in /proc/net hex, port) of every TCP socket ``pid`` listens on."""
    fds = Path(f"/proc/{pid}/fd")
    inodes = {
        link[len("socket:[") : -1]
        for link in (str(fd.readlink()) for fd in fds.iterdir() if fd.is_symlink())
        if link.startswith("socket:[")
    }
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add((address, int(hex_port, 16)))
    return found


def job(root: Path, bucket: str, **retry: Any) -> dict[str, Any]:
    return {
        "source": {"paths": [str(root)], "settle": "1s", "rescan": "1h"},
        "destination": {"bucket": bucket, "key": "in/${relpath}"},
        "retry": {"max_attempts": 1, "backoff": {"initial": "1s", "max": "2s"}, **retry},
    }


def test_metrics_move_with_uploads_failures_and_the_queue(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    bucket: str,
) -> None:
    port = free_port()
    lab, broken = tmp_path / "inbox-a", tmp_path / "inbox-b"
    lab.mkdir()
    broken.mkdir()
    daemon = make_daemon(metrics={"listen": f"127.0.0.1:{port}"})
    daemon.write_job("lab", job(lab, bucket))
    daemon.write_job("broken", job(broken, f"missing-{uuid.uuid4().hex[:12]}"))
    daemon.start()

    at_start = samples(scrape(port))
    assert daemon.proc is not None
    assert listeners(daemon.proc.pid) == {("0100007F", port)}, "metrics on 127.0.0.1 only"
    assert value(at_start, "uploaderd_build_info", version=_version()) == 1
    assert value(at_start, "uploaderd_db_up") == 1
    assert value(at_start, "uploaderd_config_reload_success") == 1
    assert value(at_start, "uploaderd_job_files_not_loaded") == 0
    assert value(at_start, "uploaderd_watches", job="lab") == 1
    assert value(at_start, "uploaderd_uploads_total", job="lab", outcome="uploaded") == 0, (
        "counters start at 0, so the first upload is an increase"
    )

    files = {"a.bin": b"a" * 1000, "sub/b.bin": b"b" * 5000, "c.txt": b"hello\n"}
    for relpath, data in files.items():
        (lab / relpath).parent.mkdir(parents=True, exist_ok=True)
        (lab / relpath).write_bytes(data)
    (broken / "lost.bin").write_bytes(b"x" * 10)
    total = sum(len(data) for data in files.values())

    def moved() -> Samples | None:
        found = samples(scrape(port))
        done = (
            value(found, "uploaderd_uploads_total", job="lab", outcome="uploaded") == 3
            and value(found, "uploaderd_uploads_total", job="broken", outcome="failed") == 1
        )
        return found if done else None

    after = wait_for(moved, timeout=60, interval=0.3, message="3 uploads and 1 failure")
    assert value(after, "uploaderd_upload_bytes_total", job="lab") == total
    discovered = [
        value(after, "uploaderd_files_discovered_total", job="lab", source=source)
        for source in ("watch", "scan")
    ]
    assert sum(v or 0 for v in discovered) == 3 and (discovered[0] or 0) >= 1
    assert value(after, "uploaderd_upload_duration_seconds_count", job="lab") == 3
    assert value(after, "uploaderd_upload_size_bytes_count", job="lab") == 3
    assert value(after, "uploaderd_upload_size_bytes_sum", job="lab") == total
    assert (
        time.time() - (value(after, "uploaderd_last_success_timestamp_seconds", job="lab") or 0)
        < 60
    )
    assert value(after, "uploaderd_uploads_total", job="broken", outcome="uploaded") == 0
    assert value(after, "uploaderd_s3_requests_total", op="PutObject", code="404"), (
        "the missing bucket answers 404"
    )
    assert (value(after, "uploaderd_s3_requests_total", op="PutObject", code="200") or 0) >= 3
    _no_paths_in_labels(after, [lab, broken, *files])
    _promtool_check(scrape(port))

    # Queue gauges come from the ledger: a restarted daemon publishes them at once (not
    # after the 15 s interval), with drained states at 0 rather than absent.
    assert daemon.stop() == 0
    daemon.start()

    def queue() -> Samples | None:
        found = samples(scrape(port))
        return (
            found
            if value(found, "uploaderd_queue_files", job="lab", state="uploaded") is not None
            else None
        )

    started = time.monotonic()
    found = wait_for(queue, timeout=10, interval=0.2, message="queue gauges at start")
    assert time.monotonic() - started < 10
    assert value(found, "uploaderd_queue_files", job="lab", state="uploaded") == 3
    assert value(found, "uploaderd_queue_files", job="lab", state="pending") == 0
    assert value(found, "uploaderd_queue_files", job="broken", state="failed") == 1
    assert value(found, "uploaderd_queue_files", job="broken", state="pending") == 0
    assert value(found, "uploaderd_queue_oldest_pending_age_seconds", job="lab") == 0
    assert daemon.stop() == 0


def _version() -> str:
    from uploaderd import __version__

    return __version__


def _no_paths_in_labels(found: Samples, names: list[Path | str]) -> None:
    """Labels are a fixed set of short values: never a path, key or file name."""
    for (name, labels), _ in found.items():
        if name.startswith("uploaderd_"):
            for label, text in labels:
                assert "/" not in text and not any(Path(n).name in text for n in names), (
                    name,
                    label,
                    text,
                )


def _promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:  # `./dev test` installs it; only a bare pytest run lacks it
        return
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_an_empty_listen_address_serves_no_metrics(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    bucket: str,
) -> None:
    daemon = make_daemon(metrics={"listen": ""})
    daemon.write_job("lab", job(tmp_path, bucket))
    daemon.start()
    assert daemon.proc is not None
    assert listeners(daemon.proc.pid) == set()
    assert daemon.stop() == 0
