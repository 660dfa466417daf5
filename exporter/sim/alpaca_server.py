"""A local server that speaks Alpaca's real-time stream protocol (``alpaca-stream.md`` section 11).

It is the counterpart of the real ``wss://stream.data.alpaca.markets`` for the demo, the tests and the
benchmarks, and the official SDK (alpaca-py) streams from it unchanged:

- every feed path of :data:`exporter.feeds.FEEDS`: stocks ``/v2/{iex,sip,delayed_sip,test}`` and
  ``/v1beta1/{boats,overnight}``, crypto ``/v1beta3/crypto/us``, options ``/v1beta1/{indicative,opra}``;
  any other path is refused with HTTP 404 at the upgrade, and too many connects per minute with HTTP
  429 (knob);
- each feed's own messages (spec section 5): crypto trades with fractional sizes, 64-bit ids and the
  taker side, quotes without exchanges or conditions, bars with fractional volume, order books (a
  snapshot ``r: true`` first after each subscribe, then deltas where size 0 removes a level, never
  crossed unless :meth:`AlpacaSimulator.cross_book` asks); option trades and quotes of OCC symbols with
  a one-character condition string; each feed's channels, ack keys and symbol syntax (410 for a
  channel the feed lacks, 400 for a symbol it cannot carry, 413 for ``"*"`` option quotes);
- JSON text frames, or msgpack binary frames when the upgrade carries ``Content-Type:
  application/msgpack``; client messages accepted in either form; ``T`` is always the first key; the
  options feeds refuse JSON with error 412 and close;
- with ``follow_sessions``, data only while the feed's session is open (stocks and options: the US
  equity session; crypto and the test stream: always), on the market's clock;
- ``connected`` on open, the auth deadline (404), credential check (402), header auth (then 403 for an
  auth message), one connection per key and endpoint (406) with a zombie hold for sockets that vanished
  without a close frame, feed entitlement (409), symbol cap (405, state unchanged), 401/400/410;
- subscriptions applied only in part (the first N symbols of each list, as real Alpaca was seen to do
  with large lists), silently: the ack shows what was kept;
- additive/subtractive subscriptions acknowledged with the full state (corrections and cancelErrors
  mirror trades; ``/v2/test`` shows trades, quotes and bars only and streams ``FAKEPACA``);
- a data generator: batched mixed-type frames at a set rate from the shared :class:`Market`, minute
  bars at period marks, occasional updated bars, daily bars, rare statuses/LULDs/corrections/cancels;
  illiquid symbols (a trade every few minutes); halts and resumptions with real status codes (no
  trades or quotes while halted); a dropped minute bar; updated bars on demand;
- a pre-generated feed mode for benchmarks (:func:`generate_feed`, :meth:`AlpacaSimulator.send_feed`);
- fault injection scripted by tests and the demo (methods of :class:`AlpacaSimulator`), and counters
  (:class:`SimulatorStats`).

Unknowns of the real server (tagged [?] in the spec) are constructor knobs with the defaults documented
on :class:`AlpacaSimulator`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import random
import re
import socket
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from exporter.core.market_hours import market_open
from exporter.feeds import ALL_CHANNELS, FEED_BY_PATH, FEEDS, FeedSpec
from exporter.sim.alpaca_codec import Encoding, Item, decode_frame, encode
from exporter.sim.market import Market, MinuteBar, family_of
from exporter.timers import LoopTimers

__all__ = [
    "ERROR_MESSAGES",
    "STREAM_PATHS",
    "AlpacaSession",
    "AlpacaSimulator",
    "Feed",
    "FeedResult",
    "SimulatorStats",
    "generate_feed",
]

# The loop's clock (time.monotonic on asyncio's loops), so tests on virtual loop time see one timeline.
_loop_clock = LoopTimers()

log = logging.getLogger("exporter.sim.alpaca")

#: Exact error texts of the stream's error catalogue (spec section 3).
ERROR_MESSAGES: dict[int, str] = {
    400: "invalid syntax",
    401: "not authenticated",
    402: "auth failed",
    403: "already authenticated",
    404: "auth timeout",
    405: "symbol limit exceeded",
    406: "connection limit exceeded",
    407: "slow client",
    408: "v2 not enabled",
    409: "insufficient subscription",
    410: "invalid subscribe action for this feed",
    411: "insufficient scope",
    412: "option messages are only available in MsgPack format",
    413: "star subscription is not allowed for option quotes",
    500: "internal error",
}

#: Stream path -> feed name (the entitlement unit), from the project's feed table.
STREAM_PATHS: dict[str, str] = {path: spec.name for path, spec in FEED_BY_PATH.items()}

TEST_SYMBOL = "FAKEPACA"

# The crypto ack lists its keys in this order (spec section 4); the others follow the feed table.
_CRYPTO_ACK = ("trades", "quotes", "orderbooks", "bars", "updatedBars", "dailyBars")
# Channels that exist on some Alpaca stream: asking a feed that lacks one for it is a 410, not a 400.
_KNOWN_CHANNELS = frozenset(ALL_CHANNELS) | {"news", "pricing"}
# Mirrors of trades on the stocks streams: listed in the ack, never subscribed directly (requests for
# them are ignored).
_MIRRORS = ("corrections", "cancelErrors")
# Stock symbols as the stocks streams take them (crypto and options check their feed's syntax).
_SYMBOL_RE = re.compile(r"^(?:\*|[A-Za-z0-9][A-Za-z0-9.\-/:]{0,31})$")
_CONTROL_TYPES = frozenset({"success", "error", "subscription"})
_DATA_CHANNEL_OF = {"t": "trades", "q": "quotes", "b": "bars", "u": "updatedBars", "d": "dailyBars", "o": "orderbooks"}
_DATA_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "orderbooks")

# Exchanges and their weights on the consolidated (SIP) tape; IEX-only feeds report "V".
_SIP_EXCHANGES = ("V", "P", "Q", "N", "Z", "K", "D", "X", "B", "J")
# OPRA participant codes (Cboe, NYSE Arca, Nasdaq PHLX, ISE, MIAX, BOX, NYSE American, C2, EDGX).
_OPRA_EXCHANGES = ("C", "N", "X", "I", "M", "B", "A", "W", "E")
# Crypto trade ids are 64-bit: start past 2**32 so decoders meet the wide form.
_CRYPTO_TRADE_ID_BASE = 7 * 2**32
_BOOK_DEPTH = 5  # levels per side in a snapshot; deltas keep each side within twice that


@dataclass(slots=True)
class SimulatorStats:
    """Counters a test reads to check exact behaviour. All counts are since :meth:`AlpacaSimulator.start`."""

    connections: int = 0  # WebSocket upgrades accepted
    rejected: Counter[int] = field(default_factory=Counter)  # HTTP status -> upgrades refused
    authenticated: int = 0  # sessions that reached `authenticated` (message or header auth)
    auth_failures: int = 0
    frames_sent: int = 0  # every server frame, control and data, malformed included
    bytes_sent: int = 0
    messages_sent: int = 0  # data items (every T except success/error/subscription)
    sent_by_type: Counter[str] = field(default_factory=Counter)  # T -> items sent (control too)
    errors_sent: Counter[int] = field(default_factory=Counter)  # error code -> frames sent
    malformed_sent: int = 0
    bars_dropped: int = 0  # minute bars withheld by drop_bar
    client_messages: Counter[str] = field(default_factory=Counter)  # action -> client messages
    pings_received: int = 0
    pongs_sent: int = 0
    feed_frames_sent: int = 0
    active: int = 0  # open WebSocket sessions now
    subscriptions: dict[str, list[str]] = field(default_factory=dict)  # union over live sessions
    # Code of the client's close frame (an echo when the server closed first); None: no close frame.
    last_client_close_code: int | None = None
    client_close_codes: list[int | None] = field(default_factory=list)


@dataclass(slots=True)
class FeedResult:
    """What :meth:`AlpacaSimulator.send_feed` delivered."""

    sessions: int
    frames: int  # frames per session
    bytes: int  # bytes per session
    seconds: float  # wall time until the slowest session had everything written


class Feed(list[str | bytes]):
    """Pre-encoded frames plus the number of items of each type they hold (from :func:`generate_feed`)."""

    def __init__(self, frames: Sequence[str | bytes] = (), counts: Counter[str] | None = None) -> None:
        super().__init__(frames)
        self.counts: Counter[str] = counts if counts is not None else Counter()

    @property
    def messages(self) -> int:
        return sum(self.counts.values())


class _BarAcc(MinuteBar):
    """A bar built from the trades one session was sent, rendered as a `b`/`u`/`d` item."""

    __slots__ = ()

    def item(self, kind: str, symbol: str) -> Item:
        vw = round(self.notional / self.v, 4) if self.v else self.c
        return {
            "T": kind,
            "S": symbol,
            "o": self.o,
            "h": self.h,
            "l": self.l,
            "c": self.c,
            "v": round(self.v, 8),  # crypto volume is fractional
            "t": self.start * 1_000_000_000,
            "n": self.n,
            "vw": vw,
        }


class _Book:
    """One session's view of a crypto order book: what it has been sent, level by level.

    Bids stay below the mid and asks above it, so the book is never crossed unless a fault adds a
    crossing level (the next delta removes it again).
    """

    __slots__ = ("asks", "bids", "snapshot_sent")

    def __init__(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.snapshot_sent = False

    @staticmethod
    def tick(mid: float) -> float:
        return max(0.01, round(mid * 0.00005, 2))

    def snapshot(self, symbol: str, t: int, mid: float, size: Callable[[float], float]) -> Item:
        tick = self.tick(mid)
        self.bids = {round(mid - k * tick, 2): size(mid) for k in range(1, _BOOK_DEPTH + 1)}
        self.asks = {round(mid + k * tick, 2): size(mid) for k in range(1, _BOOK_DEPTH + 1)}
        self.snapshot_sent = True
        return self._item(symbol, t, self.bids, self.asks, reset=True)

    def delta(self, symbol: str, t: int, mid: float, size: Callable[[float], float], rng: random.Random) -> Item:
        """Levels that crossed the new mid removed, one level per side re-sized or added near the top, the
        farthest levels beyond twice the depth removed."""
        tick = self.tick(mid)
        bids: dict[float, float] = {p: 0.0 for p in self.bids if p >= mid}
        asks: dict[float, float] = {p: 0.0 for p in self.asks if p <= mid}
        bids[round(mid - rng.randint(1, _BOOK_DEPTH) * tick, 2)] = size(mid)
        asks[round(mid + rng.randint(1, _BOOK_DEPTH) * tick, 2)] = size(mid)
        for side, changes, far_first in ((self.bids, bids, False), (self.asks, asks, True)):
            before = set(side)
            for price, amount in changes.items():
                if amount:
                    side[price] = amount
                else:
                    side.pop(price, None)
            for price in sorted(side, reverse=far_first)[: max(0, len(side) - 2 * _BOOK_DEPTH)]:
                del side[price]
                if price in before:
                    changes[price] = 0.0
                else:  # added and trimmed in one delta: the client never hears of it
                    del changes[price]
        return self._item(symbol, t, bids, asks, reset=False)

    def cross(self, symbol: str, t: int, amount: float) -> Item | None:
        """A bid one tick above the best ask: the crossed book a fault asks for."""
        if not self.asks:
            return None
        best_ask = min(self.asks)
        price = round(best_ask + self.tick(best_ask), 2)
        self.bids[price] = amount
        return self._item(symbol, t, {price: amount}, {}, reset=False)

    @staticmethod
    def _item(symbol: str, t: int, bids: dict[float, float], asks: dict[float, float], *, reset: bool) -> Item:
        return {
            "T": "o",
            "S": symbol,
            "t": t,
            "b": [{"p": p, "s": s} for p, s in sorted(bids.items(), reverse=True)],
            "a": [{"p": p, "s": s} for p, s in sorted(asks.items())],
            "r": reset,
        }


class AlpacaSession:
    """One client connection as the server sees it (read-only for tests)."""

    def __init__(self, conn: ServerConnection, path: str, spec: FeedSpec, encoding: Encoding, number: int) -> None:
        self.conn = conn
        self.path = path
        self.spec = spec
        self.feed = spec.name
        self.family = spec.family
        self.encoding: Encoding = encoding
        self.number = number
        self.key: str | None = None
        self.authenticated = False
        self.header_auth = False
        self.subs: dict[str, dict[str, None]] = {}  # channel -> ordered set of symbols
        self.hold_on_drop = True  # a vanished socket keeps its slot for zombie_hold
        self.ended = asyncio.Event()
        self.frames_sent = 0
        self.data_sent = 0
        self.generator: asyncio.Task[None] | None = None
        self.rng = random.Random(number)
        # Generator state: bars built from this session's own trades, pending `u`, last trades.
        self.bars: dict[str, _BarAcc] = {}
        self.bar_period_index: int | None = None
        self.pending_updates: deque[tuple[float, Item]] = deque()
        self.last_trades: dict[str, Item] = {}
        self.trade_ids: Counter[str] = Counter()
        self.next_illiquid: dict[str, float] = {}  # illiquid symbol -> market time of its next message
        self.books: dict[str, _Book] = {}  # crypto order books as this session has been sent them

    @property
    def is_test(self) -> bool:
        return self.feed == "test"

    def subscriptions(self) -> dict[str, list[str]]:
        """The full state as the ack shows it: the feed's own keys (spec section 4)."""
        keys = _CRYPTO_ACK if self.family == "crypto" else self.spec.channels
        out: dict[str, list[str]] = {}
        for key in keys:
            if key == "imbalances" and not self.subs.get(key):
                continue  # only listed once used: the documented ack has no such key
            out[key] = list(self.subs.get(key, {}))
        if self.family == "stocks" and not self.is_test:
            trades = list(self.subs.get("trades", {}))
            for mirror in _MIRRORS:
                out[mirror] = list(trades)
        return out

    def wants(self, channel: str, symbol: str) -> bool:
        chosen = self.subs.get(channel)
        return bool(chosen) and (symbol in chosen or "*" in chosen)  # type: ignore[operator]


