"""HTTP endpoints: /metrics, /healthz, /readyz, /status and a landing page, on h11 over asyncio.

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

The server is ``h11`` (sans-I/O HTTP/1.1) glued to ``asyncio.start_server``, not aiohttp: the daemon
needs five GET endpoints, and aiohttp alone added ~10 MiB to its resident memory. It keeps
connections alive, answers HEAD like GET without the body, 405 for other methods, bounds request
headers and bodies, and closes a connection that sends no complete request within ``header_timeout``
(a slow client) or idles past ``keepalive_timeout`` between requests.
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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

import h11
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter import logs
from exporter.webconfig import CHALLENGE, BasicAuth, WebConfig

__all__ = [
    "App",
    "Heartbeat",
    "Request",
    "Response",
    "Server",
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

# Server limits. The defaults suit a scraper on a keep-alive connection (Prometheus reuses it across scrapes).
HEADER_TIMEOUT = 10.0  # seconds to send a complete request (slowloris guard)
KEEPALIVE_TIMEOUT = 75.0  # seconds idle between requests before the server closes (aiohttp's default)
_MAX_HEADER_BYTES = 16 * 1024  # request line + headers; larger is a 431
_MAX_BODY_BYTES = 64 * 1024  # no endpoint reads a body; a larger one is a 413
_READ_SIZE = 64 * 1024
_WRITE_TIMEOUT = 30.0  # a client that does not read its response
_LINGER_SECONDS = 1.0  # after an error answer, how long (and how much) unread input is drained
_LINGER_BYTES = 1024 * 1024

_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json; charset=utf-8"


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


@dataclass(frozen=True, slots=True)
class Request:
    """What a handler sees: the method, the decoded path (no query) and the headers, names in lower case."""

    method: str
    path: str
    headers: Mapping[str, str]


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = _TEXT
    headers: dict[str, str] = field(default_factory=dict)


def _text(
    text: str, status: int = 200, content_type: str = _TEXT, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(status, text.encode("utf-8"), content_type, dict(headers or {}))


Handler = Callable[[Request], Awaitable[Response]]


class App:
    """The routes (GET, and HEAD like GET), basic auth and the heartbeat; ``start_server`` serves it."""

    def __init__(
        self,
        routes: Mapping[str, Handler],
        heartbeat: Heartbeat,
        web_config: WebConfig | None = None,
    ) -> None:
        self.routes = dict(routes)
        self.heartbeat = heartbeat
        self.web_config = web_config
        users = web_config.basic_auth_users if web_config is not None else {}
        self.auth = BasicAuth(users, OPEN_PATHS) if users else None

    async def respond(self, request: Request) -> Response:
        # Auth before routing, as the aiohttp middleware did: without credentials, an unknown path is a
        # 401 too, so the page reveals nothing about which paths exist.
        if self.auth is not None and not await self.auth.allows(request.path, request.headers.get("authorization")):
            return _text("401: Unauthorized\n", 401, headers={"WWW-Authenticate": CHALLENGE})
        handler = self.routes.get(request.path)
        if handler is None:
            return _text("404: Not Found\n", 404)
        if request.method not in ("GET", "HEAD"):
            return _text("405: Method Not Allowed\n", 405, headers={"Allow": "GET, HEAD"})
        return await handler(request)


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
) -> App:
    """Build the application. Start it with ``start_server``; the heartbeat runs while it is served."""
    heartbeat = Heartbeat(heartbeat_interval, heartbeat_timeout)

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

    async def metrics(request: Request) -> Response:
        accept = request.headers.get("accept", "")
        gzip_ok = _accepts_gzip(request.headers.get("accept-encoding", ""))
        try:
            if render_in_thread:
                body, content_type, gzipped = await asyncio.to_thread(render_and_compress, accept, gzip_ok)
            else:
                body, content_type, gzipped = render_and_compress(accept, gzip_ok)
        except Exception:
            log.exception("rendering /metrics failed")
            return _text("metrics rendering failed\n", 500)
        headers = {"Vary": "Accept-Encoding, Accept"}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        return Response(200, body, content_type, headers)

    async def healthz(request: Request) -> Response:
        age = heartbeat.age()
        if age > heartbeat.timeout:
            return _text(f"event loop heartbeat stale ({age:.1f} s)\n", 503)
        try:
            is_alive = True if alive is None else bool(alive())
        except Exception:
            log.exception("alive() check failed")
            is_alive = False
        if not is_alive:
            return _text("not alive\n", 503)
        return _text("ok\n")

    async def readyz(request: Request) -> Response:
        try:
            is_ready = bool(ready())
        except Exception:
            log.exception("ready() check failed")
            is_ready = False
        if is_ready:
            return _text("ready\n")
        return _text("not ready: no usable data source\n", 503)

    async def status_page(request: Request) -> Response:
        try:
            text = json.dumps(logs.redact_value(dict(status())), indent=2, default=str)
        except Exception as exc:
            log.exception("status() failed")
            error = logs.redact(f"{type(exc).__name__}: {exc}")
            return _text(json.dumps({"error": error}), 500, _JSON)
        return _text(logs.redact(text) + "\n", content_type=_JSON)

    async def landing(request: Request) -> Response:
        return _text(_LANDING.format(title=html.escape(title)), content_type="text/html; charset=utf-8")

    routes = {"/": landing, "/metrics": metrics, "/healthz": healthz, "/readyz": readyz, "/status": status_page}
    return App(routes, heartbeat, web_config)


def heartbeat_of(app: App) -> Heartbeat:
    """The app's heartbeat (to read its age, e.g. for a loop-lag gauge)."""
    return app.heartbeat


