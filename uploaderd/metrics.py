"""The Prometheus metrics of uploaderd (prefix ``uploaderd_``), in base units.

Labels come only from the fixed set job, outcome, source, op, code, state: never paths,
keys or error text, which would explode cardinality and could leak data.
"""

from __future__ import annotations

import logging

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    start_http_server,
)

from uploaderd import __version__
from uploaderd.errors import UsageError

log = logging.getLogger(__name__)

# The _created series double every counter for no use on a dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]

_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

files_discovered = Counter(
    "uploaderd_files_discovered_total", "Complete file versions queued", ["job", "source"]
)
uploads = Counter("uploaderd_uploads_total", "Upload attempts by outcome", ["job", "outcome"])
upload_bytes = Counter("uploaderd_upload_bytes_total", "Bytes uploaded", ["job"])
upload_duration = Histogram(
    "uploaderd_upload_duration_seconds", "Time to upload one file", ["job"],
    buckets=_DURATION_BUCKETS,
)
queue_files = Gauge("uploaderd_queue_files", "File versions by state", ["job", "state"])
queue_oldest_pending_age = Gauge(
    "uploaderd_queue_oldest_pending_age_seconds", "Age of the oldest pending file", ["job"]
)
last_success = Gauge(
    "uploaderd_last_success_timestamp_seconds", "When a file of the job last uploaded", ["job"]
)
s3_requests = Counter("uploaderd_s3_requests_total", "S3 requests by operation and status",
                      ["op", "code"])
retry_sweeps = Counter("uploaderd_retry_sweeps_total", "Retry sweeps run on this host")
trigger_requests = Counter(
    "uploaderd_trigger_requests_total", "Registration calls by outcome (sent, pending, failed)",
    ["job", "outcome"],
)
destination_paused = Gauge(
    "uploaderd_destination_paused",
    "1 while a job's bucket (op=upload) or trigger endpoint (op=trigger) is paused",
    ["job", "op"],
)
db_up = Gauge("uploaderd_db_up", "1 while PostgreSQL answers")
config_reload_success = Gauge(
    "uploaderd_config_reload_success", "1 if the last load of config and jobs had no error"
)
watches = Gauge("uploaderd_watches", "Roots watched for events", ["job"])
watch_errors = Counter("uploaderd_watch_errors_total", "Roots that could not be watched or read",
                       ["job"])
build_info = Info("uploaderd_build", "Version of uploaderd")
build_info.info({"version": __version__})


def serve(listen: str) -> None:
    """Expose /metrics on ``host:port``; an empty address disables the endpoint."""
    if not listen:
        return
    host, _, port = listen.rpartition(":")
    try:
        start_http_server(int(port), addr=host.strip("[]"))
    except OSError as exc:
        raise UsageError(f"metrics.listen: cannot listen on {listen}: {exc.strerror}") from exc
    log.info("metrics on http://%s/metrics", listen)
