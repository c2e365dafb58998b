"""A private PostgreSQL cluster: initdb into a directory, a free loopback port, trust auth."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from devstack.process import START_TIMEOUT, DevstackError, Service, free_port, tail

_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def find_pg_bindir() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``psql``.

    Debian keeps the server binaries out of PATH under
    /usr/lib/postgresql/VERSION/bin, so look there (newest version first)
    before asking ``pg_config``. ``UPLOADERD_PG_BINDIR`` overrides both.
    """
    override = os.environ.get("UPLOADERD_PG_BINDIR")
    if override:
        bindir = Path(override)
        if not (bindir / "initdb").is_file():
            raise DevstackError(f"UPLOADERD_PG_BINDIR={override} has no initdb")
        return bindir
    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if candidates:
        return max(candidates, key=lambda p: _version_key(p.parent.name))
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(out.stdout.strip())
        if out.returncode == 0 and (bindir / "initdb").is_file():
            return bindir
    raise DevstackError(
        "no PostgreSQL server binaries (initdb) found: "
        "run `apt-get install -y postgresql` or set UPLOADERD_PG_BINDIR"
    )


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


class PostgresCluster(Service):
    """A private PostgreSQL cluster on 127.0.0.1, created on first start.

    PostgreSQL refuses to run as root, so when we are root every server
    command runs as the ``postgres`` user, who must own the directory and be
    able to reach it (mkdtemp under /tmp works; pytest's 0700 tmp dirs do
    not). The port is fixed for the life of the object so that a stopped
    cluster comes back where its clients expect it.
    """

    def __init__(self, base_dir: Path | None = None, port: int | None = None, *, fast: bool = True):
        self.bindir = find_pg_bindir()
        self._owns_dir = base_dir is None
        self.base_dir = (
            Path(tempfile.mkdtemp(prefix="uploaderd-pg-")) if base_dir is None else base_dir
        )
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "postgres.log"
        self.port = port if port is not None else free_port()
        self.fast = fast
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, cwd=self.base_dir, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise DevstackError(
                f"{' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
                f"{tail(self.log_file)}"
            )
        return proc

    def _prepare_dir(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if not self._as_postgres:
            return
        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            raise DevstackError(
                "running as root needs the `postgres` user: apt-get install -y postgresql"
            ) from None
        for parent in self.base_dir.resolve().parents:
            mode = parent.stat()
            if not (mode.st_mode & stat.S_IXOTH or mode.st_uid == pg_user.pw_uid):
                raise DevstackError(
                    f"the postgres user cannot enter {parent}; put the cluster elsewhere "
                    "(e.g. under /tmp)"
                )
        os.chown(self.base_dir, pg_user.pw_uid, pg_user.pw_gid)

    def _write_as_owner(self, path: Path, text: str, mode: str = "w") -> None:
        with path.open(mode) as out:
            out.write(text)
        if self._as_postgres:
            owner = self.base_dir.stat()
            os.chown(path, owner.st_uid, owner.st_gid)

    def _write_settings(self) -> None:
        # Rewritten on every start so that the port and paths follow this object;
        # a settings file avoids quoting paths through pg_ctl's shell command line.
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.data_dir}'",
        }
        if self.fast:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        text = "".join(f"{key} = {value}\n" for key, value in settings.items())
        self._write_as_owner(self.data_dir / "uploaderd.conf", text)

    def _initdb(self) -> None:
        args = ["-D", str(self.data_dir), "-A", "trust", "-U", "postgres"]
        args += ["--encoding=UTF8", "--locale=C"]
        self._run("initdb", *args, *(["--no-sync"] if self.fast else []))
        include = "\ninclude_if_exists = 'uploaderd.conf'\n"
        self._write_as_owner(self.data_dir / "postgresql.conf", include, "a")

    def start(self) -> None:
        """Start the server (creating the cluster first if needed) and wait for it."""
        if self.is_running():
            return
        self._prepare_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._write_settings()
        data, log, timeout = str(self.data_dir), str(self.log_file), str(int(START_TIMEOUT))
        self._run("pg_ctl", "start", "-w", "-t", timeout, "-D", data, "-l", log)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnecting clients; ``immediate``: as a crash); a
        no-op when it is not running."""
        if self.is_running():
            self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data_dir))

    def is_running(self) -> bool:
        """Whether the postmaster of this cluster is alive."""
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        return self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for ``dbname`` over TCP (trust authentication, no password)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _psql(self, sql: str) -> None:
        self.query(sql)

    def query(self, sql: str, dbname: str = "postgres") -> str:
        """The first column of the first row of ``sql``, as psql prints it."""
        cmd = [str(self.bindir / "psql"), "-X", "-A", "-t", self.dsn(dbname), "-c", sql]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise DevstackError(f"psql {sql!r} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def wal_lsn(self) -> str:
        """The primary's current WAL position."""
        return self.query("SELECT pg_current_wal_insert_lsn()")

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database ``name`` (a copy of ``template``, if given) and return its DSN."""
        copy = f' TEMPLATE "{_check_db_name(template)}"' if template else ""
        self._psql(f'CREATE DATABASE "{_check_db_name(name)}"{copy}')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting whoever still uses it."""
        self._psql(f'DROP DATABASE IF EXISTS "{_check_db_name(name)}" WITH (FORCE)')

    def cleanup(self) -> None:
        """Stop the server and delete the cluster's directory."""
        self.stop()
        shutil.rmtree(self.base_dir if self._owns_dir else self.data_dir, ignore_errors=True)


