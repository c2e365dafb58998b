"""``demo`` and ``services``: uploaderd, or only its PostgreSQL and S3, on this machine.

Both stop everything they started however they are ended: Ctrl-C, SIGTERM, SIGHUP (the
terminal was closed) or a reader that went away. ``./dev demo | tee demo.log`` shows why
the last matters: Ctrl-C ends tee as well, so every later print meets a closed pipe. So the
daemon is stopped before PostgreSQL and S3 (the reverse of starting), further stop
signals are ignored while that happens, and no print can raise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from devstack.postgres import PostgresCluster
from devstack.process import STOP_SIGNALS, free_port, terminate
from devstack.s3 import REGION, S3_SERVERS, S3Server

# The demo config's shutdown_grace is 10s; the daemon gets that and a margin.
DAEMON_STOP_TIMEOUT = 20.0
BUCKET = "demo"


def say(text: str, stream: TextIO | None = None) -> None:
    """Print ``text``; a closed pipe or a hung-up terminal silences the stream instead of raising.

    Once a write failed, the stream is pointed at /dev/null: later prints, and the
    interpreter's own flush at exit, would fail the same way.
    """
    out = stream or sys.stdout
    try:
        print(text, file=out, flush=True)
    except OSError:  # BrokenPipeError, or EIO from a terminal that is gone
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
            os.close(devnull)


def _ignore_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def _stack() -> Iterator[contextlib.ExitStack]:
    """An ExitStack whose unwinding (stopping what was started) no stop signal cuts short."""
    with contextlib.ExitStack() as stack:
        try:
            yield stack
        finally:
            _ignore_stop_signals()


def _start_services(
    stack: contextlib.ExitStack, directory: Path, s3_kind: str
) -> tuple[PostgresCluster, S3Server]:
    """Start PostgreSQL (fresh ``uploaderd`` database) and S3 (empty ``demo`` bucket)."""
    pg = PostgresCluster(directory / "postgres")
    stack.callback(pg.stop)
    pg.start()
    pg.drop_database("uploaderd")
    pg.create_database("uploaderd")
    s3 = S3_SERVERS[s3_kind](directory / "s3")
    stack.callback(s3.stop)
    s3.start()
    s3.create_bucket(BUCKET)
    return pg, s3


def _service_env(pg: PostgresCluster, s3: S3Server) -> dict[str, str]:
    """What a shell needs to reach the local services (S3 keys, endpoint, database)."""
    return {
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": s3.endpoint_url,
        "UPLOADERD_DATABASE_DSN": pg.dsn("uploaderd"),
    }


def _exports(env: dict[str, str]) -> str:
    return "export " + " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())


def _demo_config(directory: Path, pg: PostgresCluster, s3: S3Server) -> Path:
    inbox = directory / "inbox"
    jobs = directory / "jobs.d"
    inbox.mkdir(exist_ok=True)
    jobs.mkdir(exist_ok=True)
    config = directory / "uploaderd.yaml"
    metrics_port = free_port()  # never collide with a uploaderd already on 9464
    config.write_text(
        f"""\
database:
  dsn: {pg.dsn("uploaderd")}
jobs_dir: {json.dumps(str(jobs))}
workers: 4
metrics:
  listen: 127.0.0.1:{metrics_port}
s3:
  endpoint_url: {s3.endpoint_url}
  region: {REGION}
  checksum: when_supported
log:
  level: info
  format: text
shutdown_grace: 10s
"""
    )
    (jobs / "demo.yaml").write_text(
        f"""\
name: demo
source:
  paths: [{json.dumps(str(inbox))}]
  settle: 2s
  rescan: 5m
destination:
  bucket: {BUCKET}
  key: "demo/${{relpath}}"
