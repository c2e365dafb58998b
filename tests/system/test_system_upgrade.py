"""An upgrade under a real systemd, the way automation runs it: the .deb of an earlier commit
(before migration 0010) installed and uploading with an admin-edited config, then
``apt-get install -y`` of this tree's .deb, non-interactively. A second host keeps the old
build on the same database throughout: the rolling upgrade of a fleet.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from debhost import (
    CREDENTIALS,
    UNIT,
    add_job,
    apt_install,
    arrives,
    boot,
    install_as_the_readme_says,
    write_file,
)
from nspawn import Container, wait_active

from devstack import RcloneS3Server, wait_for

pytestmark = pytest.mark.system


@pytest.fixture
def hosts(
    system_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Container, Container]]:
    booted: list[Container] = []
    try:
        for name in ("upgrade-a", "upgrade-b"):
            booted.append(boot(system_root, name, tmp_path_factory.mktemp(name)))
        yield booted[0], booted[1]
    finally:
        for container in booted:
            container.poweroff()


def _version(host: Container) -> str:
    return host.run("dpkg-query", "-W", "-f=${Version}", "uploaderd").stdout


def _drop(host: Container, path: str) -> bytes:
    data = os.urandom(4096)
    write_file(host, path, data)
    return data


def test_an_upgrade_restarts_the_daemon_and_an_old_host_keeps_working_across_the_migration(
    hosts: tuple[Container, Container], old_deb: Path, deb_package: Path, host_s3: RcloneS3Server
) -> None:
    a, b = hosts
    host_s3.create_bucket("upgrade")
    # Host a: the old build, installed as the README says (its config edited on the way).
    install_as_the_readme_says(a, old_deb, host_s3)
    add_job(a, "lab-a", "/data/lab-a", "upgrade")
    a.run("systemctl", "enable", "--now", "uploaderd")
    wait_active(a, UNIT)
    before = _drop(a, "/data/lab-a/before.bin")
    arrives(host_s3, "upgrade", "lab-a/before.bin", before)
    # Host b: the old build too, on host a's database.
    install_as_the_readme_says(b, old_deb, host_s3, database=a)
    add_job(b, "lab-b", "/data/lab-b", "upgrade")
    b.run("systemctl", "enable", "--now", "uploaderd")
    wait_active(b, UNIT)
    old = _version(a)

    apt_install(a, deb_package)  # apt-get install -y, as automation runs it
    new = _version(a)
    assert a.run("dpkg", "--compare-versions", new, "gt", old, check=False).returncode == 0, (
        old,
        new,
    )
    assert a.run("dpkg-query", "-W", "-f=${Status}", "uploaderd").stdout == ("install ok installed")
    config = a.path("/etc/uploaderd/uploaderd.yaml").read_text()
    assert f"localhost:{a.pg_port}/uploaderd" in config, "the admin's config was replaced"

    # Restarted onto the new build, which needs migration 0010: exit 2, and no restart loop.
    failed = wait_for(
        lambda: (
            (shown := a.show(UNIT, "ActiveState", "ExecMainStatus", "NRestarts"))["ActiveState"]
            == "failed"
            and shown
        ),
        timeout=30,
        interval=0.2,
        message="the new daemon refusing the old schema",
    )
    assert (failed["ExecMainStatus"], failed["NRestarts"]) == ("2", "0"), failed
    assert "run `uploaderd migrate`" in a.journal(UNIT)
    during = _drop(a, "/data/lab-a/during.bin")

    a.sh(f"{CREDENTIALS} uploaderd migrate")
    # The old build on host b goes on uploading against the migrated schema.
    old_host = _drop(b, "/data/lab-b/after-migrate.bin")
    arrives(host_s3, "upgrade", "lab-b/after-migrate.bin", old_host)
    assert b.show(UNIT, "NRestarts")["NRestarts"] == "0"

    a.run("systemctl", "restart", UNIT)
    wait_active(a, UNIT)
    arrives(host_s3, "upgrade", "lab-a/during.bin", during)
    after = _drop(a, "/data/lab-a/after.bin")
    arrives(host_s3, "upgrade", "lab-a/after.bin", after)
    arrives(host_s3, "upgrade", "lab-a/before.bin", before)
    files = a.sh(f"{CREDENTIALS} uploaderd files --job lab-a --state failed").stdout
    assert "before.bin" not in files and "during.bin" not in files
