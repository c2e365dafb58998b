"""What the fault suite injects faults with, beside devstack's ``FaultProxy`` in front of the
S3 server: a trickling HTTP endpoint, and counts of a daemon's threads and of idle
connections.

Everything listens on 127.0.0.1 only; every thread and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

from devstack.httpd import LocalEndpoint, QuietHandler


class TricklingEndpoint(LocalEndpoint):
    """An HTTP endpoint that answers 200 and then its body one byte a second, for minutes."""

    def __init__(self, seconds: int = 120) -> None:
        endpoint = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.calls += 1
                self.send_response(200)
                self.send_header("Content-Length", str(seconds))
                self.end_headers()
                for _ in range(seconds):
                    if endpoint.closed.wait(1.0):
                        return
                    try:
                        self.wfile.write(b".")
                        self.wfile.flush()
                    except OSError:
                        endpoint.cut += 1
                        return

        self.calls = 0
        self.cut = 0
        self.closed = threading.Event()
        super().__init__(Handler)

    def close(self) -> None:
        self.closed.set()
        super().close()


def daemon_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[int]:
    """Open up to ``count`` connections that never send a byte; yields how many opened
    (fewer once the server's backlog is full: a connect that does not complete ends it)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.settimeout(0.2)
            try:
                sock.connect(("127.0.0.1", port))
            except OSError:
                sock.close()
                break
            socks.append(sock)
        yield len(socks)
    finally:
        for sock in socks:
            sock.close()
