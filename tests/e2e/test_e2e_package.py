"""The Debian package round trip: build it, lint it, ``dpkg -i`` it here, use it, remove it,
purge it.

There is no systemd as PID 1 here, so the checks are what dpkg and the shipped files do:
the files, the service user, ``uploaderd --version`` and ``check``, the conffiles, the unit
enabled (not started), removal keeping (``-r``) or deleting (``-P``) config and data, and
the user kept by both. lintian (``./dev test`` installs it) must report no error, warning
or info tag that is neither fixed nor overridden in packaging/debian/lintian-overrides.
Deselect with ``-m "not package"``.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from uploaderd import __version__, cli

REPO = Path(__file__).resolve().parents[2]
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
WANTS = Path("/etc/systemd/system/multi-user.target.wants/uploaderd.service")


def _installed_status() -> str:
    """dpkg's status of the uploaderd package ("" when it is unknown)."""
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status}", "uploaderd"],
        capture_output=True,
        text=True,
        check=False,
    )
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
pytestmark = pytest.mark.package
on_this_machine = pytest.mark.skipif(_reason is not None, reason=_reason or "")


def run(
    *args: str, user: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = ["runuser", "-u", user, "--", *args] if user else list(args)
    proc = subprocess.run(
        command, capture_output=True, text=True, env=CLEAN_ENV, cwd="/", check=False, timeout=240
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{command} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def deb(deb_package: Path) -> Path:
    """The package, built from this tree; its version is this build's own."""
    version = re.escape(__version__) + r"(\+git[0-9]+\.[0-9a-f]{7}(\.dirty[0-9]{14})?)?"
    assert re.fullmatch(rf"uploaderd_{version}_{_arch()}\.deb", deb_package.name), deb_package
    return deb_package


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


@on_this_machine
def test_lintian_reports_nothing_neither_fixed_nor_overridden(deb: Path) -> None:
    # Errors, warnings and info tags fail (an override that no longer matches is an info or
    # warning tag, so stale overrides fail too). Pedantic and experimental tags are shown
    # on failure but do not fail: lintian itself calls them possibly wrong or a matter of
    # taste.
    assert shutil.which("lintian"), "lintian is not installed (./dev test installs it)"
    proc = run(
        "lintian",
        "--fail-on",
        "error,warning,info",
        "--display-info",
        "-L",
        "+pedantic",
        "--display-experimental",
        "--tag-display-limit",
        "0",
        str(deb),
        check=False,
    )
    failing = [line for line in proc.stdout.splitlines() if line[:2] in ("E:", "W:", "I:")]
    assert (proc.returncode, failing) == (0, []), proc.stdout + proc.stderr


def test_the_man_page_names_every_command_and_option() -> None:
    page = (REPO / "packaging" / "man" / "uploaderd.8").read_text().replace("\\-", "-")
    documented = set(re.findall(r"^\.TP\n\.BI? ?R? ?\"?([a-z][a-z-]*)\b", page, re.MULTILINE))
    parser = cli.parser({})
    commands: dict[str, argparse.ArgumentParser] = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr,assignment]
    assert set(commands) <= documented
    for name, sub in commands.items():
        for action in sub._actions:
            for option in action.option_strings:
                assert option in page, f"uploaderd {name} {option} is not in uploaderd.8"


def _locked_versions() -> dict[str, str]:
    lock = (REPO / "packaging" / "requirements.lock").read_text()
    return {
        _normalized(name): version
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, re.MULTILINE)
    }


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@on_this_machine
def test_install_puts_a_working_daemon_in_place(installed: Path) -> None:
    # The application, in its own virtualenv, that works at its final path.
    link = Path("/usr/bin/uploaderd")
    assert link.is_symlink() and os.readlink(link) == "/opt/uploaderd/bin/uploaderd"
    assert run("/usr/bin/uploaderd", "--version").stdout.strip() == f"uploaderd {__version__}"
    where = run("/opt/uploaderd/bin/python", "-c", "import uploaderd; print(uploaderd.__file__)")
    assert where.stdout.startswith("/opt/uploaderd/lib/python3.11/site-packages/uploaderd/")
    assert run("grep", "-rlI", "uploaderd-deb.", "/opt/uploaderd", check=False).stdout == ""
    # The demo's and the tests' local services (fixed dev credentials) stay in the checkout.
    assert run("find", "/opt/uploaderd", "-name", "devstack*").stdout == ""
    assert run("/opt/uploaderd/bin/python", "-c", "import devstack", check=False).returncode == 1

    # Exactly the locked dependencies (and no installer), psycopg2 on Debian's libpq.
    listing = run(
        "/opt/uploaderd/bin/python",
        "-c",
        "import importlib.metadata as m\n"
        "for d in m.distributions(): print(d.metadata['Name'], d.version)",
    ).stdout
    installed_versions = dict(line.split() for line in listing.strip().splitlines())
    assert {_normalized(name): v for name, v in installed_versions.items()} == {
        **_locked_versions(),
        "uploaderd": __version__,
    }
    psycopg = run(
        "/opt/uploaderd/bin/python", "-c", "import psycopg2._psycopg as m; print(m.__file__)"
    ).stdout.strip()
    libpq = re.search(r"libpq\.so\.5 => (\S+)", run("ldd", psycopg).stdout)
    assert libpq and not libpq.group(1).startswith("/opt/"), libpq
    depends = run("dpkg-query", "-W", "-f=${Depends}", "uploaderd").stdout
    assert "libpq5" in depends

    # What lintian asks of any package: changelog, copyright, a manual page.
    doc = Path("/usr/share/doc/uploaderd")
    assert doc.joinpath("changelog.gz").is_file()
    assert (
        doc.joinpath("copyright")
        .read_text()
        .startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    )
    man = run("man", "-P", "cat", "8", "uploaderd", check=False) if shutil.which("man") else None
    assert Path("/usr/share/man/man8/uploaderd.8.gz").is_file()
    assert man is None or "uploaderd migrate" in man.stdout

    # The unit, the config and the system integration files.
    unit = Path("/lib/systemd/system/uploaderd.service")
    assert unit.read_text() == (REPO / "systemd" / "uploaderd.service").read_text()
    assert (
        Path("/etc/uploaderd/uploaderd.yaml").read_text()
        == (REPO / "etc" / "uploaderd" / "uploaderd.yaml").read_text()
    )
    assert Path("/etc/uploaderd/jobs.d/example.yaml.sample").is_file()
    assert Path("/usr/lib/sysusers.d/uploaderd.conf").is_file()
    assert Path("/usr/lib/tmpfiles.d/uploaderd.conf").is_file()
    assert Path("/usr/share/doc/uploaderd/install.md").is_file()
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "uploaderd").stdout
    # The config is the operator's (copied from /usr/share once), so no upgrade prompts.
    assert {line.split()[0] for line in conffiles.strip().splitlines()} == {
        "/etc/uploaderd/jobs.d/example.yaml.sample",
    }
    assert (
        Path("/usr/share/uploaderd/uploaderd.yaml").read_text()
        == (REPO / "etc" / "uploaderd" / "uploaderd.yaml").read_text()
    )
    assert "procps" in depends
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


@on_this_machine
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
    assert "1 valid job, 0 problems" in accepted.stdout


@on_this_machine
def test_remove_keeps_config_and_data_purge_deletes_them_both_keep_the_user(
    installed: Path,
) -> None:
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
    # The user and group stay (their ids must not be handed to someone else), and a new
    # install takes them over as they are.
    user = pwd.getpwnam("uploaderd")
    assert grp.getgrgid(user.pw_gid).gr_name == "uploaderd"
    run("dpkg", "-i", str(installed))
    assert pwd.getpwnam("uploaderd").pw_uid == user.pw_uid
