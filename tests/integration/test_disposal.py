"""after_upload on real files and a real ledger: what is touched, and when."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from uploaderd.config.settings import Job, S3Settings, parse_job_text
from uploaderd.daemon.disposal import Disposer
from uploaderd.ledger.store import Ledger, NewVersion, Outcome, State
from uploaderd.policy.settle import Candidate, Signature

Sql = Callable[..., list[tuple[Any, ...]]]


def delete_job(root: Path, *, shared: bool) -> Job:
    return parse_job_text(
        f"source: {{paths: [{root}], shared: {str(shared).lower()}}}\n"
        "destination: {bucket: lab-raw}\nafter_upload: delete\n",
        name="lab",
        defaults=S3Settings(),
    )


def uploaded_file(ledger: Ledger, root: Path, name: str, *, scope: str) -> Path:
    path = root / name
    path.write_bytes(b"uploaded content")
    sig = Signature.of(path.stat())
    ledger.enqueue(
        "lab",
        scope=scope,
        host="host-a",
        bucket="lab-raw",
        versions=[
            NewVersion.of(Candidate(str(root), name, sig), key=f"lab/{name}", session_id=None)
        ],
    )
    [claim] = ledger.claim(
        worker="w", host="host-a", jobs=["lab"], scopes=[scope], limit=1, lease_seconds=60
    )
    ledger.complete("w", [Outcome(claim, State.UPLOADED, "uploaded", "ab" * 32)])
    return path


def test_on_a_shared_mount_one_host_at_a_time_disposes(
    ledger: Ledger, migrated_dsn: str, tmp_path: Path, sql: Sql
) -> None:
    path = uploaded_file(ledger, tmp_path, "a.dat", scope="")
    job = delete_job(tmp_path, shared=True)
    other_host = Ledger(migrated_dsn).connect()
    try:
        with other_host.named_lock("dispose:lab") as held:
            assert held
            assert Disposer(ledger, host="host-a").sweep(job) == 0
            assert path.exists()
    finally:
        other_host.close()
    assert Disposer(ledger, host="host-a").sweep(job) == 1
    assert not path.exists()
    assert sql("SELECT disposition FROM file_versions") == [("deleted",)]


def test_a_file_changed_after_its_upload_is_left_alone(
    ledger: Ledger, tmp_path: Path, sql: Sql
) -> None:
    path = uploaded_file(ledger, tmp_path, "a.dat", scope="host-a")
    path.write_bytes(b"a newer version, not uploaded yet")
    assert Disposer(ledger, host="host-a").sweep(delete_job(tmp_path, shared=False)) == 1
    assert path.read_bytes() == b"a newer version, not uploaded yet"
    assert sql("SELECT disposition FROM file_versions") == [
        ("skipped: the file changed after its upload",)
    ]
