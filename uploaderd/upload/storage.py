"""boto3 clients for each S3 endpoint setting, sized to the worker pool, with request metrics.

Small PutObjects go through ``objectput`` (obstore), configured from these same clients and
sessions; ``Storage.puts`` is its entry point.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from uploaderd.config.settings import S3Settings
from uploaderd.errors import StorageUnavailable
from uploaderd.observe import metrics
from uploaderd.policy.transfers import not_transferring, transferring
from uploaderd.upload.objectput import ObjectPuts, answer_probe, is_probe

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MAX_ATTEMPTS = 2  # botocore's own: one quick retry per request; the ledger retries later


@contextmanager
def s3_errors() -> Iterator[None]:
    """botocore's exceptions as ``StorageUnavailable``, for the modules that leave boto to the
    S3 side: "CODE message" with the code when S3 answered, botocore's text when it could
    not be reached."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "?")
        raise StorageUnavailable(f"{code} {error.get('Message', '')}".rstrip(), code) from exc
    except BotoCoreError as exc:
        raise StorageUnavailable(str(exc)) from exc


class Storage:
    """One client per distinct ``S3Settings``; boto3 clients are thread-safe, sessions are not."""

    def __init__(self, pool_connections: int) -> None:
        self.pool_connections = pool_connections
        self._clients: dict[S3Settings, S3Client] = {}
        self._sessions: dict[S3Settings, botocore.session.Session] = {}
        self._lock = threading.Lock()
        self.puts = ObjectPuts(self.client, self.session, pool_connections)

    def client(self, settings: S3Settings) -> S3Client:
        with self._lock:
            client = self._clients.get(settings)
            if client is None:
                client = self._clients[settings] = self._make(settings)
            return client

    def session(self, settings: S3Settings) -> botocore.session.Session:
        """The botocore session behind ``client(settings)``: its credentials and config."""
        self.client(settings)
        return self._sessions[settings]

    def _make(self, settings: S3Settings) -> S3Client:
        core = self._sessions[settings] = botocore.session.Session()
        session = boto3.session.Session(
            profile_name=settings.profile, region_name=settings.region, botocore_session=core
        )
        config = Config(
            max_pool_connections=self.pool_connections,
            # A blackholed endpoint must end an attempt in a minute or two, not hold a worker
            # for eight: every socket operation (connect, each send of a part's body, the
            # wait for the answer) gives up after these, and the ledger's retry takes over.
            retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            # Some S3-compatible stores reject the flexible checksums boto3 sends by default.
            request_checksum_calculation=settings.checksum,
            response_checksum_validation=settings.checksum,
            s3={
                "addressing_style": "path" if settings.endpoint_url else "auto",
                # With checksums on, every body we send carries a signed SHA-256 checksum
                # that S3 verifies; over plain http botocore would hash each body once more
                # for the signature (a third pass over a large file). Without checksums,
                # botocore's default stands: bodies over http are signed.
                **(
                    {"payload_signing_enabled": False}
                    if settings.checksum == "when_supported"
                    else {}
                ),
            },
        )
        client: S3Client = session.client("s3", endpoint_url=settings.endpoint_url, config=config)
        events = client.meta.events
        events.register("response-received.s3", _count_response)
        events.register("before-send.s3.PutObject", _no_expect_continue)
        for operation in ("PutObject", "UploadPart"):
            # Progress counts a body's bytes only once it is signed: reading it to sign or to
            # checksum is not sending it.
            events.register_first(f"request-created.s3.{operation}", not_transferring)
            events.register_last(f"request-created.s3.{operation}", transferring)
        events.register("before-send.s3.HeadObject", answer_probe)  # type: ignore[arg-type]
        return client


def _no_expect_continue(request: Any, **_: Any) -> None:
    """Send small PUT bodies at once: waiting for "100 Continue" costs a round trip per file.

    (``Expect`` is not a signed header, so dropping it after signing is safe.)
    """
    request.headers.pop("Expect", None)


def _count_response(event_name: str, response_dict: Any, **_: Any) -> None:
    """Every HTTP attempt, retries included: a SlowDown a retry absorbed still shows."""
    if response_dict and is_probe(response_dict):
        return
    code = str(response_dict["status_code"]) if response_dict else "error"
    metrics.s3_requests.labels(event_name.rsplit(".", 1)[-1], code).inc()
