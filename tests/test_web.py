"""The HTTP endpoints over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import logging
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from exporter import logs
from exporter import web as xweb

SECRET = "topsecret-value-0123456789abcdef"

# Virtual loop time (``looptime``): real sockets, but whenever nothing but timers is pending the loop's
# clock jumps to the next one, so the server's deadlines (``loop.call_later``) and the tests' sleeps cost
# no wall time; durations are measured on that clock (``now()``). The few tests whose wait is a thread
# or a blocked loop, which only real time moves, say ``REAL_TIME``.
pytestmark = pytest.mark.looptime
REAL_TIME = pytest.mark.looptime(False)


def now() -> float:
    return asyncio.get_running_loop().time()


def make_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    counter = Counter("alpaca_messages_received", "Messages received", ["type"], registry=registry)
    counter.labels(type="trade").inc(3)
    Gauge("datasource_router_state", "Router state", ["state"], registry=registry).labels(state="PRIMARY_ACTIVE").set(0)
    return registry


@asynccontextmanager
async def serve(
    *,
    render: Callable[[str], tuple[bytes, str]] | None = None,
    status: Callable[[], Mapping[str, Any]] = lambda: {"state": "PRIMARY_ACTIVE"},
    ready: Callable[[], bool] = lambda: True,
    **kwargs: Any,
) -> AsyncIterator[tuple[str, xweb.App, xweb.Server]]:
    app = xweb.create_app(
        render_metrics=render or xweb.default_render_metrics(make_registry()),
        status=status,
        ready=ready,
        **kwargs,
    )
    runner = await xweb.start_server(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{xweb.bound_port(runner)}", app, runner
    finally:
        await xweb.stop_server(runner)


@asynccontextmanager
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as c:
        yield c


async def test_metrics_text_format_by_default() -> None:
    async with serve() as (base, _, runner), client() as c:
        assert xweb.bound_port(runner) > 0
        r = await c.get(base + "/metrics", headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "content-encoding" not in r.headers
    assert 'alpaca_messages_received_total{type="trade"} 3.0' in r.text
    assert "# EOF" not in r.text


async def test_metrics_openmetrics_when_asked() -> None:
    async with serve() as (base, _, _), client() as c:
        r = await c.get(
            base + "/metrics",
            headers={
                "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
                "Accept-Encoding": "identity",
            },
        )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    assert 'alpaca_messages_received_total{type="trade"} 3.0' in r.text


@pytest.mark.parametrize("accept_encoding", ["gzip", "deflate, gzip;q=0.8", "*"])
async def test_metrics_gzip_when_asked(accept_encoding: str) -> None:
    registry = make_registry()
    expected = xweb.default_render_metrics(registry)("")[0]
    async with (
        serve(render=xweb.default_render_metrics(registry)) as (base, _, _),
        client() as c,
        c.stream("GET", base + "/metrics", headers={"Accept-Encoding": accept_encoding}) as r,
    ):
        raw = b"".join([chunk async for chunk in r.aiter_raw()])
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in r.headers["vary"]
    assert raw != expected
    assert gzip.decompress(raw) == expected


@pytest.mark.parametrize("accept_encoding", ["identity", "gzip;q=0", "br"])
async def test_metrics_not_gzipped_otherwise(accept_encoding: str) -> None:
    async with serve() as (base, _, _), client() as c:
        r = await c.get(base + "/metrics", headers={"Accept-Encoding": accept_encoding})
    assert "content-encoding" not in r.headers
    assert "alpaca_messages_received_total" in r.text


async def test_metrics_render_failure_is_500(caplog: pytest.LogCaptureFixture) -> None:
    def broken(accept: str) -> tuple[bytes, str]:
        raise RuntimeError("collector exploded")

    async with serve(render=broken) as (base, _, _), client() as c:
        r = await c.get(base + "/metrics")
    assert r.status_code == 500
    assert "collector exploded" not in r.text
    assert any("rendering /metrics failed" in rec.message for rec in caplog.records)


@REAL_TIME
async def test_render_in_thread_keeps_loop_free() -> None:
    started = threading.Event()

    def slow(accept: str) -> tuple[bytes, str]:
        started.set()
        time.sleep(0.5)  # a scrape of a huge registry, stood in by a blocking wait
        return b"slow 1\n", "text/plain; version=0.0.4; charset=utf-8"

    async with serve(render=slow, render_in_thread=True) as (base, _, _), client() as c:
        scrape = asyncio.create_task(c.get(base + "/metrics"))
        assert await asyncio.to_thread(started.wait, 5.0)
        t0 = time.perf_counter()
        health = await c.get(base + "/healthz")
        health_seconds = time.perf_counter() - t0
        r = await scrape
    assert health.status_code == 200
    assert health_seconds < 0.3  # answered while the scrape was still rendering
    assert r.text == "slow 1\n"


async def test_healthz_ok_and_head() -> None:
    async with serve() as (base, _, _), client() as c:
        r = await c.get(base + "/healthz")
        head = await c.head(base + "/healthz")
        head_metrics = await c.head(base + "/metrics")
    assert (r.status_code, r.text) == (200, "ok\n")
    assert head.status_code == 200
    assert head.content == b""
    assert head_metrics.status_code == 200
    assert head_metrics.headers["content-type"].startswith("text/plain")
    assert head_metrics.content == b""


async def test_healthz_follows_alive() -> None:
    state = {"alive": True}

    def alive() -> bool:
        if state["alive"] is None:
            raise RuntimeError("probe broke")
        return bool(state["alive"])

    async with serve(alive=alive) as (base, _, _), client() as c:
        assert (await c.get(base + "/healthz")).status_code == 200
        state["alive"] = False
        r = await c.get(base + "/healthz")
        assert (r.status_code, r.text) == (503, "not alive\n")
        state["alive"] = None  # type: ignore[assignment]
        assert (await c.get(base + "/healthz")).status_code == 503
        state["alive"] = True
        assert (await c.get(base + "/healthz")).status_code == 200


async def test_healthz_fails_when_heartbeat_is_stale() -> None:
    # The heartbeat task beats once at start and then not for 30 s: from the server's point of view the
    # loop stopped turning after the timeout.
    async with serve(heartbeat_interval=30.0, heartbeat_timeout=0.2) as (base, app, _), client() as c:
        assert (await c.get(base + "/healthz")).status_code == 200
        await asyncio.sleep(0.3)
        r = await c.get(base + "/healthz")
        assert r.status_code == 503
        assert "heartbeat stale" in r.text
        xweb.heartbeat_of(app).beat()
        assert (await c.get(base + "/healthz")).status_code == 200


async def test_heartbeat_keeps_healthz_green_over_time() -> None:
    async with serve(heartbeat_interval=0.02, heartbeat_timeout=0.1) as (base, app, _), client() as c:
        for _ in range(5):
            await asyncio.sleep(0.05)
            assert (await c.get(base + "/healthz")).status_code == 200
        assert xweb.heartbeat_of(app).age() < 0.1


@REAL_TIME
async def test_blocked_loop_fails_the_probe_then_recovers() -> None:
    async with serve(heartbeat_interval=0.05, heartbeat_timeout=1.0) as (base, _, _):

        def probe() -> str:
            try:
                return str(httpx.get(base + "/healthz", timeout=0.3).status_code)
            except httpx.TimeoutException:
                return "timeout"

        loop = asyncio.get_running_loop()
        blocked = threading.Event()

        def block() -> None:
            blocked.set()
            time.sleep(0.8)  # the event loop itself is stuck: nothing on it can answer

        loop.call_soon(block)
        result = await asyncio.to_thread(lambda: (blocked.wait(5.0), probe())[1])
        assert result == "timeout"
        async with client() as c:
            assert (await c.get(base + "/healthz")).status_code == 200


async def test_readyz_follows_ready() -> None:
    state = {"ready": False}
    async with serve(ready=lambda: state["ready"]) as (base, _, _), client() as c:
        r = await c.get(base + "/readyz")
        assert r.status_code == 503
        assert r.text.startswith("not ready")
        state["ready"] = True
        r = await c.get(base + "/readyz")
        assert (r.status_code, r.text) == (200, "ready\n")
        state["ready"] = False
        assert (await c.get(base + "/readyz")).status_code == 503


async def test_readyz_503_when_ready_raises() -> None:
    def broken() -> bool:
        raise RuntimeError("no")

    async with serve(ready=broken) as (base, _, _), client() as c:
        assert (await c.get(base + "/readyz")).status_code == 503


async def test_status_json_redacted() -> None:
    logs.clear_secrets()
    logs.add_secrets([SECRET])
    try:

        class Since:
            def __str__(self) -> str:
                return "2025-01-01T00:00:00Z"

        def status() -> Mapping[str, Any]:
            return {
                "state": "FALLBACK_ACTIVE",
                "since": Since(),
                "sources": {
                    "alpaca": {"healthy": False, "last_error": f"auth failed for secret {SECRET}"},
                    "yahoo": {"healthy": True, "url": "https://u:p@q.example/v8?apiKey=zzz"},
                },
                "symbols": {"AAPL": {"price": 187.5, "source": "yahoo", "breaker": "closed"}},
                "key_id_set": True,
                "api_secret": "oops",
            }

        async with serve(status=status) as (base, _, _), client() as c:
            r = await c.get(base + "/status")
    finally:
        logs.clear_secrets()
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert SECRET not in r.text
    assert "oops" not in r.text
    body = r.json()
    assert body["state"] == "FALLBACK_ACTIVE"
    assert body["since"] == "2025-01-01T00:00:00Z"
    assert body["sources"]["alpaca"]["last_error"] == "auth failed for secret [REDACTED]"
    assert body["sources"]["yahoo"]["url"] == "https://[REDACTED]@q.example/v8?apiKey=[REDACTED]"
    assert body["symbols"]["AAPL"] == {"price": 187.5, "source": "yahoo", "breaker": "closed"}
    assert body["key_id_set"] is True
    assert body["api_secret"] == "[REDACTED]"


async def test_status_failure_is_redacted_500() -> None:
    def status() -> Mapping[str, Any]:
        raise RuntimeError("cannot read password=abcdefghijklmnopqrstuvwxyz")

    async with serve(status=status) as (base, _, _), client() as c:
        r = await c.get(base + "/status")
    assert r.status_code == 500
    assert r.json() == {"error": "RuntimeError: cannot read password=[REDACTED]"}


async def test_landing_page_links_everything() -> None:
    async with serve() as (base, _, _), client() as c:
        r = await c.get(base + "/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    for target in ("metrics", "healthz", "readyz", "status"):
        assert f'href="{target}"' in r.text


async def test_unknown_path_and_method() -> None:
    async with serve() as (base, _, _), client() as c:
        assert (await c.get(base + "/nope")).status_code == 404
        assert (await c.get(base + "/metrics/extra")).status_code == 404
        assert (await c.post(base + "/metrics")).status_code == 405


async def test_no_access_log_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serve() as (base, _, _), client() as c:
        for path in ("/metrics", "/healthz", "/readyz", "/status", "/"):
            assert (await c.get(base + path)).status_code == 200
    # The server writes no access log at all (only the client, httpx, logs its requests).
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert [r for r in server_side if r.levelno >= logging.INFO] == []


@REAL_TIME
async def test_stop_server_is_bounded_with_request_in_flight() -> None:
    release = threading.Event()

    def slow(accept: str) -> tuple[bytes, str]:
        release.wait(5.0)
        return b"x 1\n", "text/plain; version=0.0.4; charset=utf-8"

    app = xweb.create_app(render_metrics=slow, status=dict, ready=lambda: True, render_in_thread=True)
    runner = await xweb.start_server(app, "127.0.0.1", 0, shutdown_timeout=0.2)
    base = f"http://127.0.0.1:{xweb.bound_port(runner)}"
    async with client() as c:
        scrape = asyncio.create_task(c.get(base + "/metrics"))
        await asyncio.sleep(0.1)
        t0 = time.perf_counter()
        await xweb.stop_server(runner, bound=2.0)
        elapsed = time.perf_counter() - t0
        release.set()
        with pytest.raises(httpx.HTTPError):
            await scrape
    assert elapsed < 1.5
    with pytest.raises(httpx.ConnectError):
        async with client() as c:
            await c.get(base + "/healthz")


async def test_port_in_use_is_an_error_and_cleans_up() -> None:
    async with serve() as (_, _, runner):
        port = xweb.bound_port(runner)
        app = xweb.create_app(render_metrics=lambda a: (b"", "text/plain"), status=dict, ready=lambda: True)
        with pytest.raises(OSError, match="address already in use"):
            await xweb.start_server(app, "127.0.0.1", port)


def test_default_render_metrics_negotiates() -> None:
    render = xweb.default_render_metrics(make_registry())
    body, content_type = render("")
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    om_body, om_type = render("application/openmetrics-text")
    assert om_type.startswith("application/openmetrics-text")
    assert om_body.endswith(b"# EOF\n")
    assert body != om_body


async def test_scrapes_within_the_cache_window_share_one_render() -> None:
    renders = 0
    default = xweb.default_render_metrics(make_registry())

    def counting(accept: str) -> tuple[bytes, str]:
        nonlocal renders
        renders += 1
        return default(accept)

    async with serve(render=counting, metrics_cache_seconds=0.3) as (base, _, _runner), client() as c:
        plain = [await c.get(base + "/metrics", headers={"Accept-Encoding": "identity"}) for _ in range(5)]
        assert renders == 1
        assert len({r.text for r in plain}) == 1
        # Another format is another render, and cached on its own.
        om = await c.get(base + "/metrics", headers={"Accept": "application/openmetrics-text"})
        assert om.text.rstrip().endswith("# EOF")
        assert renders == 2
        await asyncio.sleep(0.35)
        await c.get(base + "/metrics", headers={"Accept-Encoding": "identity"})
        assert renders == 3  # the window passed: fresh values


# --------------------------------------------------------------------------------------------------
# The server itself (httptools over asyncio): no aiohttp, and what a production HTTP/1.1 server must do.


def test_daemon_does_not_import_aiohttp() -> None:
    # aiohttp costs the daemon ~10 MiB of resident memory; only the Yahoo simulator may use it.
    out = subprocess.run(
        [sys.executable, "-c", "import exporter.app, sys; print('aiohttp' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "False", out.stderr


@asynccontextmanager
async def raw_connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A plain TCP connection to the server, for what an HTTP client would not send; closed on exit."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    async with raw_connection(port) as (reader, writer):
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read(-1)


async def test_head_is_get_without_body() -> None:
    async with serve() as (base, _, _), client() as c:
        for path in ("/", "/status", "/readyz", "/metrics"):
            get = await c.get(base + path, headers={"Accept-Encoding": "identity"})
            head = await c.head(base + path, headers={"Accept-Encoding": "identity"})
            assert head.status_code == get.status_code == 200, path
            assert head.content == b"", path
            assert head.headers["content-type"] == get.headers["content-type"], path
            assert head.headers["content-length"] == str(len(get.content)), path
        assert (await c.head(base + "/nope")).status_code == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_are_405_with_allow(method: str) -> None:
    async with serve() as (base, _, _), client() as c:
        r = await c.request(method, base + "/metrics", content=b"x" * 1000)
        assert r.status_code == 405
        assert r.headers["allow"] == "GET, HEAD"
        # The request body was read, so the connection goes on serving.
        assert (await c.get(base + "/healthz")).status_code == 200


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async with serve() as (base, _, runner), client() as c:
        clients = set()
        for path in ("/healthz", "/metrics", "/readyz", "/status", "/", "/nope", "/healthz"):
            r = await c.get(base + path)
            clients.add(r.extensions["network_stream"].get_extra_info("client_addr"))
            assert r.headers.get("connection") != "close"
        assert len(clients) == 1
        # Pipelined requests on one connection are answered in order; the last one asks to close.
        port = xweb.bound_port(runner)
        one = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
        last = b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        raw = await raw_exchange(port, one + one + last)
    assert raw.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert raw.endswith(b"ready\n")
    assert raw.index(b"ok\n") < raw.index(b"ready\n")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"this is not HTTP\r\n\r\n", b"400"),
        (b"GET /healthz HTTP/1.1\r\n\r\n", b"400"),  # HTTP/1.1 without Host
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n", b"400"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n", b"400"),  # TLS to a plain port
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", b"431"),
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 200_000, b"431"),  # never ends
        (b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000, b"413"),
    ],
)
async def test_malformed_requests_are_answered_and_closed(data: bytes, status: bytes) -> None:
    async with serve() as (base, _, runner), client() as c:
        raw = await raw_exchange(xweb.bound_port(runner), data)
        assert raw.startswith(b"HTTP/1.1 " + status + b" "), raw[:100]
        assert b"connection: close" in raw.lower()
        assert (await c.get(base + "/healthz")).status_code == 200  # the server lives on


async def test_handler_exception_is_500_and_server_lives_on(caplog: pytest.LogCaptureFixture) -> None:
    async def boom(request: xweb.Request) -> xweb.Response:
        raise RuntimeError("handler bug")

    async with serve() as (base, app, _), client() as c:
        app.routes["/boom"] = boom
        r = await c.get(base + "/boom")
        assert r.status_code == 500
        assert "handler bug" not in r.text
        assert (await c.get(base + "/healthz")).status_code == 200
    assert any("HTTP handler failed" in rec.message for rec in caplog.records)


@asynccontextmanager
async def serve_with_timeouts(header_timeout: float, keepalive_timeout: float) -> AsyncIterator[int]:
    app = xweb.create_app(render_metrics=lambda a: (b"up 1\n", "text/plain"), status=dict, ready=lambda: True)
    runner = await xweb.start_server(
        app, "127.0.0.1", 0, header_timeout=header_timeout, keepalive_timeout=keepalive_timeout
    )
    try:
        yield xweb.bound_port(runner)
    finally:
        await xweb.stop_server(runner)


async def test_silent_client_is_disconnected() -> None:
    async with serve_with_timeouts(header_timeout=0.3, keepalive_timeout=30.0) as port:
        t0 = now()
        raw = await raw_exchange(port, b"")
        elapsed = now() - t0
    assert raw == b""  # nothing was asked, nothing is answered
    assert 0.25 <= elapsed < 2.0


async def test_trickling_client_is_cut_off() -> None:
    async with serve_with_timeouts(header_timeout=0.4, keepalive_timeout=30.0) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = now()
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")

        async def trickle() -> None:
            # One header byte every 50 ms: data keeps coming, the request never completes.
            with contextlib.suppress(OSError):
                for _ in range(100):
                    writer.write(b"X-Slow: a\r\n"[:1])
                    await writer.drain()
                    await asyncio.sleep(0.05)

        trickler = asyncio.create_task(trickle())
        try:
            async with asyncio.timeout(3.0):
                raw = await reader.read(-1)
            elapsed = now() - t0
        finally:
            trickler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trickler
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert 0.35 <= elapsed < 2.0


async def test_idle_keep_alive_connection_is_closed() -> None:
    async with (
        serve_with_timeouts(header_timeout=5.0, keepalive_timeout=0.3) as port,
        raw_connection(port) as (reader, writer),
    ):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(3.0):
            raw = b""
            while not raw.endswith(b"ok\n"):
                raw += await reader.read(1024)
            t0 = now()
            rest = await reader.read(-1)  # the server closes the idle connection
        elapsed = now() - t0
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest == b""
    assert 0.25 <= elapsed < 2.0


async def test_stop_closes_idle_keep_alive_connections_at_once() -> None:
    app = xweb.create_app(render_metrics=lambda a: (b"up 1\n", "text/plain"), status=dict, ready=lambda: True)
    runner = await xweb.start_server(app, "127.0.0.1", 0, shutdown_timeout=3.0)
    async with client() as c:
        assert (await c.get(f"http://127.0.0.1:{xweb.bound_port(runner)}/healthz")).status_code == 200
        t0 = now()
        await xweb.stop_server(runner, bound=5.0)
        elapsed = now() - t0
    assert elapsed < 1.0  # the idle connection did not hold the shutdown for shutdown_timeout


async def read_responses(reader: asyncio.StreamReader, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` responses (head, body) off a keep-alive connection, each framed by its Content-Length."""
    out = []
    for _ in range(count):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        out.append((head, await reader.readexactly(length)))
    return out


