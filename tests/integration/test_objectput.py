"""Small files through obstore (objectput): the same promises as boto3's put_object.

The wire is watched through ``devstack.relay`` (a loopback TCP relay), which also breaks
connections on demand; a 5xx comes from a fake endpoint, as neither server can be told to
fail once.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from prometheus_client import REGISTRY
from pytest_httpserver import HTTPServer
from test_uploader import claim_for, make_job, with_bucket
from werkzeug import Request, Response

from devstack import REGION, S3Server
from devstack.relay import Relay
from uploaderd.config.settings import S3Settings
from uploaderd.upload.objectput import Target, bucket_endpoint, fits
from uploaderd.upload.storage import Storage
from uploaderd.upload.uploader import Uploader


class Wire:
    """Every byte the client sent through a relay, and a switch to reset the next request."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.resets_left = 0
        self.marker = b""
        self._lock = threading.Lock()

    def __call__(self, data: bytes) -> bytes | None:
        with self._lock:
            if self.resets_left and self.marker in data:
                self.resets_left -= 1
                return None
            self.sent += data
            return data

    def headers(self) -> list[dict[str, str]]:
        """The header block of every request seen, names in lower case."""
        blocks = []
        for chunk in bytes(self.sent).split(b"\r\n\r\n"):
            lines = chunk.decode("latin-1").split("\r\n")
            if lines and lines[0].split(" ")[0] in ("PUT", "GET", "HEAD", "POST"):
                blocks.append(
                    {
                        name.lower(): value.strip()
                        for name, _, value in (line.partition(":") for line in lines[1:])
                    }
                )
        return blocks


@pytest.fixture
def wire(s3_backend: S3Server) -> Iterator[tuple[Wire, Relay]]:
    tap = Wire()
    with Relay(s3_backend.port, tamper=tap) as relay:
        yield tap, relay


def requests(op: str, code: str) -> float:
    return REGISTRY.get_sample_value("uploaderd_s3_requests_total", {"op": op, "code": code}) or 0.0


def upload(root: Path, bucket: str, endpoint: Any, data: bytes, **destination: Any) -> Any:
    (root / "f.bin").write_bytes(data)
    job = make_job(root, bucket, endpoint, **destination)
    return Uploader(Storage(4)).upload(with_bucket(claim_for(root / "f.bin", root), bucket), job)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.mark.parametrize("setting", ["when_supported", "when_required"])
def test_the_sha256_travels_as_checksum_and_metadata_without_100_continue(
    root: Path,
    s3_backend: S3Server,
    backend_bucket: str,
    wire: tuple[Wire, Relay],
    setting: str,
) -> None:
    tap, relay = wire
    data = b"checked by the server" * 50
    result = upload(
        root,
        backend_bucket,
        relay,
        data,
        checksum=setting,
        storage_class="STANDARD",
        tags="{project: x y}",
        metadata="{instrument: scope-a}",
    )
    assert result.outcome == "uploaded"
    [put] = [h for h in tap.headers() if "x-amz-meta-sha256" in h]
    digest = hashlib.sha256(data)
    assert put["x-amz-meta-sha256"] == digest.hexdigest()
    # The payload is signed with its SHA-256 too: a server that checks signatures checks it.
    assert put["x-amz-content-sha256"] == digest.hexdigest()
    if setting == "when_supported":
        assert put["x-amz-checksum-sha256"] == base64.b64encode(digest.digest()).decode()
    else:
        assert not any(name.startswith("x-amz-checksum") for name in put)
    assert "expect" not in put, "small PUTs never wait a round trip for 100 Continue"
    assert (put["x-amz-storage-class"], put["x-amz-tagging"]) == ("STANDARD", "project=x+y")
    assert put["x-amz-meta-instrument"] == "scope-a"
    got = s3_backend.client().get_object(Bucket=backend_bucket, Key="up/f.bin")
    assert got["Body"].read() == data


@pytest.mark.parametrize(
    "sse", [{"sse": "AES256"}, {"sse": "aws:kms", "kms_key_id": "alias/lab"}], ids=str
)
def test_server_side_encryption_is_requested(
    root: Path, s3_server: S3Server, bucket: str, sse: dict[str, str]
) -> None:
    tap = Wire()
    with Relay(s3_server.port, tamper=tap) as relay:
        upload(root, bucket, relay, b"secret", **sse)
    [put] = [h for h in tap.headers() if "x-amz-meta-sha256" in h]
    assert put["x-amz-server-side-encryption"] == sse["sse"]
    assert put.get("x-amz-server-side-encryption-aws-kms-key-id") == sse.get("kms_key_id")


