"""A local Yahoo Finance v8 chart server for the demo, the tests and the benchmarks.

It answers ``GET /v8/finance/chart/{symbol}`` with the envelope and meta fields Yahoo sends (see
``yahoo.md`` §2): int epoch seconds, ``gmtoffset`` in seconds, ``currentTradingPeriod`` for the current
exchange date computed with ``zoneinfo`` (DST-correct), ``tradingPeriods`` only for intraday intervals,
OHLCV arrays with null holes, and Yahoo's headers (``content-type: application/json;charset=utf-8``,
``cache-control: public, max-age=10, stale-while-revalidate=20``). Prices come from the shared
:class:`~exporter.sim.market.Market`, so the Alpaca simulator built on the same instance agrees on
prices within the spread.

Faults are scripted through methods (each bounded by a request count and/or a duration, optionally
limited to some symbols): 429 bursts with or without ``Retry-After``, a token bucket that once tripped
stays at 429, 5xx, 403, slow answers, HTML "Will be right back" pages, empty 200s, dropped
connections, and per-symbol body shapes (null prices, ``{"chart":null}``, no bars, frozen time, price
overrides and spikes, unknown symbols). Every request is logged with its path, query, headers,
monotonic arrival time and final status, so tests can assert User-Agent, spacing and backoff.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from types import TracebackType
from typing import Any, Literal
from zoneinfo import ZoneInfo

from aiohttp import web

from exporter.sim.market import Market
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
_INTRADAY = frozenset({"1m", "2m", "5m", "15m", "30m", "60m", "90m", "1h"})
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


class YahooSimulator:
    """Serve Yahoo's v8 chart endpoint on loopback from a shared :class:`Market`.

    ``clock`` gives the wall time (Unix seconds) used for ``regularMarketTime`` and the trading periods;
    it defaults to the market's clock. Symbols the market does not know, or marked with
    :meth:`add_unknown`, answer Yahoo's 404. Use as ``async with YahooSimulator(market) as sim:`` or
    call :meth:`start` / :meth:`stop`; :attr:`url` is the base URL to give the poller.
    """

    def __init__(
        self,
        market: Market,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], float] | None = None,
        timezone: str = "America/New_York",
        bars: int = 30,
        max_log: int = 100_000,
    ) -> None:
        self.market = market
        self.host = host
        self.port = port
        self.clock: Callable[[], float] = clock or market.now  # settable: tests move the day
        self._tz = ZoneInfo(timezone)
        self._tz_name = timezone
        self._bars = max(1, bars)
        self._max_log = max_log
        self.requests: list[SimRequest] = []
        self._faults: list[_Fault] = []
        self._bucket: _Bucket | None = None
        self._shapes: dict[str, Shape] = {}
        self._frozen: dict[str, int] = {}
        self._price_override: dict[str, float | None] = {}
        self._spike: dict[str, float] = {}
        self._unknown: set[str] = set()
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (valid after :meth:`start`)."""
        if self._runner is None:
            raise RuntimeError("YahooSimulator is not started")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/v8/finance/chart/{symbol}", self._handle_chart)
        # Slow-answer faults must not hold up shutdown; cancel handlers of dropped clients.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        for address in runner.addresses:
            if isinstance(address, tuple):
                self.port = int(address[1])
                break
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> YahooSimulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

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
        interval = request.query.get("interval", "1d")
        range_ = request.query.get("range", "1d")
        problem = _check_params(interval, range_)
        if problem is not None:
            return _chart_error(422, "Unprocessable Entity", problem)
        if symbol in self._unknown or symbol not in self.market.symbols:
            return _chart_error(404, "Not Found", "No data found, symbol may be delisted")
        include_pre_post = request.query.get("includePrePost", "false").lower() == "true"
        body = self.chart_body(symbol, interval=interval, range_=range_, include_pre_post=include_pre_post)
        # allow_nan: the "nan_price" shape deliberately writes a bare NaN literal.
        data = json.dumps(body, separators=(",", ":"), allow_nan=True).encode()
        return _response(200, data, CHART_CONTENT_TYPE, {})

    # ------------------------------------------------------------------ the chart envelope

    def trading_periods(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """``currentTradingPeriod`` (pre 04:00, regular 09:30-16:00, post until 20:00 exchange time).

        The date is the exchange's current date, or the last weekday before it at weekends (as Yahoo
        shows the last session); holidays are not modelled.
        """
        t = self.clock() if now is None else now
        day = datetime.fromtimestamp(t, self._tz).date()
        while day.weekday() >= 5:
            day -= timedelta(days=1)
        return {
            "pre": self._period(day, (4, 0), (9, 30)),
            "regular": self._period(day, (9, 30), (16, 0)),
            "post": self._period(day, (16, 0), (20, 0)),
        }

    def _period(self, day: date, start: tuple[int, int], end: tuple[int, int]) -> dict[str, Any]:
        s = datetime(day.year, day.month, day.day, start[0], start[1], tzinfo=self._tz)
        e = datetime(day.year, day.month, day.day, end[0], end[1], tzinfo=self._tz)
        offset = s.utcoffset()
        return {
            "timezone": s.tzname(),
            "start": int(s.timestamp()),
            "end": int(e.timestamp()),
            "gmtoffset": int(offset.total_seconds()) if offset is not None else 0,
        }

    def chart_body(
        self, symbol: str, *, interval: str = "1m", range_: str = "1d", include_pre_post: bool = False
    ) -> dict[str, Any]:
        """The JSON document a 200 answer carries for ``symbol`` (faults and shapes applied)."""
        shape = self._shapes.get(symbol, "normal")
        if shape == "chart_null":
            return {"chart": None}
        if shape == "result_null":
            return {"chart": {"result": None, "error": None}}
        if shape == "result_empty":
            return {"chart": {"result": [], "error": None}}

        now = self.clock()
        override = self._price_override.get(symbol)
        price = override if override is not None else self.market.price(symbol)
        price = round(price * self._spike.get(symbol, 1.0), 4)
        market_time = self._frozen.get(symbol, int(now))
        local = datetime.fromtimestamp(now, self._tz)
        offset = local.utcoffset()
        periods = self.trading_periods(now)
        regular = periods["regular"]
        previous_close = round(price * 0.995, 2)

        meta: dict[str, Any] = {
            "currency": "USD",
            "symbol": symbol,
            "exchangeName": "NMS",
            "fullExchangeName": "NasdaqGS",
            "instrumentType": "EQUITY",
            "firstTradeDate": 345479400,
            "regularMarketTime": market_time,
            "hasPrePostMarketData": True,
            "gmtoffset": int(offset.total_seconds()) if offset is not None else 0,
            "timezone": local.tzname(),
            "exchangeTimezoneName": self._tz_name,
            "regularMarketPrice": price,
            "fiftyTwoWeekHigh": round(price * 1.2, 2),
            "fiftyTwoWeekLow": round(price * 0.8, 2),
            "regularMarketDayHigh": round(price * 1.005, 2),
            "regularMarketDayLow": round(price * 0.99, 2),
            "regularMarketVolume": 1834500,
            "longName": f"{symbol} Corp",
            "shortName": f"{symbol} Corp",
            "chartPreviousClose": previous_close,
            "previousClose": previous_close,
            "scale": 3,
            "priceHint": 2,
            "currentTradingPeriod": periods,
        }
        if interval in _INTRADAY:
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
        if shape == "no_bars":
            meta["currency"] = None
            result["indicators"] = {"quote": [{}]}
        else:
            timestamps, quote = self._bars_for(price, now, null_last=shape == "null_last_bar")
            result["timestamp"] = timestamps
            result["indicators"] = {"quote": [quote]}
        return {"chart": {"result": [result], "error": None}}

    def _bars_for(self, price: float, now: float, *, null_last: bool) -> tuple[list[int], dict[str, list[Any]]]:
        """The last minutes' bars ending at ``price``, with a null hole every seventh minute."""
        minute = int(now) - int(now) % 60
        timestamps = [minute - 60 * k for k in range(self._bars - 1, -1, -1)]
        quote: dict[str, list[Any]] = {"open": [], "high": [], "low": [], "close": [], "volume": []}
        for i, ts in enumerate(timestamps):
            last = i == len(timestamps) - 1
            if (null_last and last) or (not last and (ts // 60) % 7 == 3):
                for values in quote.values():
                    values.append(None)
                continue
            close = price if last else round(price * (1 + 0.0008 * math.sin(ts / 60.0)), 2)
            open_ = round(close * (1 - 0.0003 * math.cos(ts / 60.0)), 2)
            quote["open"].append(open_)
            quote["high"].append(round(max(open_, close) * 1.0004, 2))
            quote["low"].append(round(min(open_, close) * 0.9996, 2))
            quote["close"].append(close)
            quote["volume"].append(100 * (1 + (ts // 60) % 50))
        return timestamps, quote


def _retry_after_text(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(max(0, math.ceil(value)))


def _check_params(interval: str, range_: str) -> str | None:
    if interval not in VALID_INTERVALS:
        return f"Invalid input - interval={interval} is not supported. Valid intervals: " + ",".join(VALID_INTERVALS)
    if range_ not in VALID_RANGES:
        return f"Invalid input - range={range_} is not supported. Valid ranges: " + ",".join(VALID_RANGES)
    limit = _INTERVAL_MAX_DAYS.get(interval)
    if limit is not None and _RANGE_DAYS[range_] > limit:
        if interval == "1m":
            return f"{interval} data not available for range={range_}. Only 8 days worth of 1m granularity data are allowed to be fetched per request."  # noqa: E501 - Yahoo's text
        return f"{interval} data not available for range={range_}. The requested range must be within the last {int(limit)} days."  # noqa: E501 - Yahoo's text
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