"""
    )
    return config


def _banner(directory: Path, config: Path, pg: PostgresCluster, s3: S3Server, s3_kind: str) -> str:
    env = {key: value for key, value in _service_env(pg, s3).items() if key.startswith("AWS_")}
    activate = Path(sys.prefix) / "bin" / "activate"
    shell = [f". {shlex.quote(str(activate))}"] if activate.is_file() else []
    shell += [_exports({"UPLOADERD_CONFIG": str(config)}), _exports(env)]
    lines = "\n".join(f"    {line}" for line in shell)
    # devstack is not installed: `python -m devstack` runs from the checkout.
    checkout = shlex.quote(str(Path(__file__).resolve().parent.parent))
    kept = sorted(p.name for p in (directory / "jobs.d").glob("*.yaml") if p.name != "demo.yaml")
    kept_note = (
        f"\n  Also running, from an earlier demo: {', '.join(kept)} in "
        f"{directory / 'jobs.d'} (delete them to stop them).\n"
        if kept
        else ""
    )
    return f"""
uploaderd demo: PostgreSQL at {pg.dsn("uploaderd")}, {s3_kind} S3 at {s3.endpoint_url}

  drop files into  {directory / "inbox"}
  they land in     s3://{BUCKET}/demo/<path relative to the inbox>

  In another shell, this points uploaderd and any S3 client (aws, boto3) at the demo:
{lines}
  then
    uploaderd status
    uploaderd files
    uploaderd explain {shlex.quote(str(directory / "inbox"))}/FILE
    uploaderd verify demo
    (cd {checkout} && python -m devstack objects)   # the bucket's objects
{kept_note}
  Ctrl-C stops the daemon, then PostgreSQL and S3. Each start begins with an
  empty database and bucket, so files already in the inbox are uploaded again.
"""


def objects(bucket: str) -> int:
    """List ``bucket`` (key, size, SHA-256 metadata) on the S3 endpoint of the environment
    the demo prints: what ``aws s3 ls`` would show, with what the demo installed."""
    import boto3  # uploaderd's own dependency; only this command needs it here

    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            head = client.head_object(Bucket=bucket, Key=item["Key"])
            sha = {k.lower(): v for k, v in head.get("Metadata", {}).items()}.get("sha256", "")
            say(f"{item['Size']:>12}  {item['Key']}  {sha}".rstrip())
            count += 1
    say(f"{count} object{'' if count == 1 else 's'} in s3://{bucket}/")
    return 0


def _stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    if daemon.poll() is None:
        say("\nstopping uploaderd, then PostgreSQL and S3 ...")
        terminate(daemon, DAEMON_STOP_TIMEOUT)


def demo(directory: Path, s3_kind: str) -> int:
    """Run ``uploaderd run`` on fresh local services until it exits or we are stopped."""
    with _stack() as stack:
        stack.callback(say, f"PostgreSQL and S3 stopped; the demo's files stay in {directory}")
        pg, s3 = _start_services(stack, directory, s3_kind)
        config = _demo_config(directory, pg, s3)
        env = os.environ | _service_env(pg, s3)
        env.pop("AWS_PROFILE", None)
        uploaderd = [sys.executable, "-m", "uploaderd"]
        subprocess.run([*uploaderd, "migrate", "-c", str(config)], env=env, check=True)
        # Its own session: a terminal's Ctrl-C reaches us only, and we stop it first.
        daemon = subprocess.Popen(
            [*uploaderd, "run", "-c", str(config)], env=env, start_new_session=True
        )
        stack.callback(_stop_daemon, daemon)
        say(_banner(directory, config, pg, s3, s3_kind))
        return daemon.wait()


def services(directory: Path, s3_kind: str) -> int:
    """Start PostgreSQL and S3, print the environment to reach them, wait to be stopped."""
    with _stack() as stack:
        stack.callback(say, "PostgreSQL and S3 stopped")  # the last: unwound after both
        pg, s3 = _start_services(stack, directory, s3_kind)
        stack.callback(say, "stopping PostgreSQL and S3 ...")
        for key, value in _service_env(pg, s3).items():
            say(_exports({key: value}))
        say(f"# {s3_kind} S3 with bucket `{BUCKET}`; Ctrl-C stops both services")
        while pg.is_running() and s3.is_running():
            time.sleep(1.0)
    return 0
