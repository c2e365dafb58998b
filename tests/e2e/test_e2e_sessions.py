"""Sessions, registrations and after_upload through the running daemon."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from devstack import DaemonProcess, wait_for

Sql = Callable[..., list[tuple[Any, ...]]]


def job(root: Path, bucket: str, **sections: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"paths": [str(root)], "settle": "0.5s", "rescan": "1h"},
        "destination": {"bucket": bucket, "key": "in/${relpath}"},
        "retry": {"max_attempts": 5, "backoff": {"initial": "0.2s", "max": "0.5s"}},
    }
    spec.update(sections)
    return spec


def write(root: Path, relpath: str, data: bytes = b"data") -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_marker_completes_a_run_and_registers_it(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    bucket: str,
    sql: Sql,
    httpserver: HTTPServer,
) -> None:
    httpserver.expect_request("/register").respond_with_json({"ok": True})
    daemon = make_daemon()
    daemon.write_job(
        "scope",
        job(
            tmp_path,
            bucket,
            session={"group_by": "top_dir", "complete_when": {"marker": "RunComplete.txt"}},
            trigger={"url": httpserver.url_for("/register"), "schedule": {"interval": "0.5s"}},
        ),
    )
    daemon.start()
    write(tmp_path, "run-1/frame-1.tif")
    write(tmp_path, "run-1/frame-2.tif")
    write(tmp_path, "run-2/frame-1.tif")
    wait_for(
        lambda: sql("SELECT count(*) FROM file_versions WHERE state = 'uploaded'") == [(3,)],
        timeout=30,
        message="uploads",
    )
    assert sql("SELECT count(*) FROM sessions WHERE state = 'open'") == [(2,)]
    write(tmp_path, "run-1/RunComplete.txt", b"done")
    wait_for(lambda: len(httpserver.log) == 1, timeout=30, message="the registration")
    body = json.loads(httpserver.log[0][0].data)
    assert sorted(f["relpath"] for f in body["files"]) == [
        "run-1/RunComplete.txt",
        "run-1/frame-1.tif",
        "run-1/frame-2.tif",
    ]
    assert sql("SELECT group_key, state, closed_reason FROM sessions ORDER BY group_key") == [
        ("run-1", "complete", "marker"),
        ("run-2", "open", None),
    ]


def test_idle_session_completes_only_when_every_file_is_uploaded(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    bucket: str,
    sql: Sql,
) -> None:
    daemon = make_daemon()
    daemon.write_job("lab", job(tmp_path, bucket, session={"complete_when": {"idle": "1s"}}))
    daemon.start()
    for i in range(3):
        write(tmp_path, f"f{i}.dat")
    wait_for(
        lambda: sql("SELECT state, closed_reason FROM sessions") == [("complete", "idle")],
        timeout=30,
        message="an idle session closed",
    )
    assert sql("SELECT count(*) FROM file_versions WHERE state = 'uploaded'") == [(3,)]
    write(tmp_path, "later.dat")  # after the close: a new rolling session
    wait_for(
        lambda: sql("SELECT count(*) FROM sessions") == [(2,)],
        timeout=30,
        message="a second session",
    )


def test_after_upload_delete_and_move(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    bucket: str,
    sql: Sql,
) -> None:
    deleting, moving, done = tmp_path / "del", tmp_path / "mov", tmp_path / "done"
    for path in (deleting, moving):
        path.mkdir()
    daemon = make_daemon()
    daemon.write_job(
        "gone",
        {
            **job(deleting, bucket),
            "after_upload": "delete",
            "destination": {"bucket": bucket, "key": "d/${relpath}"},
        },
    )
    daemon.write_job(
        "moved",
        {
            **job(moving, bucket),
            "after_upload": {"move_to": str(done)},
            "destination": {"bucket": bucket, "key": "m/${relpath}"},
        },
    )
    daemon.start()
    write(deleting, "sub/a.txt", b"delete me")
    write(moving, "sub/b.txt", b"move me")
    wait_for(lambda: not (deleting / "sub" / "a.txt").exists(), timeout=30, message="deleted")
    wait_for(lambda: (done / "sub" / "b.txt").exists(), timeout=30, message="moved")
    assert (done / "sub" / "b.txt").read_bytes() == b"move me"
    assert not (moving / "sub" / "b.txt").exists()
    assert sorted(sql("SELECT relpath, disposition FROM file_versions")) == [
        ("sub/a.txt", "deleted"),
        ("sub/b.txt", f"moved to {done / 'sub' / 'b.txt'}"),
    ]


def test_after_upload_waits_for_registration_when_asked(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    bucket: str,
    sql: Sql,
    httpserver: HTTPServer,
) -> None:
    accepting = threading.Event()

    def handler(request: Request) -> Response:
        return Response("", status=200 if accepting.is_set() else 503)

    httpserver.expect_request("/r").respond_with_handler(handler)
    daemon = make_daemon()
    daemon.write_job(
        "lab",
        {
            **job(tmp_path, bucket),
            "after_upload": "delete",
            "after_upload_when": "registered",
            "trigger": {
                "url": httpserver.url_for("/r"),
                "on": "file_uploaded",
                "schedule": {"interval": "0.3s"},
            },
        },
    )
    daemon.start()
    target = write(tmp_path, "keep-until-registered.dat")
    wait_for(lambda: len(httpserver.log) >= 1, timeout=30, message="a refused registration")
    assert target.exists(), "uploaded but not registered: the file stays"
    accepting.set()
    wait_for(lambda: not target.exists(), timeout=30, message="deleted after registration")
    assert sql("SELECT registered_at IS NOT NULL, disposition FROM file_versions") == [
        (True, "deleted")
    ]


def test_restart_between_post_and_commit_repeats_the_same_key(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    bucket: str,
    sql: Sql,
    httpserver: HTTPServer,
) -> None:
    daemon = make_daemon()
    keys: list[str] = []

    def handler(request: Request) -> Response:
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) == 1:
            daemon.kill9()  # the POST arrived; the daemon dies before it can record the answer
        return Response("", status=200)

    httpserver.expect_request("/r").respond_with_handler(handler)
    daemon.write_job(
        "lab",
        job(
            tmp_path,
            bucket,
            trigger={
                "url": httpserver.url_for("/r"),
                "on": "file_uploaded",
                "schedule": {"interval": "0.3s"},
            },
        ),
    )
    daemon.start()
    write(tmp_path, "a.dat")
    wait_for(lambda: keys, timeout=30, message="the first POST")
    wait_for(lambda: not daemon.alive(), timeout=10, message="the daemon killed")
    assert sql("SELECT state FROM triggers") == [("pending",)]
    daemon.start()
    wait_for(
        lambda: sql("SELECT state FROM triggers") == [("sent",)],
        timeout=30,
        message="sent after the restart",
    )
    assert len(keys) == 2 and keys[0] == keys[1]


def test_two_daemons_share_the_work_without_doubling_it(
    make_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    bucket: str,
    sql: Sql,
    httpserver: HTTPServer,
) -> None:
    httpserver.expect_request("/r").respond_with_data("", status=200)
    spec = job(
        tmp_path,
        bucket,
        session={"group_by": "top_dir", "complete_when": {"marker": "DONE"}},
        trigger={"url": httpserver.url_for("/r"), "schedule": {"interval": "0.3s"}},
    )
    spec["source"]["shared"] = True  # both daemons watch the same mount
    first, second = make_daemon(), make_daemon()
    for daemon in (first, second):
        daemon.write_job("lab", spec)
        daemon.start()
    for run in range(3):
        for i in range(40):
            write(tmp_path, f"run-{run}/f{i:02d}.dat", os.urandom(256))
        write(tmp_path, f"run-{run}/DONE")
    wait_for(
        lambda: sql("SELECT count(*) FROM triggers WHERE state = 'sent'") == [(3,)],
        timeout=60,
        message="three registrations sent",
    )
    assert sql("SELECT count(*) FROM file_versions") == [(123,)]
    assert sql("SELECT count(*) FROM upload_attempts WHERE outcome = 'uploaded'") == [(123,)]
    assert sql("SELECT count(*) FROM sessions") == [(3,)]
    assert len(httpserver.log) == 3, "each session registered once, by one of the daemons"
    assert len({r.headers["Idempotency-Key"] for r, _ in httpserver.log}) == 3