# ---------------------------------------------------------------------------------------------------
# The server: h11 does HTTP/1.1, this is the asyncio glue around it.


def _request(event: h11.Request) -> Request:
    headers: dict[str, str] = {}
    for name, value in event.headers:  # h11 gives names in lower case
        key, text = name.decode("latin-1"), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    target = event.target.decode("latin-1")
    # origin-form (/metrics?x) is what clients send; absolute-form (http://host/metrics) is legal too.
    path = target.partition("?")[0] if target.startswith("/") else urlsplit(target).path
    return Request(event.method.decode("ascii", "replace"), unquote(path), headers)


_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_DATE: list[Any] = [0, ""]  # (second, formatted): one formatdate per second, not per response


def _http_date() -> str:
    now = int(time.time())
    if _DATE[0] != now:
        _DATE[0], _DATE[1] = now, formatdate(now, usegmt=True)
    return str(_DATE[1])


class Server:
    """A listening socket and its connections (what aiohttp called the runner)."""

    def __init__(
        self,
        app: App,
        ssl_context: ssl.SSLContext | None,
        *,
        shutdown_timeout: float,
        header_timeout: float,
        keepalive_timeout: float,
    ) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.shutdown_timeout = shutdown_timeout
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self._server: asyncio.Server | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        # connection task → whether it is answering a request (shutdown waits for those, not idle ones)
        self._connections: dict[asyncio.Task[Any], bool] = {}
        self._closing = False

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    async def start(self, host: str | None, port: int) -> None:
        self._server = await asyncio.start_server(
            self._accept,
            host,
            port,
            ssl=self.ssl_context,
            # A client that stalls the TLS handshake is a slow client too.
            ssl_handshake_timeout=self.header_timeout if self.ssl_context is not None else None,
        )
        self.app.heartbeat.beat()
        self._heartbeat = asyncio.create_task(self.app.heartbeat.run(), name="web-heartbeat")

    async def close(self) -> None:
        """Stop listening, close idle connections, give busy ones ``shutdown_timeout``, then cut them."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        if self._connections:
            _, pending = await asyncio.wait(list(self._connections), timeout=self.shutdown_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._server is not None:
            await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback that makes its own task: asyncio's wrapper for a coroutine callback (3.11)
        # reports a task cancelled by close() as an error, and the task is tracked from its first moment.
        task = asyncio.create_task(self._connection(reader, writer))
        self._connections[task] = False
        task.add_done_callback(self._connection_done)

    def _connection_done(self, task: asyncio.Task[None]) -> None:
        self._connections.pop(task, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("HTTP connection failed", exc_info=exc)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEADER_BYTES)
        try:
            first = True
            while not self._closing:
                request = await self._read_request(conn, reader, writer, first=first)
                first = False
                if request is None:
                    break
                self._connections[task] = True
                response = await self._dispatch(request)
                if self._closing:
                    response.headers["Connection"] = "close"
                await self._send(conn, writer, response, head=request.method == "HEAD")
                self._connections[task] = False
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break  # Connection: close, HTTP/1.0, or a body we did not read
                conn.start_next_cycle()
        except (OSError, TimeoutError, h11.ProtocolError) as exc:
            # A client that goes away or stops reading: its problem, not worth a line at INFO.
            log.debug("HTTP connection ended: %s: %s", type(exc).__name__, exc)
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, first: bool
    ) -> Request | None:
        """The next complete request, or None when the connection is to close (answered, if it can be)."""
        # The first request must be complete within header_timeout of the connection; a later one gets
        # keepalive_timeout to start and then header_timeout to complete, so a trickle cannot hold a slot.
        progress = [bool(conn.trailing_data[0])]  # whether any byte of it came (a pipelined one may be buffered)
        try:
            outcome = await self._receive(conn, reader, writer, progress, started=first or progress[0])
        except TimeoutError:
            outcome = 408 if progress[0] else None  # an idle connection is closed without a word
        except h11.RemoteProtocolError as exc:
            outcome = exc.error_status_hint  # 400, or 431 for headers too large
        if isinstance(outcome, int):
            await self._reject(conn, reader, writer, outcome)
            return None
        return outcome

    async def _receive(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        progress: list[bool],
        *,
        started: bool,
    ) -> Request | int | None:
        """Read one request under its deadline: the request, a status to reject it with, or None (closed)."""
        loop = asyncio.get_running_loop()
        request: h11.Request | None = None
        body = 0
        async with asyncio.timeout(self.header_timeout if started else self.keepalive_timeout) as deadline:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if conn.they_are_waiting_for_100_continue:
                        go_on = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                        writer.write(conn.send(go_on))
                    data = await reader.read(_READ_SIZE)
                    if data and not progress[0]:
                        progress[0] = True
                        if not started:
                            started = True
                            deadline.reschedule(loop.time() + self.header_timeout)
                    conn.receive_data(data)  # b"" tells h11 the client closed
                elif isinstance(event, h11.Request):
                    # h11 bounds only a request still incomplete; one that arrived whole is measured here.
                    if len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers) > _MAX_HEADER_BYTES:
                        return 431
                    request = event
                elif isinstance(event, h11.Data):
                    body += len(event.data)
                    if body > _MAX_BODY_BYTES:  # no endpoint takes a body; do not buffer one
                        return 413
                elif isinstance(event, h11.EndOfMessage) and request is not None:
                    return _request(request)
                else:  # ConnectionClosed between requests
                    return None

    async def _dispatch(self, request: Request) -> Response:
        try:
            return await self.app.respond(request)
        except Exception:
            # Handlers catch their own failures; this guards the connection against one that does not.
            log.exception("HTTP handler failed", extra={"path": request.path})
            return _text("500: Internal Server Error\n", 500)

    async def _reject(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int
    ) -> None:
        """Answer a request that will not be served (bad, too large, too slow); the connection then closes."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        phrase = HTTPStatus(status).phrase
        await self._send(conn, writer, _text(f"{status}: {phrase}\n", status, headers={"Connection": "close"}))
        # Lingering close: closing with unread input makes the kernel send a reset, which can destroy the
        # answer before the client reads it. Half-close, then discard what still comes, briefly.
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(_LINGER_SECONDS):
                budget = _LINGER_BYTES
                while budget > 0 and (data := await reader.read(_READ_SIZE)):
                    budget -= len(data)

    async def _send(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, response: Response, *, head: bool = False
    ) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),  # for HEAD too: what GET would send
            ("Date", _http_date()),
            *response.headers.items(),
        ]
        reason = _REASONS.get(response.status) or HTTPStatus(response.status).phrase.encode("ascii")
        head_bytes = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        body = conn.send(h11.Data(data=response.body)) if response.body and not head else b""
        # One write, so one send(2) for the whole response (three writes cost ~20 % of a small request).
        writer.write(b"".join((head_bytes or b"", body or b"", conn.send(h11.EndOfMessage()) or b"")))
        if writer.transport.get_write_buffer_size():
            # A client that does not read its response must not hold the connection forever.
            async with asyncio.timeout(_WRITE_TIMEOUT):
                await writer.drain()


