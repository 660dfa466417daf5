"""HTTP endpoints: /metrics, /healthz, /readyz, /status and a landing page, on httptools over asyncio.

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

The server is ``httptools`` (bindings to llhttp, the C parser of aiohttp and uvicorn) driven by an
``asyncio.Protocol``, not aiohttp: the daemon needs five GET endpoints, and aiohttp alone added
~10 MiB to its resident memory. It replaced a pure-Python parser (h11 over asyncio streams) that cost
~3x aiohttp's CPU per request, which an HTTP flood took from ingestion on the same loop: parsing is in
C, each response is one write, and the read deadlines share one lazily moved timer per connection.
It keeps connections alive
(pipelined requests answered in order), answers HEAD like GET without the body, 405 for other
methods, bounds request headers and bodies, and closes a connection that sends no complete request
within ``header_timeout`` (a slow client) or idles past ``keepalive_timeout`` between requests.
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
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

import httptools
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
# The server: httptools (llhttp) parses HTTP/1.1, an asyncio.Protocol per connection does the rest.

_REASONS = {status.value: status.phrase for status in HTTPStatus}
_DATE: list[Any] = [0, ""]  # (second, formatted): one formatdate per second, not per response

# A connection's read deadline is for a request to complete (_HEADER) or for the next one to start (_IDLE).
_HEADER = 1
_IDLE = 2
_MAX_QUEUED = 32  # pipelined requests waiting for an answer before the connection stops reading
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _http_date() -> str:
    now = int(time.time())
    if _DATE[0] != now:
        _DATE[0], _DATE[1] = now, formatdate(now, usegmt=True)
    return str(_DATE[1])


def _encode(response: Response, *, head: bool, connection: str | None) -> bytes:
    """The whole response as one bytes object (one write, so one send(2) for a small response)."""
    body = response.body
    parts = [
        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"  # for HEAD too: what GET would send
        f"Date: {_http_date()}\r\n"
    ]
    for name, value in response.headers.items():
        parts.append(f"{name}: {value}\r\n")
    if connection is not None and "Connection" not in response.headers:
        parts.append(f"Connection: {connection}\r\n")
    parts.append("\r\n")
    text = "".join(parts)
    lines = len(parts) + 3  # the first part holds four lines
    if text.count("\n") != lines or text.count("\r") != lines:
        raise ValueError("a response header contains CR or LF")  # it would split the response
    data = text.encode("latin-1")
    return data + body if body and not head else data


class _Reject(Exception):
    """Raised in a parser callback to stop parsing and answer the request with ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Connection(asyncio.Protocol):
    """One client connection: parse with httptools, answer in order, keep the deadlines."""

    __slots__ = (
        "body_bytes",
        "current",
        "deadline",
        "deadline_kind",
        "done_reading",
        "eof",
        "head_bytes",
        "headers",
        "http11",
        "in_head",
        "in_message",
        "linger_budget",
        "linger_timer",
        "loop",
        "messages",
        "parser",
        "partial",
        "queue",
        "reading_paused",
        "reject",
        "server",
        "shut",
        "task",
        "timer",
        "transport",
        "url",
        "write_paused",
        "write_timer",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        # Parsed requests not answered yet, in order: (request, Connection header to send) or a status
        # to reject with (after which the connection closes).
        self.queue: deque[tuple[Request, str | None] | int] = deque()
        self.task: asyncio.Task[Response] | None = None  # a handler that suspended
        self.current: tuple[Request, str | None] | None = None  # the request that task answers
        # The request being parsed.
        self.url = b""
        self.headers: dict[str, str] = {}
        self.head_bytes = 0  # request line + headers, counted in the callbacks
        self.partial = 0  # bytes of a head that is still incomplete, counted in data_received
        self.body_bytes = 0
        self.http11 = True
        self.in_message = False  # some bytes of a request came, and it is not complete
        self.in_head = False  # ... and its headers are not complete either
        self.messages = 0
        self.reject = 400  # the status a parser error is answered with
        # One timer for the read deadline, moved lazily: a deadline further away than the timer's only
        # updates ``deadline`` (the timer re-arms itself when it fires early), so a keep-alive request
        # usually costs no timer handle at all.
        self.timer: asyncio.TimerHandle | None = None
        self.deadline: float | None = None
        self.deadline_kind = _HEADER
        self.write_timer: asyncio.TimerHandle | None = None
        self.linger_timer: asyncio.TimerHandle | None = None
        self.linger_budget = -1  # >= 0 while discarding input after an error answer
        self.done_reading = False  # no further request will be parsed
        self.shut = False  # no further response will be written
        self.eof = False
        self.reading_paused = False
        self.write_paused = False

    # -- transport events ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._connections.add(self)
        if self.server._closing:
            self._close()
            return
        # The first request must be complete within header_timeout of the connection.
        self._arm(self.server.header_timeout, _HEADER)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.timer, self.write_timer, self.linger_timer):
            if timer is not None:
                timer.cancel()
        self.timer = self.write_timer = self.linger_timer = None
        self.shut = self.done_reading = True
        self.queue.clear()
        if self.task is not None:
            self.task.cancel()
        if exc is not None:
            # A client that goes away or stops reading: its problem, not worth a line at INFO.
            log.debug("HTTP connection ended: %s: %s", type(exc).__name__, exc)
        self.server._connection_lost(self)

    def data_received(self, data: bytes) -> None:
        if self.done_reading:
            if self.linger_budget >= 0:
                self.linger_budget -= len(data)
                if self.linger_budget < 0:
                    self._close()
            return
        try:
            if len(data) <= _MAX_HEADER_BYTES:
                self._feed(data)
            else:
                # In slices, so that a head that never ends is caught after a few of them (httptools
                # buffers an incomplete header line itself, and llhttp sets no limit).
                view = memoryview(data)
                for start in range(0, len(data), _MAX_HEADER_BYTES):
                    self._feed(view[start : start + _MAX_HEADER_BYTES])
                    if self.done_reading:
                        break
            self._process()
        except Exception:
            log.exception("HTTP connection failed")
            self._abort()

    def eof_received(self) -> bool:
        self.eof = True
        if self.linger_budget >= 0 or self.in_message:
            return False  # close
        # Requests that came before the half-close are still answered (not over TLS, which cannot
        # half-close).
        busy = bool(self.queue) or self.task is not None
        return busy and self.transport is not None and self.transport.get_extra_info("sslcontext") is None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.write_timer is None:
            # A client that does not read its response must not hold the connection forever.
            self.write_timer = self.loop.call_later(_WRITE_TIMEOUT, self._write_timed_out)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.write_timer is not None and not self.shut:
            self.write_timer.cancel()
            self.write_timer = None
        self._process()

    # -- httptools callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = self.in_head = True
        self.messages += 1
        self.url = b""
        self.headers = {}
        self.head_bytes = self.partial = self.body_bytes = 0
        if self.deadline is None or self.deadline_kind != _HEADER:
            # A later request must be complete within header_timeout of its first byte.
            self._arm(self.server.header_timeout, _HEADER)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > _MAX_HEADER_BYTES:
            self._fail(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > _MAX_HEADER_BYTES:
            self._fail(431)
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers = self.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        if parser.should_upgrade():
            self._fail(400)  # no endpoint speaks another protocol (nor answers CONNECT)
        version = parser.get_http_version()
        self.http11 = version == "1.1"
        headers = self.headers
        if self.http11:
            if "host" not in headers:
                self._fail(400)
        elif version != "1.0":
            self._fail(505)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > _MAX_BODY_BYTES:
            self._fail(413)  # do not wait for a body that will be refused
        if (
            self.http11
            and headers.get("expect", "").lower() == "100-continue"
            and not self.queue
            and self.task is None
            and self.transport is not None
        ):
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > _MAX_BODY_BYTES:  # no endpoint takes a body; do not buffer one
            self._fail(413)

    def on_message_complete(self) -> None:
        self.in_message = False
        self.deadline = None
        target = self.url.decode("latin-1")
        # origin-form (/metrics?x) is what clients send; absolute-form (http://host/metrics) is legal too.
        path = target.partition("?")[0] if target.startswith("/") else urlsplit(target).path
        request = Request(self.parser.get_method().decode("ascii", "replace"), unquote(path), self.headers)
        if not self.parser.should_keep_alive():
            connection: str | None = "close"  # Connection: close, or HTTP/1.0 without keep-alive
            self.done_reading = True
        else:
            connection = None if self.http11 else "keep-alive"
        self.queue.append((request, connection))
        if len(self.queue) >= _MAX_QUEUED and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    # -- the work --------------------------------------------------------------------------------

    def _feed(self, data: bytes | memoryview) -> None:
        was_in_head, messages = self.in_head, self.messages
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._queue_reject(400)
        except httptools.HttpParserError:
            self._queue_reject(self.reject)  # after a request that closes the connection, ignored
        else:
            if self.in_head and was_in_head and self.messages == messages:
                # The whole slice was part of one incomplete head.
                self.partial += len(data)
                if self.partial > _MAX_HEADER_BYTES:
                    self._queue_reject(431)

    def _fail(self, status: int) -> None:
        self.reject = status
        raise _Reject(status)

    def _queue_reject(self, status: int) -> None:
        if self.done_reading:
            return
        self.done_reading = True
        self.in_message = False
        self.deadline = None
        self.queue.append(status)

    def _process(self) -> None:
        """Start answering the next queued request (one at a time, in order), or arm the idle deadline."""
        queue = self.queue
        if queue and self.task is None and not self.write_paused and not self.shut:
            item = queue.popleft()
            if self.reading_paused and len(queue) < _MAX_QUEUED // 2 and self.transport is not None:
                self.reading_paused = False
                self.transport.resume_reading()
            if isinstance(item, int):
                self._reject(item)
                return
            # One task per request, one request at a time per connection: pipelined answers stay in order.
            self.current = item
            self.task = self.loop.create_task(self.server._dispatch(item[0]))
            self.task.add_done_callback(self._handled)
            return
        if not queue and self.task is None and not self.shut:
            if self.eof:
                self._close()  # the client half-closed and everything it asked is answered
            elif not self.in_message and self.deadline is None:
                self._arm(self.server.keepalive_timeout, _IDLE)

    def _handled(self, task: asyncio.Task[Response]) -> None:
        self.task = None
        item, self.current = self.current, None
        if task.cancelled() or self.shut or item is None:
            return
        exc = task.exception()
        if exc is not None:
            log.error("HTTP connection failed", exc_info=exc)
            self._abort()
            return
        try:
            self._respond(item, task.result())
            self._process()
        except Exception:
            log.exception("HTTP connection failed")
            self._abort()

    def _respond(self, item: tuple[Request, str | None], response: Response) -> None:
        assert self.transport is not None
        request, connection = item
        if self.server._closing:
            response.headers["Connection"] = "close"
            connection = "close"
        head = request.method == "HEAD"
        try:
            data = _encode(response, head=head, connection=connection)
        except ValueError:
            log.exception("HTTP handler gave an invalid response", extra={"path": request.path})
            data = _encode(_text("500: Internal Server Error\n", 500), head=head, connection=connection)
        self.transport.write(data)
        if connection == "close":
            self.done_reading = True
            self._close()

    def _reject(self, status: int) -> None:
        """Answer a request that will not be served (bad, too large, too slow); the connection then closes."""
        assert self.transport is not None
        self.shut = self.done_reading = True
        self.deadline = None
        phrase = HTTPStatus(status).phrase
        response = _text(f"{status}: {phrase}\n", status, headers={"Connection": "close"})
        self.transport.write(_encode(response, head=False, connection="close"))
        # Lingering close: closing with unread input makes the kernel send a reset, which can destroy the
        # answer before the client reads it. Half-close, then discard what still comes, briefly.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.linger_budget = _LINGER_BYTES
        self.linger_timer = self.loop.call_later(_LINGER_SECONDS, self._close)
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def _arm(self, seconds: float, kind: int) -> None:
        deadline = self.loop.time() + seconds
        self.deadline, self.deadline_kind = deadline, kind
        timer = self.timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(deadline, self._timed_out)

    def _timed_out(self) -> None:
        self.timer = None
        deadline = self.deadline
        if deadline is None or self.shut:
            return
        if deadline > self.loop.time() + 0.001:  # moved on since the timer was set
            self.timer = self.loop.call_at(deadline, self._timed_out)
            return
        self.deadline = None
        if self.deadline_kind == _HEADER and self.in_message:
            self._queue_reject(408)  # some of a request came, not all of it in time
            self._process()
        elif not self.queue and self.task is None:
            self._close()  # silent since connecting, or idle between requests: closed without a word

    def _write_timed_out(self) -> None:
        self.write_timer = None
        log.debug("HTTP connection ended: the client did not read its response")
        self._abort()

    def _close(self) -> None:
        self.shut = self.done_reading = True
        if self.transport is None:
            return
        self.transport.close()
        if self.transport.get_write_buffer_size() and self.write_timer is None:
            # close() waits for the buffer to drain; a client that does not read must not hold it.
            self.write_timer = self.loop.call_later(_WRITE_TIMEOUT, self._write_timed_out)

    def _abort(self) -> None:
        self.shut = self.done_reading = True
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """The server stops: close now if idle, else after the answer in progress (Connection: close)."""
        if self.task is None and not self.write_paused:
            self._close()


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
        self._connections: set[_Connection] = set()
        self._all_closed: asyncio.Future[None] | None = None  # set when the last connection is gone
        self._closing = False

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    async def start(self, host: str | None, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
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
        if self._connections:
            self._all_closed = asyncio.get_running_loop().create_future()
            for connection in list(self._connections):
                connection.shutdown()
            if self._connections:
                await asyncio.wait([self._all_closed], timeout=self.shutdown_timeout)
            if self._connections:
                waiters: list[asyncio.Future[Any]] = [self._all_closed]
                waiters += [c.task for c in self._connections if c.task is not None]
                for connection in list(self._connections):
                    connection._abort()
                await asyncio.wait(waiters, timeout=1.0)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._server is not None:
            await self._server.wait_closed()

    def _connection_lost(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        if not self._connections and self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)

    async def _dispatch(self, request: Request) -> Response:
        try:
            return await self.app.respond(request)
        except Exception:
            # Handlers catch their own failures; this guards the connection against one that does not.
            log.exception("HTTP handler failed", extra={"path": request.path})
            return _text("500: Internal Server Error\n", 500)


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
