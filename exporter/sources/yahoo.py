"""Yahoo Finance fallback poller: v8 chart requests in, ``FallbackPrice``/``FallbackPoll`` events out.

Theory of operation
-------------------
One task (:meth:`YahooPoller.run`) schedules requests; each request runs in its own task, at most
``concurrency`` at a time, over one long-lived ``httpx.AsyncClient`` (connection reuse, cookie jar,
explicit timeouts, a desktop-browser User-Agent — Yahoo refuses library UAs).

*Pacing.* Every symbol owns a phase: the symbols are shuffled into ``n`` evenly spaced slots of the
poll period ``P``. Symbol ``i`` is due at ``anchor + (k + phase_i) * P`` plus a small forward jitter
(at most ``jitter`` of a slot), so requests are spread across the period, never a burst, and no
symbol is asked sooner than its schedule allows. Missed slots are skipped, not caught up, so a long
backoff resumes in the same spread order. A global pacer also keeps request starts at least half a
slot apart (at most ``max_pacing_gap``), which drains any backlog gently. ``set_active`` changes
``P`` immediately: it re-anchors the schedule at "now" and wakes the scheduler.

*Failures.* Answers that say the *source* is unhealthy — 429, 403, HTML/empty/undecodable bodies,
5xx, timeouts, connection errors — put the whole source in exponential backoff with ±``backoff_jitter``
jitter (``backoff_initial`` doubling up to ``backoff_max``; a ``Retry-After`` is a floor). When it
ends, one request (the most overdue symbol's) goes alone as a half-open probe; only its success
reopens the schedule. The failed symbol is due again at the end of the backoff, not a whole period
later: that is the retry of 5xx and timeouts. Failures of requests started before the backoff grew
are counted but do not grow it again (a burst of concurrent 429s is one step, not four). A 404
carrying ``chart.error`` parks the symbol (retried once per ``unknown_retry``); a 422 or other 4xx
is our bug and logged at ERROR. A 200 without a usable price is ``no_price``.

*Freshness follows the feed's family* (``family``). Stocks: a price whose ``regularMarketTime`` is older
than ``max(2 * P, stale_bound)`` while the regular session (``currentTradingPeriod.regular``) is open is
``stale_price`` and not emitted; outside the session a static time is normal and the price is emitted
(the core decides what to make of it). Crypto trades around the clock: the session is always open,
whatever ``currentTradingPeriod`` says, so the same age bound holds at 3 am on a Sunday. Options follow
the equity session, but a single contract can go hours without a trade: in session its price is stale
only when its last trade precedes the session's open (yesterday's price).

*Symbols.* The poller is configured with Alpaca's symbols and asks Yahoo for each one's Yahoo spelling
(``yahoo_symbols``, e.g. ``BTC/USD`` → ``BTC-USD``); the events it emits carry Alpaca's symbol, so the
core only ever sees those.

*Events.* After every request: ``DependencyLatency("yahoo", "poll", seconds)``, then a
``FallbackPrice`` when a fresh price came back, then ``FallbackPoll(ok, period_s, error)`` — ``ok``
only when a price was emitted, otherwise ``error`` is one of ``YAHOO_ERROR_TYPES``. So each request is
counted exactly once. Logs (logger ``exporter.yahoo``) are per episode: the first failure at WARNING
(ERROR for our own bugs), repeats of the same error at DEBUG, the recovery at INFO. Headers, cookies
and bodies are never logged; only Yahoo's ``y-rid`` request id is.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
import random
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from exporter.core.events import DependencyLatency, Emit, FallbackPoll, FallbackPrice
from exporter.feeds import Family
from exporter.sources.backoff import Backoff, spread
from exporter.timers import LoopTimers, Timers

__all__ = [
    "DEFAULT_USER_AGENT",
    "YahooPoller",
    "YahooPollerConfig",
    "YahooPollerStatus",
]

log = logging.getLogger("exporter.yahoo")

# yfinance's requests fallback uses a Chrome 131 Windows UA; a library UA draws 403/429 (yahoo.md §6).
DEFAULT_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
CHART_PATH = "/v8/finance/chart/"
CHART_PARAMS = {"interval": "1m", "range": "1d"}

# Errors that mean the source as a whole is unhealthy: back off every symbol.
_SOURCE_ERRORS = frozenset({"rate_limited", "forbidden", "bad_body", "server_error", "timeout", "connection_failed"})
_SOURCE_SCOPE = "source"
# asyncio fires a timer up to its clock's resolution early, and a loop whose clock only moves when it
# idles (virtual test time) then never reaches the start it woke for: a start this close is due now,
# or the scheduler would sleep 0 s again and again.
_DUE_WITHIN = 1e-6


@dataclass(frozen=True, slots=True)
class YahooPollerConfig:
    """Everything the poller needs; the daemon maps its settings onto this. Times in seconds."""

    base_url: str = "https://query1.finance.yahoo.com"
    symbols: tuple[str, ...] = ()  # Alpaca's spelling: the symbols of the events
    # Yahoo's spelling where it differs (settings.yahoo_symbol_map); a symbol absent here is asked as is.
    yahoo_symbols: Mapping[str, str] = field(default_factory=dict)
    family: Family = "stocks"  # whose session and freshness rules apply (module docstring)
    standby_interval: float = 60.0
    active_interval: float = 5.0
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    write_timeout: float = 5.0
    pool_timeout: float = 5.0
    total_timeout: float = 20.0  # whole request, body included: a drip-feeding server can't stall a slot
    concurrency: int = 4
    backoff_initial: float = 5.0
    backoff_max: float = 300.0
    backoff_jitter: float = 0.2  # ± fraction of each backoff delay
    retry_after_max: float = 3600.0  # a Retry-After beyond this is clamped (a bogus header can't mute us)
    unknown_retry: float = 600.0
    stale_bound: float = 120.0
    jitter: float = 0.3  # forward jitter of a request, as a fraction of its slot (period / symbols)
    max_pacing_gap: float = 1.0
    max_body_bytes: int = 4 * 1024 * 1024
    user_agent: str = DEFAULT_USER_AGENT
    accept_language: str = "en-US,en;q=0.9"

    def __post_init__(self) -> None:
        problems = []
        if self.standby_interval <= 0 or self.active_interval <= 0:
            problems.append("poll intervals must be > 0")
        if self.concurrency < 1:
            problems.append("concurrency must be >= 1")
        if self.backoff_initial <= 0 or self.backoff_max < self.backoff_initial:
            problems.append("need 0 < backoff_initial <= backoff_max")
        if not 0 <= self.backoff_jitter < 1 or not 0 <= self.jitter <= 1:
            problems.append("jitter fractions must be in [0, 1)")
        if "python-httpx" in self.user_agent.lower() or not self.user_agent.strip():
            problems.append("user_agent must be a browser-like User-Agent")
        if problems:
            raise ValueError("YahooPollerConfig: " + "; ".join(problems))

    @property
    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.connect_timeout, read=self.read_timeout, write=self.write_timeout, pool=self.pool_timeout
        )


@dataclass(frozen=True, slots=True)
class YahooPollerStatus:
    """A snapshot for /status. Times are Unix seconds; nothing secret."""

    active: bool
    period_s: float
    symbols: tuple[str, ...]
    last_success_at: float | None  # last request that produced a price
    last_error: str | None
    consecutive_failures: int  # requests in a row without a price
    backoff_level: int  # source-wide failures in a row (0: not backing off)
    backoff_until: float | None
    parked_symbols: Mapping[str, float]  # unknown symbol -> when it is retried
    requests_total: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class _Outcome:
    error: str | None  # None: a fresh price
    price: float | None = None
    ts_ns: int | None = None
    status: int | None = None
    retry_after: float | None = None
    detail: str = ""
    request_id: str | None = None
    answered: bool = False  # Yahoo gave a proper chart answer (the symbol exists and the source works)


@dataclass(slots=True)
class _Symbol:
    name: str  # Alpaca's spelling, in events, logs and status
    yahoo: str  # Yahoo's spelling, in requests
    phase: float  # in [0, 1): where in the period this symbol is asked
    nominal: float = 0.0  # next scheduled time (monotonic), before jitter
    jitter: float = 0.0
    last_sent: float | None = None
    in_flight: bool = False
    retry_at: float | None = None  # retry at the end of a source backoff
    parked_until: float | None = None  # unknown symbol: next (rare) retry


@dataclass(slots=True)
class _Episode:
    error: str
    started: float
    failures: int = 0


@dataclass(slots=True)
class _Backoff:
    delays: Backoff  # its attempt counter is the level: source failures in a row that grew the backoff
    until: float = 0.0  # monotonic
    generation: int = 0  # bumped on every growth; requests remember the one they started in
    probing: bool = False  # a half-open probe is in flight
    episodes: dict[str, _Episode] = field(default_factory=dict)

    @property
    def level(self) -> int:
        return self.delays.attempt


class YahooPoller:
    """The fallback poller. ``emit`` receives core events; it must not block (it is called inline)."""

    def __init__(
        self,
        config: YahooPollerConfig,
        emit: Emit,
        *,
        rng: random.Random | None = None,
        timers: Timers | None = None,
        wall_clock: Callable[[], float] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = config
        self._emit = emit
        self._rng = rng or random.Random()
        self._timers = timers = timers or LoopTimers()
        self._clock = clock = timers.monotonic
        self._wall = wall_clock or (lambda: timers.wall_ns() / 1e9)
        self._active = False
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._backoff = _Backoff(
            Backoff(
                config.backoff_initial,
                config.backoff_max,
                jitter=spread(config.backoff_jitter),
                rng=self._rng.random,
            )
        )
        self._in_flight = 0
        self._last_start = -math.inf  # global pacer: when the last request started
        self._last_success_wall: float | None = None
        self._last_error: str | None = None
        self._consecutive_failures = 0
        self._requests_total = 0
        self._closed = False
        names = list(dict.fromkeys(s.strip() for s in config.symbols if s.strip()))
        slots = list(range(len(names)))
        self._rng.shuffle(slots)  # random order, even spacing
        spelled = config.yahoo_symbols
        self._symbols = [
            _Symbol(name, spelled.get(name, name), slot / len(names)) for name, slot in zip(names, slots, strict=True)
        ]
        self._anchor = clock()
        self._schedule_all(self._anchor)
        self._client = client or httpx.AsyncClient(
            timeout=config.timeout,
            limits=httpx.Limits(
                max_connections=config.concurrency,
                max_keepalive_connections=config.concurrency,
                keepalive_expiry=30.0,
            ),
            headers={
                "User-Agent": config.user_agent,
                "Accept": "application/json,text/plain,*/*",
                "Accept-Language": config.accept_language,
            },
            follow_redirects=False,  # a redirect here is a consent/block page, not data (yahoo.md §9)
        )

    # ------------------------------------------------------------------ public API

    @property
    def active(self) -> bool:
        return self._active

    @property
    def period(self) -> float:
        """The poll period in force: the active interval while the router uses Yahoo, else standby."""
        return self.config.active_interval if self._active else self.config.standby_interval

    def set_active(self, active: bool) -> None:
        """Switch between standby and active rate, effective immediately (the schedule re-anchors now)."""
        if active == self._active:
            return
        self._active = active
        now = self._clock()
        self._anchor = now
        self._schedule_all(now)
        log.info(
            "yahoo poller rate changed",
            extra={"event": "yahoo_rate_changed", "active": active, "period_s": self.period},
        )
        self._wake.set()

    def status(self) -> YahooPollerStatus:
        now, wall = self._clock(), self._wall()
        parked = {s.name: wall + (s.parked_until - now) for s in self._symbols if s.parked_until is not None}
        backoff_until = wall + (self._backoff.until - now) if self._backoff.until > now else None
        return YahooPollerStatus(
            active=self._active,
            period_s=self.period,
            symbols=tuple(s.name for s in self._symbols),
            last_success_at=self._last_success_wall,
            last_error=self._last_error,
            consecutive_failures=self._consecutive_failures,
            backoff_level=self._backoff.level,
            backoff_until=backoff_until,
            parked_symbols=parked,
            requests_total=self._requests_total,
            in_flight=self._in_flight,
        )

    @property
    def last_success_at(self) -> float | None:
        return self._last_success_wall

    @property
    def backoff_until(self) -> float | None:
        return self.status().backoff_until

    @property
    def parked_symbols(self) -> frozenset[str]:
        return frozenset(s.name for s in self._symbols if s.parked_until is not None)

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    async def run(self) -> None:
        """Poll until cancelled. Never raises for network or parsing trouble."""
        # The first round starts now (spread over one period), however long ago the poller was built.
        self._anchor = self._clock()
        self._schedule_all(self._anchor)
        try:
            while True:
                delay = self._dispatch_due()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with self._timers.timeout(delay):
                        await self._wake.wait()
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.aclose()

    async def __aenter__(self) -> YahooPoller:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ scheduling

    def _slot(self) -> float:
        return self.period / max(1, len(self._symbols))

    def _schedule_all(self, now: float) -> None:
        for sym in self._symbols:
            # Half a period after its last request at the earliest: switching to standby doesn't cause an
            # extra request; switching to active makes every symbol due within one (short) period.
            earliest = now if sym.last_sent is None else max(now, sym.last_sent + self.period / 2)
            self._schedule_next(sym, earliest, inclusive=True)

    def _schedule_next(self, sym: _Symbol, now: float, *, inclusive: bool = False) -> None:
        """Move ``sym`` to its first phase time at (or after) ``now``, skipping missed slots."""
        period = self.period
        k = math.floor((now - self._anchor) / period - sym.phase)
        nominal = self._anchor + (k + sym.phase) * period
        while nominal < now or (not inclusive and nominal <= now):
            nominal += period
        sym.nominal = nominal
        sym.jitter = self._rng.uniform(0.0, self.config.jitter) * self._slot()

    def _due_at(self, sym: _Symbol) -> float:
        if sym.in_flight:
            return math.inf
        if sym.parked_until is not None:
            due = sym.parked_until
        elif sym.retry_at is not None:
            due = sym.retry_at
        else:
            due = sym.nominal + sym.jitter
        if sym.last_sent is not None:
            # Never ask one symbol faster than the fastest configured rate allows, whatever the switch.
            floor = min(self.config.active_interval, self.config.standby_interval) * (1 - self.config.jitter)
            due = max(due, sym.last_sent + floor)
        return due

    def _dispatch_due(self) -> float | None:
        """Start every request that is due now; return how long to sleep (None: until woken)."""
        while True:
            now = self._clock()
            if not self._symbols:
                return None
            if self._in_flight >= self.config.concurrency or self._backoff.probing:
                return None  # a finishing request wakes us
            sym = min(self._symbols, key=self._due_at)
            due = self._due_at(sym)
            if math.isinf(due):
                return None
            # The pacer's gap follows the period in force, so a rate switch takes effect at once.
            pacer = self._last_start + min(self._slot() / 2, self.config.max_pacing_gap)
            start = max(due, pacer, self._backoff.until)
            if start - now > _DUE_WITHIN:
                return start - now
            self._start(sym, now)

    def _start(self, sym: _Symbol, now: float) -> None:
        probe = self._backoff.level > 0
        if probe:
            self._backoff.probing = True  # half-open: this request alone tests the source
        sym.in_flight = True
        sym.last_sent = now
        sym.retry_at = None
        # The next slot at least half a period away: an early retry doesn't earn a second request soon.
        self._schedule_next(sym, now + self.period / 2)
        self._in_flight += 1
        self._requests_total += 1
        self._last_start = now
        task = asyncio.create_task(self._poll(sym, self._backoff.generation, probe), name=f"yahoo:{sym.name}")
        self._tasks.add(task)
        # A done-callback, not a finally: it also runs for a task cancelled before it started, so a
        # cancelled and restarted run() never inherits a phantom in-flight request or probe.
        task.add_done_callback(lambda t: self._finished(t, sym, probe))

    def _finished(self, task: asyncio.Task[None], sym: _Symbol, probe: bool) -> None:
        self._tasks.discard(task)
        sym.in_flight = False
        self._in_flight -= 1
        if probe:
            self._backoff.probing = False
        self._wake.set()

    # ------------------------------------------------------------------ one request

    async def _poll(self, sym: _Symbol, generation: int, probe: bool) -> None:
        try:
            outcome = await self._fetch(sym.yahoo)
            error = outcome.error
            self._apply(sym, outcome, generation)
        except Exception as exc:  # a bug of ours must not kill the poller: count it, log it, go on
            error = "bad_request"
            log.error(
                "yahoo poll crashed",
                exc_info=True,
                extra={"event": "yahoo_poll_crashed", "symbol": sym.name, "exc_type": type(exc).__name__},
            )
        # Exactly one FallbackPoll per request, whatever happened above.
        if error is None:
            self._consecutive_failures = 0
            self._last_success_wall = self._wall()
        else:
            self._consecutive_failures += 1
            self._last_error = error
        self._safe_emit(FallbackPoll(ok=error is None, period_s=self.period, error=error))

    async def _fetch(self, symbol: str) -> _Outcome:
        url = self.config.base_url.rstrip("/") + CHART_PATH + urllib.parse.quote(symbol, safe="")
        started = self._clock()
        try:
            async with (
                self._timers.timeout(self.config.total_timeout),
                self._client.stream("GET", url, params=CHART_PARAMS) as response,
            ):
                body = await self._read_capped(response)
                outcome = self._classify(symbol, response, body)
        except (httpx.TimeoutException, TimeoutError):
            outcome = _Outcome("timeout", detail="request timed out")
        except httpx.DecodingError as exc:
            outcome = _Outcome("bad_body", detail=f"undecodable content-encoding: {type(exc).__name__}")
        except _BodyTooLarge:
            outcome = _Outcome("bad_body", detail=f"body larger than {self.config.max_body_bytes} bytes")
        except httpx.HTTPError as exc:  # transport, protocol, connection refused/reset
            outcome = _Outcome("connection_failed", detail=f"{type(exc).__name__}: {_short(str(exc))}")
        self._safe_emit(DependencyLatency("yahoo", "poll", max(0.0, self._clock() - started)))
        return outcome

    async def _read_capped(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.config.max_body_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    def _classify(self, symbol: str, response: httpx.Response, body: bytes) -> _Outcome:
        status = response.status_code
        rid = response.headers.get("y-rid")
        ctype = response.headers.get("content-type", "").lower()
        if status in (429, 403) or status >= 500:
            error = {429: "rate_limited", 403: "forbidden"}.get(status, "server_error")
            return _Outcome(
                error,
                status=status,
                retry_after=self._retry_after(response.headers.get("retry-after")),
                detail=_body_hint(body, ctype),
                request_id=rid,
            )
        data, problem = _decode_json(body, ctype)
        if status == 404:
            error_obj = _chart_error(data)
            if error_obj is not None:
                return _Outcome("unknown_symbol", status=status, detail=_describe(error_obj), request_id=rid)
            # A 404 without chart.error is a wrong base URL or a removed endpoint: configuration.
            return _Outcome("bad_request", status=status, detail=problem or "404 without chart.error", request_id=rid)
        if 400 <= status < 500:
            error_obj = _chart_error(data)
            detail = _describe(error_obj) if error_obj is not None else (problem or _body_hint(body, ctype))
            return _Outcome("bad_request", status=status, detail=detail, request_id=rid)
        if status != 200:
            # 3xx (consent/blocked redirect), 204 and friends: not data, treat as an unhealthy source.
            return _Outcome("bad_body", status=status, detail=f"unexpected HTTP {status}", request_id=rid)
        if problem is not None:
            return _Outcome("bad_body", status=status, detail=problem, request_id=rid)
        return self._parse_chart(data, status, rid)

    def _parse_chart(self, data: Any, status: int, rid: str | None) -> _Outcome:
        def no_price(why: str) -> _Outcome:
            return _Outcome("no_price", status=status, detail=why, request_id=rid, answered=True)

        if not isinstance(data, dict):
            return _Outcome("bad_body", status=status, detail="JSON is not an object", request_id=rid)
        if "chart" not in data:
            return _Outcome("bad_body", status=status, detail="no chart key", request_id=rid)
        chart = data["chart"]
        if not isinstance(chart, dict):
            return no_price("chart is null")
        result = chart.get("result")
        if not isinstance(result, list) or not result:
            return no_price("chart.result is empty")
        first = result[0]
        meta = first.get("meta") if isinstance(first, dict) else None
        if not isinstance(meta, dict):
            return no_price("no meta")
        price = _positive_number(meta.get("regularMarketPrice"))
        if price is None:
            return no_price(f"regularMarketPrice is {_short(repr(meta.get('regularMarketPrice')), 40)}")
        market_time = _positive_number(meta.get("regularMarketTime"))
        if market_time is None:
            return no_price("no regularMarketTime")
        if market_time > 1e11:  # milliseconds where seconds belong (a known Yahoo-client trap)
            market_time /= 1000.0
        stale = self._staleness(meta, market_time, self._wall())
        if stale is not None:
            return _Outcome("stale_price", status=status, detail=stale, request_id=rid, answered=True)
        ts_ns = int(market_time) * 1_000_000_000 + round((market_time % 1) * 1e9)
        return _Outcome(None, price=price, ts_ns=ts_ns, status=status, request_id=rid, answered=True)

    def _staleness(self, meta: dict[str, Any], market_time: float, now: float) -> str | None:
        """Why a price set at ``market_time`` is too old to emit at ``now``, or None (module docstring)."""
        family = self.config.family
        if family != "crypto":  # crypto's session never closes
            session = _regular_session(meta, now)
            if session is None:
                return None  # outside the session a static time is normal
            if family == "options":
                return "regularMarketTime precedes this session's open" if market_time < session[0] else None
        bound = max(2 * self.period, self.config.stale_bound)
        age = now - market_time
        if age > bound:
            return f"regularMarketTime is {age:.0f}s old in session (bound {bound:.0f}s)"
        return None

    def _retry_after(self, value: str | None) -> float | None:
        if not value:
            return None
        value = value.strip()
        seconds: float | None
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            seconds = when.timestamp() - self._wall()
        if not math.isfinite(seconds):
            return None
        return min(max(0.0, seconds), self.config.retry_after_max)

    # ------------------------------------------------------------------ outcomes

    def _apply(self, sym: _Symbol, outcome: _Outcome, generation: int) -> None:
        """Update backoff, parking and log episodes for one outcome; emit its price if it has one."""
        now = self._clock()
        error = outcome.error
        if error is None or outcome.answered or error in ("unknown_symbol", "bad_request"):
            self._source_ok(now, generation)
        if error in _SOURCE_ERRORS:
            self._source_failed(sym, outcome, now, generation)

        if error == "unknown_symbol":
            sym.parked_until = now + self.config.unknown_retry
        elif sym.parked_until is not None:
            if outcome.answered:
                sym.parked_until = None  # it exists after all
                self._schedule_next(sym, now + self.period / 2)
            else:
                sym.parked_until = now + self.config.unknown_retry  # the retry proved nothing: next one later

        if error in ("unknown_symbol", "no_price", "stale_price"):
            self._symbol_failed(sym, outcome, first_level=logging.WARNING)
        elif error == "bad_request":
            self._symbol_failed(sym, outcome, first_level=logging.ERROR)  # our bug: loud

        if error is None and outcome.price is not None and outcome.ts_ns is not None:
            self._symbol_ok(sym, now)
            self._safe_emit(FallbackPrice(sym.name, outcome.price, outcome.ts_ns))

    def _source_ok(self, now: float, generation: int) -> None:
        b = self._backoff
        # Only a request started after the last growth proves the source is back.
        if b.level > 0 and generation != b.generation:
            return
        episode = b.episodes.pop(_SOURCE_SCOPE, None)
        b.delays.reset()
        b.until = 0.0
        if episode is not None:
            log.info(
                "yahoo recovered",
                extra={
                    "event": "yahoo_recovered",
                    "failures": episode.failures,
                    "outage_s": round(now - episode.started, 3),
                },
            )

    def _source_failed(self, sym: _Symbol, outcome: _Outcome, now: float, generation: int) -> None:
        b = self._backoff
        if generation == b.generation or b.level == 0:
            b.generation += 1
            delay = b.delays.next_delay(floor=outcome.retry_after)  # Retry-After is a floor
        else:
            # A request from before the last growth: counted, but the backoff stands (or its Retry-After
            # extends it).
            delay = outcome.retry_after or 0.0
        b.until = max(b.until, now + delay)
        # Retry this symbol as soon as the backoff is over rather than at its next slot.
        sym.retry_at = b.until
        fields: dict[str, Any] = {
            "event": "yahoo_poll_failed",
            "symbol": sym.name,
            "yahoo_symbol": sym.yahoo if sym.yahoo != sym.name else None,
            "error_type": outcome.error,
            "status": outcome.status,
            "detail": outcome.detail,
            "request_id": outcome.request_id,
            "retry_after_s": outcome.retry_after,
            "backoff_s": round(b.until - now, 3),
            "backoff_level": b.level,
        }
        self._log_failure(_SOURCE_SCOPE, outcome.error or "", now, logging.WARNING, fields)

    def _symbol_failed(self, sym: _Symbol, outcome: _Outcome, *, first_level: int) -> None:
        fields: dict[str, Any] = {
            "event": "yahoo_symbol_failed",
            "symbol": sym.name,
            "yahoo_symbol": sym.yahoo if sym.yahoo != sym.name else None,
            "error_type": outcome.error,
            "status": outcome.status,
            "detail": outcome.detail,
            "request_id": outcome.request_id,
        }
        if sym.parked_until is not None:
            fields["retry_in_s"] = self.config.unknown_retry
        self._log_failure("symbol:" + sym.name, outcome.error or "", self._clock(), first_level, fields)

    def _symbol_ok(self, sym: _Symbol, now: float) -> None:
        episode = self._backoff.episodes.pop("symbol:" + sym.name, None)
        if episode is not None:
            log.info(
                "yahoo symbol recovered",
                extra={
                    "event": "yahoo_symbol_recovered",
                    "symbol": sym.name,
                    "failures": episode.failures,
                    "outage_s": round(now - episode.started, 3),
                },
            )

    def _log_failure(self, scope: str, error: str, now: float, first_level: int, fields: dict[str, Any]) -> None:
        episodes = self._backoff.episodes
        episode = episodes.get(scope)
        if episode is None:
            episode = episodes[scope] = _Episode(error, now)
            level = first_level
        elif episode.error != error:
            episode.error = error  # a new kind of failure within the episode is news
            level = first_level
        else:
            level = logging.DEBUG
        episode.failures += 1
        fields["failures"] = episode.failures
        message = "yahoo poll failing" if scope == _SOURCE_SCOPE else "yahoo symbol failing"
        log.log(level, message, extra={k: v for k, v in fields.items() if v is not None})

    def _safe_emit(self, event: DependencyLatency | FallbackPrice | FallbackPoll) -> None:
        try:
            self._emit(event)
        except Exception:  # the consumer's bug must not stop polling
            log.exception("yahoo event consumer failed", extra={"event": "yahoo_emit_failed"})


class _BodyTooLarge(Exception):
    pass


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _body_hint(body: bytes, ctype: str) -> str:
    """A safe, short description of a body (never the body itself: it could echo anything)."""
    if not body.strip():
        return "empty body"
    head = body[:4096].lower()
    if b"will be right back" in head:
        return "outage page (Will be right back)"
    if b"too many requests" in head:
        return "Too Many Requests"
    if b"<html" in head or b"<!doctype" in head or "html" in ctype:
        return "HTML body"
    return f"non-JSON body ({ctype or 'no content-type'})"


def _decode_json(body: bytes, ctype: str) -> tuple[Any, str | None]:
    """Decode a JSON body, checking the content-type first. Returns (data, problem)."""
    if not body.strip():
        return None, "empty body"
    if ctype and "json" not in ctype:
        return None, _body_hint(body, ctype)
    if not ctype and not body.lstrip().startswith((b"{", b"[")):
        return None, _body_hint(body, ctype)
    try:
        return json.loads(body), None
    except (ValueError, UnicodeDecodeError):
        return None, "undecodable JSON"
    except RecursionError:
        return None, "JSON nested too deeply"


def _chart_error(data: Any) -> dict[str, Any] | None:
    if isinstance(data, dict):
        chart = data.get("chart")
        if isinstance(chart, dict) and isinstance(chart.get("error"), dict):
            error: dict[str, Any] = chart["error"]
            return error
    return None


def _describe(error: dict[str, Any]) -> str:
    return _short(f"{error.get('code')}: {error.get('description')}")


def _positive_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number > 0 else None


def _regular_session(meta: dict[str, Any], now: float) -> tuple[float, float] | None:
    """``currentTradingPeriod.regular`` as (start, end) when ``now`` is inside it (no marketState in chart
    meta), else None."""
    period = meta.get("currentTradingPeriod")
    regular = period.get("regular") if isinstance(period, dict) else None
    if not isinstance(regular, dict):
        return None  # unknown session: emit, and let the core judge the age
    start = _positive_number(regular.get("start"))
    end = _positive_number(regular.get("end"))
    if start is None or end is None or not start <= now < end:
        return None
    return start, end
