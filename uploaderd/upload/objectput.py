"""PutObject of small files through obstore (Rust, off the GIL), configured from boto3's client.

botocore spends about 0.9 ms of the GIL on each small PutObject, which capped the daemon at
one core's worth of small files; obstore sends the same request for about 0.13 ms of it and
waits for the network without the GIL. boto3 stays the control plane (HEAD, listing,
multipart, ``check``, ``verify``): everything this module knows about the endpoint comes
from the boto3 client and session ``Storage`` made for the same ``S3Settings``, so the two
cannot disagree:

* the URL (endpoint, addressing style, region) is the one boto3's endpoint rules produce
  for the bucket, read off a probe request that a hook answers before it is sent;
* credentials are the boto3 session's object (profiles, environment, ``LoadCredential=``
  files, IMDS, web identity, with botocore's refresh), handed over frozen for 5 minutes at
  a time, well inside botocore's 10-minute refresh margin;
* timeouts, retries (attempt count), proxies (``proxies`` config, else the environment with
  ``NO_PROXY``) and the CA bundle (``AWS_CA_BUNDLE``, ``ca_bundle``) are read from them.

obstore's own retries are off: each attempt is made here, so every HTTP attempt is counted
in ``uploaderd_s3_requests_total`` as botocore's are, and failures surface as botocore's
exceptions (``ClientError`` with the S3 error code, ``EndpointConnectionError``,
``ConnectionClosedError``), which the uploader already handles.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import obstore
import obstore.exceptions
from botocore.awsrequest import AWSPreparedRequest, AWSResponse, HeadersDict
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.httpsession import ProxyConfiguration
from botocore.utils import get_environ_proxies
from obstore.store import S3Store

from uploaderd.config.settings import S3Settings
from uploaderd.observe import metrics

if TYPE_CHECKING:
    import botocore.session
    from mypy_boto3_s3 import S3Client
    from obstore.store import ClientConfig, S3Config, S3Credential

CREDENTIALS_TTL = timedelta(minutes=5)
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# What the uploader passes; SSE and the KMS key arrive in the Target as well (store settings).
_ARGUMENTS = frozenset(
    {"Metadata", "StorageClass", "Tagging", "ChecksumSHA256", "ServerSideEncryption", "SSEKMSKeyId"}
)
_MAX_BACKOFF = 20.0  # seconds, as botocore's standard retry mode
PROBE_KEY = "uploaderd-endpoint-probe"
_PROBE_HEADER = "x-uploaderd-probe-url"
_STATUS = re.compile(r"\bstatus: (\d{3})\b")
_CODE = re.compile(r"<Code>([^<]+)</Code>")
_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


@dataclass(frozen=True)
class Target:
    """What one store is for: obstore fixes the bucket and the encryption per store."""

    settings: S3Settings
    bucket: str
    sse: str | None
    kms_key_id: str | None


def fits(key: str) -> bool:
    """Whether obstore sends ``key`` unchanged (it drops a leading or trailing '/')."""
    return not key.startswith("/") and not key.endswith("/") and "//" not in key


class ObjectPuts:
    """obstore stores per target, made on first use from the matching boto3 client."""

    def __init__(
        self,
        client: Callable[[S3Settings], S3Client],
        session: Callable[[S3Settings], botocore.session.Session],
        pool_connections: int,
    ) -> None:
        self._client = client
        self._session = session
        self.pool_connections = pool_connections
        self._stores: dict[Target, S3Store] = {}
        self._lock = threading.Lock()

    def putter(self, target: Target) -> Callable[..., dict[str, Any]]:
        """A stand-in for ``client.put_object`` with the keyword arguments the uploader uses."""

        def put_object(
            *, Bucket: str, Key: str, Body: bytes, IfNoneMatch: str | None = None, **args: Any
        ) -> dict[str, Any]:
            assert Bucket == target.bucket
            return self.put(target, Key, Body, args=args, if_absent=IfNoneMatch == "*")

        return put_object

    def put(
        self, target: Target, key: str, body: bytes, *, args: dict[str, Any], if_absent: bool
    ) -> dict[str, Any]:
        """PutObject; ``args`` as boto3 names them (Metadata, StorageClass, Tagging, ...).

        The SHA-256 checksum, when the settings ask for it, is obstore's: it computes it over
        these same bytes, so it equals the uploader's ``ChecksumSHA256``. SSE and the KMS key
        are in ``target`` (store settings in obstore).
        """
        unknown = args.keys() - _ARGUMENTS
        if unknown:  # a new PutObject argument must be mapped here, not dropped
            raise TypeError(f"objectput cannot send {sorted(unknown)}")
        store = self.store(target)
        attributes = dict(args.get("Metadata", {}))
        if args.get("StorageClass"):
            attributes["Storage-Class"] = args["StorageClass"]
        tags = (
            dict(parse_qsl(args["Tagging"], keep_blank_values=True))
            if args.get("Tagging")
            else None
        )
        attempts = _setting(self._client(target.settings), "retries").get("total_max_attempts", 3)
        for attempt in range(1, attempts + 1):
            try:
                result = obstore.put(
                    store,
                    key,
                    body,
                    attributes=attributes,
                    tags=tags,
                    mode="create" if if_absent else "overwrite",
                    use_multipart=False,
                )
            except ValueError:
                raise  # a key obstore cannot express: a bug of ``fits``, not worth a retry
            except Exception as exc:  # obstore's own errors, and OSError subclasses (404, 403)
                status, error = _classify(exc, store)
                metrics.s3_requests.labels("PutObject", str(status or "error")).inc()
                if attempt < attempts and (status is None or status in _RETRY_STATUSES):
                    backoff = min(_MAX_BACKOFF, 2.0 ** (attempt - 1))
                    time.sleep(random.random() * backoff)  # noqa: S311 (jitter, not a secret)
                    continue
                raise error from exc
            metrics.s3_requests.labels("PutObject", "200").inc()
            return {"ETag": result["e_tag"]}
        raise AssertionError("unreachable: the last attempt returns or raises")

    def store(self, target: Target) -> S3Store:
        with self._lock:
            store = self._stores.get(target)
            if store is None:
                store = self._stores[target] = self._make(target)
            return store

    def _make(self, target: Target) -> S3Store:
        client = self._client(target.settings)
        session = self._session(target.settings)
        credentials = session.get_credentials()
        if credentials is None:
            raise NoCredentialsError()
        endpoint, virtual = bucket_endpoint(client, target.bucket)
        config: S3Config = {
            "region": client.meta.region_name,
            "virtual_hosted_style_request": virtual,
        }
        if target.settings.checksum == "when_supported":
            config["checksum_algorithm"] = "SHA256"
        if target.sse:
            config["server_side_encryption"] = target.sse
        if target.kms_key_id:
            config["sse_kms_key_id"] = target.kms_key_id

        def provide() -> S3Credential:
            frozen = credentials.get_frozen_credentials()
            return {
                "access_key_id": frozen.access_key or "",
                "secret_access_key": frozen.secret_key or "",
                "token": frozen.token,
                "expires_at": datetime.now(UTC) + CREDENTIALS_TTL,
            }

        return S3Store(
            target.bucket,
            endpoint=endpoint,
            config=config,
            client_options=self._client_options(client, session, endpoint),
            retry_config={"max_retries": 0},
            credential_provider=provide,
        )

    def _client_options(
        self, client: S3Client, session: botocore.session.Session, endpoint: str
    ) -> ClientConfig:
        """Timeouts, pool, proxy and CA bundle as botocore applies them to this client."""
        options: ClientConfig = {
            "allow_http": endpoint.startswith("http:"),
            "connect_timeout": timedelta(seconds=_setting(client, "connect_timeout")),
            "timeout": timedelta(seconds=_setting(client, "read_timeout")),
            "pool_max_idle_per_host": str(self.pool_connections),
        }
        proxies = _setting(client, "proxies") or get_environ_proxies(endpoint)
        proxy = ProxyConfiguration(proxies=proxies).proxy_url_for(endpoint)
        if proxy:
            options["proxy_url"] = proxy
            proxy_ca = (_setting(client, "proxies_config") or {}).get("proxy_ca_bundle")
            if proxy_ca:
                options["proxy_ca_certificate"] = Path(proxy_ca).read_text()
        ca_bundle = session.get_config_variable("ca_bundle")
        if ca_bundle:
            options["root_certificate"] = Path(ca_bundle).read_text()
        return options


def bucket_endpoint(client: S3Client, bucket: str) -> tuple[str, bool]:
    """The endpoint boto3 uses for ``bucket`` and whether the bucket is in the host name.

    A HeadObject of a probe key runs botocore's endpoint rules (addressing style, region,
    FIPS, dual-stack) and signing as for any request; ``answer_probe`` answers it before it
    is sent.
    """
    head = client.head_object(Bucket=bucket, Key=PROBE_KEY)
    url = urlsplit(head["ResponseMetadata"]["HTTPHeaders"][_PROBE_HEADER])
    base = f"{url.scheme}://{url.netloc}"
    prefix = url.path.removesuffix(f"/{PROBE_KEY}")
    if prefix.endswith(f"/{bucket}"):
        return base + prefix.removesuffix(f"/{bucket}"), False
    return base + prefix, True


def answer_probe(request: AWSPreparedRequest, **_: Any) -> AWSResponse | None:
    """``before-send`` hook of every client: answers the probe of ``bucket_endpoint`` unsent."""
    if not urlsplit(request.url).path.endswith(f"/{PROBE_KEY}"):
        return None
    headers: Any = HeadersDict({_PROBE_HEADER: request.url})
    return AWSResponse(request.url, 200, headers, _NoBody())


def is_probe(response: dict[str, Any]) -> bool:
    """Whether a response is ``answer_probe``'s (not a request to count)."""
    return _PROBE_HEADER in response.get("headers", {})