async def test_pipelined_requests_behind_a_waiting_handler_keep_their_order() -> None:
    async def slow(request: xweb.Request) -> xweb.Response:
        await asyncio.sleep(0.05)  # a handler that waits is answered from a task, still in order
        await asyncio.sleep(0)
        return xweb.Response(body=b"slow\n")

    async def fails_later(request: xweb.Request) -> xweb.Response:
        await asyncio.sleep(0.01)
        raise RuntimeError("handler bug")

    async with serve() as (_, app, runner):
        app.routes["/slow"] = slow
        app.routes["/fails"] = fails_later
        async with raw_connection(xweb.bound_port(runner)) as (reader, writer):
            paths = ["/slow", "/healthz", "/fails", "/readyz", "/slow", "/nope"] + ["/healthz"] * 600
            writer.write(b"".join(f"GET {p} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for p in paths))
            async with asyncio.timeout(5.0):
                responses = await read_responses(reader, len(paths))
    bodies = [body for _, body in responses]
    assert bodies[:6] == [
        b"slow\n",
        b"ok\n",
        b"500: Internal Server Error\n",
        b"ready\n",
        b"slow\n",
        b"404: Not Found\n",
    ]
    assert bodies[6:] == [b"ok\n"] * 600  # more than it queues before it stops reading; > 16 KiB at once


async def test_http10_is_answered_and_closed() -> None:
    # uvicorn serves one request per HTTP/1.0 connection, keep-alive asked or not (scrapers speak 1.1).
    async with serve() as (_, _, runner):
        port = xweb.bound_port(runner)
        for request in (b"GET /healthz HTTP/1.0\r\n\r\n", b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"):
            raw = await raw_exchange(port, request)
            assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"connection: close" in raw.lower()
            assert raw.endswith(b"ok\n")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", b"400"),
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", b"400"),  # two Host headers (RFC 9112 §3.2)
        (b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n", b"400"),
        (b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n", b"505"),
        (b"GET /healthz?" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", b"431"),  # a long target
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-Many: a\r\n" * 2_000 + b"\r\n", b"431"),
        (
            b"POST /metrics HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"ffff\r\n"
            + b"x" * 65535
            + b"\r\n10\r\n"
            + b"x" * 16,
            b"413",
        ),
    ],
)
async def test_more_requests_that_are_refused(data: bytes, status: bytes) -> None:
    async with serve() as (base, _, runner), client() as c:
        raw = await raw_exchange(xweb.bound_port(runner), data)
        assert raw.startswith(b"HTTP/1.1 " + status + b" "), raw[:100]
        assert b"connection: close" in raw.lower()
        assert (await c.get(base + "/healthz")).status_code == 200


async def test_a_refused_request_is_answered_after_the_ones_before_it() -> None:
    async with serve() as (_, _, runner):
        good = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
        raw = await raw_exchange(xweb.bound_port(runner), good + good + b"this is not HTTP\r\n\r\n" + good)
    assert raw.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert raw.index(b"HTTP/1.1 400 ") > raw.rindex(b"ok\n")
    assert raw.endswith(b"400: Bad Request\n")


async def test_input_after_a_refused_request_does_not_cost_the_answers_before_it() -> None:
    async def slow(request: xweb.Request) -> xweb.Response:
        await asyncio.sleep(0.2)
        return xweb.Response(body=b"slow\n")

    async with serve() as (_, app, runner), raw_connection(xweb.bound_port(runner)) as (reader, writer):
        app.routes["/slow"] = slow
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nthis is not HTTP\r\n\r\n")
        await asyncio.sleep(0.05)  # the refusal waits for /slow's answer; meanwhile more input comes
        writer.write(b"more input the server discards\r\n")
        async with asyncio.timeout(5.0):
            raw = await reader.read(-1)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert raw.endswith(b"400: Bad Request\n")


async def test_chunked_body_is_read_and_expect_continue_is_answered() -> None:
    async with serve() as (_, _, runner), raw_connection(xweb.bound_port(runner)) as (reader, writer):
        # No endpoint takes a body, so the final answer comes at once instead of 100 Continue (RFC 9110
        # §10.1.1); the body the client sends anyway is read, and the connection goes on.
        writer.write(b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        async with asyncio.timeout(5.0):
            responses = await read_responses(reader, 1)
            writer.write(b"hello")
            writer.write(b"POST /metrics HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"5\r\nhello\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            responses += await read_responses(reader, 2)
    assert [head.split(b"\r\n", 1)[0] for head, _ in responses] == [
        b"HTTP/1.1 405 Method Not Allowed",
        b"HTTP/1.1 405 Method Not Allowed",
        b"HTTP/1.1 200 OK",
    ]


async def test_slow_later_request_on_a_keep_alive_connection_is_408() -> None:
    async with (
        serve_with_timeouts(header_timeout=0.3, keepalive_timeout=30.0) as port,
        raw_connection(port) as (reader, writer),
    ):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        async with asyncio.timeout(3.0):
            await read_responses(reader, 1)
            await asyncio.sleep(0.5)  # idle longer than header_timeout: within keepalive_timeout
            t0 = now()
            writer.write(b"GET /healthz HTTP/1.1\r\n")  # then never finishes
            raw = await reader.read(-1)
        elapsed = now() - t0
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert 0.25 <= elapsed < 2.0


async def test_client_that_does_not_read_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xweb, "_WRITE_TIMEOUT", 0.3)
    big = b"x" * (1 << 20)
    async with serve(render=lambda accept: (big, "text/plain")) as (base, _, runner), client() as c:
        async with raw_connection(xweb.bound_port(runner)) as (reader, writer):
            request = b"GET /metrics HTTP/1.1\r\nHost: t\r\nAccept-Encoding: identity\r\n\r\n"
            writer.write(request * 64)  # 64 MiB of answers, far more than the socket buffers hold
            await asyncio.sleep(1.0)  # ... and not read
            received = 0
            with contextlib.suppress(OSError):
                async with asyncio.timeout(5.0):
                    while data := await reader.read(1 << 20):
                        received += len(data)
        assert received < 64 * len(big)  # the server gave up on the connection
        assert (await c.get(base + "/healthz")).status_code == 200


async def test_stop_lets_a_waiting_handler_answer_with_connection_close() -> None:
    started = asyncio.Event()

    async def slow(request: xweb.Request) -> xweb.Response:
        started.set()
        await asyncio.sleep(0.2)
        return xweb.Response(body=b"done\n")

    app = xweb.create_app(render_metrics=lambda a: (b"up 1\n", "text/plain"), status=dict, ready=lambda: True)
    app.routes["/slow"] = slow
    runner = await xweb.start_server(app, "127.0.0.1", 0, shutdown_timeout=3.0)
    port = xweb.bound_port(runner)
    exchange = asyncio.create_task(raw_exchange(port, b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n" * 2))
    await started.wait()
    t0 = now()
    await xweb.stop_server(runner, bound=5.0)
    elapsed = now() - t0
    raw = await exchange
    assert raw.count(b"HTTP/1.1 200 OK\r\n") == 1  # the one in progress; the next is not started
    assert b"connection: close" in raw.lower()
    assert raw.endswith(b"done\n")
    assert elapsed < 1.0


# --------------------------------------------------------------------------------------------------
# Hardening: what an attacker of the running daemon found (file descriptors, unread answers, port).


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(2.0):
            return await reader.read(1024) == b""
    except (ConnectionResetError, TimeoutError):
        return False


async def test_connection_cap_closes_the_oldest_idle_first_refuses_when_none_is_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="exporter.web")
    app = xweb.create_app(render_metrics=lambda a: (b"up 1\n", "text/plain"), status=dict, ready=lambda: True)
    runner = await xweb.start_server(app, "127.0.0.1", 0, max_connections=20)
    port = xweb.bound_port(runner)
    request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(25):  # 20 idle keep-alive connections, then 5 more: each closes the longest idle
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            async with asyncio.timeout(5.0):
                [(_, body)] = await read_responses(reader, 1)
            assert body == b"ok\n"
            conns.append((reader, writer))
        assert runner.connection_count() == 20
        for reader, _ in conns[:5]:
            try:
                async with asyncio.timeout(2.0):
                    assert await reader.read(1024) == b""
            except ConnectionResetError:
                pass
        for _reader, writer in conns[5:]:  # none is busy: every one still serves
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # ... and is left half-sent: busy
        await asyncio.sleep(0.1)
        for _ in range(10):  # none is idle now: new connections are refused, not the busy ones closed
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            try:
                async with asyncio.timeout(2.0):
                    assert await reader.read(1024) == b""
            except ConnectionResetError:
                pass
            writer.close()
        assert runner.connection_count() == 20
        warnings = [r for r in caplog.records if "connection limit" in r.getMessage()]
        assert len(warnings) == 1  # one line for the whole episode, not one per connection
        for _, writer in conns:
            writer.close()
        await wait_until(lambda: runner.connection_count() == 0)
        assert [r for r in caplog.records if "below the limit" in r.getMessage()]
        async with client() as c:
            assert (await c.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    finally:
        for _, writer in conns:
            writer.close()
        await xweb.stop_server(runner)


async def test_unread_answers_are_bounded_in_total() -> None:
    big = b"x" * (8 << 20)
    app = xweb.create_app(render_metrics=lambda a: (big, "text/plain"), status=dict, ready=lambda: True)
    budget = 8 << 20  # the kernel takes up to 4 MiB of an 8 MiB answer: one or two fit, three never
    runner = await xweb.start_server(app, "127.0.0.1", 0, unread_bytes_max=budget)
    port = xweb.bound_port(runner)
    loop = asyncio.get_running_loop()
    writers = []
    try:
        for _ in range(4):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads nothing
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            _, writer = await asyncio.open_connection(sock=sock)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\nAccept-Encoding: identity\r\n\r\n")
            writers.append(writer)
        await wait_until(lambda: runner.connection_count() <= 2)  # the oldest stalled ones were cut
        assert 0 < runner.unread_bytes() <= budget
    finally:
        for writer in writers:
            writer.close()
        await xweb.stop_server(runner)


def test_open_files_limit_is_raised_and_leaves_room_for_upstream_sockets() -> None:
    code = (
        "import resource; from exporter import web; now = web.raise_open_files_limit(); "
        "print(now, *resource.getrlimit(resource.RLIMIT_NOFILE), web.default_max_connections())"
    )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard == resource.RLIM_INFINITY or hard >= 1024, "this test needs a hard limit of 1024 or more"

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024))

    out = subprocess.run(
        [sys.executable, "-c", code], preexec_fn=low_soft_limit, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    now, soft, hard_now, cap = map(int, out.stdout.split())
    assert now == soft == hard_now == 1024
    assert cap == 1024 - xweb.RESERVED_FILES


def test_port_in_use_is_one_line_and_exit_2(tmp_path: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            "PATH": "/usr/bin:/bin",
            "APCA_API_KEY_ID": "PKPORTTEST0000000001",
            "APCA_API_SECRET_KEY": SECRET,
            "EXPORTER_SYMBOLS": "AAPL",
            "EXPORTER_HOST": "127.0.0.1",
            "EXPORTER_PORT": str(port),
            "EXPORTER_ALPACA_URL": "ws://127.0.0.1:1/v2/iex",
            "EXPORTER_YAHOO_URL": "http://127.0.0.1:1",
        }
        out = subprocess.run(
            [sys.executable, "-m", "exporter", "run"], env=env, capture_output=True, text=True, timeout=60
        )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"config error: EXPORTER_PORT: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert SECRET not in out.stdout + out.stderr


async def test_a_reset_connection_is_freed_at_once() -> None:
    # uvicorn cancels its keep-alive timer only on a clean close; after a reset the timer would keep the
    # connection's objects for the whole keep-alive timeout (75 s).
    async with serve() as (_, _, runner):
        reader, writer = await asyncio.open_connection("127.0.0.1", xweb.bound_port(runner))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        async with asyncio.timeout(5.0):
            await read_responses(reader, 1)  # now idle, its keep-alive timer armed
        [connection] = runner.guard.open
        freed = weakref.ref(connection)
        del connection
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # closes with a reset
        await wait_until(lambda: runner.connection_count() == 0)
        await asyncio.sleep(0)
        gc.collect()
        assert freed() is None


async def test_pipelined_requests_are_parsed_only_a_few_ahead_of_their_answers() -> None:
    # uvicorn parses all it reads, and reads again after every answer: a client that pipelines faster
    # than it is answered grew one connection's queue without bound.
    async with serve() as (_, _, runner), raw_connection(xweb.bound_port(runner)) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" * 1000)  # ~34 KB: one read, or a few
        deepest = 0

        async def watch() -> None:
            nonlocal deepest
            while True:
                deepest = max([deepest] + [len(c.pipeline) for c in runner.guard.open])
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        try:
            async with asyncio.timeout(10.0):
                responses = await read_responses(reader, 1000)
        finally:
            watcher.cancel()
    assert [body for _, body in responses] == [b"ok\n"] * 1000
    assert 0 < deepest <= 200  # 32, plus what one parsed 4 KiB slice holds (~120 requests); not 1000
