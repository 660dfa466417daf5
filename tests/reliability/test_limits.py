"""Resource limits: frame size, the queue between reader and router, label cardinality, timeouts.

The daemon stacks run on virtual loop time (``looptime``, as in tests/reliability/test_faults.py): real
sockets, the waits cost no wall time. The file-descriptor test runs the daemon as a process, in real time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import resource
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from exporter.app import Daemon, EventQueue
from exporter.core.clock import FakeClock
from exporter.core.events import PrimaryConnection, PrimaryData, Tick
from exporter.core.messages import Trade, utc_from_ns
from exporter.core.router import Core, CoreConfig, State
from exporter.metrics import build_registry
from exporter.sim.alpaca_codec import encode
from exporter.sources.alpaca.client import DEFAULT_MAX_MESSAGE_BYTES
from tests.support.prometheus import free_port
from tests.support.stacks import SYMBOLS, fast_settings, records

pytestmark = pytest.mark.looptime


async def test_frame_above_max_size_drops_the_connection_not_the_daemon(rstack: Any) -> None:
    """A frame over the client's 16 MiB bound is refused by websockets (1009 "message too big"): the
    connection is lost and re-established, the daemon never holds more than the bound per frame."""
    async with rstack() as s:
        await s.healthy_start()
        item = {"T": "t", "S": "AAPL", "p": 1.5, "s": 1, "t": 1, "pad": "x" * 4096}
        huge = encode([item] * (DEFAULT_MAX_MESSAGE_BYTES // 4096 + 16), "msgpack")
        assert len(huge) > DEFAULT_MAX_MESSAGE_BYTES
        attempts = s.daemon.alpaca.status.connection_attempts
        await s.alpaca.send_feed([huge])
        await s.wait_for(lambda: s.core.errors["connection_lost"] >= 1, 5.0, "the connection dropped")
        assert "1009" in (s.daemon.alpaca.status.last_error or "")
        await s.metrics()
        await s.wait_state(State.PRIMARY_ACTIVE, timeout=5.0)
        assert s.daemon.alpaca.status.connection_attempts > attempts
        s.assert_accounting()  # the refused frame was never counted


def test_event_queue_is_bounded_and_overflow_is_exported() -> None:
    """Past ``EXPORTER_MAX_QUEUE_FRAMES`` data frames are dropped and counted; control events never are."""
    settings = fast_settings("ws://127.0.0.1:1/v2/iex", "http://127.0.0.1:1", max_queue_frames=5)
    daemon = Daemon(settings)
    queue = daemon.queue
    assert isinstance(queue, EventQueue)
    frame = PrimaryData([Trade("AAPL", 1.0, utc_from_ns(1))], 0.0, 0.0)
    for _ in range(12):
        queue.put(frame)
    queue.put(PrimaryConnection("Connected", "x"))
    queue.put(Tick())
    assert queue.stats() == (5, 7)
    text = daemon.render_metrics("text/plain")[0].decode()
    assert "alpaca_stream_queue_dropped_frames_total 7.0" in text
    assert "alpaca_stream_queue_frames 5.0" in text


async def test_queue_overflow_under_a_real_burst(rstack: Any) -> None:
    """A burst far beyond a tiny queue: frames are dropped and counted, never buffered without bound, and
    the exact-counting identity covers what was admitted."""
    async with rstack(max_queue_frames=2, rate=0.0) as s:
        await s.wait_state(State.PRIMARY_ACTIVE)
        frames = [encode([{"T": "t", "S": "AAPL", "p": 100.0, "s": 1, "t": 1}], "msgpack")] * 3000
        await s.alpaca.send_feed(frames)
        await s.wait_for(lambda: s.daemon.queue.dropped > 0, 3.0, "drops")
        await asyncio.sleep(0.3)
        text = await s.metrics()
        match = re.search(r"^alpaca_stream_queue_dropped_frames_total (\S+)$", text, re.M)
        assert match is not None
        assert float(match.group(1)) == s.daemon.queue.dropped
        assert s.core.received["alpaca"] + s.daemon.queue.dropped == 3000  # one message per frame
        acc = s.core.accounting()["alpaca"]
        assert acc["received"] == acc["routed"] + acc["standby"] + acc["rejected"]


def test_label_cardinality_is_capped() -> None:
    """Past ``EXPORTER_MAX_SYMBOL_SERIES`` symbols share ``__other__``: the exposition stays bounded however
    many symbols the stream sends."""
    clock = FakeClock()
    core = Core(CoreConfig(symbols=tuple(SYMBOLS), stale_after_s=0, market_hours="always", max_symbol_series=2), clock)
    now = utc_from_ns(clock.wall_ns())
    junk = [Trade(f"JUNK{i}", 10.0, now) for i in range(5000)]
    core.handle(PrimaryData([Trade(s, 100.0, now) for s in SYMBOLS] + junk, clock.monotonic(), 0.0))
    text = generate_latest(build_registry(core, lambda: (0, 0))).decode()
    labels = set(re.findall(r'symbol="([^"]*)"', text))
    assert labels <= {"AAPL", "MSFT", "__other__", ""}
    assert "__other__" in labels
    assert core.rejected["unknown_symbol"] == 5000
    assert len(text) < 50_000


async def test_yahoo_requests_time_out(rstack: Any, caplog: Any) -> None:
    """A Yahoo that accepts the request and never answers: the poller's timeout ends it (counted as
    timeout, the source backs off, the episode is logged once) and the fallback's health lapses."""
    # A short read timeout: the default 10 s (20 s for the whole request) would make this test slow.
    async with rstack(yahoo={"read_timeout": 0.3, "total_timeout": 0.5}) as s:
        await s.healthy_start()
        caplog.clear()
        s.yahoo.slow(3.0, seconds=1.5)
        await s.wait_for(lambda: s.core.yahoo_errors["timeout"] >= 1, 3.0, "a Yahoo timeout")
        await s.wait_for(lambda: not s.core.fallback_healthy(s.now()), 3.0, "fallback unhealthy")
        await s.metrics()
        await s.wait_for(lambda: s.core.fallback_healthy(s.now()), 5.0, "fallback healthy again")
        failing = records(caplog, "exporter.yahoo", "yahoo poll failing", 30)
        assert len(failing) == 1
        assert failing[0].error_type == "timeout"
        assert s.core.state is State.PRIMARY_ACTIVE


