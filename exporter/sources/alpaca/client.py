"""The Alpaca stream client: websockets I/O around the sans-I/O ``protocol`` and ``codec`` modules.

What it does, in order, for every connection (one at a time — Alpaca allows one per key):

1. ``Connecting``: open the WebSocket (``Content-Type: application/msgpack`` in msgpack mode) and wait
   for ``connected``. 2. ``Authenticating``: send auth, wait for ``authenticated``; send the *whole*
   subscription, wait for the ``subscription`` ack and compare it with what we want. 3. ``Connected``:
   read frames, decode them, hand them to ``emit`` — nothing else. Every handshake step has a timeout.

The reader never waits on processing: ``emit`` is the daemon's non-blocking queue put, and routing
happens in the core's task. Transport liveness is WebSocket ping/pong with a short pong timeout: the
router hears of a dead link as soon as a pong is late, and the close frame (which spares the key a
~90 s zombie slot at Alpaca) is sent afterwards, bounded by ``close_timeout``. A live but mute socket
is the core's staleness timer, which calls
:meth:`AlpacaClient.request_reconnect`.

When a connection ends, :class:`~exporter.sources.alpaca.protocol.ReconnectPolicy` decides the wait:
minutes after a fatal error (bad credentials, plan), at least the connection-limit floor after a 406,
jittered exponential backoff otherwise, reset after a healthy period. It never loops hot.

Subscriptions (CONTRACT sections 7 and 11). The wanted set goes out in chunks of at most
``subscribe_chunk`` (channel, symbol) entries (``protocol.SUBSCRIBE_CHUNK_ENTRIES``, 200: one unfragmented
frame, well below the long lists Alpaca was seen to apply only in part), each answered by its ack before
the next is sent. Every ack is compared with what this connection asked for, channel by channel, and
reported as a :class:`~exporter.core.events.SubscriptionStatus`; so is the outcome of every repair.

- A repair re-sends a subscribe for the left-out symbols only. It is bounded: at most
  ``repair_attempts`` (5) per connection, waiting a jittered exponential backoff from
  ``repair_backoff_base`` (1 s) up to ``repair_backoff_max`` (30 s) before each, so about 30 s in all.
  After that the client keeps reporting what is missing and tries again on the next reconnect (which
  re-sends the whole set, as every reconnect does). Each re-sent message counts in ``repairs``.
- A 405 (symbol limit) leaves the server's state as it was, so the refused chunk is halved and each half
  tried again; when a single symbol is refused the plan is full, and it and every symbol not yet sent
  are ``refused`` (until the next connection). The symbols that fit stay subscribed; the limit (when the
  server's text names one) and the shortfall are logged and shown on /status. Only when nothing at all
  fits does the connection end, as fatal (retried slowly).

Error counting (``PrimaryError.type``): server error codes per ``protocol.classify_error``;
``connection_failed`` when no usable stream was established (refused, unreachable, a handshake step
timed out or the socket closed before the subscription was confirmed); ``connection_lost`` when an
established (subscribed) connection drops without an error frame explaining it; ``decode_error`` for
undecodable frames or control items. Our own closes (``stop``, ``request_reconnect``) are not errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import random
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.proxy import get_proxy
from websockets.uri import parse_uri

from exporter.core.events import (
    ConnState,
    DependencyLatency,
    Emit,
    Event,
    PrimaryAuthenticated,
    PrimaryConnection,
    PrimaryControl,
    PrimaryData,
    PrimaryError,
    PrimarySubscribed,
    SubscriptionStatus,
)
from exporter.feeds import Family
from exporter.sources.alpaca import protocol
from exporter.sources.alpaca.codec import (
    BadControl,
    Control,
    Encoding,
    ErrorMessage,
    FrameDecodeError,
    SubscriptionAck,
    Success,
    frame_decoder,
)
from exporter.sources.alpaca.protocol import Policy
from exporter.sources.backoff import Backoff, Jitter
from exporter.timers import LoopTimers, Timers

log = logging.getLogger("exporter.alpaca")


class _NoFrameDumps(logging.LoggerAdapter[logging.Logger]):
    """websockets' logger, minus DEBUG: at DEBUG websockets dumps frame contents, and our auth frame
    holds the secret. Everything websockets logs at INFO and above still goes through."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)

    def debug(self, msg: object, *args: object, **kwargs: object) -> None:
        return


