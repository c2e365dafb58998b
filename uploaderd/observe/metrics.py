"""The Prometheus metrics of uploaderd (prefix ``uploaderd_``), in base units.

Labels come only from the fixed set job, outcome, source, op, code, state: never paths,
keys or error text, which would explode cardinality and could leak data.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from http.server import HTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    Info,
    MetricsHandler,
    disable_created_metrics,
)

from uploaderd import __version__
from uploaderd.errors import UsageError
from uploaderd.ledger.store import JobStateCount, State
from uploaderd.policy.lifecycle import call_by
from uploaderd.policy.transfers import Active

Uploads = Callable[[], Iterable[Active]]

log = logging.getLogger(__name__)

# The _created series double every counter for no use on a dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]

_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_KiB, _MiB, _GiB = 1024, 1024**2, 1024**3
# Instruments write anything from a sidecar JSON to a multi-GiB stack; S3 allows 5 TiB.
_SIZE_BUCKETS = (
    _KiB,
    64 * _KiB,
    _MiB,
    8 * _MiB,
    64 * _MiB,
    256 * _MiB,
    _GiB,
    4 * _GiB,
    16 * _GiB,
    64 * _GiB,
    256 * _GiB,
    1024 * _GiB,
)

files_discovered = Counter(
    "uploaderd_files_discovered_total", "Complete file versions queued", ["job", "source"]
)
uploads = Counter("uploaderd_uploads_total", "Upload attempts by outcome", ["job", "outcome"])
upload_bytes = Counter(
    "uploaderd_upload_bytes_total",
    "Bytes sent to S3 by uploads (not parts kept from an earlier attempt)",
    ["job"],
)
upload_stalls = Counter(
    "uploaderd_upload_stalls_total",
    "Upload attempts that ran past their deadline (S3 unreachable?)",
    ["job"],
)
multipart_resumes = Counter(
    "uploaderd_multipart_resumes_total",
    "Multipart uploads continued from an earlier attempt's parts",
    ["job"],
)
multipart_kept_bytes = Counter(
    "uploaderd_multipart_kept_bytes_total",
    "Bytes of parts an earlier attempt had sent, kept instead of sent again",
    ["job"],
)
upload_duration = Histogram(
    "uploaderd_upload_duration_seconds",
    "Time to upload one file",
    ["job"],
    buckets=_DURATION_BUCKETS,
)
upload_size = Histogram(
    "uploaderd_upload_size_bytes",
    "Size of each file uploaded",
    ["job"],
    buckets=_SIZE_BUCKETS,
)
queue_files = Gauge("uploaderd_queue_files", "File versions by state", ["job", "state"])
queue_oldest_pending_age = Gauge(
    "uploaderd_queue_oldest_pending_age_seconds", "Age of the oldest pending file", ["job"]
)
last_success = Gauge(
    "uploaderd_last_success_timestamp_seconds", "When a file of the job last uploaded", ["job"]
)
s3_requests = Counter(
    "uploaderd_s3_requests_total", "S3 requests by operation and status", ["op", "code"]
)
retry_sweeps = Counter("uploaderd_retry_sweeps_total", "Retry sweeps run on this host")
trigger_requests = Counter(
    "uploaderd_trigger_requests_total",
    "Registration calls by outcome (sent, pending, failed)",
    ["job", "outcome"],
)
repairs = Counter(
    "uploaderd_repairs_total",
    "Uploads of versions `uploaderd verify --repair` requeued (S3 had lost or changed them)",
    ["job"],
)
destination_misconfigured = Gauge(
    "uploaderd_destination_misconfigured",
    "1 while a job's uploads are paused because S3 said the bucket, credentials or policy "
    "are wrong",
    ["job"],
)
destination_paused = Gauge(
    "uploaderd_destination_paused",
    "1 while a job's bucket (op=upload) or trigger endpoint (op=trigger) is paused",
    ["job", "op"],
)
db_up = Gauge("uploaderd_db_up", "1 while PostgreSQL answers")
db_server_changes = Counter(
    "uploaderd_db_server_changes_total",
    "New connections that reached another PostgreSQL server or timeline (a failover)",
)
discovery_leading = Gauge(
    "uploaderd_discovery_leading",
    "1 while this host discovers the shared job's files (it holds the job's lease)",
    ["job"],
)
db_connections = Gauge(
    "uploaderd_db_connections", "Database connections open, at most database.connections"
)
job_files_not_loaded = Gauge(
    "uploaderd_job_files_not_loaded",
    "Job files in jobs.d with errors at the last load (each keeps its previous version)",
)
config_reload_success = Gauge(
    "uploaderd_config_reload_success", "1 if the last load of config and jobs had no error"
)
watches = Gauge("uploaderd_watches", "Roots watched for events", ["job"])
watch_errors = Counter(
    "uploaderd_watch_errors_total", "Roots that could not be watched or read", ["job"]
)
build_info = Info("uploaderd_build", "Version of uploaderd")
build_info.info({"version": __version__})

_queue_lock = threading.Lock()
_queue_jobs: set[str] = set()


def declare_jobs(jobs: Iterable[str]) -> None:
    """Create each job's counter series at 0, so the first failure or upload is an increase.

    A series that appears already at 1 is invisible to ``increase()`` and ``rate()``, and an
    absent series makes "no success while work is pending" unanswerable. Existing series
    (and a paused destination) keep their values.
    """
    for job in jobs:
        for outcome in ("uploaded", "failed"):
            uploads.labels(job, outcome)
        for source in ("watch", "scan"):
            files_discovered.labels(job, source)
        upload_bytes.labels(job)
        upload_stalls.labels(job)
        watch_errors.labels(job)
        repairs.labels(job)
        destination_paused.labels(job, "upload")
        destination_misconfigured.labels(job)


def set_queue(rows: Iterable[JobStateCount]) -> None:
    """Publish one snapshot of the ledger's counts by job and state (the ``job_counts`` query).

    Every state of a job in the snapshot is set, 0 when it has no rows, so a state that
    drained reads 0 instead of keeping its last value; a job gone from the ledger loses its
    series. The oldest pending age is 0 when nothing is pending.
    """
    files: dict[str, dict[str, int]] = {}
    oldest: dict[str, float] = {}
    for row in rows:
        files.setdefault(row.job, {})[row.state] = row.files
        if row.state == State.PENDING:
            oldest[row.job] = row.oldest_age_seconds or 0.0
    with _queue_lock:
        for job in _queue_jobs - files.keys():
            for state in State:
                queue_files.remove(job, state.value)
            queue_oldest_pending_age.remove(job)
        for job, counts in files.items():
            for state in State:
                queue_files.labels(job, state.value).set(counts.get(state.value, 0))
            queue_oldest_pending_age.labels(job).set(oldest.get(job, 0.0))
        _queue_jobs.clear()
        _queue_jobs.update(files)


SERVER_THREADS = 4
SERVER_TIMEOUT = 5.0  # seconds a connection may sit idle or trickle its request


# The uploads in flight on this host, as JSON (``uploaderd top``): {"uploads": [{"job",
# "relpath", "sent", "size"}, ...]}. They name files, so only a client on this host gets
# them, whatever address the endpoint listens on.
UPLOADS_PATH = "/uploads"


class _Handler(MetricsHandler):
    timeout = SERVER_TIMEOUT  # StreamRequestHandler sets it on the socket
    server: _BoundedServer

    def do_GET(self) -> None:
        if urlsplit(self.path).path == UPLOADS_PATH:
            self._send_uploads()
        else:
            super().do_GET()

    def _send_uploads(self) -> None:
        if not local_client(self.client_address[0]):
            self.send_error(403, f"{UPLOADS_PATH} is served to this host only")
            return
        body = json.dumps({"uploads": [asdict(a) for a in self.server.uploads()]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line."""


