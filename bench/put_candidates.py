"""Small PutObjects side by side: how much client CPU each way of sending them costs (issue 10).

Every candidate sends the same N PutObjects of SIZE bytes from T threads to one local S3
server, with what the daemon sends (``x-amz-meta-sha256``, the SHA-256 checksum), and the
client's CPU seconds per PUT are reported with the wall time. CPU per PUT is the robust
figure on a shared machine; the wall time depends on the server and the neighbours.

- ``boto3``: ``put_object`` on the client ``Storage`` makes (the path before issue 10).
- ``botocore-lean``: the request built by hand, signed with botocore's ``S3SigV4Auth``
  (payload hash = our SHA-256) and sent on the boto3 client's own urllib3 session:
  botocore's signer and transport without its request pipeline.
- ``obstore``: ``uploaderd.objectput`` (Rust, off the GIL), as the daemon now sends them.
- ``boto3-procs``: ``put_object`` from P processes with T/P threads each, the "several
  upload processes" design; CPU is summed over the processes.

    .venv/bin/python bench/put_candidates.py [--s3 rclone] [--puts 2000] [--threads 16]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

from devstack import REGION, S3_SERVERS
from uploaderd.config.settings import S3Settings
from uploaderd.upload.objectput import Target
from uploaderd.upload.storage import Storage

BUCKET = "candidates"
Put = Callable[[str, bytes], None]


class _SignedPayload(S3SigV4Auth):
    """SigV4 with the payload hash we already computed, instead of hashing the body again."""

    def payload(self, request: Any) -> str:
        return str(request.context["sha256"])


def boto3_put(storage: Storage, settings: S3Settings) -> Put:
    client = storage.client(settings)

    def put(key: str, data: bytes) -> None:
        digest = hashlib.sha256(data)
        client.put_object(
            Bucket=BUCKET,
            Key=key,
            Body=data,
            Metadata={"sha256": digest.hexdigest()},
            ChecksumSHA256=base64.b64encode(digest.digest()).decode(),
        )

    return put


def lean_put(storage: Storage, settings: S3Settings) -> Put:
    client = storage.client(settings)
    credentials = storage.session(settings).get_credentials()
    assert credentials is not None
    http = client._endpoint.http_session  # type: ignore[attr-defined]  # the client's own pool
    base = f"{settings.endpoint_url}/{BUCKET}/"

    def put(key: str, data: bytes) -> None:
        digest = hashlib.sha256(data)
        request = AWSRequest(
            "PUT",
            base + key,
            data=data,
            headers={
                "x-amz-meta-sha256": digest.hexdigest(),
                "x-amz-checksum-sha256": base64.b64encode(digest.digest()).decode(),
                "Content-Length": str(len(data)),
            },
        )
        request.context["sha256"] = digest.hexdigest()
        _SignedPayload(credentials.get_frozen_credentials(), "s3", REGION).add_auth(request)
        response = http.send(request.prepare())
        if response.status_code != 200:
            raise RuntimeError(f"PUT {key}: {response.status_code}")

    return put


def obstore_put(storage: Storage, settings: S3Settings) -> Put:
    target = Target(settings, BUCKET, None, None)

    def put(key: str, data: bytes) -> None:
        digest = hashlib.sha256(data)
        storage.puts.put(
            target, key, data, args={"Metadata": {"sha256": digest.hexdigest()}}, if_absent=False
        )

    return put


CANDIDATES: dict[str, Callable[[Storage, S3Settings], Put]] = {
    "boto3": boto3_put,
    "botocore-lean": lean_put,
    "obstore": obstore_put,
}


def run_threads(put: Put, prefix: str, puts: int, threads: int, data: bytes) -> None:
    put(f"{prefix}/warm-up", data)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: put(f"{prefix}/{i:06d}", data), range(puts)))


def _process(endpoint: str, prefix: str, puts: int, threads: int, size: int) -> None:
    settings = S3Settings(endpoint_url=endpoint, region=REGION)
    run_threads(boto3_put(Storage(threads), settings), prefix, puts, threads, os.urandom(size))


def measure(name: str, endpoint: str, args: argparse.Namespace, rep: int) -> tuple[float, float]:
    """(wall seconds, client CPU seconds) of one candidate's run."""
    prefix = f"{name}/r{rep}"
    settings = S3Settings(endpoint_url=endpoint, region=REGION)
    if name == "boto3-procs":
        share = args.puts // args.processes
        before = _children_cpu()
        started = time.perf_counter()
        procs = [
            multiprocessing.Process(
                target=_process,
                args=(
                    endpoint,
                    f"{prefix}/p{n}",
                    share,
                    max(1, args.threads // args.processes),
                    args.size,
                ),
            )
            for n in range(args.processes)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
            if proc.exitcode != 0:
                raise SystemExit(f"{name}: a process exited with {proc.exitcode}")
        return time.perf_counter() - started, _children_cpu() - before
    put = CANDIDATES[name](Storage(args.threads), settings)
    data = os.urandom(args.size)
    put(f"{prefix}/first", data)  # clients, stores and connections exist before the clock
    cpu, started = time.process_time(), time.perf_counter()
    run_threads(put, prefix, args.puts, args.threads, data)
    return time.perf_counter() - started, time.process_time() - cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--s3", choices=sorted(S3_SERVERS), default="rclone")
    parser.add_argument("--puts", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2, help="for boto3-procs")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=[*CANDIDATES, "boto3-procs"])
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in args.only}
    with tempfile.TemporaryDirectory(prefix="uploaderd-candidates-") as work:
        server = S3_SERVERS[args.s3](Path(work))
        server.start()
        try:
            server.create_bucket(BUCKET)
            os.environ.update(
                AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key
            )
            for rep in range(1, args.repeat + 1):  # interleaved, so drift hits all alike
                for name in args.only:
                    wall, cpu = measure(name, server.endpoint_url, args, rep)
                    results[name].append((wall, cpu))
                    print(
                        f"  {name:<14} rep {rep}: {wall:6.2f} s, "
                        f"{cpu / args.puts * 1000:.3f} ms CPU/PUT",
                        flush=True,
                    )
        finally:
            server.cleanup()
    print(
        f"\n{args.puts} PUTs of {args.size} B, {args.threads} threads, {args.s3}; "
        f"medians of {args.repeat}; load average now {os.getloadavg()[0]:.2f}"
    )
    print(f"{'candidate':<14} {'seconds':>8} {'PUT/s':>7} {'CPU ms/PUT':>11}")
    for name, samples in results.items():
        wall = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        print(f"{name:<14} {wall:8.2f} {args.puts / wall:7.0f} {cpu / args.puts * 1000:11.3f}")
    print(f"reproduce: .venv/bin/python bench/put_candidates.py {' '.join(sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
