"""The Debian package round trip: build it, ``dpkg -i`` it here, use it, remove it, purge it.

There is no systemd as PID 1 here, so the checks are what dpkg and the shipped files do:
the files, the service user, ``uploaderd --version`` and ``check``, the conffiles, the unit
enabled (not started), and removal keeping (``-r``) or deleting (``-P``) config and user.
Deselect with ``-m "not package"``.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from uploaderd import __version__

REPO = Path(__file__).resolve().parents[2]
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
WANTS = Path("/etc/systemd/system/multi-user.target.wants/uploaderd.service")


def _installed_status() -> str:
    """dpkg's status of the uploaderd package ("" when it is unknown)."""
    proc = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", "uploaderd"],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "installing a package needs root"
    if not all(shutil.which(tool) for tool in ("dpkg", "dpkg-deb", "dpkg-query")):
        return "needs dpkg"
    if not Path("/usr/bin/python3.11").exists():
        return "the package is built for Debian's python3.11"
    if _installed_status() not in ("", "not-installed"):
        return "an uploaderd package is already on this machine; not touching it"
    if Path("/opt/uploaderd").exists():
        return "/opt/uploaderd exists; not touching it"
    return None


_reason = _skip_reason()
pytestmark = [pytest.mark.package, pytest.mark.skipif(_reason is not None, reason=_reason or "")]