def local_client(host: str) -> bool:
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # 127.0.0.1 on a dual-stack [::] socket
    return address.is_loopback


class _BoundedServer(HTTPServer):
    """prometheus_client's server starts a thread per connection, so idle connections cost
    a thread each; here a small fixed pool serves them, each cut after ``SERVER_TIMEOUT``.
    The accepting loop waits for a free thread, so connections beyond that wait in the
    kernel's backlog instead of piling up as open files."""

    request_queue_size = 64

    def __init__(self, address: tuple[str, int], uploads: Uploads) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        self.uploads = uploads
        super().__init__(address, _Handler)
        self._pool = ThreadPoolExecutor(SERVER_THREADS, thread_name_prefix="metrics")
        self._free = threading.Semaphore(SERVER_THREADS)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._free.acquire()
        self._pool.submit(self._serve_one, request, client_address)

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._free.release()

    def close_pool(self) -> None:
        """No new requests are served; one being served ends with its connection."""
        self._pool.shutdown(wait=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics: a request from %s failed", client_address, exc_info=True)


class MetricsServer:
    """/metrics and /uploads on ``host:port`` (a component); an empty address disables the
    endpoint. ``uploads`` tells the uploads in flight."""

    def __init__(self, listen: str, uploads: Uploads = tuple) -> None:
        self.listen = listen
        self.uploads = uploads
        self._server: _BoundedServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.listen:
            return
        host, _, port = self.listen.rpartition(":")
        try:
            self._server = _BoundedServer((host.strip("[]"), int(port)), self.uploads)
        except OSError as exc:
            raise UsageError(
                f"metrics.listen: cannot listen on {self.listen}: {exc.strerror}"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s/metrics", self.listen)

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive()

    def stop(self, deadline: float) -> None:
        if self._server is None or self._thread is None:
            return
        if self._thread.is_alive():  # shutdown() waits for a loop that must be running
            call_by(self._server.shutdown, deadline, "metrics-stop")
        self._server.server_close()
        self._server.close_pool()
