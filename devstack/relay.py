"""A TCP relay on 127.0.0.1 that delays and can break traffic: a WAN, a bad network on loopback.

The benchmark puts every tool behind the same relay (``--wan``) so all of them see the same
round trip, as they would against a real S3 region; the tests use it to cut a connection in
the middle of a request body or to damage bytes in flight. It is development tooling, like
``devstack``: it listens on 127.0.0.1 only, forwards to one port on 127.0.0.1, and holds at
most ``max_connections`` connections at once (more wait in the listen backlog).

One asyncio loop in one thread carries every connection. Each direction keeps its chunks in
arrival order and delivers each one ``delay`` seconds after it was read, so the delay adds to
the round trip without capping the bandwidth (a chunk in flight does not hold up the next).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from typing import Any

# Called with each chunk the client sends; returns the bytes to forward, or None to reset
# the connection there (as a broken network would).
Tamper = Callable[[bytes], bytes | None]

_CHUNK = 256 * 1024
_START_TIMEOUT = 10.0


class Reset(Exception):
    """The tamper hook asked for this connection to be reset."""


class Relay:
    def __init__(
        self,
        target_port: int,
        *,
        delay: float = 0.0,
        max_connections: int = 1024,
        tamper: Tamper | None = None,
    ) -> None:
        self.target_port = target_port
        self.delay = delay
        self.max_connections = max_connections
        self.tamper = tamper
        self.port = 0
        self.connections = 0  # accepted so far, for tests
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)
        self._server: asyncio.Server | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(_START_TIMEOUT)

    def stop(self) -> None:
        """Close the listener and every connection; returns once the loop has ended."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(_START_TIMEOUT)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_START_TIMEOUT)
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    async def _listen(self) -> None:
        self._slots = asyncio.Semaphore(self.max_connections)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        assert self._slots is not None
        async with self._slots:
            self.connections += 1
            try:
                server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                client_w.close()
                return
            for writer in (client_w, server_w):
                writer.get_extra_info("socket").setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
                )
            upstream = self._task(self._pump(client_r, server_w, self.tamper))
            downstream = self._task(self._pump(server_r, client_w, None))
            done, _ = await asyncio.wait(
                (upstream, downstream), return_when=asyncio.FIRST_EXCEPTION
            )
            if any(isinstance(task.exception(), Reset) for task in done):
                _reset(client_w)
                _reset(server_w)
            await asyncio.gather(upstream, downstream, return_exceptions=True)
            for writer in (client_w, server_w):
                writer.close()

    def _task(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task held until it ends: the loop itself keeps only weak references."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tamper: Tamper | None
    ) -> None:
        """Copy one direction, each chunk ``delay`` after it arrived, in order."""
        loop = asyncio.get_running_loop()
        pending: collections.deque[tuple[float, bytes]] = collections.deque()
        flushing: asyncio.Future[None] | None = None

        async def flush() -> None:
            while pending:
                due, data = pending[0]
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                pending.popleft()
                writer.write(data)
                await writer.drain()

        try:
            while data := await reader.read(_CHUNK):
                if tamper is not None:
                    changed = tamper(data)
                    if changed is None:
                        raise Reset()
                    data = changed
                pending.append((loop.time() + self.delay, data))
                if flushing is None or flushing.done():
                    flushing = self._task(flush())
            if flushing is not None:
                await flushing
            with contextlib.suppress(OSError):
                writer.write_eof()
        except (ConnectionError, OSError):
            # One side broke: break the other too, or it would wait for ever on a peer
            # that keeps its end of the connection open (an idle keep-alive).
            if flushing is not None:
                flushing.cancel()
            writer.transport.abort()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: what a peer sees when the network drops a connection."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