def run(
    *args: str, user: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = ["runuser", "-u", user, "--", *args] if user else list(args)
    proc = subprocess.run(command, capture_output=True, text=True, env=CLEAN_ENV, cwd="/",
                          check=False,
                          timeout=240)
    if check and proc.returncode != 0:
        raise AssertionError(f"{command} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package, built from this tree (pip's cache makes a rebuild mostly offline)."""
    output = tmp_path_factory.mktemp("dist")
    proc = run(str(REPO / "packaging" / "build-deb"), "--output", str(output))
    built = Path(proc.stdout.strip().splitlines()[-1])
    assert built == output / f"uploaderd_{__version__}_{_arch()}.deb"
    return built


def _arch() -> str:
    return run("dpkg", "--print-architecture").stdout.strip()


def _purge() -> None:
    if _installed_status() not in ("", "not-installed"):
        run("dpkg", "--purge", "uploaderd", check=False)


@pytest.fixture
def installed(deb: Path) -> Iterator[Path]:
    """The package installed; purged afterwards whatever happened."""
    try:
        run("dpkg", "-i", str(deb))
        yield deb
    finally:
        _purge()


def test_install_puts_a_working_daemon_in_place(installed: Path) -> None:
    # The application, in its own virtualenv, that works at its final path.
    link = Path("/usr/bin/uploaderd")
    assert link.is_symlink() and os.readlink(link) == "/opt/uploaderd/bin/uploaderd"
    assert run("/usr/bin/uploaderd", "--version").stdout.strip() == f"uploaderd {__version__}"
    where = run("/opt/uploaderd/bin/python", "-c", "import uploaderd; print(uploaderd.__file__)")
    assert where.stdout.startswith("/opt/uploaderd/lib/python3.11/site-packages/uploaderd/")
    assert run("grep", "-rlI", "uploaderd-deb.", "/opt/uploaderd", check=False).stdout == ""

    # The unit, the config and the system integration files.
    unit = Path("/lib/systemd/system/uploaderd.service")
    assert unit.read_text() == (REPO / "systemd" / "uploaderd.service").read_text()
    assert Path("/etc/uploaderd/uploaderd.yaml").read_text() == (
        REPO / "etc" / "uploaderd" / "uploaderd.yaml").read_text()
    assert Path("/etc/uploaderd/jobs.d/example.yaml.sample").is_file()
    assert Path("/usr/lib/sysusers.d/uploaderd.conf").is_file()
    assert Path("/usr/lib/tmpfiles.d/uploaderd.conf").is_file()
    assert Path("/usr/share/doc/uploaderd/install.md").is_file()
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "uploaderd").stdout
    assert {line.split()[0] for line in conffiles.strip().splitlines()} == {
        "/etc/uploaderd/uploaderd.yaml", "/etc/uploaderd/jobs.d/example.yaml.sample"}
    depends = run("dpkg-query", "-W", "-f=${Depends}", "uploaderd").stdout
    assert "python3 (>= 3.11)" in depends

    # The service user and its directories.
    user = pwd.getpwnam("uploaderd")
    assert user.pw_uid < 1000
    assert (user.pw_dir, user.pw_shell) == ("/var/lib/uploaderd", "/usr/sbin/nologin")
    assert grp.getgrgid(user.pw_gid).gr_name == "uploaderd"
    state = Path("/var/lib/uploaderd").stat()
    assert (state.st_uid, stat.S_IMODE(state.st_mode)) == (user.pw_uid, 0o700)
    credentials = Path("/etc/uploaderd/credentials").stat()
    assert (credentials.st_uid, stat.S_IMODE(credentials.st_mode)) == (0, 0o700)

    # Enabled, not started (there is no systemd to start it here anyway).
    if shutil.which("deb-systemd-helper"):
        assert WANTS.is_symlink() and os.readlink(WANTS) == str(unit)
    if shutil.which("systemd-analyze"):
        verify = run("systemd-analyze", "verify", "--man=no", str(unit), check=False)
        assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")


def test_check_on_the_shipped_config(installed: Path) -> None:
    # No jobs and no database yet: `check` (without --connect) passes, as root and as the
    # service user (what ExecReload= runs).
    for user in (None, "uploaderd"):
        proc = run("uploaderd", "check", "-c", "/etc/uploaderd/uploaderd.yaml", user=user)
        assert proc.stdout.strip().splitlines()[-1] == "0 valid jobs, 0 problems"

    # A job file anyone in its group could edit is refused, with the fix.
    job = Path("/etc/uploaderd/jobs.d/scope-a.yaml")
    job.write_text("source: {paths: [/srv/scope-a]}\ndestination: {bucket: lab-raw}\n")
    job.chmod(0o664)
    refused = run("uploaderd", "check", user="uploaderd", check=False)
    assert refused.returncode == 2
    assert f"chmod go-w {job}" in refused.stdout + refused.stderr
    job.chmod(0o644)
    accepted = run("uploaderd", "check", user="uploaderd", check=False)
    assert "1 valid jobs, 0 problems" in accepted.stdout


def test_remove_keeps_config_data_and_user_and_purge_deletes_them(installed: Path) -> None:
    config = Path("/etc/uploaderd/uploaderd.yaml")
    config.write_text(config.read_text() + "# edited by the operator\n")
    job = Path("/etc/uploaderd/jobs.d/mine.yaml")
    job.write_text("source: {paths: [/srv/mine]}\ndestination: {bucket: lab-raw}\n")
    (Path("/var/lib/uploaderd") / "state").write_text("kept")

    run("dpkg", "--remove", "uploaderd")
    assert _installed_status() == "config-files"
    assert not Path("/usr/bin/uploaderd").exists()
    assert not Path("/opt/uploaderd").exists()
    assert not Path("/lib/systemd/system/uploaderd.service").exists()
    assert config.read_text().endswith("# edited by the operator\n")
    assert job.is_file()
    assert (Path("/var/lib/uploaderd") / "state").read_text() == "kept"
    pwd.getpwnam("uploaderd")  # still there

    run("dpkg", "--purge", "uploaderd")
    assert _installed_status() in ("", "not-installed")
    for gone in ("/etc/uploaderd", "/var/lib/uploaderd", "/opt/uploaderd"):
        assert not Path(gone).exists(), gone
    assert not WANTS.is_symlink()
    with pytest.raises(KeyError):
        pwd.getpwnam("uploaderd")
    with pytest.raises(KeyError):
        grp.getgrnam("uploaderd")
