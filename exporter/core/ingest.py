"""Ingestion: every market-data message validated, checked against its symbol's breaker and counted.

A message is received once and then either accepted — routed when its source is the routed one,
otherwise kept as standby data — or rejected with exactly one reason (``Counters``). The router's
state comes in as one flag per call (``routed_now``); this part never decides it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.core.breaker import Breaker, BreakerState, Verdict
from exporter.core.clock import Clock
from exporter.core.config import FALLBACK, PRIMARY, CoreConfig
from exporter.core.counters import Counters
from exporter.core.events import FallbackPrice, PrimaryData
from exporter.core.messages import (
    EPOCH,
    TYPE_LABELS,
    Bar,
    CancelError,
    Correction,
    CryptoDailyBar,
    CryptoUpdatedBar,
    DailyBar,
    Imbalance,
    Luld,
    Malformed,
    Orderbook,
    Quote,
    Trade,
    TradingStatus,
    Unknown,
    UpdatedBar,
    utc_from_ns,
)
from exporter.core.orderbook import Book
from exporter.core.quality import BARS_PENDING_MAX, Quality
from exporter.core.stats import LATENCY_BUCKETS, TIMED_KINDS, K, SymbolSeries
from exporter.core.validation import check_bar, check_fallback, check_orderbook, check_other

_CLOSED = BreakerState.CLOSED
_INF = math.inf
_LATENCY_FIRST_BOUND = LATENCY_BUCKETS[0]  # SymbolSeries.latency's buckets
_TIMED = frozenset(TIMED_KINDS)
_STATUS = K["status"]
_ORDERBOOK = K["orderbook"]
# Bars of every family: minute bars (2; their close is a price), updated (3) and daily (4) bars.
_BAR_KINDS: dict[type, int] = {UpdatedBar: 3, DailyBar: 4, CryptoUpdatedBar: 3, CryptoDailyBar: 4}

_OTHER_KINDS: dict[type, int] = {
    TradingStatus: K["status"],
    Luld: K["luld"],
    Correction: K["correction"],
    CancelError: K["cancel_error"],
    Imbalance: K["imbalance"],
}


@dataclass(frozen=True, slots=True)
class BreakerTripped:
    """Effect: a price tripped its symbol's breaker (the daemon logs it)."""

    symbol: str
    source: str
    price: float
    reference: float
    move_percent: float


class SymbolState:
    """Routing state of one configured symbol."""

    __slots__ = (
        "bar_minutes",
        "book",
        "breaker",
        "halted",
        "heard_at",
        "interval",
        "last_price",
        "mean_dt",
        "mean_dt2",
        "pending_minutes",
        "resumed_at",
        "routed_price",
        "routed_source",
        "routed_wall",
        "sample_from",
        "samples",
        "seen_at",
        "seen_price",
        "series",
        "symbol",
        "trade_minute",
    )

    def __init__(self, symbol: str, series: SymbolSeries | None) -> None:
        self.symbol = symbol
        self.series = series  # None when past the label cap: counts go to __other__, gauges are not exported
        self.breaker = Breaker()
        self.last_price: dict[str, float] = {}  # last accepted price per source
        self.seen_price: dict[str, float] = {}  # last validated price per source, breaker or not
        self.seen_at: dict[str, float] = {}
        self.routed_price: float | None = None
        self.routed_source = ""
        self.routed_wall = 0.0
        # Feed quality (quality.py). Times are monotonic unless named wall; minutes are Unix minutes.
        self.heard_at = -math.inf  # receive time of the last frame with a message for the symbol
        self.sample_from = -math.inf  # start of the interval sample being measured (a heard_at)
        self.interval = 0.0  # typical interval, valid once ``samples`` >= INTERVAL_MIN_SAMPLES
        self.samples = 0
        self.mean_dt = self.mean_dt2 = 0.0  # the weighted means of the intervals and their squares
        self.halted: bool | None = None  # None until a trading status says
        self.resumed_at = -math.inf
        self.trade_minute = math.nan  # minute of the last trade (nan: none since the last outage)
        self.pending_minutes: set[float] = set()  # traded minutes awaiting their bar
        self.bar_minutes: deque[float] = deque(maxlen=BARS_PENDING_MAX)  # minutes whose bar came
        self.book: Book | None = None  # the crypto order book, from its first update (orderbook.py)