def test_a_body_damaged_in_flight_is_refused_by_a_server_that_checks(
    root: Path, httpserver: HTTPServer
) -> None:
    """Bytes damaged after the checksum was computed are refused, never stored as ours.

    Neither local server verifies x-amz-checksum-sha256 (moto 5.2's source says TODO,
    rclone ignores it), so the server here is a fake that does what S3 does: compare the
    body's SHA-256 with the header and answer 400 BadDigest.
    """
    stored: list[bytes] = []

    def checking_server(request: Request) -> Response:
        claimed = request.headers.get("x-amz-checksum-sha256", "")
        if base64.b64encode(hashlib.sha256(request.data).digest()).decode() != claimed:
            return Response(_BAD_DIGEST, status=400, content_type="application/xml")
        stored.append(request.data)
        return Response("", status=200, headers={"ETag": '"ok"'})

    httpserver.expect_request("/lab-bucket/up/f.bin", method="PUT").respond_with_handler(
        checking_server
    )
    data = b"A" * 1000 + b"good-bytes" + b"B" * 1000
    with Relay(httpserver.port, tamper=lambda chunk: chunk.replace(b"good", b"evil")) as relay:
        damaged = upload(root, "lab-bucket", relay, data)
    assert (damaged.outcome, damaged.destination) == ("failed", True)
    assert damaged.error and damaged.error.startswith("S3 BadDigest")
    assert stored == []
    (root / "f.bin").unlink()

    class Direct:
        endpoint_url = httpserver.url_for("/").rstrip("/")

    assert upload(root, "lab-bucket", Direct(), data).outcome == "uploaded"
    assert stored == [data]


def test_if_none_match_is_sent_and_a_412_is_a_precondition_failure(
    s3_server: S3Server, bucket: str
) -> None:
    """moto honours If-None-Match: *; a create-only PUT onto a taken key gets 412."""
    tap = Wire()
    relay = Relay(s3_server.port, tamper=tap)
    relay.start()
    storage = Storage(4)
    target = Target(S3Settings(endpoint_url=relay.endpoint_url, region=REGION), bucket, None, None)
    storage.puts.put(target, "k", b"first", args={}, if_absent=True)
    before = requests("PutObject", "412")
    with pytest.raises(ClientError) as caught:
        storage.puts.put(target, "k", b"second", args={}, if_absent=True)
    assert caught.value.response["Error"]["Code"] == "PreconditionFailed"
    assert requests("PutObject", "412") == before + 1, "a 412 is not retried"
    assert all(h.get("if-none-match") == "*" for h in tap.headers())
    relay.stop()
    body = s3_server.client().get_object(Bucket=bucket, Key="k")["Body"].read()
    assert body == b"first"