class _NoBody:
    def stream(self, *_: Any, **__: Any) -> Iterator[bytes]:
        return iter(())


def _setting(client: S3Client, name: str) -> Any:
    """One of botocore's ``Config`` values for this client (they are not in its type stubs)."""
    return getattr(client.meta.config, name)


def _classify(exc: Exception, store: S3Store) -> tuple[int | None, Exception]:
    """The HTTP status of a failed attempt (None: no answer) and botocore's exception for it.

    obstore reports the status and the S3 error body only in its message, so they are read
    from there; a 412 on a create-only PUT is its own exception class.
    """
    text = str(exc)
    if isinstance(exc, obstore.exceptions.AlreadyExistsError):
        return 412, _client_error(412, "PreconditionFailed", "the key exists (If-None-Match)")
    statuses = _STATUS.findall(text)
    if statuses:
        status = int(statuses[-1])
        codes, messages = _CODE.findall(text), _MESSAGE.findall(text)
        return status, _client_error(
            status, codes[-1] if codes else str(status), messages[-1] if messages else ""
        )
    endpoint = str(store.config.get("endpoint", ""))
    lowered = text.lower()
    # reqwest's error kind, in obstore's debug text: "kind: Timeout" ... "source: TimedOut".
    if "kind: timeout" in lowered or "timedout" in lowered:
        return None, ReadTimeoutError(endpoint_url=endpoint, error=_first_line(text))
    if "connect" in lowered and "error sending request" in lowered:
        return None, EndpointConnectionError(endpoint_url=endpoint, error=_first_line(text))
    return None, ConnectionClosedError(endpoint_url=endpoint, error=_first_line(text))


def _client_error(status: int, code: str, message: str) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else "no answer"
