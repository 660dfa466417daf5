"""HTTP endpoints: /metrics, /healthz, /readyz, /status and a landing page, served by uvicorn.

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

The application is a plain ASGI callable served by uvicorn's httptools protocol (llhttp, in C) on the
daemon's own loop: uvicorn keeps the HTTP/1.1 framing, keep-alive, pipelining, HEAD, Expect and the
idle keep-alive timeout. ``_Protocol`` subclasses it for the promises uvicorn does not keep (each is a
gap in uvicorn, checked in 0.53 to 0.55, not a preference; 0.53 is the first that says
``Connection: close`` on an answer it ends the connection after):

- a deadline to send a complete request (uvicorn waits forever for a silent or trickling client);
- 431 for a request head over 16 KiB and 413 for a body over 64 KiB (its httptools protocol has no
  limit on either), 400 for HTTP/1.1 without ``Host`` or with two (RFC 9112 §3.2), 505 for other
  versions, 400 for upgrades; refusals are answered after the pipelined answers before them and the
  input is drained briefly before closing, so the client reads the answer instead of a reset;
- a cap on open connections, closing the oldest idle one first and refusing only when none is idle
  (uvicorn's ``limit_concurrency`` answers 503 *after* reading a request, so idle sockets still pile up
  to the file-descriptor limit);
- a bound on answers clients do not read: per connection one answer (uvicorn waits for the socket to
  drain before it writes the next) for at most 30 s, and in total ``unread_bytes_max``, the oldest
  stalled connection cut first (uvicorn keeps an unread answer for as long as the socket stays open);
- at most ``_MAX_PIPELINED`` pipelined requests parsed ahead of their answers per connection (uvicorn
  parses all it reads and reads again after each answer, so a fast pipelining client grows its queue
  without bound).

It also writes an answer's head and body in one send(2) (uvicorn makes two, and on loopback each cost
as much as the rest of a small request) and cancels uvicorn's keep-alive timer when a connection is
reset (uvicorn cancels it only on a clean close, so a reset connection's objects lived 75 s more).

At end of input uvicorn closes the connection (a client that half-closes gets no answer): that is how
a request whose client left is noticed, and its password check dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import html
import json
import logging
import resource
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httptools
import uvicorn
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from exporter import logs
from exporter.heartbeat import Heartbeat
from exporter.timers import Timers
from exporter.webconfig import CHALLENGE, AuthBusy, BasicAuth, WebConfig

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
    "raise_open_files_limit",
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
MAX_CONNECTIONS = 4096  # open client connections at most (fewer when the file limit is low)
RESERVED_FILES = 256  # file descriptors kept for everything else: upstream sockets, logs, DNS
UNREAD_BYTES_MAX = 32 * 1024 * 1024  # answers buffered for clients that do not read, all connections together
_MAX_HEADER_BYTES = 16 * 1024  # request line + headers; larger is a 431
_MAX_BODY_BYTES = 64 * 1024  # no endpoint reads a body; a larger one is a 413
_WRITE_TIMEOUT = 30.0  # a client that does not read its response
_LINGER_SECONDS = 1.0  # after a refusal, how long (and how much) unread input is drained
_LINGER_BYTES = 1024 * 1024
_MAX_PIPELINED = 32  # requests parsed ahead of their answers on one connection; reading stops there
_FEED_SLICE = 4096  # input is parsed this much at a time, so parsing can stop at _MAX_PIPELINED

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


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard one (Python leaves it as it found it, often 1024).

    Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # a hard limit of "infinity" that the kernel caps lower: keep the soft one
        return soft
    return hard


def default_max_connections() -> int:
    """The connection cap: ``MAX_CONNECTIONS``, or what the open-files limit leaves after ``RESERVED_FILES``."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft - RESERVED_FILES))


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
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class App:
    """The routes (GET, and HEAD like GET), basic auth and the heartbeat, as an ASGI application."""

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

    async def __call__(self, scope: Mapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        request = Request(scope["method"], scope["path"], headers)
        try:
            response = await self.respond(request, receive)
        except asyncio.CancelledError:
            # Only stop_server cancels a request, after cutting its connection: nobody waits for an answer,
            # and uvicorn would log the cancellation as an application error.
            return
        except Exception:
            # Handlers catch their own failures; this guards the connection against one that does not.
            log.exception("HTTP handler failed", extra={"path": request.path})
            response = _text("500: Internal Server Error\n", 500)
        if response is None:
            return  # the client left while its credentials were checked
        fields = [(b"content-type", response.content_type.encode("latin-1"))]
        fields.append((b"content-length", str(len(response.body)).encode("ascii")))  # for HEAD: what GET sends
        fields += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
        await send({"type": "http.response.start", "status": response.status, "headers": fields})
        await send({"type": "http.response.body", "body": response.body})  # uvicorn drops it for HEAD

    async def respond(self, request: Request, receive: Receive | None = None) -> Response | None:
        # Auth before routing: without credentials, an unknown path is a 401 too, so the page reveals
        # nothing about which paths exist.
        if self.auth is not None and request.path not in OPEN_PATHS:
            try:
                allowed = await self._check(request.headers.get("authorization"), receive)
            except AuthBusy:  # a flood of checks: say so rather than call good credentials wrong
                return _text("503: too many password checks waiting\n", 503, headers={"Retry-After": "1"})
            if allowed is None:
                return None
            if not allowed:
                return _text("401: Unauthorized\n", 401, headers={"WWW-Authenticate": CHALLENGE})
        handler = self.routes.get(request.path)
        if handler is None:
            return _text("404: Not Found\n", 404)
        if request.method not in ("GET", "HEAD"):
            return _text("405: Method Not Allowed\n", 405, headers={"Allow": "GET, HEAD"})
        return await handler(request)

    async def _check(self, header: str | None, receive: Receive | None) -> bool | None:
        """Whether the credentials are good; None when the client left before a bcrypt check could end."""
        assert self.auth is not None
        known = self.auth.known(header)
        if known is not None:
            return known
        check = asyncio.ensure_future(self.auth.check(header))
        if receive is None:
            return await check
        # A client gone while its check waits for the pool must not cost a bcrypt run (a wrong-password
        # flood that hangs up would otherwise queue thousands of them).
        gone = asyncio.ensure_future(_until_disconnected(receive))
        try:
            await asyncio.wait((check, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not check.done():
                check.cancel()
        if not check.done() or check.cancelled():
            return None
        return check.result()


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
    timers: Timers | None = None,
) -> App:
    """Build the application. Start it with ``start_server``; the heartbeat runs while it is served."""
    heartbeat = Heartbeat(heartbeat_interval, heartbeat_timeout, timers)

    # Scrapes arriving within ``metrics_cache_seconds`` of a render share it: a scrape storm then costs a
    # few renders per second instead of one per request, and ingestion keeps its core.
    rendered: dict[tuple[str, bool], tuple[float, bytes, str, bool]] = {}

    def render_and_compress(accept: str, gzip_ok: bool) -> tuple[bytes, str, bool]:
        key = (accept, gzip_ok)
        now = heartbeat.timers.monotonic()
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
# The server: uvicorn's httptools protocol, and what it lacks (see the module doc).


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the request is answered with ``_Protocol.status``."""


class _Guard:
    """What all connections share: the connection cap (oldest idle closed first) and the unread-answer budget."""

    def __init__(self, max_connections: int, unread_bytes_max: int) -> None:
        self.max_connections = max_connections
        self.unread_bytes_max = unread_bytes_max
        self.open: set[_Protocol] = set()
        self.idle: dict[_Protocol, None] = {}  # insertion order: the longest idle first
        self.stalled: dict[_Protocol, None] = {}  # write-paused connections, the oldest stall first
        self.at_limit = False  # an episode of closed or refused connections is under way
        self.emptied: asyncio.Event | None = None  # set when the last connection is gone (at stop)
        self.evicted = self.refused = 0

    def admit(self, connection: _Protocol) -> bool:
        if len(self.open) >= self.max_connections:
            self._limit_reached()
            oldest = next(iter(self.idle), None)
            if oldest is None:
                self.refused += 1
                return False
            self.evicted += 1
            oldest.cut()
        self.open.add(connection)
        self.idle[connection] = None
        return True

    def _limit_reached(self) -> None:
        if not self.at_limit:
            self.at_limit = True
            log.warning(
                "HTTP connection limit reached: closing the oldest idle connections, refusing new ones while none is",
                extra={"max_connections": self.max_connections},
            )

    def forget(self, connection: _Protocol) -> None:
        self.open.discard(connection)
        self.idle.pop(connection, None)
        self.stalled.pop(connection, None)
        if not self.open and self.emptied is not None:
            self.emptied.set()
        if self.at_limit and len(self.open) <= self.max_connections * 9 // 10:
            log.info(
                "HTTP connections below the limit again",
                extra={"closed_idle": self.evicted, "refused": self.refused, "connections": len(self.open)},
            )
            self.at_limit = False
            self.evicted = self.refused = 0

    def stall(self, connection: _Protocol) -> None:
        """``connection`` holds an answer its client does not read: keep the total of such answers bounded."""
        self.stalled[connection] = None
        total = sum(c.unread_bytes() for c in self.stalled)
        while total > self.unread_bytes_max and self.stalled:
            oldest = next(iter(self.stalled))
            total -= oldest.unread_bytes()
            self.stalled.pop(oldest)
            log.debug("HTTP connection ended: unread answers over the budget")
            oldest.cut()

    def unread_bytes(self) -> int:
        return sum(c.unread_bytes() for c in self.stalled)


class _OneWrite:
    """The transport as uvicorn's request cycle sees it: an answer's head waits for its body, so the two go
    out in one send(2) instead of two (each crosses the network stack; on loopback they were half the
    CPU a small request cost). A head alone (HEAD) goes when the answer is complete."""

    __slots__ = ("head", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.head = b""

    def write(self, data: bytes) -> None:
        if self.head:
            data, self.head = self.head + data, b""
            self.transport.write(data)
        elif data.startswith(b"HTTP/1.1 "):
            self.head = data
        else:
            self.transport.write(data)

    def flush(self) -> None:
        if self.head:
            data, self.head = self.head, b""
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits it lacks (see the module doc)."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        guard: _Guard,
        header_timeout: float,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.guard = guard
        self.header_timeout = header_timeout
        self.deadline: asyncio.TimerHandle | None = None  # for the request under way to be complete
        self.started = 0.0  # loop time of the current request's first byte
        self.write_timer: asyncio.TimerHandle | None = None
        self.linger_timer: asyncio.TimerHandle | None = None
        self.running: RequestResponseCycle | None = None  # the cycle whose answer is being produced
        self.in_message = self.in_head = self.in_body = False
        self.messages = self.head_bytes = self.partial = self.body_bytes = 0
        self.host_seen = False
        self.status = 400  # of the refusal a parser callback raised
        self.refusal: int | None = None  # a refused request's status, answered once the ones before are
        self.done_reading = self.stopping = False
        self.linger_budget = 0
        self.one_write: _OneWrite | None = None
        self.unparsed = b""  # input held back while _MAX_PIPELINED requests wait for their answers

    # -- connection ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.one_write = _OneWrite(transport)
        if not self.guard.admit(self):
            transport.abort()
            return
        self.deadline = self.loop.call_later(self.header_timeout, self._timed_out)  # silent since connecting

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        # uvicorn cancels its keep-alive timer only on a clean close: after a reset the timer would hold
        # the connection's objects for the whole keep-alive timeout.
        self._unset_keepalive_if_required()
        for timer in (self.deadline, self.write_timer, self.linger_timer):
            if timer is not None:
                timer.cancel()
        if self.running is not None and not self.running.response_complete and self.running is not self.cycle:
            self.running.disconnected = True  # uvicorn tells only the newest cycle
            self.running.message_event.set()
        super().connection_lost(exc)

    def cut(self) -> None:
        """Close at once, dropping what is buffered (the cap, the unread budget, the write timeout)."""
        self.guard.open.discard(self)  # counted out now, not when the loop reports the loss
        self.guard.idle.pop(self, None)
        self.guard.stalled.pop(self, None)
        self.transport.abort()

    def unread_bytes(self) -> int:
        return self.transport.get_write_buffer_size()

    def shutdown(self) -> None:
        """The server stops: close now if idle, else after the answer under way (Connection: close)."""
        self.stopping = True
        self.pipeline.clear()
        if self._answering():
            assert self.running is not None
            self.running.keep_alive = False
        else:
            self.transport.close()

    def _answering(self) -> bool:
        running = self.running
        return bool(self.pipeline) or (
            running is not None and not running.response_complete and not running.disconnected
        )

    # -- writing ------------------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self.write_timer = self.loop.call_later(_WRITE_TIMEOUT, self._write_timed_out)
        self.guard.stall(self)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.guard.stalled.pop(self, None)
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None

    def _write_timed_out(self) -> None:
        self.write_timer = None
        log.debug("HTTP connection ended: the client did not read its response")
        self.cut()

    # -- parsing ------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.done_reading:
            # After a refusal: discard input briefly, so closing does not reset the answer away.
            self.linger_budget -= len(data)
            if self.linger_budget < 0:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        self.unparsed = self.unparsed + data if self.unparsed else data
        self._parse()

    def _parse(self) -> None:
        """Parse what came, but stop (and stop reading) with ``_MAX_PIPELINED`` requests waiting for answers:
        uvicorn parses all it reads and reads again after each answer, so a client that pipelines faster
        than it is answered would grow the queue without bound (1.6 GB from one connection in a test)."""
        while self.unparsed and not self.done_reading:
            if len(self.pipeline) >= _MAX_PIPELINED:
                self.flow.pause_reading()
                return
            data = self.unparsed
            if len(data) > _FEED_SLICE:
                data, self.unparsed = data[:_FEED_SLICE], data[_FEED_SLICE:]
            else:
                self.unparsed = b""
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        was_in_head, messages = self.in_head, self.messages
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400)
        except httptools.HttpParserError:
            self._refuse(self.status)
        else:
            if self.in_head and was_in_head and self.messages == messages:
                self.partial += len(data)  # the whole slice is part of one unfinished head
                if self.partial > _MAX_HEADER_BYTES:
                    self._refuse(431)
            if self.in_message and self.deadline is None:
                # A request left incomplete: it must be complete within header_timeout of its first byte.
                # (Armed only now: a request that arrives whole, the usual case, costs no timer.)
                self.deadline = self.loop.call_at(self.started + self.header_timeout, self._timed_out)

    def _fail(self, status: int) -> None:
        self.status = status
        raise _Refused(status)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_message = self.in_head = True
        self.messages += 1
        self.head_bytes = self.partial = self.body_bytes = 0
        self.host_seen = False
        self.status = 400
        self.guard.idle.pop(self, None)
        self.started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self.head_bytes += len(url)
        if self.head_bytes > _MAX_HEADER_BYTES:
            self._fail(431)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > _MAX_HEADER_BYTES:
            self._fail(431)
        lower = name.lower()
        if lower == b"host":
            if self.host_seen:
                self._fail(400)  # RFC 9112 §3.2: more than one Host is a 400
            self.host_seen = True
        elif lower == b"content-length" and value.strip().isdigit() and int(value) > _MAX_BODY_BYTES:
            self._fail(413)  # do not wait for a body that will be refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.parser.should_upgrade():
            self._fail(400)  # no endpoint speaks another protocol (nor answers CONNECT)
        version = self.parser.get_http_version()
        if version == "1.1":
            if not self.host_seen:
                self._fail(400)
        elif version != "1.0":
            self._fail(505)
        super().on_headers_complete()
        self.cycle.transport = self.one_write  # type: ignore[assignment]
        self.in_body = True
        if not self.pipeline or self.pipeline[0][0] is not self.cycle:
            self.running = self.cycle  # started at once, not queued behind another

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > _MAX_BODY_BYTES:  # no endpoint takes a body; do not buffer one
            self._fail(413)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.in_message = self.in_body = False
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        super().on_message_complete()

    # -- answering ----------------------------------------------------------------------------------

    def on_response_complete(self) -> None:
        assert self.one_write is not None
        self.one_write.flush()
        if not self.pipeline and not self.transport.is_closing():
            if self.refusal is not None:
                self.server_state.total_requests += 1
                self._answer_refusal()
                return
            if self.stopping:
                self.server_state.total_requests += 1
                self.transport.close()
                return
        queued = self.pipeline[-1][0] if self.pipeline else None
        super().on_response_complete()
        if queued is not None and (not self.pipeline or self.pipeline[-1][0] is not queued):
            self.running = queued  # uvicorn started the next pipelined request
        if self.unparsed:
            self._parse()  # requests held back by _MAX_PIPELINED
        if not self.pipeline and not self.in_message and not self.transport.is_closing():
            self.guard.idle[self] = None  # idle again, now the most recently used

    def _refuse(self, status: int) -> None:
        """Refuse the request being read; the answers to the ones before it go first."""
        if self.done_reading:
            return
        self.done_reading = True
        self._unset_keepalive_if_required()
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.in_body and self.cycle is not None and not self.cycle.response_started:
            # Refused in its body (too large, too slow): the request got a cycle, which must not answer too.
            cycle = self.cycle
            for item in list(self.pipeline):
                if item[0] is cycle:
                    self.pipeline.remove(item)
            cycle.disconnected = True
            cycle.message_event.set()
        self.in_message = self.in_head = self.in_body = False
        self.refusal = status
        self.unparsed = b""
        self.linger_budget = _LINGER_BYTES
        self.flow.resume_reading()  # drain what comes while the refusal waits
        if not self._answering():
            self._answer_refusal()

    def _answer_refusal(self) -> None:
        assert self.one_write is not None
        self.one_write.flush()
        status = self.refusal or 400
        body = f"{status}: {HTTPStatus(status).phrase}\n".encode()
        head = [STATUS_LINE[status]]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head.append(b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n")
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        # Lingering close: closing with unread input makes the kernel send a reset, which can destroy the
        # answer before the client reads it. Half-close, then discard what still comes, briefly.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.linger_timer = self.loop.call_later(_LINGER_SECONDS, self.transport.close)

    def _timed_out(self) -> None:
        self.deadline = None
        if self.in_message:
            self._refuse(408)  # some of a request came, not all of it in time
        elif not self._answering():
            self.transport.close()  # silent since connecting: closed without a word


class Server:
    """A listening socket and its connections, served by uvicorn."""

    def __init__(
        self,
        app: App,
        ssl_context: ssl.SSLContext | None,
        *,
        shutdown_timeout: float,
        header_timeout: float,
        keepalive_timeout: float,
        max_connections: int,
        unread_bytes_max: int,
    ) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.shutdown_timeout = shutdown_timeout
        self.header_timeout = header_timeout
        self.config = uvicorn.Config(
            app,
            http="httptools",
            ws="none",
            lifespan="off",
            interface="asgi3",
            access_log=False,
            log_config=None,  # the daemon configures logging; uvicorn's default config would replace it
            log_level=logging.WARNING,
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=keepalive_timeout,  # type: ignore[arg-type]  # a float serves (call_later)
        )
        self.config.load()
        self.uvicorn = uvicorn.Server(self.config)
        self.guard = _Guard(max_connections, unread_bytes_max)
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    def connection_count(self) -> int:
        return len(self.guard.open)

    def unread_bytes(self) -> int:
        """Bytes of answers buffered for clients that do not read them."""
        return self.guard.unread_bytes()

    async def start(self, host: str | None, port: int) -> None:
        loop = asyncio.get_running_loop()
        state, guard, timeout = self.uvicorn.server_state, self.guard, self.header_timeout

        def connection() -> _Protocol:
            return _Protocol(self.config, state, {}, loop, guard=guard, header_timeout=timeout)

        # uvicorn.Server.startup would exit the process on a port in use, and gives TLS handshakes 60 s.
        self._server = await loop.create_server(
            connection,
            host,
            port,
            ssl=self.ssl_context,
            backlog=self.config.backlog,
            # A client that stalls the TLS handshake is a slow client too.
            ssl_handshake_timeout=self.header_timeout if self.ssl_context is not None else None,
        )
        self.uvicorn.servers = [self._server]
        self._ticker = asyncio.create_task(self.uvicorn.main_loop(), name="web-date-header")
        self.app.heartbeat.beat()
        self._heartbeat = asyncio.create_task(self.app.heartbeat.run(), name="web-heartbeat")

    async def close(self) -> None:
        """Stop listening, close idle connections, give busy ones ``shutdown_timeout``, then cut them."""
        if self._server is not None:
            self._server.close()
        connections: set[Any] = self.uvicorn.server_state.connections
        for connection in list(connections):
            connection.shutdown()
        if self.guard.open:
            self.guard.emptied = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.guard.emptied.wait(), self.shutdown_timeout)
        for connection in list(connections):
            connection.transport.abort()
        requests = self.uvicorn.server_state.tasks
        for request in requests:
            request.cancel()
        if requests:
            await asyncio.wait(list(requests), timeout=1.0)
        self.uvicorn.should_exit = True
        for task in [self._ticker, self._heartbeat]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._server is not None:
            await self._server.wait_closed()


async def start_server(
    app: App,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    *,
    shutdown_timeout: float = 2.0,
    header_timeout: float = HEADER_TIMEOUT,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    max_connections: int | None = None,
    unread_bytes_max: int = UNREAD_BYTES_MAX,
) -> Server:
    """Serve ``app`` on host:port (port 0 = any free port; read it with ``bound_port``).

    Without an explicit ``ssl_context``, the TLS settings of the app's ``web_config`` apply, so an
    app built with a TLS config can never be served in clear text by omission. A connection gets
    ``header_timeout`` seconds to send a complete request, and is closed after ``keepalive_timeout``
    seconds idle between requests. At most ``max_connections`` are open (default: from the open-files
    limit, see ``default_max_connections``).
    """
    if ssl_context is None and app.web_config is not None:
        ssl_context = app.web_config.ssl_context()
    server = Server(
        app,
        ssl_context,
        shutdown_timeout=shutdown_timeout,
        header_timeout=header_timeout,
        keepalive_timeout=keepalive_timeout,
        max_connections=max_connections if max_connections is not None else default_max_connections(),
        unread_bytes_max=unread_bytes_max,
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
