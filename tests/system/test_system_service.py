"""The .deb under a real systemd: the README's install steps, then reload, kill, watchdog,
stop during a multipart upload, journald priorities, after_upload and removal, each checked
with ``systemctl show``, ``journalctl`` and the bytes in S3.

One container for the module, set up as the README says; each test adds its own job and
bucket, and leaves the service running for the next.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from debhost import (
    CREDENTIALS,
    UNIT,
    add_job,
    arrives,
    boot,
    install_as_the_readme_says,
    s3_object,
    write_file,
)
from nspawn import Container, wait_active

from devstack import RcloneS3Server, wait_for

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def host(
    system_root: Path,
    deb_package: Path,
    host_s3: RcloneS3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Container]:
    container = boot(system_root, "uploaderd-systest", tmp_path_factory.mktemp("service"))
    try:
        install_as_the_readme_says(container, deb_package, host_s3)
        yield container
    finally:
        container.poweroff()


def _restarts(host: Container) -> int:
    return int(host.show(UNIT, "NRestarts")["NRestarts"])


def test_the_readme_install_steps_work_and_a_filearrives(
    host: Container, host_s3: RcloneS3Server
) -> None:
    for name in ("pgpass", "aws-credentials"):
        info = host.path(f"/etc/uploaderd/credentials/{name}").stat()
        assert (info.st_uid, info.st_mode & 0o777) == (0, 0o600), name
    host_s3.create_bucket("readme")
    add_job(host, "scope-a", "/data/scope-a", "readme")
    check = host.sh(f"{CREDENTIALS} uploaderd check --connect")
    assert "1 valid job, 0 problems" in check.stdout, check.stdout
    host.run("systemctl", "enable", "--now", "uploaderd")
    shown = wait_active(host, UNIT)
    assert shown["NRestarts"] == "0"
    status = host.show(UNIT, "StatusText", "UnitFileState")
    assert status["UnitFileState"] == "enabled"
    assert "1 job, 1 root watched" in status["StatusText"], status
    data = os.urandom(100_000)
    write_file(host, "/data/scope-a/run-1/first.bin", data)
    arrives(host_s3, "readme", "scope-a/run-1/first.bin", data)
    assert "uploaded run-1/first.bin as s3://readme/scope-a/run-1/first.bin" in host.journal(UNIT)


def test_reload_applies_a_change_and_a_broken_job_file_fails_it_keeping_the_jobs(
    host: Container, host_s3: RcloneS3Server
) -> None:
    host_s3.create_bucket("reload")
    add_job(host, "reload", "/data/reload", "reload")
    host.run("systemctl", "reload", UNIT)
    wait_active(host, UNIT)
    wait_for(lambda: "job reload: added" in host.journal(UNIT), message="the reload applied")

    # A typo: `systemctl reload` fails and says why; the daemon keeps every job it had.
    broken = host.path("/etc/uploaderd/jobs.d/reload.yaml")
    good = broken.read_text()
    broken.write_text(good.replace("  settle:", "  setle:"))
    proc = host.run("systemctl", "reload", UNIT, check=False)
    assert proc.returncode != 0
    journal = host.journal(UNIT)
    assert "/etc/uploaderd/jobs.d/reload.yaml:4: source.setle: unknown key" in journal
    assert host.show(UNIT, "ActiveState")["ActiveState"] == "active"
    data = b"still watched while the job file is broken"
    write_file(host, "/data/reload/during.txt", data)
    arrives(host_s3, "reload", "reload/during.txt", data)

    broken.write_text(good)
    host.run("systemctl", "reload", UNIT)
    assert host.show(UNIT, "ActiveState")["ActiveState"] == "active"


def test_a_killed_daemon_is_restarted(host: Container, host_s3: RcloneS3Server) -> None:
    before = wait_active(host, UNIT)
    host.run("systemctl", "kill", "-s", "KILL", UNIT)
    after = wait_for(
        lambda: (shown := wait_active(host, UNIT))["MainPID"] != before["MainPID"] and shown,
        timeout=30,
        message="a new main process",
    )
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    data = b"after the restart"
    write_file(host, "/data/scope-a/after-kill.txt", data)
    arrives(host_s3, "readme", "scope-a/after-kill.txt", data)


def test_a_hung_daemon_is_restarted_by_the_watchdog(host: Container) -> None:
    # WatchdogSec=60 in the unit; 4 s here (the daemon pings at half of WATCHDOG_USEC).
    dropin = host.path("/etc/systemd/system/uploaderd.service.d/watchdog.conf")
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text("[Service]\nWatchdogSec=4s\n")
    try:
        host.run("systemctl", "daemon-reload")
        host.run("systemctl", "restart", UNIT)
        before = wait_active(host, UNIT)
        host.run("kill", "-STOP", before["MainPID"])
        wait_for(
            lambda: _restarts(host) == int(before["NRestarts"]) + 1,
            timeout=30,
            interval=0.2,
            message="the watchdog's restart",
        )
        assert "Watchdog timeout" in host.journal(UNIT)
        wait_active(host, UNIT)
    finally:
        dropin.unlink()
        host.run("systemctl", "daemon-reload")


def test_stop_during_a_multipart_upload_exits_0_and_the_upload_resumes_after_start(
    host: Container, host_s3: RcloneS3Server
) -> None:
    host_s3.create_bucket("large")
    add_job(host, "large", "/data/large", "large")
    # 40 MiB at 4 MB/s: about 10 s, in 8 MiB parts; the stop comes in the middle.
    host.path("/etc/uploaderd/jobs.d/large.yaml").write_text(
        host.path("/etc/uploaderd/jobs.d/large.yaml")
        .read_text()
        .replace("  bucket: large\n", "  bucket: large\n  bandwidth: 4MB/s\n")
    )
    host.run("systemctl", "reload", UNIT)
    data = os.urandom(40 * 1024 * 1024)
    write_file(host, "/data/large/big.bin", data)
    psql = f"runuser -u postgres -- psql -At -p {host.pg_port} uploaderd -c"
    in_progress = "SELECT multipart_upload_id FROM file_versions WHERE job = 'large'"
    upload_id = wait_for(
        lambda: host.sh(f'{psql} "{in_progress}"').stdout.strip(),
        timeout=30,
        interval=0.2,
        message="the multipart upload started",
    )
    start = time.monotonic()
    host.run("systemctl", "stop", UNIT)
    took = time.monotonic() - start
    stopped = host.show(UNIT, "ActiveState", "Result", "ExecMainStatus", "TimeoutStopUSec")
    assert (stopped["ActiveState"], stopped["Result"], stopped["ExecMainStatus"]) == (
        "inactive",
        "success",
        "0",
    ), stopped
    assert took < 90, f"stop took {took:.1f} s, beyond TimeoutStopSec"
    assert s3_object(host_s3, "large", "large/big.bin") is None
    assert host.sh(f'{psql} "{in_progress}"').stdout.strip() == upload_id

    host.run("systemctl", "start", UNIT)
    arrives(host_s3, "large", "large/big.bin", data, timeout=60)
    assert hashlib.sha256(s3_object(host_s3, "large", "large/big.bin") or b"").digest() == (
        hashlib.sha256(data).digest()
    )


def test_journal_priorities_through_the_real_journald(
    host: Container, host_s3: RcloneS3Server
) -> None:
    since = "--since=" + host.run("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    daemon = ("-t", "uploaderd", since)  # the daemon's own lines, not systemd's about it
    # A bucket that does not exist: a failed attempt is a warning; the job's pause, a
    # configuration error for the operator to fix (issue 25), is the one error.
    add_job(host, "nobucket", "/data/nobucket", "no-such-bucket")
    host.run("systemctl", "reload", UNIT)
    write_file(host, "/data/nobucket/lost.txt", b"no bucket for me")
    data = b"an upload is an info line"
    write_file(host, "/data/scope-a/info.txt", data)
    arrives(host_s3, "readme", "scope-a/info.txt", data)
    warnings = wait_for(
        lambda: host.journal(UNIT, "-p", "warning", *daemon).strip(),
        timeout=30,
        message="a warning in the journal",
    ).splitlines()
    assert all("job nobucket" in line for line in warnings), warnings
    assert any("lost.txt" in line for line in warnings), warnings
    errors = host.journal(UNIT, "-p", "err", *daemon).strip().splitlines()
    assert errors and all(
        "job nobucket: pausing uploads" in line and "a configuration error" in line
        for line in errors
    ), errors
    info = host.journal(UNIT, "-p", "info", *daemon)
    assert "job scope-a: uploaded info.txt as s3://readme/scope-a/info.txt" in info
    host.path("/etc/uploaderd/jobs.d/nobucket.yaml").unlink()
    host.run("systemctl", "reload", UNIT)


def test_after_upload_delete_needs_a_read_write_paths_drop_in(
    host: Container, host_s3: RcloneS3Server
) -> None:
    host_s3.create_bucket("delete")
    add_job(host, "delete", "/data/delete", "delete", after_upload="delete")
    host.run("chown", "uploaderd:uploaderd", "/data/delete")  # deleting writes the directory
    host.run("systemctl", "reload", UNIT)
    data = b"to be deleted once in S3"
    write_file(host, "/data/delete/gone.txt", data)
    arrives(host_s3, "delete", "delete/gone.txt", data)
    # ProtectSystem=strict: the documented error, in the journal, and the file stays.
    wait_for(
        lambda: "Read-only file system" in host.journal(UNIT, "-p", "warning"),
        timeout=30,
        message="the read-only error in the journal",
    )
    assert host.path("/data/delete/gone.txt").exists()

    dropin = host.path("/etc/systemd/system/uploaderd.service.d/delete.conf")
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text("[Service]\nReadWritePaths=/data/delete\n")
    host.run("systemctl", "daemon-reload")
    host.run("systemctl", "restart", UNIT)
    wait_for(
        lambda: not host.path("/data/delete/gone.txt").exists(),
        timeout=60,
        message="the source deleted by the next sweep",
    )
    assert s3_object(host_s3, "delete", "delete/gone.txt") == data


def test_remove_keeps_config_and_state_and_purge_removes_them(host: Container) -> None:
    host.sh("DEBIAN_FRONTEND=noninteractive dpkg -r uploaderd")
    assert host.show(UNIT, "ActiveState")["ActiveState"] in ("inactive", "failed")
    assert not host.path("/usr/bin/uploaderd").exists()
    assert not host.path("/opt/uploaderd/bin").exists()
    for kept in (
        "/etc/uploaderd/uploaderd.yaml",
        "/etc/uploaderd/jobs.d/scope-a.yaml",
        "/etc/uploaderd/credentials/pgpass",
        "/var/lib/uploaderd",
    ):
        assert host.path(kept).exists(), kept
    host.sh("DEBIAN_FRONTEND=noninteractive dpkg -P uploaderd")
    for gone in ("/etc/uploaderd", "/var/lib/uploaderd", "/opt/uploaderd"):
        assert not host.path(gone).exists(), gone
    assert host.run("getent", "passwd", "uploaderd").stdout.startswith("uploaderd:")