class Ingest:
    __slots__ = (
        "_live_max_s",
        "_max_age_s",
        "_skew_s",
        "_trips",
        "clock",
        "config",
        "counters",
        "quality",
        "symbols",
    )

    def __init__(self, config: CoreConfig, clock: Clock, counters: Counters, quality: Quality) -> None:
        self.config = config
        self.quality = quality
        self.clock = clock
        self.counters = counters
        self._max_age_s = config.max_message_age_s
        self._skew_s = config.max_clock_skew_s
        # A "live" age: valid (neither future nor stale) and in the latency histogram's first bucket.
        self._live_max_s = min(_LATENCY_FIRST_BOUND, config.max_message_age_s)
        self.symbols = {symbol: SymbolState(symbol, counters.series_for(symbol)) for symbol in config.symbols}
        self._trips: list[BreakerTripped] = []  # breaker trips of the event being handled

    # ---- primary data: the hot path ----------------------------------------------------------------
    # Measured (docs/performance.md): this loop runs once per market-data message, so it keeps the
    # per-message work to plain attribute and list operations — no method calls on the common path
    # (a live trade or quote whose price agrees with a closed breaker), counts aggregated per frame.
    # The common path repeats exactly what the validation functions and ``_admit`` do (kept equal by
    # tests/core/test_hot_path.py); everything else goes through them. Its metrics are one count and
    # one latency sum per message: the latency's first-bucket count is derived (SymbolSeries).
    def primary(self, event: PrimaryData, now: float, routed_now: bool) -> int:
        """Validate, admit and count one frame; ``routed_now``: the primary is the routed source.
        Returns the number of data messages in it."""
        wall_ns = self.clock.wall_ns()
        wall_s = wall_ns / 1e9
        wall = utc_from_ns(wall_ns)
        max_age, skew, live_max = self._max_age_s, self._skew_s, self._live_max_s
        symbols = self.symbols
        counters = self.counters
        other = counters.other
        metrics = self.config.metrics
        percent = self.config.breaker_percent
        closed, inf, primary = _CLOSED, _INF, PRIMARY  # locals: cheaper loads
        rejected = counters.rejected
        quality = self.quality
        watch_bars = quality.watch_bars
        td_age: float | None = None  # the age of the frame's last trade or quote (the lag's sample)
        n_routed = n_standby = n_rejected = n_data = 0
        for m in event.messages:
            cls = type(m)
            # Trades and quotes are nearly the whole stream: their validation is inlined (a call chain
            # per message cost a third of the core's time). tests/core/test_hot_path.py keeps the inline
            # code deciding exactly as validation.check_trade and check_quote do. `age` (seconds) is also
            # the latency observed for a routed message. Both share one timestamp tail below, which tests
            # the usual age, `live`, first: it passes both timestamp checks at once and needs no
            # histogram bucket search if routed.
            # Crypto and options trades and quotes subclass the stock ones (messages.py) and share this
            # path; a stock message is the exact class, the cheapest isinstance (and mypy narrows).
            if isinstance(m, Trade):
                k = 0
                p = m.p
                price: float | None = p
                age = td_age = (wall - m.t).total_seconds()
                live = False
                if not (0.0 < p < inf):
                    reason = "invalid_price"
                elif m.s < 0:
                    reason = "invalid_size"
                else:
                    reason = None
            elif isinstance(m, Quote):
                k = 1
                bp, ap = m.bp, m.ap
                age = td_age = (wall - m.t).total_seconds()
                live = False
                if not (0.0 <= bp < inf and 0.0 <= ap < inf) or (bp == 0.0 and ap == 0.0):
                    reason = "invalid_price"
                elif m.bs < 0 or m.as_ < 0:
                    reason = "invalid_size"
                elif bp > ap > 0.0:
                    reason = "crossed_quote"
                else:
                    reason = None
                price = (bp + ap) / 2.0 if bp > 0.0 and ap > 0.0 else None
            elif cls is Orderbook:  # before Bar: a missed isinstance on a Struct class costs ~0.2 µs
                assert isinstance(m, Orderbook)
                k = _ORDERBOOK
                age = (wall - m.t).total_seconds()
                reason = check_orderbook(m, wall, skew)  # and, once its symbol is known, the book's own check
                price = None  # a book never moves a price (orderbook.py)
                live = 0.0 <= age <= live_max
            elif isinstance(m, Bar):
                k = _BAR_KINDS.get(cls, 2)
                reason = check_bar(m, wall, skew)
                # Only a fresh minute bar's close is a current price; updated and daily bars are aggregates.
                price = m.c if k == 2 else None
                age = 0.0  # bars carry their start time: no latency is observed for them
                live = False
            elif cls is Unknown:
                assert isinstance(m, Unknown)
                # Counted as received and rejected, so received = routed + standby + rejected stays exact.
                if metrics:
                    self.count_series(m.S).received[K["unknown"]] += 1
                n_data += 1
                rejected["malformed"] += 1
                n_rejected += 1
                continue
            elif cls is Malformed:
                assert isinstance(m, Malformed)
                label = TYPE_LABELS.get(m.T)
                if metrics:
                    series = self.count_series(m.S)
                    kind = K[label] if label else K["unknown"]
                    series.received[kind] += 1
                    if kind in _TIMED:
                        series.unobserved += 1
                n_data += 1
                rejected["malformed"] += 1
                n_rejected += 1
                continue
            else:
                assert not isinstance(m, Unknown | Malformed | Bar | Orderbook)
                k = _OTHER_KINDS[cls]
                age = (wall - m.t).total_seconds()
                reason = check_other(m, wall, skew)
                price = None
                live = 0.0 <= age <= live_max
            if k < 2 and reason is None:
                # The trade's and quote's timestamp checks (check_time), the usual live age first.
                if 0.0 <= age <= live_max:
                    live = True
                elif age < -skew:
                    reason = "future_timestamp"
                elif age > max_age:
                    reason = "stale_timestamp"
            n_data += 1
            st = symbols.get(m.S)
            if st is None:
                if metrics:
                    series = self.count_series(m.S)
                    series.received[k] += 1
                    if k < 2 or k > 4:  # timed (TIMED_KINDS)
                        series.unobserved += 1
                rejected["unknown_symbol"] += 1
                n_rejected += 1
                continue
            # Feed quality: per message one store; intervals are learned from it at each tick
            # (Quality.tick). Trades only when bars are checked, and the rarer kinds.
            st.heard_at = now
            if k != 1:
                if k == 0:
                    # The trade's own minute (its wall time is the frame's minus its age).
                    if watch_bars and reason is None and (minute := (wall_s - age) // 60.0) != st.trade_minute:
                        quality.traded(st, minute)
                elif k == 2:
                    if watch_bars:
                        assert isinstance(m, Bar)
                        quality.bar(st, (m.t - EPOCH).total_seconds() // 60.0)
                elif k == _STATUS:
                    assert isinstance(m, TradingStatus)
                    # Applied whatever its timestamp: a status repeated at subscription time is old but true.
                    quality.trading_status(st, m.sc, now)
                elif k == _ORDERBOOK and reason is None:
                    assert isinstance(m, Orderbook)
                    book = st.book
                    if book is None:
                        book = st.book = Book()
                    if book.apply(m):
                        reason = "crossed_quote"
            series = st.series or other
            if reason is None and price is not None:
                # _admit's common case inline: record the price as seen; a closed breaker whose
                # reference agrees accepts it (Breaker.check, CLOSED branch). Anything else: _admit.
                st.seen_price[primary] = price
                st.seen_at[primary] = now
                b = st.breaker
                ref = b.reference
                if b.state is closed and (ref is None or abs(price - ref) * 100.0 <= percent * ref):
                    b.reference = price
                    st.last_price[primary] = price
                else:
                    reason = self._admit(st, PRIMARY, price, now)
            # Each outcome counts the message as received once, under one `if metrics`.
            if reason is not None:
                rejected[reason] += 1
                n_rejected += 1
                if metrics:
                    series.received[k] += 1
                    if k < 2 or k > 4:  # timed: received but not observed
                        series.unobserved += 1
                continue
            if routed_now:
                n_routed += 1
                if price is not None:
                    st.routed_price = price
                    st.routed_source = primary
                st.routed_wall = wall_s
                if metrics:
                    series.received[k] += 1
                    # Latency of routed messages that carry an event time (bars carry their start time).
                    # The live case only adds to the sum: its count is derived (SymbolSeries).
                    if live:
                        series.live_sum += age
                    elif k < 2 or k > 4:
                        series.latency.observe(age if age > 0.0 else 0.0)
            else:
                n_standby += 1
                if metrics:
                    series.received[k] += 1
                    if k < 2 or k > 4:
                        series.unobserved += 1
        counters.received[PRIMARY] += n_data
        counters.routed[PRIMARY] += n_routed
        counters.standby[PRIMARY] += n_standby
        counters.rejected_by_source[PRIMARY] += n_rejected
        if n_data:
            quality.frame(now, td_age)
        n = len(event.messages)
        if n and metrics:
            # Decode-to-routed time of the frame, spread evenly over its messages.
            total_ms = (event.decode_seconds + (self.clock.monotonic() - now)) * 1000.0
            counters.processing_ms.observe_n(total_ms / n, n)
        return n_data

    def _admit(self, st: SymbolState, source: str, price: float, now: float) -> str | None:
        """Breaker check for a validated price; records it as seen/accepted. Returns a reason or None."""
        other = FALLBACK if source == PRIMARY else PRIMARY
        st.seen_price[source] = price
        st.seen_at[source] = now
        b = st.breaker
        other_price = None
        if b.state is not _CLOSED and st.seen_at.get(other, -math.inf) >= b.opened_at:
            other_price = st.seen_price.get(other)
        ref = b.reference
        verdict = b.check(
            price,
            source,
            now,
            percent=self.config.breaker_percent,
            cooldown=self.config.breaker_cooldown_s,
            other_price=other_price,
        )
        if verdict is Verdict.ACCEPT:
            st.last_price[source] = price
            return None
        if verdict is Verdict.TRIP:
            (st.series or self.counters.other).breaker_trips += 1
            assert ref is not None
            self._trips.append(BreakerTripped(st.symbol, source, price, ref, abs(price - ref) * 100.0 / ref))
        return "circuit_open"

    # ---- fallback data and time -----------------------------------------------------------------------------
    def fallback(self, event: FallbackPrice, now: float, routed_now: bool) -> None:
        """Validate, admit and count one fallback price; ``routed_now``: the fallback is the routed source."""
        wall_ns = self.clock.wall_ns()
        counters = self.counters
        counters.received[FALLBACK] += 1
        st = self.symbols.get(event.symbol)
        reason = "unknown_symbol" if st is None else check_fallback(event.price, event.ts_ns, wall_ns, self._skew_s)
        if reason is None and st is not None:
            reason = self._admit(st, FALLBACK, event.price, now)
        if reason is not None:
            counters.rejected[reason] += 1
            counters.rejected_by_source[FALLBACK] += 1
            return
        assert st is not None
        if routed_now:
            counters.routed[FALLBACK] += 1
            st.routed_price = event.price
            st.routed_source = FALLBACK
            st.routed_wall = wall_ns / 1e9
        else:
            counters.standby[FALLBACK] += 1

    def primary_lost(self) -> None:
        """The primary's connection ended: its order books are forgotten (the next connection's snapshots
        rebuild them; orderbook.py)."""
        for st in self.symbols.values():
            st.book = None

    def tick(self, now: float) -> None:
        cooldown = self.config.breaker_cooldown_s
        for st in self.symbols.values():
            st.breaker.poll(now, cooldown)

    def take_trips(self) -> Sequence[BreakerTripped]:
        """The breaker trips of the event just handled (then forgotten)."""
        if not self._trips:
            return ()
        trips, self._trips = self._trips, []
        return trips

    def count_series(self, symbol: str) -> SymbolSeries:
        """Where a message for ``symbol`` is counted: its series, or ``__other__`` past the cap."""
        st = self.symbols.get(symbol)
        if st is not None:
            return st.series or self.counters.other
        return self.counters.series_for(symbol) or self.counters.other

    def price_delta_percent(self, st: SymbolState) -> float | None:
        p = st.last_price.get(PRIMARY)
        f = st.last_price.get(FALLBACK)
        if p is None or f is None:
            return None
        return abs(p - f) * 100.0 / f
