"""A loopback TCP proxy in front of a server (S3's, in the fault suite and the chaos soak)
whose behaviour changes while it runs.

Everything listens on 127.0.0.1 only; every thread and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time

MAX_CONNECTIONS = 64
_IDLE_LIMIT = 120.0  # a proxied connection left silent this long is closed
_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_ANSWERS = {
    "http500": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n",
    "slowdown": b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
    + f"Content-Length: {len(_SLOWDOWN)}\r\nConnection: close\r\n\r\n".encode()
    + _SLOWDOWN,
}


class FaultProxy:
    """A TCP proxy on 127.0.0.1 whose behaviour a test changes while it runs.

    Modes (read when a connection is accepted): ``pass`` forwards both ways; ``http500``
    answers every request with a 500; ``slowdown`` with S3's 503 SlowDown; ``reset``
    resets the connection at once; ``stall``
    forwards the request but never a byte of the answer; ``blackhole`` swallows the request
    and never answers. ``down()`` closes the listening socket (connection refused) and
    ``up()`` opens it again on the same port; ``cut()`` resets every open connection.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.mode = "pass"
        self.accepted = 0
        self.forwarded = 0  # bytes sent upstream: what the clients made the server receive
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener: socket.socket | None = None
        self.port = 0
        self.up()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(MAX_CONNECTIONS)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self.cut()

    def cut(self) -> None:
        with self._lock:
            for sock in list(self._open):
                _reset(sock)

    def close(self) -> None:
        self._closed.set()
        self.down()

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed.is_set() and self._listener is listener:
            try:  # down() may close the listener under us: then this thread is done
                ready, _, _ = select.select([listener], [], [], 0.2)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):
                return
            if not self._slots.acquire(blocking=False):
                _reset(client)  # bounded: beyond MAX_CONNECTIONS, refuse
                continue
            self.accepted += 1
            threading.Thread(target=self._serve, args=(client, self.mode), daemon=True).start()

    def _serve(self, client: socket.socket, mode: str) -> None:
        upstream: socket.socket | None = None
        with self._lock:
            self._open.add(client)
        try:
            if mode == "reset":
                _reset(client)
            elif mode in _ANSWERS:
                _read_head(client)
                client.sendall(_ANSWERS[mode])
            elif mode == "blackhole":
                self._pump(client, None, forward_answer=False)
            else:
                upstream = socket.create_connection(self.upstream, timeout=5)
                with self._lock:
                    self._open.add(upstream)
                self._pump(client, upstream, forward_answer=mode != "stall")
        except (OSError, ValueError):  # ValueError: cut() closed a socket under select()
            pass
        finally:
            with self._lock:
                self._open.discard(client)
                if upstream is not None:
                    self._open.discard(upstream)
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
            self._slots.release()

    def _pump(
        self, client: socket.socket, upstream: socket.socket | None, *, forward_answer: bool
    ) -> None:
        peers = [s for s in (client, upstream) if s is not None]
        quiet_since = time.monotonic()
        while not self._closed.is_set() and time.monotonic() - quiet_since < _IDLE_LIMIT:
            ready, _, _ = select.select(peers, [], [], 0.2)
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                quiet_since = time.monotonic()
                if sock is client and upstream is not None:
                    upstream.sendall(data)
                    with self._lock:
                        self.forwarded += len(data)
                elif sock is upstream and forward_answer:
                    client.sendall(data)


def _read_head(sock: socket.socket) -> None:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            return
        data += chunk


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