_ws_log = _NoFrameDumps(logging.getLogger("exporter.alpaca.websockets"), {})

_USER_AGENT: Final = "alpaca-exporter/0.1"
# Real batches are well under 1 MiB, but a busy SIP session with many symbols can exceed websockets'
# 1 MiB default (the field's 1009 "message too big"); 16 MiB bounds memory per frame all the same.
DEFAULT_MAX_MESSAGE_BYTES: Final = 16 * 2**20


@dataclass(frozen=True, slots=True)
class AlpacaClientConfig:
    """Everything the client needs; the daemon maps settings onto it. Durations are seconds.

    ``key`` and ``secret`` are excluded from ``repr`` and never logged or put in exception text.
    """

    url: str
    key: str = field(repr=False)
    secret: str = field(repr=False)
    symbols: tuple[str, ...]
    channels: tuple[str, ...] = ("trades",)
    encoding: Encoding = "msgpack"
    family: Family = "stocks"  # the feed's message shapes (exporter.feeds): which codec decodes its frames
    open_timeout: float = 5.0  # each of: the DNS lookup, the TCP connect, the TLS handshake + upgrade
    step_timeout: float = 5.0  # each of: `connected`, the auth reply, the subscription ack
    ping_interval: float = 10.0
    ping_timeout: float = 5.0
    close_timeout: float = 2.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    connection_limit_backoff: float = 90.0
    fatal_retry: float = 300.0
    healthy_reset: float = 60.0
    jitter: Jitter = "equal"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    subscribe_chunk: int = protocol.SUBSCRIBE_CHUNK_ENTRIES  # (channel, symbol) entries per subscribe message
    repair_attempts: int = 5  # re-subscribes for left-out symbols per connection
    repair_backoff_base: float = 1.0
    repair_backoff_max: float = 30.0

    def __post_init__(self) -> None:
        if self.encoding not in ("json", "msgpack"):
            raise ValueError(f"encoding must be json or msgpack, not {self.encoding!r}")
        if urlsplit(self.url).scheme not in ("ws", "wss"):
            raise ValueError("the Alpaca stream URL must be ws:// or wss://")
        if not self.symbols:
            raise ValueError("at least one symbol is needed")
        protocol.subscription_plan(self.channels, self.symbols)  # validates the channel names
        for name in ("open_timeout", "step_timeout", "ping_interval", "ping_timeout", "close_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        Backoff(self.backoff_base, self.backoff_max)  # validates the bounds
        Backoff(self.repair_backoff_base, self.repair_backoff_max)
        if self.subscribe_chunk < 1 or self.repair_attempts < 0:
            raise ValueError("subscribe_chunk must be >= 1 and repair_attempts >= 0")

    def retry_settings(self) -> protocol.RetrySettings:
        return protocol.RetrySettings(
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
            connection_limit_backoff=self.connection_limit_backoff,
            fatal_retry=self.fatal_retry,
            healthy_reset=self.healthy_reset,
            jitter=self.jitter,
        )


@dataclass(frozen=True, slots=True)
class ClientStatus:
    """A read-only snapshot for /status (no secrets)."""

    state: ConnState
    connected: bool
    authenticated: bool
    subscribed_symbols: frozenset[str]
    connection_attempts: int  # every attempt since start
    reconnects: int  # attempts after the first
    last_error: str | None  # "type: detail" of the latest error
    next_retry_in: float | None  # seconds until the next attempt while waiting, else None
    subscription_missing: dict[str, tuple[str, ...]]  # wanted channel -> symbols the latest ack lacks
    subscription_refused: tuple[str, ...]  # symbols the plan's symbol limit (405) cannot hold
    symbol_limit: int | None  # the limit, when the server's 405 named it
    subscription_repairs: int  # subscribe messages re-sent for left-out symbols since start


class _Ended(Exception):
    """Ends one connection: how to wait before the next, and why (for the log)."""

    def __init__(self, policy: Policy, reason: str, error_type: str | None = None) -> None:
        super().__init__(reason)
        self.policy = policy
        self.reason = reason
        self.error_type = error_type  # already emitted; for the log line


class AlpacaClient:
    """One Alpaca stream connection, kept alive until :meth:`stop`.

    ``emit`` must not block (the daemon's queue put). ``rng`` drives the backoff jitter (inject for
    tests); every wait and timestamp goes through ``timers`` (the daemon's, else the loop's clock).
    """

    def __init__(
        self,
        config: AlpacaClientConfig,
        emit: Emit,
        *,
        rng: Callable[[], float] = random.random,
        timers: Timers | None = None,
    ) -> None:
        self.config = config
        self._decode = frame_decoder(config.family, config.encoding)
        self._emit_callback = emit
        self._timers = timers = timers or LoopTimers()
        self._clock = timers.monotonic
        self._rng = rng
        self._retry = protocol.ReconnectPolicy(config.retry_settings(), rng=rng)
        self._plan = protocol.subscription_plan(config.channels, config.symbols)
        self._headers = protocol.content_type_headers(config.encoding)
        self._safe_url = _safe_url(config.url)

        self._state: ConnState = "Disconnected"
        self._authenticated = False
        self._subscribed: frozenset[str] = frozenset()
        self._attempts = 0
        self._last_error: str | None = None
        self._retry_at: float | None = None
        # Subscription bookkeeping: what this connection asked for, what the latest ack holds.
        self._requested: dict[str, frozenset[str]] = {}
        self._held: Mapping[str, frozenset[str]] = {}
        self._refused: frozenset[str] = frozenset()
        self._limit: int | None = None
        self._repairs = 0
        self._repair_attempts = 0  # this connection's
        self._repair_task: asyncio.Task[None] | None = None
        self._reply_waiter: asyncio.Future[Control] | None = None

        self._ws: ClientConnection | None = None
        self._last_frame_at = -math.inf  # monotonic time of the latest frame (liveness: proof of life)
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closers: set[asyncio.Task[None]] = set()
        # Why we are ending the current connection ourselves (a requested reconnect, a late pong), so
        # the reader's ConnectionClosed is not taken for a loss and nothing is counted twice.
        self._ending: _Ended | None = None
        self._emit_failed = False
        # Per-connection episode counters, summarised in one log line when the connection ends.
        self._decode_errors = 0
        self._error_logged: set[int] = set()
        # The current outage episode: failed attempts since the last healthy connection.
        self._episode_failures = 0
        self._episode_started: float | None = None

    # ------------------------------------------------------------------ public API

    @property
    def status(self) -> ClientStatus:
        retry_in = None
        if self._retry_at is not None:
            retry_in = max(0.0, self._retry_at - self._clock())
        return ClientStatus(
            state=self._state,
            connected=self._state == "Connected",
            authenticated=self._authenticated,
            subscribed_symbols=self._subscribed,
            connection_attempts=self._attempts,
            reconnects=max(0, self._attempts - 1),
            last_error=self._last_error,
            next_retry_in=retry_in,
            subscription_missing={ch: tuple(sorted(lacking)) for ch, lacking in self._missing().items()},
            subscription_refused=tuple(sorted(self._refused)),
            symbol_limit=self._limit,
            subscription_repairs=self._repairs,
        )

    async def run(self) -> None:
        """Connect, stream, reconnect per the policy — until :meth:`stop`."""
        self._task = asyncio.current_task()
        try:
            while not self._stopping:
                ended = await self._connection()
                if self._stopping:
                    break
                delay = self._retry.delay(ended.policy)
                self._log_ended(ended, delay)
                await self._wait(delay)
        finally:
            self._retry_at = None
            self._set_state("Disconnected", "stopped")

    def request_reconnect(self, reason: str) -> None:
        """Drop the current connection (closing it properly) and reconnect per the policy.

        The daemon calls this when the core finds the stream stale: a live socket that sends no data.
        Ignored while no connection is open (a reconnect is already on its way).
        """
        ws = self._ws
        if ws is None or self._stopping or self._ending is not None:
            return
        self._ending = _Ended(Policy.TRANSIENT, reason)
        log.warning(
            "alpaca reconnect requested",
            extra={"reason": reason, "state": self._state, "url": self._safe_url},
        )
        task = asyncio.get_running_loop().create_task(self._close(ws, "reconnect"))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def stop(self) -> None:
        """Close the connection with a close frame (code 1000, bounded by ``close_timeout``) and end
        :meth:`run`."""
        self._stopping = True
        self._stop_event.set()
        ws = self._ws
        if ws is not None:
            await self._close(ws, "shutdown")
        task = self._task
        if task is None or task is asyncio.current_task() or task.done():
            return
        if ws is None and self._state == "Connecting":
            # Nothing open to close politely (not yet authenticated, so no slot held at Alpaca): a lookup,
            # TCP connect or upgrade in progress — which hangs in a DNS outage — ends now, not at its timeout.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        else:
            try:
                async with self._timers.timeout(self.config.close_timeout + self.config.open_timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # ------------------------------------------------------------------ one connection

    async def _connection(self) -> _Ended:
        """One connection attempt from Connecting to its end; returns why it ended."""
        self._attempts += 1
        self._ending = None
        self._decode_errors = 0
        self._error_logged.clear()
        self._set_state("Connecting", "reconnect" if self._attempts > 1 else "start")
        started = self._clock()
        try:
            ws = await self._open()
        except InvalidStatus as exc:
            status = exc.response.status_code
            policy = protocol.classify_http_status(status)
            ended = self._fail("connection_failed", f"HTTP {status} at upgrade", policy)
            self._set_state("Disconnected", ended.reason)
            return ended
        except Exception as exc:  # refused, unreachable, TLS, timeout, bad handshake: all transient
            ended = self._fail("connection_failed", _describe(exc), Policy.TRANSIENT)
            self._set_state("Disconnected", ended.reason)
            return ended
        self._ws = ws
        liveness = asyncio.get_running_loop().create_task(self._watch_liveness(ws))
        healthy_since: float | None = None
        ended = _Ended(Policy.TRANSIENT, "stopped")  # what a cancellation leaves behind
        try:
            if not self._stopping:
                healthy_since = await self._handshake(ws, started)
                await self._stream(ws)  # only ends by raising
        except _Ended as exc:
            ended = exc
        except ConnectionClosed as exc:
            ended = self._closed(exc, established=healthy_since is not None)
        except Exception as exc:
            # A bug of ours must not end the client: log it, drop this connection, back off.
            log.exception("alpaca client error", extra={"state": self._state})
            ended = _Ended(Policy.TRANSIENT, f"internal error: {type(exc).__name__}")
        finally:
            self._ws = None
            if self._repair_task is not None:
                self._repair_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._repair_task
                self._repair_task = None
            liveness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await liveness
            self._retry.connection_ended(0.0 if healthy_since is None else self._clock() - healthy_since)
            self._link_down(ended.reason)  # the router first: the polite close may take close_timeout
            if ws.close_code is None:
                await self._close(ws, "reconnect")
        return ended

    async def _open(self) -> ClientConnection:
        """Open the WebSocket, timing each network step by itself.

        One timeout over the lookup, the TCP connect, the TLS handshake and the upgrade together would
        make a slow but working link (2 s one way: 4 s per round trip) unable to ever connect. So the
        lookup and the TCP connect each get ``open_timeout``, and websockets gets it once per round trip
        it still needs (TLS, then the upgrade). Through an HTTP/SOCKS proxy websockets opens the whole
        path itself, within the sum.
        """
        cfg = self.config
        uri = parse_uri(cfg.url)
        round_trips = 2 if uri.secure else 1
        options: dict[str, Any] = {}
        if get_proxy(uri) is None:
            options["sock"] = await self._tcp_connect(uri.host, uri.port)
        else:
            round_trips += 2
        try:
            return await connect(
                cfg.url,
                additional_headers=self._headers,
                user_agent_header=_USER_AGENT,
                open_timeout=cfg.open_timeout * round_trips,
                ping_interval=None,  # see _watch_liveness
                close_timeout=cfg.close_timeout,
                max_size=cfg.max_message_bytes,
                logger=_ws_log,
                **options,
            )
        except BaseException:
            if "sock" in options:
                options["sock"].close()
            raise

    async def _tcp_connect(self, host: str, port: int) -> socket.socket:
        """The DNS lookup, then a TCP connection to the first address that takes one; each step within
        ``open_timeout``."""
        loop = asyncio.get_running_loop()
        timeout = self.config.open_timeout
        if _is_address(host):
            # An address literal needs no lookup (nor a trip through the resolver's thread).
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        else:
            try:
                async with self._timers.timeout(timeout):
                    addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except TimeoutError:
                raise TimeoutError(f"DNS lookup of {host} took over {timeout}s") from None
        failure: OSError | None = None
        try:
            async with self._timers.timeout(timeout):
                for family, kind, proto, _, address in addresses:
                    sock = socket.socket(family, kind, proto)
                    try:
                        sock.setblocking(False)
                        await loop.sock_connect(sock, address)
                    except OSError as exc:
                        sock.close()
                        failure = exc
                    except BaseException:
                        sock.close()
                        raise
                    else:
                        return sock
        except TimeoutError:
            raise TimeoutError(f"TCP connect to {host}:{port} took over {timeout}s") from None
        raise failure or OSError(f"no address for {host}")

    def _link_down(self, reason: str) -> None:
        if self._authenticated:
            self._authenticated = False
            self._send(PrimaryAuthenticated(False))
        self._subscribed = frozenset()
        self._set_state("Disconnected", reason)

    async def _handshake(self, ws: ClientConnection, started: float) -> float:
        """connected → auth → subscribe → ack. Returns when Connected (the monotonic time)."""
        cfg = self.config
        await self._expect(ws, _is_success("connected"), "connected")
        self._send(DependencyLatency("alpaca", "connect", self._clock() - started))

        self._set_state("Authenticating", "connected")
        sent = self._clock()
        await ws.send(protocol.auth_message(cfg.key, cfg.secret, cfg.encoding))
        await self._expect(ws, _is_success("authenticated"), "auth")
        self._send(DependencyLatency("alpaca", "auth", self._clock() - sent))
        self._authenticated = True
        self._send(PrimaryAuthenticated(True))

        sent = self._clock()
        self._requested, self._held, self._refused, self._repair_attempts = {}, {}, frozenset(), 0

        async def exchange(message: str | bytes) -> Control:
            await ws.send(message)
            reply = await self._expect(ws, _is_subscribe_reply, "subscribe")
            if isinstance(reply, SubscriptionAck):
                self._on_ack(reply)
            return reply

        await self._subscribe(self._plan, exchange, repair=False)
        self._send(DependencyLatency("alpaca", "subscribe", self._clock() - sent))
        if self._refused and not self._subscribed:
            raise _Ended(Policy.FATAL, "symbol limit: no symbol fits", "symbol_limit_exceeded")
        self._set_state("Connected", "subscribed")
        self._maybe_repair(ws)
        outage = None if self._episode_started is None else round(self._clock() - self._episode_started, 3)
        log.info(
            "alpaca stream connected",
            extra={
                "url": self._safe_url,
                "encoding": cfg.encoding,
                "symbols": len(self._subscribed),
                "attempt": self._attempts,
                "handshake_seconds": round(self._clock() - started, 4),
                "failed_attempts": self._episode_failures,
                "outage_seconds": outage,
            },
        )
        self._episode_failures = 0
        self._episode_started = None
        return self._clock()

    async def _watch_liveness(self, ws: ClientConnection) -> None:
        """A ping every ``ping_interval``; a ``ping_timeout`` with neither the pong nor any frame is a
        dead link.

        Frames received while the pong is due are proof of life too: on a busy stream over a slow link
        the pong queues behind data (at 200 msg/s it once came 12 s late) while the link is fine.
        websockets' own keepalive would start the closing handshake first, and the reader would only
        end (and the router fail over) up to ``close_timeout`` later, on a link that may not carry the
        close frame at all. Here the failure is reported at once, then the connection is closed.
        """
        cfg = self.config
        timers = self._timers
        try:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await timers.sleep(cfg.ping_interval)
                    pong = await ws.ping()
                    try:
                        while True:
                            waiting_since = timers.monotonic()
                            try:
                                async with timers.timeout(cfg.ping_timeout):
                                    await asyncio.shield(pong)
                                break
                            except TimeoutError:
                                if self._last_frame_at < waiting_since:
                                    raise
                    except TimeoutError:
                        if self._stopping or self._ending is not None:
                            return  # already closing on purpose
                        detail = f"no pong within {cfg.ping_timeout}s"
                        if self._state == "Connected":
                            self._ending = self._fail("connection_lost", detail, Policy.TRANSIENT)
                        else:
                            self._ending = self._fail("connection_failed", f"handshake: {detail}", Policy.TRANSIENT)
                        self._link_down(self._ending.reason)
                        await self._close(ws, "reconnect")
                        return
        except Exception:
            # A bug of ours must not leave the link unwatched: drop it and reconnect, as the reader does.
            log.exception("alpaca liveness check failed", extra={"state": self._state})
            await self._close(ws, "reconnect")

    async def _expect(self, ws: ClientConnection, wanted: Callable[[Control], bool], step: str) -> Control:
        """Read frames until a control item satisfies ``wanted``, within the step timeout.

        Data that arrives meanwhile is emitted as usual; error frames end the attempt per their policy
        (except the benign 403, which in reply to auth means we are authenticated anyway).
        """
        try:
            async with self._timers.timeout(self.config.step_timeout):
                while True:
                    controls = self._on_frame(await ws.recv())
                    for control in controls:
                        if wanted(control):
                            return control
                        if isinstance(control, ErrorMessage):
                            info = protocol.classify_error(control.code)
                            if info.policy is Policy.BENIGN:
                                if step == "auth" and control.code == 403:
                                    return Success("authenticated")
                                continue
                            if step == "auth":
                                self._send(PrimaryAuthenticated(False))
                            raise _Ended(info.policy, f"error {control.code} during {step}", info.type)
        except TimeoutError:
            error_type = "auth_timeout" if step == "auth" else "connection_failed"
            detail = f"no {step} reply within {self.config.step_timeout}s"
            raise self._fail(error_type, detail, Policy.TRANSIENT) from None

    async def _stream(self, ws: ClientConnection) -> None:
        """The reader: receive, decode, emit. Only ends by raising (_Ended or ConnectionClosed)."""
        recv = ws.recv
        on_frame = self._on_frame
        on_control = self._on_stream_control
        while True:
            controls = on_frame(await recv())
            for control in controls:
                on_control(control)

    # ------------------------------------------------------------------ frames

    def _on_frame(self, frame: str | bytes) -> list[Control]:
        """Decode one frame, emit its data and control count; return its control items."""
        self._last_frame_at = received_at = self._clock()
        try:
            decoded = self._decode(frame)
        except FrameDecodeError as exc:
            self._decode_error(str(exc))
            return []
        if decoded.messages:
            self._send(PrimaryData(decoded.messages, received_at, self._clock() - received_at))
        controls = decoded.controls
        if controls:
            self._send(PrimaryControl(len(controls)))
            for control in controls:
                if isinstance(control, BadControl):
                    self._decode_error(f"bad control item {control.T!r}: {control.detail}")
                elif isinstance(control, ErrorMessage):
                    info = protocol.classify_error(control.code)
                    self._error(info.type, f"{control.code} {control.msg}"[:200])
                    if control.code not in self._error_logged:
                        self._error_logged.add(control.code)
                        log.warning(
                            "alpaca server error",
                            extra={
                                "code": control.code,
                                "server_msg": control.msg[:200],
                                "error_type": info.type,
                                "policy": info.policy.value,
                                "state": self._state,
                            },
                        )
        return controls

    def _on_stream_control(self, control: Control) -> None:
        """A control item while Connected: a new ack replaces the state; errors end it unless harmless."""
        if isinstance(control, SubscriptionAck):
            self._on_ack(control)
            self._reply(control)
        elif isinstance(control, ErrorMessage):
            info = protocol.classify_error(control.code)
            if not info.session_ok and info.policy is not Policy.BENIGN:
                raise _Ended(info.policy, f"error {control.code} while streaming", info.type)
            if control.code == 405:
                self._reply(control)

    def _reply(self, control: Control) -> None:
        """Hand a subscribe reply read by the reader to the repair waiting for it."""
        waiter = self._reply_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(control)

    def _on_ack(self, ack: SubscriptionAck) -> None:
        check = protocol.check_ack(ack, self._plan)
        self._held = ack.channels()
        self._subscribed = check.confirmed
        self._send(PrimarySubscribed(check.confirmed))
        if check.extra:
            log.warning(
                "alpaca subscription holds symbols not asked for",
                extra={"extra": {k: sorted(v)[:20] for k, v in check.extra.items()}},
            )
        self._report()
        ws = self._ws
        if self._state == "Connected" and ws is not None:
            self._maybe_repair(ws)

    # ------------------------------------------------------------------ subscriptions

    def _missing(self) -> dict[str, frozenset[str]]:
        """Per wanted channel: what this connection asked for and the latest ack lacks (refused included)."""
        held = self._held
        out: dict[str, frozenset[str]] = {}
        for channel in self._plan:
            confirmed = held.get(channel, frozenset())
            out[channel] = frozenset() if "*" in confirmed else self._requested.get(channel, frozenset()) - confirmed
        return out

    def _report(self) -> None:
        missing = self._missing()
        self._send(
            SubscriptionStatus(
                missing={channel: tuple(sorted(lacking)) for channel, lacking in missing.items()},
                repairs=self._repairs,
                refused=tuple(sorted(self._refused)),
                limit=self._limit,
            )
        )

    async def _subscribe(
        self,
        plan: Mapping[str, frozenset[str]],
        exchange: Callable[[str | bytes], Awaitable[Control | None]],
        *,
        repair: bool,
    ) -> None:
        """Send ``plan`` in chunks, each answered before the next; narrow a 405 down to what fits.

        ``exchange`` sends one message and returns its reply (an ack or a 405; None: no reply in time).
        """
        pending = deque(protocol.chunk_plan(plan, self.config.subscribe_chunk))
        while pending:
            chunk = pending.popleft()
            for channel, symbols in chunk.items():
                self._requested[channel] = self._requested.get(channel, frozenset()) | symbols
            if repair:
                self._repairs += 1
            reply = await exchange(protocol.subscribe_message(chunk, self.config.encoding))
            if not isinstance(reply, ErrorMessage):
                if reply is None:
                    break
                continue
            # A 405 leaves the server's state as it was: try the halves, down to single symbols.
            self._limit = protocol.named_limit(reply.msg) or self._limit
            if len(protocol.plan_symbols(chunk)) > 1:
                pending.extendleft(reversed(protocol.halve(chunk)))
                continue
            # Not even one more symbol fits: the plan is full, and nothing after it can fit either.
            refused = set(protocol.plan_symbols(chunk))
            for rest in pending:
                refused.update(protocol.plan_symbols(rest))
                for channel, symbols in rest.items():
                    self._requested[channel] = self._requested.get(channel, frozenset()) | symbols
            pending.clear()
            self._refused |= refused
            log.warning(
                "alpaca symbol limit reached; keeping the symbols that fit",
                extra={
                    "limit": self._limit,
                    "held": len(self._subscribed),
                    "shortfall": len(self._refused),
                    "refused": sorted(self._refused)[:20],
                },
            )
        self._report()
        lacking = {channel: symbols for channel, symbols in self._missing().items() if symbols - self._refused}
        if lacking:
            log.warning(
                "alpaca subscription incomplete",
                extra={
                    "missing": {k: sorted(v)[:20] for k, v in lacking.items()},
                    "repairs": self._repairs,
                    "repair_attempt": self._repair_attempts,
                },
            )
        elif repair:
            log.info("alpaca subscription repaired", extra={"repairs": self._repairs})

    def _repair_plan(self) -> dict[str, frozenset[str]]:
        """The left-out symbols to ask for again (the refused ones cannot be had on this connection)."""
        out = {channel: lacking - self._refused for channel, lacking in self._missing().items()}
        return {channel: lacking for channel, lacking in out.items() if lacking}

    def _maybe_repair(self, ws: ClientConnection) -> None:
        running = self._repair_task is not None and not self._repair_task.done()
        if running or self._repair_attempts >= self.config.repair_attempts or not self._repair_plan():
            return
        self._repair_task = asyncio.get_running_loop().create_task(self._repair(ws))

    async def _repair(self, ws: ClientConnection) -> None:
        """Re-subscribe the left-out symbols, with backed-off, bounded retries (see the module doc)."""
        cfg = self.config
        backoff = Backoff(cfg.repair_backoff_base, cfg.repair_backoff_max, jitter=cfg.jitter, rng=self._rng)

        async def exchange(message: str | bytes) -> Control | None:
            waiter: asyncio.Future[Control] = asyncio.get_running_loop().create_future()
            self._reply_waiter = waiter
            try:
                await ws.send(message)
                async with self._timers.timeout(cfg.step_timeout):
                    return await waiter
            except TimeoutError:
                return None
            finally:
                self._reply_waiter = None

        try:
            while self._repair_attempts < cfg.repair_attempts:
                await self._timers.sleep(backoff.next_delay())
                plan = self._repair_plan()
                if not plan:
                    return
                self._repair_attempts += 1
                await self._subscribe(plan, exchange, repair=True)
            if self._repair_plan():
                log.warning(
                    "alpaca subscription repair gave up until the next reconnect",
                    extra={"attempts": self._repair_attempts, "repairs": self._repairs},
                )
        except ConnectionClosed:
            return  # the reader sees the close and reconnects
        except Exception:
            log.exception("alpaca subscription repair failed", extra={"state": self._state})

    # ------------------------------------------------------------------ endings and errors

    def _closed(self, exc: ConnectionClosed, *, established: bool) -> _Ended:
        if self._stopping:
            return _Ended(Policy.TRANSIENT, "stopped")
        if self._ending is not None:
            return self._ending  # already reported (a late pong is counted when it is noticed)
        detail = _describe(exc)
        if established:
            return self._fail("connection_lost", detail, Policy.TRANSIENT)
        return self._fail("connection_failed", f"closed during handshake: {detail}", Policy.TRANSIENT)

    def _fail(self, error_type: str, detail: str, policy: Policy) -> _Ended:
        self._error(error_type, detail)
        return _Ended(policy, f"{error_type}: {detail}", error_type)

    def _error(self, error_type: str, detail: str) -> None:
        self._last_error = f"{error_type}: {detail}"
        self._send(PrimaryError(error_type, detail))

    def _decode_error(self, detail: str) -> None:
        self._decode_errors += 1
        self._error("decode_error", detail[:200])
        if self._decode_errors == 1:  # one line per connection; the total goes in the end line
            log.warning("alpaca frame not decodable", extra={"detail": detail[:200]})

    def _log_ended(self, ended: _Ended, delay: float) -> None:
        fatal = ended.policy is Policy.FATAL
        # One line per episode: the first failure (and every fatal one, which waits minutes) is a
        # warning or an error; the retries of an ongoing outage are DEBUG, summed up when it ends.
        self._episode_failures += 1
        if self._episode_started is None:
            self._episode_started = self._clock()
        first = self._episode_failures == 1
        log.log(
            logging.ERROR if fatal else (logging.WARNING if first else logging.DEBUG),
            "alpaca connection ended; retrying slowly" if fatal else "alpaca connection ended",
            extra={
                "reason": ended.reason,
                "error_type": ended.error_type,
                "policy": ended.policy.value,
                "retry_in_seconds": round(delay, 3),
                "attempt": self._attempts,
                "decode_errors": self._decode_errors,
                "url": self._safe_url,
            },
        )

    # ------------------------------------------------------------------ helpers

    def _set_state(self, state: ConnState, reason: str) -> None:
        if state != self._state:
            self._state = state
            self._send(PrimaryConnection(state, reason))

    def _send(self, event: Event) -> None:
        try:
            self._emit_callback(event)
        except Exception:
            # The reader must survive a broken consumer; log the first failure only.
            if not self._emit_failed:
                self._emit_failed = True
                log.exception("alpaca event consumer failed", extra={"event": type(event).__name__})

    async def _wait(self, delay: float) -> None:
        """Sleep before the next attempt; :meth:`stop` cuts it short."""
        self._retry_at = self._clock() + delay
        try:
            with contextlib.suppress(TimeoutError):
                async with self._timers.timeout(delay):
                    await self._stop_event.wait()
        finally:
            self._retry_at = None

    async def _close(self, ws: ClientConnection, reason: Literal["shutdown", "reconnect"]) -> None:
        # websockets bounds the closing handshake with close_timeout, then drops the TCP connection.
        with contextlib.suppress(Exception):
            await ws.close(1000, reason)


def _is_subscribe_reply(control: Control) -> bool:
    return isinstance(control, SubscriptionAck) or (isinstance(control, ErrorMessage) and control.code == 405)


def _is_success(msg: str) -> Callable[[Control], bool]:
    return lambda control: isinstance(control, Success) and control.msg == msg


def _describe(exc: BaseException) -> str:
    """Exception text for logs and error details (the secret is never part of these exceptions)."""
    if isinstance(exc, ConnectionClosed):
        frame = exc.rcvd or exc.sent
        if frame is None:
            return "closed without a close frame (1006)"
        return f"close {frame.code} {frame.reason!r}"[:200]
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _safe_url(url: str) -> str:
    """scheme://host[:port]/path — no userinfo or query string in logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
