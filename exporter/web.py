"""HTTP endpoints: /metrics, /healthz, /readyz, /status and a landing page, on aiohttp.

The application knows nothing of the router or the registry: the daemon hands it callables.

- ``/metrics``: ``render_metrics(accept_header) -> (body, content_type)`` chooses the exposition
  format (text 0.0.4 or OpenMetrics, see ``default_render_metrics``); this module adds gzip when the
  scraper accepts it. With ``render_in_thread=True`` the rendering (and compression) runs in a worker
  thread so a large scrape leaves the event loop free for ingestion; only safe when ``render_metrics``
  may run off the loop thread (prometheus_client's own metrics may; a collector that reads loop-owned
  state may not).
- ``/healthz``: liveness. A background task stamps a monotonic heartbeat every
  ``heartbeat_interval`` seconds; healthz answers 503 when that stamp is older than
  ``heartbeat_timeout`` (the task died or the loop is starved) or when ``alive()`` says False.
  A loop blocked outright cannot answer at all, which a probe with a timeout sees as failure too.
- ``/readyz``: 200 while ``ready()``, else 503.
- ``/status``: ``status()`` as JSON, redacted twice: structurally (``logs.redact_value``) and as
  text (``logs.redact``), so a secret can reach the page neither as a field nor inside a message.
- Access logging is off: a scrape never writes a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import html
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter import logs
from exporter.webconfig import WebConfig, basic_auth_middleware

__all__ = [
    "Heartbeat",
    "bound_port",
    "create_app",
    "default_render_metrics",
    "heartbeat_of",
    "start_server",
    "stop_server",
]

log = logging.getLogger(__name__)

RenderMetrics = Callable[[str], tuple[bytes, str]]

OPEN_PATHS = ("/healthz",)

# Level 1: a 500-symbol exposition (~485 KB) compresses in ~1.3 ms instead of ~4.6 ms at level 6, and the
# scrape shares the process with ingestion; the body is somewhat larger, which a scrape hardly notices.
_GZIP_LEVEL = 1


def default_render_metrics(registry: CollectorRegistry) -> RenderMetrics:
    """Render ``registry`` in the format the Accept header asks for (text 0.0.4 unless OpenMetrics)."""

    def render(accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(registry), content_type

    return render


def _accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


class Heartbeat:
    """A monotonic stamp refreshed by a task on the event loop; its age says whether the loop turns."""

    def __init__(self, interval: float = 0.5, timeout: float = 5.0) -> None:
        self.interval = interval
        self.timeout = timeout
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.last

    def fresh(self) -> bool:
        return self.age() <= self.timeout

    async def run(self) -> None:
        while True:
            self.beat()
            await asyncio.sleep(self.interval)


_HEARTBEAT = web.AppKey("heartbeat", Heartbeat)
_WEB_CONFIG = web.AppKey("web_config", WebConfig)

_LANDING = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title></head>
<body>
<h1>{title}</h1>
<p>Prometheus exporter for an Alpaca market-data feed with a Yahoo Finance fallback.</p>
<ul>
<li><a href="metrics">/metrics</a> &mdash; Prometheus metrics</li>
<li><a href="healthz">/healthz</a> &mdash; liveness</li>
<li><a href="readyz">/readyz</a> &mdash; readiness (a usable data source)</li>
<li><a href="status">/status</a> &mdash; router and source status (JSON)</li>
</ul>
</body>
</html>
"""


