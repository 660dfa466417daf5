"""A local Yahoo Finance v8 chart server for the demo, the tests and the benchmarks.

It answers ``GET /v8/finance/chart/{symbol}`` with the envelope and meta fields Yahoo sends (see
``yahoo.md`` §2): int epoch seconds, ``gmtoffset`` in seconds, ``currentTradingPeriod`` for the current
exchange date computed with ``zoneinfo`` (DST-correct), ``tradingPeriods`` only for intraday intervals,
and Yahoo's headers (``content-type: application/json;charset=utf-8``,
``cache-control: public, max-age=10, stale-while-revalidate=20``). Prices come from the shared
:class:`~exporter.sim.market.Market`, so the Alpaca simulator built on the same instance agrees on
prices within the spread.

Bars follow the exchange's sessions (the NYSE calendar of :mod:`exporter.core.market_hours`: weekends,
holidays, 13:00 early closes) at every granularity Yahoo serves: intraday bars from the session open
(1m with null holes, as Yahoo has), one daily bar per session stamped at its open, weekly, monthly,
quarterly and 5-session bars stamped at the open of their first session, for a ``range`` or a
``period1``/``period2`` window; ``range=1y&interval=1d`` is about 250 bars. During the regular session
``regularMarketTime`` and the last bar are "now"; outside it they stay in the last session (its close),
as Yahoo's do. The series is a deterministic wave per symbol that ends at the live price, so
``close[-1] == regularMarketPrice``; outside the session the price still follows the shared market
(the Alpaca simulator keeps trading at every hour).

Symbols are asked for as Yahoo spells them (:func:`exporter.feeds.yahoo_symbol`): ``BTC-USD`` answers
for the market's ``BTC/USD`` as a ``CRYPTOCURRENCY`` of exchange ``CCC`` on a 24/7 UTC calendar (every
day is a session from 00:00 to 24:00 UTC, so ``regularMarketTime`` keeps moving at night and on
weekends); OCC option symbols answer as ``OPTION`` of exchange ``OPR`` on the equity sessions.

Faults are scripted through methods (each bounded by a request count and/or a duration, optionally
limited to some symbols): 429 bursts with or without ``Retry-After``, a token bucket that once tripped
stays at 429, 5xx, 403, slow answers, HTML "Will be right back" pages, empty 200s, dropped
connections, and per-symbol body shapes (null prices, ``{"chart":null}``, no bars, frozen time, price
overrides and spikes, unknown symbols). Every request is logged with its path, query, headers,
monotonic arrival time and final status, so tests can assert User-Agent, spacing and backoff.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import math
import secrets
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from aiohttp import web

from exporter.core.market_hours import is_trading_day, nyse_early_closes
from exporter.feeds import yahoo_symbol
from exporter.sim.http_server import HttpSimulator
from exporter.sim.market import Market, family_of
from exporter.timers import LoopTimers

__all__ = ["Shape", "SimRequest", "YahooSimulator"]

# The loop's clock (time.monotonic on asyncio's loops), so tests on virtual loop time see one timeline.
_loop_clock = LoopTimers()

CHART_CONTENT_TYPE = "application/json;charset=utf-8"
CHART_CACHE_CONTROL = "public, max-age=10, stale-while-revalidate=20"
RATE_LIMIT_BODY = b"Edge: Too Many Requests"
OUTAGE_HTML = (
    b'<!DOCTYPE html><html lang="en-us"><head><meta charset="utf-8"><title>Yahoo</title></head>'
    b'<body><div id="message-1">Will be right back...</div>'
    b'<div id="message-2">Thank you for your patience.</div>'
    b"<div>Our engineers are working quickly to resolve the issue.</div></body></html>"
)
FORBIDDEN_HTML = b"<!DOCTYPE html><html><head><title>403 Forbidden</title></head><body>Forbidden</body></html>"

VALID_INTERVALS: tuple[str, ...] = (
    "1m", "2m", "5m", "15m", "30m", "60m", "90m", "1h", "1d", "5d", "1wk", "1mo", "3mo",
)  # fmt: skip
VALID_RANGES: tuple[str, ...] = ("1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max")
_INTRADAY_SECONDS: dict[str, int] = {
    "1m": 60, "2m": 120, "5m": 300, "15m": 900, "30m": 1800, "60m": 3600, "90m": 5400, "1h": 3600,
}  # fmt: skip
# Daily and longer bars: sessions grouped by day, 5 sessions, ISO week, month, quarter.
_GROUPS: dict[str, Callable[[date, int], object]] = {
    "1d": lambda day, index: day,
    "5d": lambda day, index: index // 5,  # ``index`` counts sessions back from the last one
    "1wk": lambda day, index: day.isocalendar()[:2],
    "1mo": lambda day, index: (day.year, day.month),
    "3mo": lambda day, index: (day.year, (day.month - 1) // 3),
}
_RANGE_SESSIONS: dict[str, int] = {"1d": 1, "5d": 5}
_RANGE_MONTHS: dict[str, int] = {"1mo": 1, "3mo": 3, "6mo": 6, "1y": 12, "2y": 24, "5y": 60, "10y": 120}
FIRST_TRADE_DATE = 345479400  # 1980-12-12 14:30 UTC, the meta field of the fixture (and ``range=max``'s start)
_RANGE_DAYS: dict[str, float] = {
    "1d": 1, "5d": 5, "1mo": 31, "3mo": 92, "6mo": 183, "1y": 366, "2y": 731, "5y": 1827,
    "10y": 3653, "ytd": 366, "max": math.inf,
}  # fmt: skip
# How far back each intraday granularity reaches (yahoo.md §2 "Limits").
_INTERVAL_MAX_DAYS: dict[str, float] = {
    "1m": 8, "2m": 60, "5m": 60, "15m": 60, "30m": 60, "90m": 60, "60m": 730, "1h": 730,
}  # fmt: skip

Shape = Literal[
    "normal",
    "null_price",  # meta.regularMarketPrice: null
    "missing_price",  # no regularMarketPrice key
    "zero_price",  # regularMarketPrice: 0
    "nan_price",  # regularMarketPrice: NaN (Python's json writes the bare literal, as some servers do)
    "chart_null",  # {"chart":null}
    "result_null",  # {"chart":{"result":null,"error":null}}
    "result_empty",  # {"chart":{"result":[],"error":null}}
    "no_bars",  # no timestamp key, quote:[{}], currency:null (fixture LUCYW)
    "null_last_bar",  # the last minute bar is all null
]


@dataclass(slots=True)
class SimRequest:
    """One request as the server saw it. ``at`` is ``_loop_clock.monotonic()`` on arrival."""

    path: str  # decoded, e.g. /v8/finance/chart/^GSPC
    raw_path: str  # as sent, e.g. /v8/finance/chart/%5EGSPC?interval=1m&range=1d
    symbol: str
    params: dict[str, str]
    headers: dict[str, str]
    at: float
    peer: str = ""  # client "host:port": one port across requests means the connection was reused
    status: int = 0  # 0: no answer (connection dropped, or the client gave up first)


@dataclass(slots=True)
class _Fault:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # answer only after this many seconds
    close: bool = False  # drop the connection instead of answering
    symbols: frozenset[str] | None = None  # None: every symbol
    remaining: int | None = None  # requests left; None: unbounded by count
    until: float | None = None  # monotonic deadline; None: unbounded by time

    def live(self, now: float) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        return self.until is None or now < self.until

    def matches(self, symbol: str) -> bool:
        return self.symbols is None or symbol in self.symbols


@dataclass(slots=True)
class _Bucket:
    """A token bucket shared by every client: empty → 429 for ``trip_seconds``, even for valid requests."""

    rate: float
    burst: float
    trip_seconds: float
    retry_after: str | None
    tokens: float
    at: float
    tripped_until: float = 0.0


class YahooSimulator(HttpSimulator):
    """Serve Yahoo's v8 chart endpoint on loopback from a shared :class:`Market`.

    ``clock`` gives the wall time (Unix seconds) used for ``regularMarketTime``, the sessions and the
    bars; it defaults to the market's clock. ``timezone`` is the exchange's (the calendar is NYSE's).
    Symbols the market does not know, or marked with :meth:`add_unknown`, answer Yahoo's 404. Use as
    ``async with YahooSimulator(market) as sim:`` or call :meth:`start` / :meth:`stop`; :attr:`url` is
    the base URL to give the poller.
    """

    def __init__(
        self,
        market: Market,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], float] | None = None,
        timezone: str = "America/New_York",
        max_log: int = 100_000,
    ) -> None:
        self.market = market
        super().__init__(host, port)
        self.clock: Callable[[], float] = clock or market.now  # settable: tests move the day
        self._tz = ZoneInfo(timezone)
        self._tz_name = timezone
        self._max_log = max_log
        self.requests: list[SimRequest] = []
        self._faults: list[_Fault] = []
        self._bucket: _Bucket | None = None
        self._shapes: dict[str, Shape] = {}
        self._frozen: dict[str, int] = {}
        self._price_override: dict[str, float | None] = {}
        self._spike: dict[str, float] = {}
        self._unknown: set[str] = set()
        self._session_cache: dict[tuple[date, bool], _Session] = {}
        self._yahoo_names: dict[str, str] = {}  # Yahoo's spelling -> the market's symbol

    # ------------------------------------------------------------------ lifecycle (HttpSimulator)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v8/finance/chart/{symbol}", self._handle_chart)

    # ------------------------------------------------------------------ faults

    def fail(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str | None = "text/plain;charset=utf-8",
        headers: dict[str, str] | None = None,
        requests: int | None = None,
        seconds: float | None = None,
        symbols: Iterable[str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer ``status`` with ``body`` for the next ``requests`` requests and/or ``seconds`` seconds.

        With neither bound the fault lasts until :meth:`clear_faults`. Earlier faults take precedence.
        """
        self._add_fault(_Fault(status, body, content_type, dict(headers or {}), delay), requests, seconds, symbols)

    def _add_fault(
        self, fault: _Fault, requests: int | None, seconds: float | None, symbols: Iterable[str] | None = None
    ) -> None:
        """Bound a fault by count, time and symbols, and queue it behind the earlier ones."""
        fault.symbols = None if symbols is None else frozenset(symbols)
        fault.remaining = requests
        fault.until = None if seconds is None else _loop_clock.monotonic() + seconds
        self._faults.append(fault)

    def rate_limit(
        self,
        *,
        requests: int | None = None,
        seconds: float | None = None,
        retry_after: float | str | None = None,
        symbols: Iterable[str] | None = None,
    ) -> None:
        """429 ``Edge: Too Many Requests`` (text/plain), with ``Retry-After`` when given (seconds or a date)."""
        headers = {} if retry_after is None else {"Retry-After": _retry_after_text(retry_after)}
        self.fail(429, RATE_LIMIT_BODY, headers=headers, requests=requests, seconds=seconds, symbols=symbols)

    def rate_limit_bucket(
        self, rate: float, burst: float, trip_seconds: float, *, retry_after: float | str | None = None
    ) -> None:
        """Allow ``rate`` requests/s with bursts of ``burst``; once empty, answer 429 for ``trip_seconds``."""
        now = _loop_clock.monotonic()
        text = None if retry_after is None else _retry_after_text(retry_after)
        self._bucket = _Bucket(rate, burst, trip_seconds, text, tokens=burst, at=now)

    def server_error(
        self,
        status: int = 503,
        *,
        requests: int | None = None,
        seconds: float | None = None,
        retry_after: float | str | None = None,
        symbols: Iterable[str] | None = None,
    ) -> None:
        headers = {} if retry_after is None else {"Retry-After": _retry_after_text(retry_after)}
        body = b'{"finance":{"result":null,"error":{"code":"Internal Server Error","description":""}}}'
        self.fail(
            status,
            body,
            content_type=CHART_CONTENT_TYPE,
            headers=headers,
            requests=requests,
            seconds=seconds,
            symbols=symbols,
        )

    def forbidden(self, *, requests: int | None = None, seconds: float | None = None) -> None:
        """403 with an HTML page (a blocked client)."""
        self.fail(403, FORBIDDEN_HTML, content_type="text/html;charset=utf-8", requests=requests, seconds=seconds)

    def html_outage(self, status: int = 200, *, requests: int | None = None, seconds: float | None = None) -> None:
        """Yahoo's "Will be right back" HTML page (seen with 200 as well as 5xx)."""
        self.fail(status, OUTAGE_HTML, content_type="text/html;charset=utf-8", requests=requests, seconds=seconds)

    def empty_body(self, *, requests: int | None = None, seconds: float | None = None) -> None:
        """200 with a JSON content-type and no body."""
        self.fail(200, b"", content_type=CHART_CONTENT_TYPE, requests=requests, seconds=seconds)

    def slow(
        self,
        delay: float,
        *,
        requests: int | None = None,
        seconds: float | None = None,
        symbols: Iterable[str] | None = None,
    ) -> None:
        """Answer normally, but only after ``delay`` seconds (longer than a client timeout: a hang)."""
        self._add_fault(_Fault(status=0, delay=delay), requests, seconds, symbols)

    def outage(
        self,
        mode: Literal["503", "close"] = "503",
        *,
        requests: int | None = None,
        seconds: float | None = None,
    ) -> None:
        """Refuse everything: a bare 503, or drop each connection without an answer."""
        if mode == "close":
            self._add_fault(_Fault(status=0, close=True), requests, seconds)
        else:
            self.fail(503, b"Service Unavailable", requests=requests, seconds=seconds)

    def set_shape(self, symbol: str, shape: Shape) -> None:
        """Make ``symbol``'s 200 answers take one of the odd shapes Yahoo has sent ("normal" resets)."""
        if shape == "normal":
            self._shapes.pop(symbol, None)
        else:
            self._shapes[symbol] = shape

    def freeze_time(self, symbol: str, at: int | None) -> None:
        """Pin ``symbol``'s ``regularMarketTime`` to ``at`` (Unix seconds); ``None`` unpins."""
        if at is None:
            self._frozen.pop(symbol, None)
        else:
            self._frozen[symbol] = int(at)

    def set_price(self, symbol: str, price: float | None) -> None:
        """Report ``price`` for ``symbol`` instead of the market's (``None`` restores the market)."""
        if price is None:
            self._price_override.pop(symbol, None)
        else:
            self._price_override[symbol] = price

    def spike(self, symbol: str, factor: float | None) -> None:
        """Multiply ``symbol``'s price by ``factor`` (e.g. 100 for a GBp-style 100x jump); ``None`` ends it."""
        if factor is None:
            self._spike.pop(symbol, None)
        else:
            self._spike[symbol] = factor

    def add_unknown(self, symbol: str) -> None:
        """Answer Yahoo's 404 "No data found, symbol may be delisted" for ``symbol``."""
        self._unknown.add(symbol)

    def remove_unknown(self, symbol: str) -> None:
        self._unknown.discard(symbol)

    def clear_faults(self) -> None:
        """Remove every fault, the token bucket and every per-symbol scenario."""
        self._faults.clear()
        self._bucket = None
        self._shapes.clear()
        self._frozen.clear()
        self._price_override.clear()
        self._spike.clear()
        self._unknown.clear()

    def requests_for(self, symbol: str) -> list[SimRequest]:
        return [r for r in self.requests if r.symbol == symbol]

    # ------------------------------------------------------------------ serving

    async def _handle_chart(self, request: web.Request) -> web.StreamResponse:
        symbol = request.match_info["symbol"]
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        record = SimRequest(
            path=request.path,
            raw_path=request.raw_path,
            symbol=symbol,
            params=dict(request.query),
            headers=dict(request.headers),
            at=_loop_clock.monotonic(),
            peer=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "",
        )
        if len(self.requests) >= self._max_log:
            del self.requests[: self._max_log // 2]
        self.requests.append(record)
        response = await self._answer(request, symbol, record.at)
        if response is None:
            # The transport is already aborted: aiohttp discards whatever is returned now.
            return web.Response(status=499)
        record.status = response.status
        return response

    async def _answer(self, request: web.Request, symbol: str, now: float) -> web.StreamResponse | None:
        if self._bucket is not None and self._bucket_empty(now):
            headers = {} if self._bucket.retry_after is None else {"Retry-After": self._bucket.retry_after}
            return _response(429, RATE_LIMIT_BODY, "text/plain;charset=utf-8", headers)
        fault = self._take_fault(symbol, now)
        if fault is not None:
            if fault.delay > 0:
                await asyncio.sleep(fault.delay)
            if fault.close:
                if request.transport is not None:
                    request.transport.abort()
                return None
            if fault.status:
                return _response(fault.status, fault.body, fault.content_type, fault.headers)
        return self._chart_response(request, symbol)

    def _bucket_empty(self, now: float) -> bool:
        bucket = self._bucket
        assert bucket is not None
        if now < bucket.tripped_until:
            return True  # once tripped, stay at 429 even for valid requests
        bucket.tokens = min(bucket.burst, bucket.tokens + (now - bucket.at) * bucket.rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return False
        bucket.tripped_until = now + bucket.trip_seconds
        bucket.tokens = 0.0
        return True

    def _take_fault(self, symbol: str, now: float) -> _Fault | None:
        self._faults = [f for f in self._faults if f.live(now)]
        for fault in self._faults:
            if fault.matches(symbol):
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault
        return None

    def _chart_response(self, request: web.Request, symbol: str) -> web.Response:
        query = request.query
        interval = query.get("interval", "1d")
        range_ = query.get("range", "1d")
        window: tuple[int, int] | None = None
        if "period1" in query or "period2" in query:  # Yahoo then ignores ``range``
            try:
                window = (int(query.get("period1", FIRST_TRADE_DATE)), int(query.get("period2", int(self.clock()))))
            except ValueError:
                return _chart_error(422, "Unprocessable Entity", "Invalid input - period1 and period2 must be integers")
            range_ = ""
        problem = _check_params(interval, range_, window, self.clock())
        if problem is not None:
            return _chart_error(422, "Unprocessable Entity", problem)
        if symbol in self._unknown or self.market_symbol(symbol) is None:
            return _chart_error(404, "Not Found", "No data found, symbol may be delisted")
        include_pre_post = query.get("includePrePost", "false").lower() == "true"
        body = self.chart_body(
            symbol, interval=interval, range_=range_, window=window, include_pre_post=include_pre_post
        )
        # allow_nan: the "nan_price" shape deliberately writes a bare NaN literal.
        data = json.dumps(body, separators=(",", ":"), allow_nan=True).encode()
        return _response(200, data, CHART_CONTENT_TYPE, {})

    # ------------------------------------------------------------------ sessions

    def market_symbol(self, symbol: str) -> str | None:
        """The market's symbol Yahoo's ``symbol`` stands for (``BTC-USD`` -> ``BTC/USD``; Alpaca's own
        spelling of a pair is unknown to Yahoo), or None."""
        symbols = self.market.symbols
        if len(self._yahoo_names) != len(symbols):  # the market has gained symbols: map them too
            self._yahoo_names = {yahoo_symbol(s, family_of(s)): s for s in symbols}
        return self._yahoo_names.get(symbol)

    def _zone(self, always: bool) -> ZoneInfo:
        return _UTC if always else self._tz

    def _session(self, day: date, always: bool = False) -> _Session:
        """Pre 04:00, regular 09:30-16:00 (13:00 on early closes), post for four hours after the close;
        ``always`` (crypto): the whole UTC day."""
        session = self._session_cache.get((day, always))
        if session is None:
            if always:
                start = int(datetime(day.year, day.month, day.day, tzinfo=_UTC).timestamp())
                session = _Session(day, start, start, start + 86_400, start + 86_400)
            else:
                close = 13 if day in nyse_early_closes(day.year) else 16
                at = self._at
                session = _Session(day, at(day, 4), at(day, 9, 30), at(day, close), at(day, close + 4))
            self._session_cache[(day, always)] = session  # a few thousand days at most (range=max)
        return session

    def _at(self, day: date, hour: int, minute: int = 0) -> int:
        return int(datetime(day.year, day.month, day.day, hour, minute, tzinfo=self._tz).timestamp())

    def _current_session(self, now: float, always: bool = False) -> _Session:
        """The session of the exchange's current date, or of the last trading day before it (weekends,
        holidays), as ``currentTradingPeriod`` shows it."""
        day = datetime.fromtimestamp(now, self._zone(always)).date()
        return self._session(day if always else _trading_day_on_or_before(day), always)

    def last_session(self, now: float | None = None, *, always: bool = False) -> _Session:
        """The latest session that has opened by ``now`` (today's once 09:30 has passed; crypto: today's)."""
        t = self.clock() if now is None else now
        session = self._current_session(t, always)
        if t < session.open:
            session = self._session(_trading_day_on_or_before(session.day - timedelta(days=1)))
        return session

    def market_time(self, now: float | None = None, *, always: bool = False) -> int:
        """``regularMarketTime``: now during the regular session, else the last session's close (crypto,
        ``always``: now)."""
        t = self.clock() if now is None else now
        return min(int(t), self.last_session(t, always=always).close)

    def _sessions(
        self, last: _Session, range_: str, window: tuple[int, int] | None, always: bool = False
    ) -> list[_Session]:
        """The sessions a ``range`` (or a ``period1``/``period2`` window) covers, oldest first."""
        count = _RANGE_SESSIONS.get(range_)
        months = _RANGE_MONTHS.get(range_)
        zone = self._zone(always)
        listed = datetime.fromtimestamp(FIRST_TRADE_DATE, zone).date()
        if window is not None:
            first = datetime.fromtimestamp(window[0], zone).date()
        elif months is not None:
            first = _months_before(last.day, months) + timedelta(days=1)
        elif range_ == "ytd":
            first = date(last.day.year, 1, 1)
        else:  # "max", or a count of sessions
            first = listed
        first = max(first, listed)  # nothing before the first trade
        days: list[date] = []
        day = last.day
        while day >= first and (count is None or len(days) < count):
            if always or is_trading_day(day):
                days.append(day)
            day -= timedelta(days=1)
        return [self._session(d, always) for d in reversed(days)]

    def trading_periods(self, now: float | None = None, *, always: bool = False) -> dict[str, dict[str, Any]]:
        """``currentTradingPeriod`` (pre 04:00, regular 09:30-16:00, post until 20:00 exchange time) of the
        exchange's current date, or of the last trading day before it (as Yahoo shows the last session);
        ``always`` (crypto): the current UTC day, pre and post empty at its ends."""
        session = self._current_session(self.clock() if now is None else now, always)
        zone = self._zone(always)
        return {
            "pre": self._period(session.pre, session.open, zone),
            "regular": self._period(session.open, session.close, zone),
            "post": self._period(session.close, session.post, zone),
        }

    def _period(self, start: int, end: int, zone: ZoneInfo) -> dict[str, Any]:
        local = datetime.fromtimestamp(start, zone)
        offset = local.utcoffset()
        return {
            "timezone": local.tzname(),
            "start": start,
            "end": end,
            "gmtoffset": int(offset.total_seconds()) if offset is not None else 0,
        }

    # ------------------------------------------------------------------ the chart envelope

    def chart_body(
        self,
        symbol: str,
        *,
        interval: str = "1m",
        range_: str = "1d",
        window: tuple[int, int] | None = None,
        include_pre_post: bool = False,
    ) -> dict[str, Any]:
        """The JSON document a 200 answer carries for ``symbol`` (faults and shapes applied).

        ``window``: ``(period1, period2)`` in Unix seconds instead of ``range_``.
        """
        shape = self._shapes.get(symbol, "normal")
        if shape == "chart_null":
            return {"chart": None}
        if shape == "result_null":
            return {"chart": {"result": None, "error": None}}
        if shape == "result_empty":
            return {"chart": {"result": [], "error": None}}

        now = self.clock()
        market_symbol = self.market_symbol(symbol) or symbol
        family = family_of(market_symbol)
        always = family == "crypto"  # Yahoo's crypto quotes run 24/7
        override = self._price_override.get(symbol)
        price = override if override is not None else self.market.price(market_symbol)
        price = round(price * self._spike.get(symbol, 1.0), 4)
        last_trade = self.market_time(now, always=always)
        zone = self._zone(always)
        local = datetime.fromtimestamp(now, zone)
        offset = local.utcoffset()
        periods = self.trading_periods(now, always=always)
        regular = periods["regular"]
        wave = _Wave(symbol, price, last_trade)
        spans = self._bar_spans(interval, range_, window, now, include_pre_post, always)
        # The close before the first bar of the range (yahoo.md §2's trap: not yesterday's close).
        previous_close = wave.at(spans[0][0] - 1) if spans else price

        meta: dict[str, Any] = {
            "currency": "USD",
            "symbol": symbol,
            **_INSTRUMENTS[family],
            "firstTradeDate": FIRST_TRADE_DATE,
            "regularMarketTime": self._frozen.get(symbol, last_trade),
            "hasPrePostMarketData": True,
            "gmtoffset": int(offset.total_seconds()) if offset is not None else 0,
            "timezone": local.tzname(),
            "exchangeTimezoneName": "UTC" if always else self._tz_name,
            "regularMarketPrice": price,
            "fiftyTwoWeekHigh": round(price * 1.2, 2),
            "fiftyTwoWeekLow": round(price * 0.8, 2),
            "regularMarketDayHigh": round(price * 1.005, 2),
            "regularMarketDayLow": round(price * 0.99, 2),
            "regularMarketVolume": 1834500,
            "longName": f"{symbol} Corp",
            "shortName": f"{symbol} Corp",
            "chartPreviousClose": previous_close,
        }
        if family == "crypto":
            base, _, quote_currency = market_symbol.partition("/")
            meta["currency"] = quote_currency
            meta["hasPrePostMarketData"] = False
            meta["longName"] = meta["shortName"] = f"{base} {quote_currency}"
        elif family == "options":
            meta["hasPrePostMarketData"] = False
        if range_ == "1d":  # optional fields, typically present with range=1d only (yahoo.md §2)
            meta["previousClose"] = previous_close
            meta["scale"] = 3
        meta["priceHint"] = 2
        meta["currentTradingPeriod"] = periods
        if interval in _INTRADAY_SECONDS:
            meta["tradingPeriods"] = (
                {"pre": [[periods["pre"]]], "regular": [[regular]], "post": [[periods["post"]]]}
                if include_pre_post
                else [[regular]]
            )
        meta["dataGranularity"] = interval
        meta["range"] = range_
        meta["validRanges"] = list(VALID_RANGES)
        if shape == "null_price":
            meta["regularMarketPrice"] = None
        elif shape == "missing_price":
            del meta["regularMarketPrice"]
        elif shape == "zero_price":
            meta["regularMarketPrice"] = 0
        elif shape == "nan_price":
            meta["regularMarketPrice"] = math.nan

        result: dict[str, Any] = {"meta": meta}
        if shape == "no_bars" or not spans:
            if shape == "no_bars":
                meta["currency"] = None
            result["indicators"] = {"quote": [{}]}  # no bars: no timestamp key either
            return {"chart": {"result": [result], "error": None}}
        holes = interval == "1m"  # minutes without a trade
        quote = wave.bars(spans, holes=holes, null_last=shape == "null_last_bar")
        result["timestamp"] = [start for start, _ in spans]
        result["indicators"] = {"quote": [quote]}
        if interval not in _INTRADAY_SECONDS:
            result["indicators"]["adjclose"] = [{"adjclose": list(quote["close"])}]
        return {"chart": {"result": [result], "error": None}}

    def _bar_spans(
        self,
        interval: str,
        range_: str,
        window: tuple[int, int] | None,
        now: float,
        include_pre_post: bool,
        always: bool = False,
    ) -> list[tuple[int, int]]:
        """``(start, end)`` of each bar, oldest first; the last one ends at the last trade."""
        sessions = self._sessions(self.last_session(now, always=always), range_, window, always)
        spans: list[tuple[int, int]] = []
        step = _INTRADAY_SECONDS.get(interval)
        if step is not None:
            for session in sessions:
                start, end = (session.pre, session.post) if include_pre_post else (session.open, session.close)
                for t in range(start, min(end, int(now) + 1), step):
                    spans.append((t, min(t + step, end)))
        else:
            group = _GROUPS[interval]
            grouped: dict[object, list[_Session]] = {}
            for index, session in enumerate(sessions):
                grouped.setdefault(group(session.day, len(sessions) - 1 - index), []).append(session)
            # Daily and longer bars are stamped at their first session's open (yahoo.md §2).
            spans = [(members[0].open, members[-1].close) for members in grouped.values()]
        if window is not None:
            spans = [span for span in spans if window[0] <= span[0] < window[1]]
        return spans


_UTC = ZoneInfo("UTC")
# The meta fields that tell an instrument's kind (what Yahoo writes for AAPL, BTC-USD and an OCC contract).
_INSTRUMENTS: dict[str, dict[str, str]] = {
    "stocks": {"exchangeName": "NMS", "fullExchangeName": "NasdaqGS", "instrumentType": "EQUITY"},
    "crypto": {"exchangeName": "CCC", "fullExchangeName": "CCC", "instrumentType": "CRYPTOCURRENCY"},
    "options": {"exchangeName": "OPR", "fullExchangeName": "OPR", "instrumentType": "OPTION"},
}


@dataclass(frozen=True, slots=True)
class _Session:
    """One trading day's windows, in Unix seconds."""

    day: date
    pre: int
    open: int
    close: int
    post: int


class _Wave:
    """A symbol's past prices: a deterministic sum of slow waves that ends at the live ``price`` at
    ``last_trade``, so the bars are the same from one request to the next and ``close[-1]`` is the price.

    Terms: an hour's ripple, a day's swing, two weeks' and half a year's trend; scaled to about
    +-0.75 % within a day and +-7 % over months.
    """

    def __init__(self, symbol: str, price: float, last_trade: int) -> None:
        self.price = price
        self.last_trade = last_trade
        self._phase = zlib.crc32(symbol.encode()) % 10_000_000
        self._end = self._level(last_trade)

    def _level(self, t: float) -> float:
        x = t + self._phase
        sin = math.sin
        return 0.15 * sin(x / 3_571) + 0.3 * sin(x / 104_729) + sin(x / 1_299_709) + 1.5 * sin(x / 15_485_863)

    def at(self, t: float) -> float:
        return round(self.price * math.exp(0.05 * (self._level(t) - self._end)), 2)

    def bars(self, spans: list[tuple[int, int]], *, holes: bool, null_last: bool) -> dict[str, list[Any]]:
        at, last_trade = self.at, self.last_trade
        opens = [at(start) for start, _ in spans]
        # The bar holding the last trade closes at the live price; a window that ends earlier does not.
        closes = [self.price if end >= last_trade else at(end) for _, end in spans]
        quote: dict[str, list[Any]] = {"open": [], "high": [], "low": [], "close": [], "volume": []}
        last = len(spans) - 1
        for i, (start, end) in enumerate(spans):
            if (null_last and i == last) or (holes and 0 < i < last and (start // 60) % 7 == 3):
                for values in quote.values():
                    values.append(None)
                continue
            open_, close = opens[i], closes[i]
            minutes = max(1, (min(end, last_trade) - start) // 60)
            reach = 0.0002 * math.sqrt(minutes)  # wider bars have a wider high-low range
            quote["open"].append(open_)
            quote["high"].append(round(max(open_, close) * (1 + reach), 2))
            quote["low"].append(round(min(open_, close) * (1 - reach), 2))
            quote["close"].append(close)
            quote["volume"].append(int(minutes * (2500 + 1500 * math.sin(start / 86_413))))
        return quote


def _trading_day_on_or_before(day: date) -> date:
    while not is_trading_day(day):
        day -= timedelta(days=1)
    return day


def _months_before(day: date, months: int) -> date:
    year, month = divmod(day.year * 12 + day.month - 1 - months, 12)
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def _retry_after_text(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(max(0, math.ceil(value)))


def _check_params(interval: str, range_: str, window: tuple[int, int] | None, now: float) -> str | None:
    if interval not in VALID_INTERVALS:
        return f"Invalid input - interval={interval} is not supported. Valid intervals: " + ",".join(VALID_INTERVALS)
    if window is None and range_ not in VALID_RANGES:
        return f"Invalid input - range={range_} is not supported. Valid ranges: " + ",".join(VALID_RANGES)
    if window is not None and window[0] > window[1]:
        return "Invalid input - start date cannot be after end date."
    limit = _INTERVAL_MAX_DAYS.get(interval)
    if limit is None:
        return None
    if window is None:
        days, asked = _RANGE_DAYS[range_], f"range={range_}"
    else:  # 1m: at most 8 days per request; the others: starting within the last ``limit`` days
        days, asked = ((window[1] if interval == "1m" else now) - window[0]) / 86_400, "the requested period"
    if days > limit:
        if interval == "1m":
            return f"{interval} data not available for {asked}. Only 8 days worth of 1m granularity data are allowed to be fetched per request."  # noqa: E501 - Yahoo's text
        return (
            f"{interval} data not available for {asked}. The requested range must be within the last {int(limit)} days."
        )
    return None


def _chart_error(status: int, code: str, description: str) -> web.Response:
    body = {"chart": {"result": None, "error": {"code": code, "description": description}}}
    return _response(status, json.dumps(body, separators=(",", ":")).encode(), CHART_CONTENT_TYPE, {})


def _response(status: int, body: bytes, content_type: str | None, headers: dict[str, str]) -> web.Response:
    all_headers = {"cache-control": CHART_CACHE_CONTROL, "age": "0", "y-rid": secrets.token_hex(6)}
    if status >= 400:
        all_headers["cache-control"] = "no-store"
    if content_type is not None:
        all_headers["content-type"] = content_type
    all_headers.update(headers)
    # body= with the content-type in headers keeps Yahoo's exact spelling (no space before charset).
    return web.Response(status=status, body=body, headers=all_headers)
