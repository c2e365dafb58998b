"""A Debian 12 root made by debootstrap and booted under systemd-nspawn: a real systemd 252,
with journald and PostgreSQL 15 as units, for the system tier.

The root is built once and cached (``UPLOADERD_SYSTEST_CACHE``, default
/var/cache/uploaderd-systest), keyed by what goes into it; delete the cache and the next run
builds it again from nothing (about 75 s on 2 cores). Each container boots it with
``--volatile=overlay``: everything a test changes lives in a tmpfs above the cached root
and is gone at power-off, so tests never see each other's installs.

The container shares the host's network (an S3 server on the host's 127.0.0.1 is reachable
inside), so its PostgreSQL gets a port of its own through a conf.d file bound in. No systemd
runs on the host, hence ``--register=no``; commands go in through nsenter.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from devstack import free_port, wait_for

SUITE = "bookworm"
# systemd and journald, PostgreSQL as the container's own unit, what the .deb depends on
# (python3.11, libpq5, procps), and apt to install it the README's way.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "libpq5", "python3", "postgresql", "procps")
RECIPE = 2  # bump when the way the root is made changes: the cache key changes with it
CACHE = Path(os.environ.get("UPLOADERD_SYSTEST_CACHE", "/var/cache/uploaderd-systest"))
PG_VERSION = "15"
BOOT_TIMEOUT = 60.0


def unavailable() -> str | None:
    """Why this machine cannot run the system tier, or None."""
    if os.geteuid() != 0:
        return "the system tier boots containers with systemd-nspawn, which needs root"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (./dev test installs it on Debian and Ubuntu)"
    inside = _container_manager()
    if inside:
        return f"this runs inside a container ({inside}): the system tier boots its own"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no cgroup filesystem: systemd cannot boot in a container here"
    return None


def _container_manager() -> str | None:
    """The container this process runs in (systemd's convention: /run/systemd/container, or
    container= in PID 1's environment), or None."""
    marker = Path("/run/systemd/container")
    if marker.exists():
        return marker.read_text().strip() or "a container"
    with contextlib.suppress(OSError):
        for entry in Path("/proc/1/environ").read_bytes().split(b"\0"):
            if entry.startswith(b"container="):
                return entry.split(b"=", 1)[1].decode() or "a container"
    return None


def mirror() -> str:
    """The Debian mirror apt uses on this host (UPLOADERD_SYSTEST_MIRROR wins)."""
    if os.environ.get("UPLOADERD_SYSTEST_MIRROR"):
        return os.environ["UPLOADERD_SYSTEST_MIRROR"]
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for text in (p.read_text() for p in sources):
        for stanza in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:(.*)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split() and "/debian" in uris[1]:
                return uris.group(1)
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        for match in re.finditer(rf"^deb\s+(\S+)\s+{SUITE}\s", listing.read_text(), re.M):
            return match.group(1)
    return "http://deb.debian.org/debian"


def debian_root() -> Path:
    """The cached Debian 12 root, built first if missing (one builder at a time)."""
    key = hashlib.sha256(f"{RECIPE} {SUITE} {' '.join(PACKAGES)}".encode()).hexdigest()[:12]
    root = CACHE / f"{SUITE}-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".complete").exists():
            _build(root)
    return root


def _build(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f"{root.name}.", dir=CACHE))
    # mkdtemp's 0700 would keep the postgres user out of its own root: initdb fails.
    work.chmod(0o755)
    try:
        subprocess.run(
            [
                *("debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}"),
                *(SUITE, str(work), mirror()),
            ],
            check=True,
            capture_output=True,
        )
        # The downloaded packages are not needed again: 100 MB less in the cache.
        for deb in (work / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        if not (work / f"etc/postgresql/{PG_VERSION}/main").is_dir():
            raise RuntimeError(f"debootstrap made no PostgreSQL {PG_VERSION} cluster in {work}")
        (work / ".complete").touch()
        work.rename(root)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"debootstrap failed: {exc.stderr.decode()[-2000:]}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Container:
    """One booted container on the cached root; ``run`` executes inside it, as root."""

    def __init__(self, root: Path, name: str, shared: Path) -> None:
        self.root, self.name, self.shared = root, name, shared
        self.pg_port = free_port()
        self.console = shared / f"{name}.console.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def boot(self) -> None:
        conf = self.shared / f"{self.name}-postgresql.conf"
        conf.write_text(f"port = {self.pg_port}\nlisten_addresses = '127.0.0.1'\n")
        with open(self.console, "wb") as console:
            self._proc = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "--register=no",
                    "--keep-unit",
                    "--quiet",
                    "--volatile=overlay",
                    "-D",
                    str(self.root),
                    f"--machine={self.name}",
                    f"--bind={self.shared}:/srv/systest",
                    f"--bind-ro={conf}:/etc/postgresql/{PG_VERSION}/main/conf.d/systest.conf",
                    "-b",
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.leader = wait_for(self._init_pid, timeout=BOOT_TIMEOUT, message="the container's init")
        state = wait_for(self._booted, timeout=BOOT_TIMEOUT, message=f"{self.name} booted")
        assert state in ("running", "degraded"), self._failed_units()
        wait_for(
            lambda: self.run("pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.pg_port),
                             check=False).returncode == 0,
            timeout=BOOT_TIMEOUT,
            message="the container's PostgreSQL",
        )  # fmt: skip

    def _init_pid(self) -> int | None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited: {self.console.read_text()[-2000:]}")
        children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children")
        pids = children.read_text().split() if children.exists() else []
        return int(pids[0]) if pids else None

    def _booted(self) -> str | None:
        proc = self.run("systemctl", "is-system-running", check=False)
        state = proc.stdout.strip()
        # "offline" until its systemd answers on the bus.
        return None if state in ("", "offline", "initializing", "starting") else state

    def _failed_units(self) -> str:
        return self.run("systemctl", "--failed", "--no-legend", check=False).stdout

    def run(
        self, *argv: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the container (its mount, UTS, IPC, network and PID namespaces)."""
        proc = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "--", *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        )
        if check and proc.returncode:
            raise AssertionError(
                f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-ec", script, check=check)

    def path(self, inside: str) -> Path:
        """A path inside the container, as the host reaches it."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p", ",".join(properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, *args: str) -> str:
        return self.run(
            "journalctl", "-u", unit, "--no-pager", "-o", "cat", *args, check=False
        ).stdout

    def poweroff(self) -> None:
        if self._proc is None:
            return
        # nspawn turns SIGTERM into an orderly shutdown of the container's systemd.
        with contextlib.suppress(ProcessLookupError):
            self._proc.terminate()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
        self._proc = None


def wait_active(container: Container, unit: str, timeout: float = 30.0) -> dict[str, str]:
    """Wait until ``unit`` is active and running; its show properties."""

    def running() -> dict[str, str] | None:
        shown = container.show(unit, "ActiveState", "SubState", "MainPID", "NRestarts")
        return shown if (shown["ActiveState"], shown["SubState"]) == ("active", "running") else None

    shown: dict[str, str] = wait_for(
        running, timeout=timeout, interval=0.2, message=f"{unit} active"
    )
    return shown