def test_overwrite_never_refuses_a_key_taken_between_look_and_put(
    root: Path, s3_backend: S3Server, backend_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the HEAD cannot see: the conditional PUT refuses, the second look decides."""
    if not s3_backend.honours_if_none_match:
        pytest.skip("this server ignores If-None-Match")
    s3_server, bucket = s3_backend, backend_bucket
    from uploaderd.upload import uploader as uploader_module

    real = uploader_module._existing
    calls: list[int] = []

    def look_then_race(*args: Any) -> Any:
        found = real(*args)
        if not calls:
            s3_server.client().put_object(Bucket=bucket, Key="up/f.bin", Body=b"theirs")
        calls.append(1)
        return found

    monkeypatch.setattr(uploader_module, "_existing", look_then_race)
    result = upload(root, bucket, s3_server, b"ours", overwrite="never")
    assert (result.outcome, result.retryable) == ("failed", False)
    assert len(calls) == 2
    body = s3_server.client().get_object(Bucket=bucket, Key="up/f.bin")["Body"].read()
    assert body == b"theirs"


def test_credentials_come_from_a_shared_credentials_file(
    root: Path,
    s3_backend: S3Server,
    backend_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As with LoadCredential=: only the file holds the keys (rclone checks signatures)."""
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[lab]\naws_access_key_id = {s3_backend.access_key}\n"
        f"aws_secret_access_key = {s3_backend.secret_key}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    result = upload(root, backend_bucket, s3_backend, b"keys from a file", profile="lab")
    assert result.outcome == "uploaded", result.error
    got = s3_backend.client().get_object(Bucket=backend_bucket, Key="up/f.bin")
    assert got["Body"].read() == b"keys from a file"


def test_a_connection_reset_mid_body_is_retried(
    root: Path, s3_backend: S3Server, backend_bucket: str, wire: tuple[Wire, Relay]
) -> None:
    tap, relay = wire
    tap.marker, tap.resets_left = b"reset-here", 1
    data = b"x" * 2000 + b"reset-here" + b"y" * 2000
    before_error, before_ok = requests("PutObject", "error"), requests("PutObject", "200")
    result = upload(root, backend_bucket, relay, data)
    assert result.outcome == "uploaded", result.error
    assert tap.resets_left == 0
    assert requests("PutObject", "error") == before_error + 1
    assert requests("PutObject", "200") == before_ok + 1
    got = s3_backend.client().get_object(Bucket=backend_bucket, Key="up/f.bin")
    assert got["Body"].read() == data


_BAD_DIGEST = (
    "<?xml version='1.0' encoding='UTF-8'?><Error><Code>BadDigest</Code>"
    "<Message>The SHA256 you specified did not match the calculated "
    "checksum.</Message></Error>"
)
_SLOW_DOWN = (
    "<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
    "<Message>Please reduce your request rate.</Message></Error>"
)


def test_a_5xx_is_retried_and_each_attempt_counted(root: Path, httpserver: HTTPServer) -> None:
    """A fake endpoint: the real servers cannot be told to answer 503 once."""
    path = "/lab-bucket/up/f.bin"
    httpserver.expect_ordered_request(path, method="PUT").respond_with_data(
        _SLOW_DOWN, status=503, content_type="application/xml"
    )
    httpserver.expect_ordered_request(path, method="PUT").respond_with_data(
        "", status=200, headers={"ETag": '"abc"'}
    )

    class Fake:
        endpoint_url = httpserver.url_for("/").rstrip("/")

    before_503, before_ok = requests("PutObject", "503"), requests("PutObject", "200")
    result = upload(root, "lab-bucket", Fake(), b"twice")
    assert (result.outcome, result.etag) == ("uploaded", '"abc"')
    assert requests("PutObject", "503") == before_503 + 1
    assert requests("PutObject", "200") == before_ok + 1
    httpserver.check_assertions()


def test_a_4xx_is_a_destination_failure_with_its_code(root: Path, s3_backend: S3Server) -> None:
    if s3_backend.creates_buckets_on_put:
        pytest.skip("this server creates a missing bucket on the first PUT")
    result = upload(root, "no-such-bucket-here", s3_backend, b"x")
    assert (result.outcome, result.destination) == ("failed", True)
    assert result.error and result.error.startswith("S3 NoSuchBucket")


def test_both_stacks_see_one_endpoint_region_addressing_and_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_server: S3Server
) -> None:
    """One S3Settings: boto3 and obstore agree, for a custom endpoint and for AWS itself."""
    config = tmp_path / "config"
    config.write_text(
        "[profile lab]\nregion = eu-west-3\n"
        "aws_access_key_id = AKIAFROMPROFILE\naws_secret_access_key = s3cr3t\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage = Storage(4)
    for settings, endpoint, virtual in [
        (
            S3Settings(endpoint_url=moto_server.endpoint_url, profile="lab"),
            moto_server.endpoint_url,
            False,
        ),
        (S3Settings(profile="lab"), "https://lab-bucket.s3.eu-west-3.amazonaws.com", True),
    ]:
        client = storage.client(settings)
        store = storage.puts.store(Target(settings, "lab-bucket", None, None))
        assert bucket_endpoint(client, "lab-bucket") == (endpoint, virtual)
        assert store.config["endpoint"] == endpoint
        assert str(store.config["virtual_hosted_style_request"]).lower() == str(virtual).lower()
        assert store.config["region"] == client.meta.region_name == "eu-west-3"
        assert store.credential_provider is not None
        given = store.credential_provider()
        assert isinstance(given, dict)
        credentials = storage.session(settings).get_credentials()
        assert credentials is not None
        frozen = credentials.get_frozen_credentials()
        assert (
            (given["access_key_id"], given["secret_access_key"])
            == (frozen.access_key, frozen.secret_key)
            == ("AKIAFROMPROFILE", "s3cr3t")
        )


def test_keys_obstore_would_rewrite_go_through_boto3() -> None:
    assert fits("up/a b/ü+c.txt")
    assert not any(fits(key) for key in ("/lead", "trail/", "a//b"))


def test_a_body_damaged_in_flight_is_refused_by_a_store_that_verifies(
    root: Path, s3_backend: S3Server, backend_bucket: str
) -> None:
    """On a real verifying store (SeaweedFS): damaged bytes are refused, nothing is stored."""
    if not s3_backend.verifies_checksums:
        pytest.skip("this server stores whatever the checksum says")
    data = b"A" * 1000 + b"good-bytes" + b"B" * 1000
    with Relay(s3_backend.port, tamper=lambda chunk: chunk.replace(b"good", b"evil")) as relay:
        damaged = upload(root, backend_bucket, relay, data)
    assert (damaged.outcome, damaged.destination) == ("failed", True)
    listed = s3_backend.client().list_objects_v2(Bucket=backend_bucket)
    assert listed.get("KeyCount", 0) == 0
