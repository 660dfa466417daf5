"""A small TCP fault proxy for tests and the soak: it sits between a client and a server on loopback
and breaks the network in ways a server cannot break it from its own side.

Each accepted connection is piped to ``target`` in both directions. A pipe is a reader task and a writer
task joined by a small bounded queue, so backpressure reaches the sender as it would over a slow link
(a throttled proxy makes the upstream server's write buffer grow, which is what a slow consumer looks
like to Alpaca). Knobs, all changeable while connections are open:

- ``set_latency(delay, jitter)``: every chunk is delivered ``delay + U(0, jitter)`` seconds after it was
  read, never before the previous chunk of the same direction (order is kept, as TCP keeps it).
- ``set_bandwidth(bytes_per_second)``: each direction is paced to this rate (None: unlimited).
- ``blackhole(True)``: a half-open link — both sockets stay open, nothing is forwarded (bytes are read
  and discarded), no FIN, no RST: pings go unanswered and data stops.
- ``reset_mid_frame()``: the next server-to-client chunk is cut in half; the half is delivered and both
  sides get a TCP reset (SO_LINGER 0) — a WebSocket frame torn in the middle.
- ``reset_all()`` / ``close_all()``: reset, or close cleanly (FIN), every open connection now.
- ``refuse(True)``: stop listening, so connections are refused (ECONNREFUSED) until ``refuse(False)``
  listens again on the same port.

It binds 127.0.0.1 only by default and counts what it did in :attr:`stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from dataclasses import dataclass

from exporter.timers import LoopTimers

# The loop's clock (time.monotonic on asyncio's loops), so tests on virtual loop time see one timeline.
_loop_clock = LoopTimers()

_CHUNK = 65536
_QUEUE_CHUNKS = 8  # bounded: a throttled pipe pushes back on its sender instead of buffering without limit
_STREAM_LIMIT = 16384  # StreamReader buffer (asyncio pauses reading at twice this): little hidden buffering


@dataclass(slots=True)
class ProxyStats:
    connections: int = 0  # accepted
    open: int = 0  # open now
    bytes_up: int = 0  # client -> server, forwarded
    bytes_down: int = 0  # server -> client, forwarded
    discarded: int = 0  # bytes swallowed by the blackhole
    resets: int = 0  # connections reset by a fault


class _Link:
    """One proxied connection: the two stream pairs and their pipe tasks."""

    def __init__(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.c_reader, self.c_writer = c_reader, c_writer
        self.s_reader: asyncio.StreamReader | None = None
        self.s_writer: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = asyncio.Event()
        self.reset = False  # one side reset the connection: reset the other side too

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.c_writer, self.s_writer) if w is not None]


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN (linger on, timeout 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream_recv_buffer: int | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        # A small receive buffer towards the target (SO_RCVBUF) makes a throttled link push back on the
        # server within a second instead of after the kernel's megabytes of loopback buffering.
        self.upstream_recv_buffer = upstream_recv_buffer
        self.host = host
        self.port = port
        self.delay = 0.0
        self.jitter = 0.0
        self.bandwidth: float | None = None
        self.stats = ProxyStats()
        self._blackhole = False
        self._reset_armed = False
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._rng = random.Random(0)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, self.host, self.port, limit=_STREAM_LIMIT)
            self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        await self._stop_listening()
        await self.reset_all(count=False)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def url(self, path: str = "/v2/iex", scheme: str = "ws") -> str:
        return f"{scheme}://{self.host}:{self.port}{path}"

    # ------------------------------------------------------------------ knobs

    def set_latency(self, delay: float, jitter: float = 0.0) -> None:
        self.delay, self.jitter = delay, jitter

    def set_bandwidth(self, bytes_per_second: float | None) -> None:
        self.bandwidth = bytes_per_second

    def blackhole(self, on: bool) -> None:
        self._blackhole = on

    def reset_mid_frame(self) -> None:
        self._reset_armed = True

    async def reset_all(self, *, count: bool = True) -> None:
        for link in list(self._links):
            if count:
                self.stats.resets += 1
            await self._end(link, rst=True)

    async def close_all(self) -> None:
        for link in list(self._links):
            await self._end(link, rst=False)

    async def refuse(self, on: bool) -> None:
        if on:
            await self._stop_listening()
        else:
            await self.start()

    @property
    def open_connections(self) -> int:
        return len(self._links)

    # ------------------------------------------------------------------ the pipes

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        link = _Link(c_reader, c_writer)
        self._links.add(link)
        self.stats.connections += 1
        self.stats.open += 1
        try:
            try:
                link.s_reader, link.s_writer = await self._connect_upstream()
            except OSError:
                _reset(c_writer)  # the target is down: the client sees its connection reset
                return
            link.tasks = [
                asyncio.create_task(self._pipe(link, link.c_reader, link.s_writer, up=True)),
                asyncio.create_task(self._pipe(link, link.s_reader, link.c_writer, up=False)),
            ]
            await link.closed.wait()
        finally:
            await self._end(link, rst=link.reset)

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.upstream_recv_buffer is None:
            return await asyncio.open_connection(*self.target, limit=_STREAM_LIMIT)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.upstream_recv_buffer)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, self.target)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=_STREAM_LIMIT)

    async def _pipe(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUE_CHUNKS)
        sender = asyncio.create_task(self._send(link, queue, writer, up=up))
        last_due = 0.0
        try:
            while True:
                # Throttled: read no more than a tenth of a second's worth, so the proxy itself buffers little.
                size = _CHUNK if not self.bandwidth else max(512, min(_CHUNK, int(self.bandwidth / 10)))
                data = await reader.read(size)
                if not data:
                    break
                if self._blackhole:
                    self.stats.discarded += len(data)
                    continue
                jitter = self._rng.uniform(0.0, self.jitter) if self.jitter else 0.0
                due = _loop_clock.monotonic() + self.delay + jitter
                last_due = max(last_due, due)  # TCP keeps order: no chunk overtakes the previous one
                await queue.put((last_due, data))
            await queue.put(None)  # EOF: forward the FIN after what is queued
            await sender
        except (OSError, asyncio.IncompleteReadError):
            link.reset = True
        finally:
            sender.cancel()
            link.closed.set()

    async def _send(
        self, link: _Link, queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while (item := await queue.get()) is not None:
                due, data = item
                wait = due - _loop_clock.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self._blackhole:
                    self.stats.discarded += len(data)
                    continue
                if not up and self._reset_armed:
                    self._reset_armed = False
                    writer.write(data[: max(1, len(data) // 2)])
                    with contextlib.suppress(OSError):
                        await writer.drain()
                    self.stats.resets += 1
                    await self._end(link, rst=True)
                    return
                if self.bandwidth:
                    await asyncio.sleep(len(data) / self.bandwidth)
                writer.write(data)
                await writer.drain()
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
            if writer.can_write_eof():
                writer.write_eof()

    async def _end(self, link: _Link, *, rst: bool) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        self.stats.open -= 1
        for writer in link.writers():
            if rst:
                _reset(writer)
            else:
                writer.close()
        link.closed.set()
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()
        for writer in link.writers():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