async def test_endpoints_answer_within_a_timeout_during_a_flood(rstack: Any) -> None:
    """/healthz and /metrics answer in well under a second while the feed runs at 5000 msg/s."""
    async with rstack(rate=5000.0, batch_size=50) as s, httpx.AsyncClient(timeout=1.0) as http:
        await s.healthy_start()
        for _ in range(20):
            assert (await http.get(s.base + "/healthz")).status_code == 200
            assert (await http.get(s.base + "/metrics")).status_code == 200
        s.assert_accounting()


async def test_more_symbols_than_the_plan_allows(rstack: Any, caplog: Any) -> None:
    """Alpaca answers 405 when the subscription exceeds the plan's symbol limit (Basic: 30), and keeps
    its state as it was. The client narrows the list down (halves, then single symbols), keeps the
    symbols that fit and stays on the primary; the one that does not fit is refused and shown, with a
    bounded number of 405s: never a hot loop."""
    async with rstack(sim={"symbol_limit": 2}) as s:  # three symbols configured
        await s.wait_state(State.PRIMARY_ACTIVE, timeout=3.0)
        await asyncio.sleep(1.0)
        await s.metrics()
        status = s.daemon.alpaca.status
        assert len(status.subscribed_symbols) == 2
        assert len(status.subscription_refused) == 1
        # [3 symbols] refused, [1] kept, [2] refused, [1] kept, [1] refused: the plan is full.
        assert s.core.errors["symbol_limit_exceeded"] == 3
        assert len(records(caplog, "exporter.alpaca", "alpaca symbol limit reached", logging.WARNING)) == 1
        assert s.core.failovers == 0


async def test_half_sent_requests_do_not_block_the_endpoints(rstack: Any) -> None:
    """300 clients that send half a request and wait (slowloris) hold a socket each, nothing more:
    /healthz and /metrics still answer at once and ingestion goes on."""
    async with rstack() as s:
        await s.healthy_start()
        writers: list[asyncio.StreamWriter] = []
        try:
            for _ in range(300):
                _reader, writer = await asyncio.open_connection("127.0.0.1", s.daemon.port)
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
                writers.append(writer)
            received = s.core.received["alpaca"]
            async with httpx.AsyncClient(timeout=1.0) as http:
                assert (await http.get(s.base + "/healthz")).status_code == 200
                assert (await http.get(s.base + "/metrics")).status_code == 200
            await s.wait_for(lambda: s.core.received["alpaca"] > received, 2.0, "ingestion goes on")
        finally:
            for writer in writers:
                writer.close()


def test_idle_connections_cannot_exhaust_the_file_descriptors() -> None:
    """The daemon with 300 file descriptors and 400 idle keep-alive connections made to it: it keeps 44
    (300 less 256 for the upstream sockets), closing the longest idle for each new one, so /healthz and
    /metrics answer at once, accept() never fails, and the episode is one WARNING, not a line per accept."""
    port, dead = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPORTER_", "APCA_"))}
    env.update(
        {
            "APCA_API_KEY_ID": "PKFDLIMITTESTKEY0001",
            "APCA_API_SECRET_KEY": "fd-limit-secret-0123456789abcdef",
            "EXPORTER_SYMBOLS": "AAPL",
            "EXPORTER_ALPACA_URL": f"ws://127.0.0.1:{dead}/v2/iex",
            "EXPORTER_YAHOO_URL": f"http://127.0.0.1:{dead}",
            "EXPORTER_HOST": "127.0.0.1",
            "EXPORTER_PORT": str(port),
            "EXPORTER_ALPACA_BACKOFF_MAX_SECONDS": "1",
        }
    )

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))

    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=few_descriptors,
    )
    idle: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the exporter did not come up"
            time.sleep(0.1)
        for _ in range(400):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
            idle.append(sock)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            answer = b""
            while not answer.endswith(b"ok\n"):
                chunk = sock.recv(4096)
                assert chunk, "a new connection was refused"
                answer += chunk
        with httpx.Client(timeout=2.0) as http:
            for _ in range(5):
                assert http.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                assert http.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
    finally:
        for sock in idle:
            sock.close()
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    log = out.decode() + err.decode()
    assert proc.returncode == 0, log[-2000:]
    assert log.count("HTTP connection limit reached") == 1, log[-2000:]
    assert "Traceback" not in log
    assert "out of system resource" not in log