def _check_db_name(name: str) -> str:
    # Names are interpolated into SQL as quoted identifiers: keep them boring.
    if not _DB_NAME.fullmatch(name):
        raise ValueError(f"database name must match {_DB_NAME.pattern}: {name!r}")
    return name


def failover_dsn(ports: Sequence[int], dbname: str) -> str:
    """A libpq DSN naming every server of a replicated set on 127.0.0.1: libpq connects to
    whichever takes writes, so after a failover it finds the promoted standby."""
    hosts = ",".join("127.0.0.1" for _ in ports)
    numbers = ",".join(str(port) for port in ports)
    return (
        f"host={hosts} port={numbers} dbname={dbname} user=postgres target_session_attrs=read-write"
    )


class PostgresReplica(PostgresCluster):
    """A streaming standby of ``primary`` on a port of its own, made by ``pg_basebackup -R``
    (asynchronous replication: a commit on the primary returns before the standby has it).

    ``detach`` stops it receiving WAL, so that what the primary commits afterwards is lost
    when the primary dies and this one is promoted: the ledger goes back in time.
    """

    def __init__(
        self, primary: PostgresCluster, base_dir: Path | None = None, port: int | None = None
    ) -> None:
        super().__init__(base_dir, port, fast=primary.fast)
        self.primary = primary

    def _initdb(self) -> None:
        args = ["-D", str(self.data_dir), "-R", "-X", "stream", "--checkpoint=fast"]
        args += ["-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres"]
        self._run("pg_basebackup", *args, *(["--no-sync"] if self.fast else []))
        # The copy holds the primary's socket lock files (its sockets live in its data
        # directory): a standby of a standby would find a lock of its own port there.
        for lock in self.data_dir.glob(".s.PGSQL.*"):
            lock.unlink()

    def replay_lsn(self) -> str:
        """The last WAL position this standby replayed."""
        return self.query("SELECT pg_last_wal_replay_lsn()")

    def detach(self) -> None:
        """Receive no more WAL from the primary (it keeps what it has)."""
        self._psql("ALTER SYSTEM SET primary_conninfo = ''")
        self._psql("SELECT pg_reload_conf()")

    def promote(self) -> None:
        """End recovery: from now on a primary, on a new timeline."""
        timeout = str(int(START_TIMEOUT))
        self._run("pg_ctl", "promote", "-w", "-t", timeout, "-D", str(self.data_dir))