class _SimProtocol(ServerProtocol):
    """websockets' sans-I/O server protocol with a gate on automatic pong replies.

    websockets answers a ping inside ``recv_frame`` before the connection sees the frame, so the only
    place to stop pongs (the "server stops answering pings" fault) is here.
    """

    sim: AlpacaSimulator | None = None

    def recv_frame(self, frame: Frame) -> None:
        sim = self.sim
        if frame.opcode is Opcode.PING and sim is not None:
            sim.stats.pings_received += 1
            if not sim._answer_pings:
                return
            sim.stats.pongs_sent += 1
        super().recv_frame(frame)


class _SimConnection(ServerConnection):
    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        # serve() builds a plain ServerProtocol; the subclass only overrides one method and adds one
        # attribute, so switching the instance's class is safe and keeps serve()'s own construction.
        protocol.__class__ = _SimProtocol
        super().__init__(protocol, *args, **kwargs)


class AlpacaSimulator:
    """The simulated Alpaca stream server (every feed of :data:`exporter.feeds.FEEDS`, one per path).

    Data knobs: ``rate`` generated data items per second per connection (0: none, until
    :meth:`set_rate`), in frames of 1..``batch_size`` items; ``trade_ratio`` the share of trades where
    a symbol has both trades and quotes; ``bar_period`` seconds per bar (60 = minute bars; `b` and `d`
    at each mark, a `u` ``bar_period/2`` later with ``updated_bar_probability``); ``rare_probability``
    the chance per data frame of one status/LULD/imbalance/correction/cancel item where subscribed.
    Prices come from the shared ``market``; ``seed`` makes each session's choices reproducible.

    Knobs for behaviour the real server does not document:

    - ``header_auth_push``: after header auth, push ``authenticated`` right after ``connected`` (True).
    - ``close_on_auth_failure``: close after 402 (False: stay open unauthenticated until the deadline).
    - ``close_on_connection_limit``: close after 406 (False: stay open, the client may retry auth).
    - ``error_close_code``: WebSocket close code the server uses after 402/404/406/409 (1008).
    - ``connection_limit``: sessions per key and endpoint (1; Broker standard plans have 5).
    - ``symbol_limit``: distinct symbols over all channels of a session (None: unlimited); a ``"*"``
      counts as over any limit.
    - ``max_connects_per_minute``: upgrade attempts per rolling minute before HTTP 429 (None: off).
    - ``slow_client_limit``: bytes queued in the socket's write buffer before the server gives up on a
      slow client (407 then close); None: unlimited (the generator simply waits for the socket).
    - ``ping_interval``: server-initiated pings (None: the server only answers the client's pings).
    - ``compression``: ``"deflate"`` (permessage-deflate, as Alpaca offers) or None.
    - ``partial_subscribe``: apply only the first N symbols of each channel list of a subscribe
      message, silently (None: all). :meth:`apply_partially` sets it at run time.
    - ``illiquid``: symbol -> seconds between its trades/quotes (a trade every few minutes), per session.
    - ``feed``: pre-encoded frames streamed once to each session after its first subscription, instead
      of generated data; :attr:`feed_done` is set when a session has been sent all of them.
    - ``follow_sessions``: generate data only while the session's feed is in session on the market's
      clock (stocks and options: the US equity session, overnight feeds their night session; crypto
      and ``/v2/test``: always). False (default): every feed streams at every hour.
    - ``options_json_error``: when a JSON connection to an options path gets its 412 (then a close):
      ``"connect"`` in place of ``connected`` (default), or ``"auth"`` as the answer to the auth message.
    - ``orderbook_ratio``: the share of order-book deltas where a symbol's order book is subscribed
      besides its trades or quotes.
    """

    def __init__(
        self,
        market: Market,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: tuple[str, str] | None = None,
        auth_timeout: float = 10.0,
        zombie_hold: float = 90.0,
        rate: float = 50.0,
        batch_size: int = 10,
        entitled_feeds: frozenset[str] | None = None,
        symbol_limit: int | None = None,
        connection_limit: int = 1,
        trade_ratio: float = 0.4,
        bar_period: float = 60.0,
        updated_bar_probability: float = 0.2,
        rare_probability: float = 0.01,
        header_auth_push: bool = True,
        close_on_auth_failure: bool = False,
        close_on_connection_limit: bool = False,
        error_close_code: int = 1008,
        max_connects_per_minute: int | None = None,
        slow_client_limit: int | None = None,
        ping_interval: float | None = None,
        ping_timeout: float | None = 20.0,
        close_timeout: float = 2.0,
        compression: Literal["deflate"] | None = "deflate",
        max_size: int | None = 2**20,
        feed: Sequence[str | bytes] | None = None,
        seed: int = 0,
        partial_subscribe: int | None = None,
        illiquid: dict[str, float] | None = None,
        follow_sessions: bool = False,
        options_json_error: Literal["connect", "auth"] = "connect",
        orderbook_ratio: float = 0.3,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.market = market
        self.host = host
        self._requested_port = port
        self._credentials = credentials
        self.auth_timeout = auth_timeout
        self.zombie_hold = zombie_hold
        self._rate = rate
        self._batch_size = batch_size
        self.entitled_feeds = entitled_feeds
        self.symbol_limit = symbol_limit
        self.connection_limit = connection_limit
        self.trade_ratio = trade_ratio
        self.bar_period = bar_period
        self.updated_bar_probability = updated_bar_probability
        self.rare_probability = rare_probability
        self.header_auth_push = header_auth_push
        self.close_on_auth_failure = close_on_auth_failure
        self.close_on_connection_limit = close_on_connection_limit
        self.error_close_code = error_close_code
        self.max_connects_per_minute = max_connects_per_minute
        self.slow_client_limit = slow_client_limit
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        self._compression: Literal["deflate"] | None = compression
        self._max_size = max_size
        self._feed = feed
        self._seed = seed
        self.follow_sessions = follow_sessions
        self.options_json_error = options_json_error
        self.orderbook_ratio = orderbook_ratio

        self.stats = SimulatorStats()
        self.feed_done = asyncio.Event()
        self._server: Server | None = None
        self._sessions: set[AlpacaSession] = set()
        self._session_count = 0
        self._holders: dict[tuple[str, str], set[AlpacaSession]] = {}
        self._zombies: dict[tuple[str, str], list[float]] = {}
        self._connect_times: deque[float] = deque()
        self._muted = False
        self._answer_pings = True
        self._refuse_status: int | None = None
        self._refuse_remaining: int | None = None
        self._close_new = False
        self._spikes: dict[str, list[float]] = {}  # symbol -> [factor, remaining trades]
        self._partial = partial_subscribe
        self._partial_remaining: int | None = None  # subscribe messages still applied in part (None: all)
        self.illiquid: dict[str, float] = dict(illiquid or {})
        self.halted: set[str] = set()
        self._drop_bars: Counter[str] = Counter()  # symbol -> minute bars still to withhold
        self._force_updates: set[str] = set()  # symbols whose next bar gets a `u` for sure
        self._rate_changed = asyncio.Event()
        self._changed = asyncio.Event()
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._server is not None:
            return
        limit = self.slow_client_limit
        self._server = await serve(
            self._handler,
            self.host,
            self._requested_port,
            process_request=self._process_request,
            create_connection=_SimConnection,
            compression=self._compression,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_timeout,
            close_timeout=self._close_timeout,
            max_size=self._max_size,
            # With a slow-client limit the write buffer must be allowed to grow past it; otherwise
            # send() waits for the socket long before the limit is reached.
            write_limit=(max(2**15, limit * 4) if limit else 2**15),
            logger=log,
            server_header="alpaca-exporter-simulator",
        )
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        for session in list(self._sessions):
            if session.generator is not None:
                session.generator.cancel()
        server.close(close_connections=True)
        await server.wait_closed()

    async def __aenter__(self) -> AlpacaSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def url(self, path: str = "/v2/iex") -> str:
        return f"ws://{self.host}:{self.port}{path}"

    def feed_url(self, feed: str) -> str:
        """The URL of a feed of :data:`exporter.feeds.FEEDS` by name (``"crypto"``, ``"opra"``...)."""
        return self.url(FEEDS[feed].path)

    @property
    def sessions(self) -> list[AlpacaSession]:
        """Live sessions, oldest first."""
        return sorted(self._sessions, key=lambda s: s.number)

    # ------------------------------------------------------------------ knobs at run time

    def set_rate(self, rate: float) -> None:
        """Generated data items per second per connection (0 stops generated data: throttle to zero)."""
        self._rate = rate
        self._rate_changed.set()

    @property
    def rate(self) -> float:
        return self._rate

    def set_batch_size(self, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._batch_size = batch_size

    def set_mute(self, on: bool) -> None:
        """Stop (or resume) every data frame; control replies and pongs continue."""
        self._muted = on

    def set_pong(self, on: bool) -> None:
        """Answer (True, default) or silently ignore the clients' WebSocket pings."""
        self._answer_pings = on

    def refuse_connections(self, status: int | None, *, count: int | None = None) -> None:
        """Refuse upgrades with this HTTP status (e.g. 429, 503); None accepts again. With ``count``,
        only the next ``count`` attempts are refused."""
        self._refuse_status = status
        self._refuse_remaining = count

    def close_new_connections(self, on: bool) -> None:
        """Accept the upgrade, then close at once (code 1011) without sending ``connected``."""
        self._close_new = on

    def clear_zombies(self) -> None:
        """Forget every zombie-held slot (as if the hold period had elapsed)."""
        self._zombies.clear()

    def spike(self, symbol: str, factor: float, *, count: int = 1) -> None:
        """Multiply the price of the next ``count`` generated trades and quotes of ``symbol`` (over
        all sessions) by ``factor``. The shared Market is unaffected: a spike is a bad print on this feed."""
        self._spikes[symbol] = [factor, float(count)]

    def apply_partially(self, limit: int | None, *, count: int | None = None) -> None:
        """Apply only the first ``limit`` symbols of each channel list of the next ``count`` subscribe
        messages (every one when ``count`` is None); the rest is silently left out, and the ack shows
        what the server holds. ``limit=None`` applies subscriptions in full again."""
        self._partial = limit
        self._partial_remaining = count

    def set_illiquid(self, symbol: str, interval: float | None) -> None:
        """``symbol`` trades (or quotes) at most once per ``interval`` seconds per session; None: freely."""
        if interval is None:
            self.illiquid.pop(symbol, None)
        else:
            self.illiquid[symbol] = interval

    async def halt(self, symbol: str, *, pause: bool = False) -> int:
        """A trading halt (or a LULD volatility pause) of ``symbol`` with its tape's real status codes:
        CTA (tapes A/B) ``2`` Trading Halt, UTP (tape C) ``H`` Trading Halt or ``P`` Volatility Trading
        Pause. No trades or quotes of it are generated until :meth:`resume`. Returns the sessions told."""
        self.halted.add(symbol)
        if _tape(symbol) == "C":
            code, text = ("P", "Volatility Trading Pause") if pause else ("H", "Trading Halt")
        else:
            code, text = "2", "Trading Halt"
        reason, why = ("LUDP", "Volatility Trading Pause") if pause else ("T1", "Halt News Pending")
        return await self._send_status(symbol, code, text, reason, why)

    async def resume(self, symbol: str) -> int:
        """Trading resumes: CTA ``3`` Resume, UTP ``T`` Trading Resumption; data of it flows again."""
        self.halted.discard(symbol)
        code, text = ("T", "Trading Resumption") if _tape(symbol) == "C" else ("3", "Resume")
        return await self._send_status(symbol, code, text, "", "")

    async def _send_status(self, symbol: str, code: str, text: str, reason: str, why: str) -> int:
        ns = int(self.market.now() * 1e9)
        item = {"T": "s", "S": symbol, "sc": code, "sm": text, "rc": reason, "rm": why, "t": ns, "z": _tape(symbol)}
        sent = 0
        for session in list(self._sessions):
            if session.authenticated and session.wants("statuses", symbol):
                sent += await self._send_items(session, [dict(item)], data=True)
        return sent

    def drop_bar(self, symbol: str, *, count: int = 1) -> None:
        """Withhold the next ``count`` minute bars of ``symbol`` (bars starting on a whole minute; with
        the default 60 s period, simply the next bars) although its trades were sent."""
        self._drop_bars[symbol] += count

    def update_bar(self, symbol: str) -> None:
        """The next bar of ``symbol`` is revised by a `u` half a period later (late trades)."""
        self._force_updates.add(symbol)

    # ------------------------------------------------------------------ faults

    async def drop_connections(self, *, hold_slot: bool = True) -> None:
        """Abort every TCP connection without a close frame (the client sees code 1006).

        With ``hold_slot`` the server, like the real one after a network failure, keeps each key's slot
        for ``zombie_hold`` seconds, so a quick reconnect gets 406.
        """
        sessions = list(self._sessions)
        for session in sessions:
            session.hold_on_drop = hold_slot
            session.conn.transport.abort()
        await self._wait_ended(sessions, self._close_timeout + 1.0)

    async def send_malformed(
        self, kind: Literal["garbage", "truncated", "not_array", "wrong_frame_type"] = "garbage"
    ) -> None:
        """Send one undecodable or ill-shaped frame to every session (in its own encoding unless
        ``wrong_frame_type``)."""
        for session in list(self._sessions):
            frame: str | bytes
            msgpack_mode = session.encoding == "msgpack"
            if kind == "garbage":
                # 0xc1 is the one byte msgpack never uses.
                frame = b"\xc1\xc1\x93\xa1T" if msgpack_mode else '[{"T":"t","S":}]@@'
            elif kind == "truncated":
                whole = encode([{"T": "t", "S": "AAPL", "p": 1.5, "s": 1, "t": time.time_ns()}], session.encoding)
                frame = whole[: len(whole) // 2]
            elif kind == "not_array":
                frame = (
                    encode([{"T": "t", "S": "AAPL"}], session.encoding)[1:-1]
                    if not msgpack_mode
                    else (
                        b"\x81\xa1T\xa1t"  # a bare map {"T": "t"}
                    )
                )
            else:
                frame = '[{"T":"t"}]' if msgpack_mode else b"\x91\x81\xa1T\xa1t"
            if await self._send_raw(session, frame):
                self.stats.malformed_sent += 1

    async def send_error(
        self,
        code: int,
        *,
        close: bool,
        send_frame: bool = True,
        abort: bool = False,
        msg: str | None = None,
        close_code: int | None = None,
    ) -> None:
        """Send ``[{"T":"error","code":code,"msg":...}]`` to every session, then optionally close.

        ``send_frame=False`` with ``close=True`` is "disconnect without the 407"; ``abort`` ends the TCP
        connection without a close frame instead of a close handshake.
        """
        sessions = list(self._sessions)
        for session in sessions:
            if send_frame:
                await self._send_error(session, code, msg)
        if close:
            reason = ERROR_MESSAGES.get(code, "error")
            ws_code = close_code or (1011 if code >= 500 else self.error_close_code)
            await asyncio.gather(*(self._close_session(s, ws_code, reason, abort=abort) for s in sessions))

    async def inject(self, items: list[dict[str, Any]], *, only_subscribed: bool = False) -> int:
        """Send raw items as one frame to every authenticated session (``only_subscribed``: to sessions
        subscribed to the items' channel and symbol). ``T`` is moved first; an integer ``t`` is a
        timestamp in ns and is encoded per the session's encoding. Returns the number of sessions."""
        sent = 0
        for session in list(self._sessions):
            if not session.authenticated:
                continue
            if only_subscribed:
                chosen = [it for it in items if self._wanted(session, it)]
                if not chosen:
                    continue
            else:
                chosen = items
            if await self._send_items(session, chosen, data=True):
                sent += 1
        return sent

    async def inject_trade(
        self,
        symbol: str,
        price: float,
        *,
        size: float = 100,
        extra: dict[str, Any] | None = None,
        t: int | None = None,
    ) -> int:
        """Send one trade with exactly this price (0, negative, NaN, a spike...) to the sessions
        subscribed to trades of ``symbol``, in the shape of each session's feed (stocks: exchange ``V``,
        condition ``@``). ``extra`` adds (unknown) keys. Returns the session count."""
        ns = t if t is not None else int(self.market.now() * 1e9)
        sent = 0
        for session in list(self._sessions):
            if session.authenticated and session.wants("trades", symbol):
                session.trade_ids[symbol] += 1
                if session.family == "stocks":
                    item = _stock_trade(symbol, session.trade_ids[symbol], "V", price, size, ["@"], ns)
                else:
                    item = self._trade_shape(session, symbol, price, size, ns)
                if extra:
                    item.update(extra)
                if await self._send_items(session, [item], data=True):
                    sent += 1
        return sent

    async def cross_book(self, symbol: str, *, size: float = 0.5) -> int:
        """A crossed order book: a delta adding a bid one tick above the best ask of ``symbol`` to every
        session that has its book (the session's next generated delta removes it). Returns the sessions."""
        ns = int(self.market.now() * 1e9)
        sent = 0
        for session in list(self._sessions):
            book = session.books.get(symbol)
            if not session.authenticated or book is None or not book.snapshot_sent:
                continue
            item = book.cross(symbol, ns, size)
            if item is not None and await self._send_items(session, [item], data=True):
                sent += 1
        return sent

    async def send_unknown(self, symbol: str = "AAPL") -> int:
        """An item of an undocumented type and a trade with undocumented keys, in one frame."""
        now = int(self.market.now() * 1e9)
        price = self.market.price(symbol)
        return await self.inject(
            [
                {"T": "zz", "S": symbol, "foo": 1, "t": now},
                {
                    "T": "t",
                    "S": symbol,
                    "i": 1,
                    "x": "V",
                    "p": price,
                    "s": 1,
                    "c": ["@"],
                    "t": now,
                    "z": "C",
                    "r": now,
                    "new_key": {"nested": [1, 2]},
                },
            ]
        )

    async def send_missing_field(self, symbol: str = "AAPL") -> int:
        """A trade without its price and timestamp (required fields)."""
        return await self.inject([{"T": "t", "S": symbol, "i": 1, "x": "V", "s": 100, "c": ["@"], "z": "C"}])

    async def flush_bars(self) -> None:
        """Emit now the bars of the current period (as if the period had ended) to every session."""
        for session in list(self._sessions):
            if session.authenticated:
                await self._emit_bars(session, force=True)

    async def send_feed(self, frames: Sequence[str | bytes]) -> FeedResult:
        """Stream pre-encoded frames as fast as each socket allows to every authenticated, subscribed
        session at once; returns when all have been written (handed to the kernel)."""
        targets = [s for s in self._sessions if s.authenticated and any(s.subs.values())]
        start = time.perf_counter()
        results = await asyncio.gather(*(self._stream_feed(s, frames) for s in targets))
        return FeedResult(
            sessions=len(targets),
            frames=len(frames),
            bytes=results[0] if results else 0,
            seconds=time.perf_counter() - start,
        )

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` is true, re-checking at every session event (connect, auth,
        subscription change, error sent, disconnect). Callers bound the wait with ``asyncio.timeout``."""
        while not predicate():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ HTTP upgrade

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if self._refuse_status is not None:
            status = self._refuse_status
            if self._refuse_remaining is not None:
                self._refuse_remaining -= 1
                if self._refuse_remaining <= 0:
                    self._refuse_status = self._refuse_remaining = None
            return self._reject(conn, status, "connection refused\n")
        if self.max_connects_per_minute is not None:
            now = _loop_clock.monotonic()
            times = self._connect_times
            times.append(now)
            while times and times[0] < now - 60.0:
                times.popleft()
            if len(times) > self.max_connects_per_minute:
                return self._reject(conn, 429, "too many requests\n")
        if path not in STREAM_PATHS:
            return self._reject(conn, 404, "Not Found\n")
        return None

    def _reject(self, conn: ServerConnection, status: int, text: str) -> Response:
        self.stats.rejected[status] += 1
        return conn.respond(status, text)

    # ------------------------------------------------------------------ session

    async def _handler(self, conn: ServerConnection) -> None:
        if isinstance(conn.protocol, _SimProtocol):
            conn.protocol.sim = self
        request = conn.request
        assert request is not None  # the handler only runs after a completed handshake
        path = urlsplit(request.path).path
        content_type = request.headers.get("Content-Type", "")
        encoding: Encoding = "msgpack" if "application/msgpack" in content_type.lower() else "json"
        self._session_count += 1
        session = AlpacaSession(conn, path, FEED_BY_PATH[path], encoding, self._session_count)
        session.rng.seed(f"{self._seed}:{session.number}")
        if self.slow_client_limit is not None:
            # The limit stands for the real server's per-connection buffer: shrink the kernel's send
            # buffer so what the client has not read piles up where the limit can see it.
            sock = conn.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self._sessions.add(session)
        self.stats.connections += 1
        self.stats.active += 1
        self._notify()
        try:
            if self._close_new:
                await conn.close(1011, "unavailable")
                return
            if self._refuses_json(session) and self.options_json_error == "connect":
                await self._refuse_json(session)
                return
            await self._send_items(session, [{"T": "success", "msg": "connected"}])
            if not await self._header_auth(session, request.headers):
                return
            await self._read_loop(session)
        except ConnectionClosed:
            pass
        finally:
            await self._end_session(session)

    @staticmethod
    def _refuses_json(session: AlpacaSession) -> bool:
        return session.encoding not in session.spec.encodings

    async def _refuse_json(self, session: AlpacaSession) -> None:
        """412: the options streams speak msgpack only."""
        await self._send_error(session, 412)
        await self._close_session(session, self.error_close_code, ERROR_MESSAGES[412])

    async def _end_session(self, session: AlpacaSession) -> None:
        if session.generator is not None:
            session.generator.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await session.generator
        conn = session.conn
        # Wait for the closing handshake or the TCP loss to finish so close_rcvd is final.
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            async with asyncio.timeout(self._close_timeout + 1.0):
                await conn.wait_closed()
        rcvd = conn.protocol.close_rcvd
        code = rcvd.code if rcvd is not None else None
        self.stats.last_client_close_code = code
        self.stats.client_close_codes.append(code)
        if session.authenticated and session.key is not None:
            slot = (session.path, session.key)
            holders = self._holders.get(slot)
            if holders is not None:
                holders.discard(session)
            if rcvd is None and session.hold_on_drop and self.zombie_hold > 0:
                self._zombies.setdefault(slot, []).append(_loop_clock.monotonic() + self.zombie_hold)
        self._sessions.discard(session)
        self.stats.active -= 1
        self._update_subscription_stats()
        session.ended.set()
        self._notify()

    async def _read_loop(self, session: AlpacaSession) -> None:
        conn = session.conn
        deadline = asyncio.get_running_loop().time() + self.auth_timeout
        while True:
            if session.authenticated:
                message = await conn.recv()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await conn.recv()
                except TimeoutError:
                    await self._send_error(session, 404)
                    await self._close_session(session, self.error_close_code, "auth timeout")
                    return
            if not await self._on_message(session, message):
                return

    async def _on_message(self, session: AlpacaSession, message: str | bytes) -> bool:
        """Handle one client message; False when the session has been closed."""
        try:
            data = decode_frame(message)
        except Exception:
            await self._send_error(session, 400)
            return True
        if not isinstance(data, dict) or not isinstance(data.get("action"), str):
            await self._send_error(session, 400)
            return True
        action = data["action"]
        self.stats.client_messages[action] += 1
        if action == "auth":
            return await self._auth_message(session, data)
        if action in ("subscribe", "unsubscribe"):
            await self._subscribe(session, action, data)
            return True
        await self._send_error(session, 400)
        return True

    async def _header_auth(self, session: AlpacaSession, headers: Any) -> bool:
        key = headers.get("APCA-API-KEY-ID")
        secret = headers.get("APCA-API-SECRET-KEY")
        authorization = headers.get("Authorization", "")
        if (key is None or secret is None) and authorization.lower().startswith("basic "):
            with contextlib.suppress(ValueError):
                key, _, secret = base64.b64decode(authorization[6:].strip()).decode().partition(":")
        if key is None or secret is None:
            return True
        ok = await self._authenticate(session, str(key), str(secret), push=self.header_auth_push)
        if ok:
            session.header_auth = True
        return session.conn.protocol.close_sent is None

    async def _auth_message(self, session: AlpacaSession, data: dict[str, Any]) -> bool:
        if session.authenticated:
            await self._send_error(session, 403)
            return True
        key, secret = data.get("key"), data.get("secret")
        if not isinstance(key, str) or not isinstance(secret, str):
            key, secret = "", ""
        await self._authenticate(session, key, secret, push=True)
        return session.conn.protocol.close_sent is None

    async def _authenticate(self, session: AlpacaSession, key: str, secret: str, *, push: bool) -> bool:
        if self._refuses_json(session):  # options_json_error="auth": the auth (message or headers) gets it
            await self._refuse_json(session)
            return False
        creds = self._credentials
        valid = bool(key) and bool(secret)
        if creds is not None:
            valid = hmac.compare_digest(key.encode(), creds[0].encode()) and hmac.compare_digest(
                secret.encode(), creds[1].encode()
            )
        if not valid:
            self.stats.auth_failures += 1
            await self._send_error(session, 402)
            if self.close_on_auth_failure:
                await self._close_session(session, self.error_close_code, "auth failed")
            return False
        if self.entitled_feeds is not None and session.feed != "test" and session.feed not in self.entitled_feeds:
            await self._send_error(session, 409)
            await self._close_session(session, self.error_close_code, "insufficient subscription")
            return False
        slot = (session.path, key)
        now = _loop_clock.monotonic()
        zombies = [t for t in self._zombies.get(slot, []) if t > now]
        self._zombies[slot] = zombies
        holders = self._holders.setdefault(slot, set())
        if len(holders) + len(zombies) >= self.connection_limit:
            await self._send_error(session, 406)
            if self.close_on_connection_limit:
                await self._close_session(session, self.error_close_code, "connection limit exceeded")
            return False
        holders.add(session)
        session.key = key
        session.authenticated = True
        self.stats.authenticated += 1
        self._notify()
        if push:
            await self._send_items(session, [{"T": "success", "msg": "authenticated"}])
        return True

    async def _subscribe(self, session: AlpacaSession, action: str, data: dict[str, Any]) -> None:
        if not session.authenticated:
            await self._send_error(session, 401)
            return
        spec = session.spec
        offered = spec.channels
        changes: dict[str, list[str]] = {}
        for key, value in data.items():
            if key == "action" or (key in _MIRRORS and session.family == "stocks"):
                continue
            if key not in offered:
                await self._send_error(session, 410 if key in _KNOWN_CHANNELS else 400)
                return
            if not isinstance(value, list) or not all(_valid_symbol(spec, s) for s in value):
                await self._send_error(session, 400)
                return
            if session.family == "options" and key == "quotes" and "*" in value and action == "subscribe":
                await self._send_error(session, 413)
                return
            changes[key] = value
        if action == "subscribe" and self._partial is not None and self._partial_remaining != 0:
            changes = {key: value[: self._partial] for key, value in changes.items()}
            if self._partial_remaining is not None:
                self._partial_remaining -= 1
        new = {channel: dict(symbols) for channel, symbols in session.subs.items()}
        for channel, symbols in changes.items():
            chosen = new.setdefault(channel, {})
            for symbol in symbols:
                if action == "subscribe":
                    chosen[symbol] = None
                else:
                    chosen.pop(symbol, None)
        if action == "subscribe" and self.symbol_limit is not None:
            everything = {s for symbols in new.values() for s in symbols}
            if "*" in everything or len(everything) > self.symbol_limit:
                await self._send_error(session, 405)
                return
        session.subs = new
        for symbol in list(session.books):
            if not session.wants("orderbooks", symbol):
                del session.books[symbol]  # a later subscribe starts again with a snapshot
        self._update_subscription_stats()
        self._notify()
        await self._send_items(session, [{"T": "subscription", **session.subscriptions()}])
        await self._send_snapshots(session, [s for s in new.get("orderbooks", {}) if s != "*"])
        if session.generator is None and any(new.values()):
            session.generator = asyncio.create_task(self._generate(session), name=f"alpaca-sim-{session.number}")

    def _update_subscription_stats(self) -> None:
        union: dict[str, dict[str, None]] = {}
        for session in self.sessions:
            if session.authenticated:
                for channel, symbols in session.subscriptions().items():
                    union.setdefault(channel, {}).update(dict.fromkeys(symbols))
        self.stats.subscriptions = {channel: list(symbols) for channel, symbols in union.items()}

    # ------------------------------------------------------------------ sending

    async def _send_raw(self, session: AlpacaSession, frame: str | bytes) -> bool:
        try:
            await session.conn.send(frame)
        except ConnectionClosed:
            return False
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(frame)
        session.frames_sent += 1
        return True

    async def _send_items(self, session: AlpacaSession, items: list[Item], *, data: bool = False) -> bool:
        """Encode and send one frame; data frames are dropped while muted. True if sent."""
        if not items or (data and self._muted):
            return False
        if data and self.slow_client_limit is not None:
            transport = session.conn.transport
            if transport.get_write_buffer_size() > self.slow_client_limit:
                await self._send_error(session, 407)
                await self._close_session(session, self.error_close_code, "slow client", abort=True)
                return False
        if not await self._send_raw(session, encode(items, session.encoding)):
            return False
        counts = self.stats.sent_by_type
        for item in items:
            kind = str(item.get("T", ""))
            counts[kind] += 1
            if kind not in _CONTROL_TYPES:
                self.stats.messages_sent += 1
                session.data_sent += 1
        return True

    async def _send_error(self, session: AlpacaSession, code: int, msg: str | None = None) -> None:
        text = msg if msg is not None else ERROR_MESSAGES.get(code, "error")
        if await self._send_items(session, [{"T": "error", "code": code, "msg": text}]):
            self.stats.errors_sent[code] += 1
            self._notify()

    async def _close_session(self, session: AlpacaSession, code: int, reason: str, *, abort: bool = False) -> None:
        if abort:
            session.hold_on_drop = False  # the server knows it ended this one
            session.conn.transport.abort()
            return
        # Closing from inside the reader would wait for the client's echo; run it beside it.
        with contextlib.suppress(ConnectionClosed):
            await asyncio.shield(session.conn.close(code, reason))

    async def _wait_ended(self, sessions: list[AlpacaSession], limit: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                for session in sessions:
                    await session.ended.wait()

    @staticmethod
    def _wanted(session: AlpacaSession, item: Item) -> bool:
        channel = _DATA_CHANNEL_OF.get(str(item.get("T")))
        symbol = item.get("S")
        return channel is not None and isinstance(symbol, str) and session.wants(channel, symbol)

    # ------------------------------------------------------------------ data generation

    async def _stream_feed(self, session: AlpacaSession, frames: Sequence[str | bytes]) -> int:
        sent_bytes = sent = 0
        conn = session.conn
        for frame in frames:
            if self._muted:
                continue
            try:
                await conn.send(frame)
            except ConnectionClosed:
                break
            sent_bytes += len(frame)
            sent += 1
        if sent == len(frames):
            counts = getattr(frames, "counts", None)
            if isinstance(counts, Counter):
                self.stats.sent_by_type.update(counts)
                total = sum(counts.values())
                self.stats.messages_sent += total
                session.data_sent += total
        self.stats.frames_sent += sent
        self.stats.feed_frames_sent += sent
        self.stats.bytes_sent += sent_bytes
        session.frames_sent += sent
        return sent_bytes

    async def _generate(self, session: AlpacaSession) -> None:
        """The per-session data loop: ``rate`` items/s in frames of 1..batch_size items."""
        try:
            if self._feed is not None:
                await self._stream_feed(session, self._feed)
                self.feed_done.set()
                return
            loop = asyncio.get_running_loop()
            due = loop.time()
            while True:
                await self._emit_bars(session)
                rate = self._rate
                if rate <= 0:
                    self._rate_changed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.25):
                            await self._rate_changed.wait()
                    due = loop.time()
                    continue
                n = session.rng.randint(1, self._batch_size)
                items = self._make_items(session, n)
                if not await self._send_items(session, items, data=True):
                    _unsend_snapshots(session, items)
                due += n / rate
                delay = due - loop.time()
                if delay < -1.0:
                    due = loop.time()  # fell far behind (slow socket): don't burst to catch up
                await asyncio.sleep(min(max(delay, 0.0), 0.25))
        except ConnectionClosed:
            return

    def _universe(self, session: AlpacaSession) -> list[str]:
        symbols: dict[str, None] = {}
        wildcard = False
        for channel in _DATA_CHANNELS:
            for symbol in session.subs.get(channel, {}):
                if symbol == "*":
                    wildcard = True
                else:
                    symbols[symbol] = None
        if session.is_test:
            return [TEST_SYMBOL] if wildcard or TEST_SYMBOL in symbols else []
        if wildcard:  # every market symbol this feed could carry
            family = session.family
            symbols.update(dict.fromkeys(s for s in self.market.symbols if family_of(s) == family))
        return list(symbols)

    def _in_session(self, session: AlpacaSession, now: float) -> bool:
        return not self.follow_sessions or market_open(session.spec.session, now)

    def _spiked(self, symbol: str) -> float:
        spike = self._spikes.get(symbol)
        if spike is None:
            return 1.0
        spike[1] -= 1
        if spike[1] <= 0:
            del self._spikes[symbol]
        return spike[0]

    def _make_items(self, session: AlpacaSession, n: int) -> list[Item]:
        universe = self._universe(session)
        now = self.market.now()
        if not universe or not self._in_session(session, now):
            return []
        rng = session.rng
        ns = int(now * 1e9)
        items: list[Item] = []
        illiquid, halted = self.illiquid, self.halted
        for _ in range(n):
            symbol = universe[rng.randrange(len(universe))]
            if halted and symbol in halted:
                continue
            if illiquid and symbol in illiquid:
                if now < session.next_illiquid.get(symbol, 0.0):
                    continue
                session.next_illiquid[symbol] = now + illiquid[symbol]
            t = ns + rng.randrange(1000)  # sub-microsecond digits, as SIP timestamps have
            wants_t = session.wants("trades", symbol)
            wants_q = session.wants("quotes", symbol)
            wants_o = session.wants("orderbooks", symbol)
            if wants_o and (not (wants_t or wants_q) or rng.random() < self.orderbook_ratio):
                items.append(self._book_item(session, symbol, t))
            elif wants_q and (not wants_t or rng.random() >= self.trade_ratio):
                items.append(self._quote_item(session, symbol, now, t))
            else:
                trade = self._trade_item(session, symbol, now, t)
                if wants_t:
                    items.append(trade)
        if items and rng.random() < self.rare_probability:
            rare = self._rare_item(session, universe, ns)
            if rare is not None:
                items.append(rare)
        return items

    def _exchange(self, session: AlpacaSession) -> str:
        if session.family == "options":
            return _OPRA_EXCHANGES[session.rng.randrange(len(_OPRA_EXCHANGES))]
        if session.feed in ("iex", "test"):
            return "V"
        return _SIP_EXCHANGES[session.rng.randrange(len(_SIP_EXCHANGES))]

    def _trade_item(self, session: AlpacaSession, symbol: str, now: float, t: int) -> Item:
        price, size, trade_id = self.market.trade(symbol, now)
        price = round(price * self._spiked(symbol), 2)
        session.trade_ids[symbol] = max(session.trade_ids[symbol] + 1, trade_id)
        period = int(now // self.bar_period * self.bar_period)
        acc = session.bars.get(symbol)
        if acc is None or acc.start != period:
            acc = session.bars[symbol] = _BarAcc(period, price, price, price, price)
        acc.add(price, size)
        item = self._trade_shape(session, symbol, price, size, t)
        session.last_trades[symbol] = item
        return item

    def _trade_shape(self, session: AlpacaSession, symbol: str, price: float, size: float, t: int) -> Item:
        """A trade as the session's feed writes it (spec section 5), with the session's next trade id."""
        if session.family == "crypto":
            return _crypto_trade(symbol, price, size, t, session.trade_ids[symbol], session.rng)
        if session.family == "options":
            return {"T": "t", "S": symbol, "t": t, "p": price, "s": size, "x": self._exchange(session), "c": "I"}
        conditions = ["@", "I"] if size < 100 else ["@"]  # odd lots
        return _stock_trade(symbol, session.trade_ids[symbol], self._exchange(session), price, size, conditions, t)

    def _quote_item(self, session: AlpacaSession, symbol: str, now: float, t: int) -> Item:
        bid, ask, bid_size, ask_size = self.market.quote(symbol, now)
        factor = self._spiked(symbol) if symbol in self._spikes else 1.0
        bid, ask = round(bid * factor, 2), round(ask * factor, 2)
        if session.family == "crypto":
            return {"T": "q", "S": symbol, "bp": bid, "bs": bid_size, "ap": ask, "as": ask_size, "t": t}
        exchange = self._exchange(session)
        if session.family == "options":
            bid_exchange, ask_exchange = exchange, self._exchange(session)
            return {
                "T": "q",
                "S": symbol,
                "t": t,
                "bx": bid_exchange,
                "bp": bid,
                "bs": bid_size,
                "ax": ask_exchange,
                "ap": ask,
                "as": ask_size,
                "c": "A",
            }
        return {
            "T": "q",
            "S": symbol,
            "bx": exchange,
            "bp": bid,
            "bs": bid_size,
            "ax": exchange,
            "ap": ask,
            "as": ask_size,
            "c": ["R"],
            "t": t,
            "z": _tape(symbol),
        }

    def _book_item(self, session: AlpacaSession, symbol: str, t: int) -> Item:
        """The symbol's order-book snapshot if the session has not had one since subscribing, else a delta."""
        book = session.books.get(symbol)
        if book is None:
            book = session.books[symbol] = _Book()
        mid = self.market.price(symbol)
        if not book.snapshot_sent:
            return book.snapshot(symbol, t, mid, self.market.coins)
        return book.delta(symbol, t, mid, self.market.coins, session.rng)

    async def _send_snapshots(self, session: AlpacaSession, symbols: list[str]) -> None:
        """Right after the ack: a snapshot (``r: true``) of each newly subscribed order book, one frame."""
        ns = int(self.market.now() * 1e9)
        items = [
            self._book_item(session, symbol, ns)
            for symbol in symbols
            if symbol not in session.books or not session.books[symbol].snapshot_sent
        ]
        if items and not await self._send_items(session, items, data=True):
            _unsend_snapshots(session, items)

    def _rare_item(self, session: AlpacaSession, universe: list[str], ns: int) -> Item | None:
        """A trading status, LULD band, imbalance, correction or cancel, when subscribed (stocks only)."""
        if session.family != "stocks":
            return None
        rng = session.rng
        symbol = universe[rng.randrange(len(universe))]
        kinds = []
        if session.wants("statuses", symbol) and symbol not in self.halted:
            kinds.append("s")
        if session.wants("lulds", symbol):
            kinds.append("l")
        if session.wants("imbalances", symbol):
            kinds.append("i")
        if session.wants("trades", symbol) and symbol in session.last_trades and not session.is_test:
            kinds.extend(("c", "x"))
        if not kinds:
            return None
        kind = kinds[rng.randrange(len(kinds))]
        price = self.market.price(symbol)
        z = _tape(symbol)
        if kind == "s":
            # A resumption of a symbol that was trading (harmless, as the real feed's repeats are).
            code, text = ("T", "Trading Resumption") if z == "C" else ("3", "Resume")
            return {"T": "s", "S": symbol, "sc": code, "sm": text, "rc": "", "rm": "", "t": ns, "z": z}
        if kind == "l":
            return {
                "T": "l",
                "S": symbol,
                "u": round(price * 1.05, 2),
                "d": round(price * 0.95, 2),
                "i": "B",
                "t": ns,
                "z": z,
            }
        if kind == "i":
            return {"T": "i", "S": symbol, "p": price, "t": ns, "z": z}
        last = session.last_trades[symbol]
        if kind == "c":
            session.trade_ids[symbol] += 1
            return {
                "T": "c",
                "S": symbol,
                "x": last["x"],
                "oi": last["i"],
                "op": last["p"],
                "os": last["s"],
                "oc": last["c"],
                "ci": session.trade_ids[symbol],
                "cp": round(last["p"] + 0.01, 2),
                "cs": last["s"],
                "cc": last["c"],
                "t": ns,
                "z": z,
            }
        return {
            "T": "x",
            "S": symbol,
            "i": last["i"],
            "x": last["x"],
            "p": last["p"],
            "s": last["s"],
            "a": "C" if rng.random() < 0.7 else "E",
            "t": ns,
            "z": z,
        }

    async def _emit_bars(self, session: AlpacaSession, *, force: bool = False) -> None:
        """At each period mark: `b` for the closed period, `d` running daily bars, and later `u`."""
        now = self.market.now()
        index = int(now // self.bar_period)
        items: list[Item] = []
        loop_now = asyncio.get_running_loop().time()
        while session.pending_updates and session.pending_updates[0][0] <= loop_now:
            items.append(session.pending_updates.popleft()[1])
        if force or (session.bar_period_index is not None and index != session.bar_period_index):
            current = int(index * self.bar_period)
            for symbol, acc in list(session.bars.items()):
                if acc.start >= current and not force:
                    continue
                del session.bars[symbol]
                if self._drop_bars[symbol] > 0 and acc.start % 60 == 0:
                    self._drop_bars[symbol] -= 1  # withheld: trades of that minute, but no bar
                    self.stats.bars_dropped += 1
                elif session.wants("bars", symbol):
                    items.append(acc.item("b", symbol))
                forced = symbol in self._force_updates
                self._force_updates.discard(symbol)
                if session.wants("updatedBars", symbol) and (
                    forced or session.rng.random() < self.updated_bar_probability
                ):
                    late = acc.item("u", symbol)
                    late["v"] += 100
                    late["n"] += 1
                    session.pending_updates.append((loop_now + self.bar_period / 2, late))
            in_session = self._in_session(session, now)
            for symbol in self._universe(session):
                day = self.market.daily_bar(symbol)
                if day is not None and in_session and session.wants("dailyBars", symbol):
                    items.append(
                        {
                            "T": "d",
                            "S": symbol,
                            "o": day.o,
                            "h": day.h,
                            "l": day.l,
                            "c": day.c,
                            "v": round(day.v, 8),
                            "t": day.start * 1_000_000_000,
                            "n": day.n,
                            "vw": round(day.vw, 4),
                        }
                    )
        session.bar_period_index = index
        if items:
            await self._send_items(session, items, data=True)


def _stock_trade(
    symbol: str, trade_id: int, exchange: str, price: float, size: float, conditions: list[str], t: int
) -> Item:
    return {
        "T": "t",
        "S": symbol,
        "i": trade_id,
        "x": exchange,
        "p": price,
        "s": size,
        "c": conditions,
        "t": t,
        "z": _tape(symbol),
    }


def _crypto_trade(symbol: str, price: float, size: float, t: int, number: int, rng: random.Random) -> Item:
    """A crypto trade: fractional size, a 64-bit id, the taker's side (B buy, S sell)."""
    side = "B" if rng.random() < 0.5 else "S"
    return {"T": "t", "S": symbol, "p": price, "s": size, "t": t, "i": _CRYPTO_TRADE_ID_BASE + number, "tks": side}


def _unsend_snapshots(session: AlpacaSession, items: list[Item]) -> None:
    """Items that were not sent (muted, closed): a book whose snapshot was among them starts again."""
    for item in items:
        if item.get("r") is True:
            session.books.pop(item["S"], None)


def _valid_symbol(spec: FeedSpec, symbol: object) -> bool:
    """A symbol the feed can carry (or ``"*"``): its own syntax for crypto and options."""
    if not isinstance(symbol, str):
        return False
    if symbol == "*":
        return True
    return bool(_SYMBOL_RE.match(symbol)) if spec.family == "stocks" else spec.accepts_symbol(symbol)


def _tape(symbol: str) -> str:
    """A stable tape per symbol (A: NYSE, B: other exchanges, C: Nasdaq)."""
    return "ABC"[zlib.crc32(symbol.encode()) % 3]


def generate_feed(
    symbols: Sequence[str],
    n_messages: int,
    *,
    batch: int = 100,
    encoding: Encoding = "msgpack",
    trade_ratio: float = 0.5,
    seed: int = 0,
    start_ns: int | None = None,
) -> Feed:
    """Pre-encode ``n_messages`` trades and quotes over ``symbols`` in frames of ``batch`` items; for
    crypto pairs (``BTC/USD``...), trades and order-book messages (each book's snapshot first, then deltas).

    Prices follow a fresh :class:`Market` (seeded), timestamps advance 1 µs per item from ``start_ns``
    (default: now). The result's ``counts`` hold the number of items per type, for exact checks.
    """
    if batch < 1 or n_messages < 0 or not symbols:
        raise ValueError("need batch >= 1, n_messages >= 0 and at least one symbol")
    families = {family_of(symbol) for symbol in symbols}
    if len(families) != 1 or "options" in families:
        raise ValueError("symbols of one family, stocks or crypto")
    crypto = families == {"crypto"}
    books: dict[str, _Book] = {}
    t0 = start_ns if start_ns is not None else time.time_ns()
    market = Market(symbols, seed=seed, clock=lambda: t0 / 1e9)
    rng = random.Random(seed)
    frames: list[str | bytes] = []
    counts: Counter[str] = Counter()
    ids: Counter[str] = Counter()
    items: list[Item] = []
    for k in range(n_messages):
        symbol = symbols[rng.randrange(len(symbols))]
        t = t0 + k * 1000 + rng.randrange(1000)
        now = t / 1e9
        if crypto:
            if rng.random() < trade_ratio:
                price, size, _ = market.trade(symbol, now)
                ids[symbol] += 1
                items.append(_crypto_trade(symbol, price, size, t, ids[symbol], rng))
            else:
                book = books.setdefault(symbol, _Book())
                mid = market.price(symbol, now)
                if book.snapshot_sent:
                    items.append(book.delta(symbol, t, mid, market.coins, rng))
                else:
                    items.append(book.snapshot(symbol, t, mid, market.coins))
            counts[items[-1]["T"]] += 1
        elif rng.random() < trade_ratio:
            price, size, _ = market.trade(symbol, now)
            ids[symbol] += 1
            items.append(_stock_trade(symbol, ids[symbol], "V", price, size, ["@"], t))
            counts["t"] += 1
        else:
            bid, ask, bid_size, ask_size = market.quote(symbol, now)
            items.append(
                {
                    "T": "q",
                    "S": symbol,
                    "bx": "V",
                    "bp": bid,
                    "bs": bid_size,
                    "ax": "V",
                    "ap": ask,
                    "as": ask_size,
                    "c": ["R"],
                    "t": t,
                    "z": _tape(symbol),
                }
            )
            counts["q"] += 1
        if len(items) >= batch:
            frames.append(encode(items, encoding))
            items = []
    if items:
        frames.append(encode(items, encoding))
    return Feed(frames, counts)