async def start_server(
    app: App,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    *,
    shutdown_timeout: float = 2.0,
    header_timeout: float = HEADER_TIMEOUT,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
) -> Server:
    """Serve ``app`` on host:port (port 0 = any free port; read it with ``bound_port``).

    Without an explicit ``ssl_context``, the TLS settings of the app's ``web_config`` apply, so an
    app built with a TLS config can never be served in clear text by omission. A connection gets
    ``header_timeout`` seconds to send a complete request, and is closed after ``keepalive_timeout``
    seconds idle between requests.
    """
    if ssl_context is None and app.web_config is not None:
        ssl_context = app.web_config.ssl_context()
    server = Server(
        app,
        ssl_context,
        shutdown_timeout=shutdown_timeout,
        header_timeout=header_timeout,
        keepalive_timeout=keepalive_timeout,
    )
    await server.start(host, port)
    return server


def bound_port(runner: Server) -> int:
    """The TCP port the server's first socket listens on."""
    for sock in runner.sockets:
        address = sock.getsockname()
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the server is not listening on a TCP port")


async def stop_server(runner: Server, bound: float = 5.0) -> None:
    """Stop serving: refuse new connections, let in-flight requests finish, all within ``bound`` seconds."""
    try:
        await asyncio.wait_for(runner.close(), bound)
    except TimeoutError:
        log.warning("HTTP server shutdown exceeded its bound", extra={"bound_seconds": bound})