def create_app(
    *,
    render_metrics: RenderMetrics,
    status: Callable[[], Mapping[str, Any]],
    ready: Callable[[], bool],
    alive: Callable[[], bool] | None = None,
    web_config: WebConfig | None = None,
    heartbeat_interval: float = 0.5,
    heartbeat_timeout: float = 5.0,
    render_in_thread: bool = False,
    metrics_cache_seconds: float = 0.0,
    title: str = "alpaca-exporter",
) -> web.Application:
    """Build the application. Start it with ``start_server``; the heartbeat runs while it is served."""
    middlewares = []
    if web_config is not None and web_config.basic_auth_users:
        middlewares.append(basic_auth_middleware(web_config.basic_auth_users, OPEN_PATHS))
    app = web.Application(middlewares=middlewares)
    heartbeat = Heartbeat(heartbeat_interval, heartbeat_timeout)
    app[_HEARTBEAT] = heartbeat
    if web_config is not None:
        app[_WEB_CONFIG] = web_config

    # Scrapes arriving within ``metrics_cache_seconds`` of a render share it: a scrape storm then costs a
    # few renders per second instead of one per request, and ingestion keeps its core.
    rendered: dict[tuple[str, bool], tuple[float, bytes, str, bool]] = {}

    def render_and_compress(accept: str, gzip_ok: bool) -> tuple[bytes, str, bool]:
        key = (accept, gzip_ok)
        now = time.monotonic()
        if metrics_cache_seconds > 0:
            hit = rendered.get(key)
            if hit is not None and now - hit[0] < metrics_cache_seconds:
                return hit[1], hit[2], hit[3]
        body, content_type = render_metrics(accept)
        gzipped = False
        if gzip_ok:
            body, gzipped = gzip.compress(body, compresslevel=_GZIP_LEVEL), True
        if metrics_cache_seconds > 0:
            if len(rendered) >= 8:  # many distinct Accept headers: keep the cache bounded
                rendered.clear()
            rendered[key] = (now, body, content_type, gzipped)
        return body, content_type, gzipped

    async def metrics(request: web.Request) -> web.Response:
        accept = request.headers.get("Accept", "")
        gzip_ok = _accepts_gzip(request.headers.get("Accept-Encoding", ""))
        try:
            if render_in_thread:
                body, content_type, gzipped = await asyncio.to_thread(render_and_compress, accept, gzip_ok)
            else:
                body, content_type, gzipped = render_and_compress(accept, gzip_ok)
        except Exception:
            log.exception("rendering /metrics failed")
            return web.Response(status=500, text="metrics rendering failed\n")
        headers = {"Content-Type": content_type, "Vary": "Accept-Encoding, Accept"}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def healthz(request: web.Request) -> web.Response:
        age = heartbeat.age()
        if age > heartbeat.timeout:
            return web.Response(status=503, text=f"event loop heartbeat stale ({age:.1f} s)\n")
        try:
            is_alive = True if alive is None else bool(alive())
        except Exception:
            log.exception("alive() check failed")
            is_alive = False
        if not is_alive:
            return web.Response(status=503, text="not alive\n")
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        try:
            is_ready = bool(ready())
        except Exception:
            log.exception("ready() check failed")
            is_ready = False
        if is_ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: no usable data source\n")

    async def status_page(request: web.Request) -> web.Response:
        try:
            text = json.dumps(logs.redact_value(dict(status())), indent=2, default=str)
        except Exception as exc:
            log.exception("status() failed")
            error = logs.redact(f"{type(exc).__name__}: {exc}")
            return web.json_response({"error": error}, status=500)
        return web.Response(text=logs.redact(text) + "\n", content_type="application/json")

    async def landing(request: web.Request) -> web.Response:
        return web.Response(text=_LANDING.format(title=html.escape(title)), content_type="text/html")

    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status_page)
    app.cleanup_ctx.append(_heartbeat_ctx)
    return app


async def _heartbeat_ctx(app: web.Application) -> AsyncIterator[None]:
    heartbeat = app[_HEARTBEAT]
    heartbeat.beat()
    task = asyncio.create_task(heartbeat.run(), name="web-heartbeat")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def heartbeat_of(app: web.Application) -> Heartbeat:
    """The app's heartbeat (to read its age, e.g. for a loop-lag gauge)."""
    return app[_HEARTBEAT]


async def start_server(
    app: web.Application,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    *,
    shutdown_timeout: float = 2.0,
) -> web.AppRunner:
    """Serve ``app`` on host:port (port 0 = any free port; read it with ``bound_port``).

    Without an explicit ``ssl_context``, the TLS settings of the app's ``web_config`` apply, so an
    app built with a TLS config can never be served in clear text by omission.
    """
    if ssl_context is None and _WEB_CONFIG in app:
        ssl_context = app[_WEB_CONFIG].ssl_context()
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port the runner's first site listens on."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the server is not listening on a TCP port")


async def stop_server(runner: web.AppRunner, bound: float = 5.0) -> None:
    """Stop serving: refuse new connections, let in-flight requests finish, all within ``bound`` seconds."""
    try:
        await asyncio.wait_for(runner.cleanup(), bound)
    except TimeoutError:
        log.warning("HTTP server shutdown exceeded its bound", extra={"bound_seconds": bound})
