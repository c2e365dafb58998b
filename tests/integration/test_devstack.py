"""The local services the other tests stand on behave as those tests assume."""

from __future__ import annotations

import hashlib
import io

import psycopg2
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from uploaderd.devstack import MotoServer, PostgresCluster, S3Server


def _select_one(dsn: str) -> int:
    with psycopg2.connect(dsn, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        (value,) = cur.fetchone()
    conn.close()
    return int(value)


def test_cluster_answers_stops_and_restarts_on_same_port(
    pg_cluster: PostgresCluster, database_dsn: str
) -> None:
    assert _select_one(database_dsn) == 1

    pg_cluster.stop()
    assert not pg_cluster.is_running()
    with pytest.raises(psycopg2.OperationalError):
        _select_one(database_dsn)
    pg_cluster.stop()  # idempotent

    pg_cluster.start()
    assert pg_cluster.is_running()
    assert _select_one(database_dsn) == 1


def test_drop_database_disconnects_its_clients(pg_cluster: PostgresCluster) -> None:
    dsn = pg_cluster.create_database("test_drop_busy")
    conn = psycopg2.connect(dsn)
    try:
        pg_cluster.drop_database("test_drop_busy")
        with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        conn.close()


def _metadata(server: S3Server, bucket: str, key: str) -> dict[str, str]:
    # rclone returns metadata keys in HTTP canonical case ("Sha256").
    head = server.client().head_object(Bucket=bucket, Key=key)
    return {name.lower(): value for name, value in head["Metadata"].items()}


def test_put_get_with_sha256_metadata(s3_backend: S3Server, backend_bucket: str) -> None:
    body = b"hello uploaderd\n" * 1000
    digest = hashlib.sha256(body).hexdigest()
    client = s3_backend.client()

    client.put_object(Bucket=backend_bucket, Key="a/b.txt", Body=body, Metadata={"sha256": digest})

    assert _metadata(s3_backend, backend_bucket, "a/b.txt") == {"sha256": digest}
    assert client.get_object(Bucket=backend_bucket, Key="a/b.txt")["Body"].read() == body


def test_multipart_upload(s3_backend: S3Server, backend_bucket: str) -> None:
    body = bytes(range(256)) * (11 * 4096)  # 11 MiB: three 5 MiB-or-less parts
    digest = hashlib.sha256(body).hexdigest()
    client = s3_backend.client()
    parts = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)

    client.upload_fileobj(
        io.BytesIO(body),
        backend_bucket,
        "big.bin",
        ExtraArgs={"Metadata": {"sha256": digest}},
        Config=parts,
    )

    assert _metadata(s3_backend, backend_bucket, "big.bin") == {"sha256": digest}
    assert client.get_object(Bucket=backend_bucket, Key="big.bin")["Body"].read() == body


def test_if_none_match_only_moto_refuses_overwrite(
    s3_backend: S3Server, backend_bucket: str
) -> None:
    """uploaderd cannot rely on conditional PUTs: rclone ignores them (see devstack's docstring)."""
    client = s3_backend.client()
    client.put_object(Bucket=backend_bucket, Key="k", Body=b"first", IfNoneMatch="*")

    if isinstance(s3_backend, MotoServer):
        with pytest.raises(ClientError) as refused:
            client.put_object(Bucket=backend_bucket, Key="k", Body=b"second", IfNoneMatch="*")
        assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
        expected = b"first"
    else:
        client.put_object(Bucket=backend_bucket, Key="k", Body=b"second", IfNoneMatch="*")
        expected = b"second"
    assert client.get_object(Bucket=backend_bucket, Key="k")["Body"].read() == expected
