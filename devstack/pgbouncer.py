"""PgBouncer from Debian (``/usr/sbin/pgbouncer``) in front of a ``PostgresCluster``, on a
free loopback port: what a site of many hosts puts between them and the server.

It runs as the cluster's owner (PgBouncer refuses root), with trust authentication like
the cluster, every database passed through, and the pooling mode asked for.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from devstack.postgres import PostgresCluster
from devstack.process import START_TIMEOUT, DevstackError, Service, free_port, tail, wait_for

PGBOUNCER = Path("/usr/sbin/pgbouncer")


class PgBouncer(Service):
    def __init__(
        self, cluster: PostgresCluster, *, pool_mode: str = "session", pool_size: int = 20
    ) -> None:
        if not PGBOUNCER.exists():
            raise DevstackError("no PgBouncer: apt-get install -y pgbouncer")
        self.cluster = cluster
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.port = free_port()
        self.base_dir = Path(tempfile.mkdtemp(prefix="uploaderd-pgbouncer-"))
        self.log_file = self.base_dir / "pgbouncer.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def dsn(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        (self.base_dir / "users.txt").write_text('"postgres" ""\n')
        (self.base_dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.cluster.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"unix_socket_dir = {self.base_dir}\n"
            f"auth_type = trust\nauth_file = {self.base_dir / 'users.txt'}\n"
            f"pool_mode = {self.pool_mode}\ndefault_pool_size = {self.pool_size}\n"
            "max_client_conn = 1000\n"
            f"logfile = {self.log_file}\npidfile = {self.base_dir / 'pgbouncer.pid'}\n"
        )
        command = [str(PGBOUNCER), str(self.base_dir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            shutil.chown(self.base_dir, "postgres", "postgres")
            for path in self.base_dir.iterdir():
                shutil.chown(path, "postgres", "postgres")
            command = ["runuser", "-u", "postgres", "--", *command]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(self._accepts, START_TIMEOUT, message=f"PgBouncer on port {self.port}")

    @property
    def pid(self) -> int | None:
        """PgBouncer's own process (not the runuser that started it), once it runs."""
        try:
            return int((self.base_dir / "pgbouncer.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _accepts(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise DevstackError(
                f"PgBouncer exited ({self.proc.returncode}):\n{tail(self.log_file)}"
            )
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        shutil.rmtree(self.base_dir, ignore_errors=True)
