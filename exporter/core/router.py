"""The DataSourceRouter: failover state machine, validation, circuit breakers and accounting.

Theory of operation
-------------------
``Core.handle(event)`` is the only entry point. It reads the injected clock once, applies the event,
re-evaluates source health and returns the effects (transitions, breaker trips, a stale stream) for
the daemon to log and act on. No I/O, no sleeping, no logging, no prometheus: time comes from the
clock, the outside world from events, and metrics read the state kept here.

Health
  primary  = connected, authenticated, subscribed, and (when stale_after > 0 and the market is open)
             market data seen within stale_after of the later of the subscription ack and the last
             market-data message.
  fallback = its last successful poll is no older than three poll periods (the period in force then).

Transitions (``TRANSITIONS``, keyed by state and the health flags; ``held`` = the primary has been
healthy for at least failback_after):

  BOTH_UNAVAILABLE  primary healthy                  -> PRIMARY_ACTIVE
                    fallback healthy only            -> FALLBACK_ACTIVE (a failover if an outage is open)
  PRIMARY_ACTIVE    primary down, fallback healthy   -> FALLBACK_ACTIVE (failover)
                    both down                        -> BOTH_UNAVAILABLE
  FALLBACK_ACTIVE   primary held for failback_after  -> PRIMARY_ACTIVE (failback)
                    fallback down, primary healthy   -> PRIMARY_ACTIVE
                    both down                        -> BOTH_UNAVAILABLE

Counting is exact: each data message is received once and then either accepted (routed when its
source is the active one, otherwise kept as standby data) or rejected with exactly one reason.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from exporter.core.breaker import Breaker, BreakerState, Verdict
from exporter.core.clock import Clock
from exporter.core.events import (
    ALPACA_ERROR_TYPES,
    YAHOO_ERROR_TYPES,
    DependencyLatency,
    Event,
    FallbackPoll,
    FallbackPrice,
    PrimaryAuthenticated,
    PrimaryConnection,
    PrimaryControl,
    PrimaryData,
    PrimaryError,
    PrimarySubscribed,
    Tick,
)
from exporter.core.market_hours import session_opened_at
from exporter.core.messages import (
    TYPE_LABELS,
    Bar,
    CancelError,
    Correction,
    DailyBar,
    Imbalance,
    Luld,
    Malformed,
    Quote,
    Trade,
    TradingStatus,
    Unknown,
    UpdatedBar,
    utc_from_ns,
)
from exporter.core.stats import (
    DEPENDENCY_BUCKETS,
    LATENCY_BUCKETS,
    MESSAGE_TYPES,
    OTHER_SYMBOL,
    PROCESSING_MS_BUCKETS,
    RECOVERY_BUCKETS,
    TIMED_KINDS,
    VALIDATION_REASONS,
    Histogram,
    K,
    SymbolSeries,
)
from exporter.core.validation import check_bar, check_fallback, check_other

_CLOSED = BreakerState.CLOSED
_LATENCY_FIRST_BOUND = LATENCY_BUCKETS[0]  # SymbolSeries.latency's buckets
_TIMED = frozenset(TIMED_KINDS)

_OTHER_KINDS: dict[type, int] = {
    TradingStatus: K["status"],
    Luld: K["luld"],
    Correction: K["correction"],
    CancelError: K["cancel_error"],
    Imbalance: K["imbalance"],
}


_INF = math.inf


class State(IntEnum):
    PRIMARY_ACTIVE = 0
    FALLBACK_ACTIVE = 1
    BOTH_UNAVAILABLE = 2


PRIMARY = "alpaca"
FALLBACK = "yahoo"
SOURCES = (PRIMARY, FALLBACK)
UPTIME_WINDOW_S = 30 * 86_400.0

# (state, primary healthy, fallback healthy, primary held for failback_after) -> (next state, reason).
# Rows are total over the reachable flag combinations (held implies primary healthy).
TRANSITIONS: dict[tuple[State, bool, bool, bool], tuple[State, str]] = {}
for _f in (False, True):
    for _h in (False, True):
        TRANSITIONS[(State.BOTH_UNAVAILABLE, True, _f, _h)] = (State.PRIMARY_ACTIVE, "primary healthy")
        TRANSITIONS[(State.PRIMARY_ACTIVE, True, _f, _h)] = (State.PRIMARY_ACTIVE, "")
    TRANSITIONS[(State.FALLBACK_ACTIVE, True, _f, True)] = (State.PRIMARY_ACTIVE, "failback: primary healthy")
TRANSITIONS[(State.BOTH_UNAVAILABLE, False, True, False)] = (State.FALLBACK_ACTIVE, "fallback healthy")
TRANSITIONS[(State.BOTH_UNAVAILABLE, False, False, False)] = (State.BOTH_UNAVAILABLE, "")
TRANSITIONS[(State.PRIMARY_ACTIVE, False, True, False)] = (State.FALLBACK_ACTIVE, "primary failed")
TRANSITIONS[(State.PRIMARY_ACTIVE, False, False, False)] = (State.BOTH_UNAVAILABLE, "primary failed, fallback down")
TRANSITIONS[(State.FALLBACK_ACTIVE, True, True, False)] = (State.FALLBACK_ACTIVE, "")
TRANSITIONS[(State.FALLBACK_ACTIVE, True, False, False)] = (State.PRIMARY_ACTIVE, "fallback failed, primary healthy")
TRANSITIONS[(State.FALLBACK_ACTIVE, False, True, False)] = (State.FALLBACK_ACTIVE, "")
TRANSITIONS[(State.FALLBACK_ACTIVE, False, False, False)] = (State.BOTH_UNAVAILABLE, "fallback failed, primary down")


def mermaid_diagram() -> str:
    """The state diagram, generated from TRANSITIONS so it cannot go stale (README embeds it)."""
    edges: dict[tuple[str, str], set[str]] = {}
    for (state, _p, _f, _h), (nxt, reason) in TRANSITIONS.items():
        if nxt is not state:
            edges.setdefault((state.name, nxt.name), set()).add(reason)
    lines = ["stateDiagram-v2", "    [*] --> BOTH_UNAVAILABLE"]
    for (a, b), reasons in sorted(edges.items()):
        lines.append(f"    {a} --> {b}: {' / '.join(sorted(reasons))}")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CoreConfig:
    symbols: tuple[str, ...]
    stale_after_s: float = 30.0
    market_hours: str = "regular"  # regular | overnight | always | never
    market_delay_s: float = 0.0  # delayed feeds: the session as the data sees it
    failback_after_s: float = 30.0
    max_message_age_s: float = 60.0
    max_clock_skew_s: float = 5.0
    breaker_percent: float = 20.0
    breaker_cooldown_s: float = 60.0
    max_symbol_series: int = 500
    fallback_enabled: bool = True
    # False skips only the hot path's metric bookkeeping (per-symbol received counts, latency and
    # processing histograms): routing, validation, breakers and accounting stay. For the benchmark's
    # "what does monitoring cost" run; the daemon always keeps it on.
    metrics: bool = True


# Effects: what the daemon must log or act on.
@dataclass(frozen=True, slots=True)
class Transition:
    previous: State
    new: State
    reason: str
    seconds_in_previous: float
    failover: bool = False
    recovery_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class BreakerTripped:
    symbol: str
    source: str
    price: float
    reference: float
    move_percent: float


@dataclass(frozen=True, slots=True)
class PrimaryStale:
    silent_seconds: float


Effect = Transition | BreakerTripped | PrimaryStale
_NONE: tuple[Effect, ...] = ()


class SymbolState:
    """Routing state of one configured symbol."""

    __slots__ = (
        "breaker",
        "last_price",
        "routed_price",
        "routed_source",
        "routed_wall",
        "seen_at",
        "seen_price",
        "series",
        "symbol",
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


class Core:
    def __init__(self, config: CoreConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        now = clock.monotonic()
        self._max_age_s = config.max_message_age_s
        self._skew_s = config.max_clock_skew_s
        # A "live" age: valid (neither future nor stale) and in the latency histogram's first bucket.
        self._live_max_s = min(_LATENCY_FIRST_BOUND, config.max_message_age_s)

        # Label series, capped: configured symbols first, in order, then unknown symbols as they appear.
        self.series: dict[str, SymbolSeries] = {}
        self.other = SymbolSeries(OTHER_SYMBOL)
        self.symbols: dict[str, SymbolState] = {}
        for symbol in config.symbols:
            self.symbols[symbol] = SymbolState(symbol, self._series_for(symbol))

        # Router state.
        self.state = State.BOTH_UNAVAILABLE
        self.state_since = now
        self.state_since_wall = clock.wall_ns() / 1e9
        self.started = now
        self.state_seconds = dict.fromkeys(State, 0.0)
        self.failovers = 0
        self.recovery = Histogram(RECOVERY_BUCKETS)
        self._failure_at: float | None = None  # when the open primary outage was detected
        self._down: deque[list[float]] = deque([[now, math.inf]])  # BOTH_UNAVAILABLE intervals

        # Primary health inputs.
        self.conn_state = "Disconnected"
        self.authenticated = False
        self.subscribed: frozenset[str] = frozenset()
        self._subscribed_ok = False
        self._sub_at = now
        self.last_data_at: float | None = None
        self.last_data_wall = 0.0
        self._stale = False
        self._healthy_since: float | None = None
        self.primary_reason = "not connected yet"
        self._conn_reason = "not connected yet"
        self._last_error: tuple[str, float] = ("", -math.inf)

        # Fallback health inputs.
        self.fallback_last_ok: float | None = None
        self._fallback_ok_period = 0.0
        self.fallback_last_error: str | None = None

        # Counters.
        self.control_received = 0
        self.errors = dict.fromkeys(ALPACA_ERROR_TYPES, 0)
        self.yahoo_errors = dict.fromkeys(YAHOO_ERROR_TYPES, 0)
        self.rejected = dict.fromkeys(VALIDATION_REASONS, 0)
        self.received = dict.fromkeys(SOURCES, 0)  # data messages (alpaca) / prices (yahoo)
        self.routed = dict.fromkeys(SOURCES, 0)
        self.standby = dict.fromkeys(SOURCES, 0)
        self.rejected_by_source = {s: 0 for s in SOURCES}
        self.processing_ms = Histogram(PROCESSING_MS_BUCKETS)
        self.dependency_latency: dict[tuple[str, str], Histogram] = {}
        self._trips: list[Effect] = []  # breaker trips of the event being handled

    # ---- label cap -------------------------------------------------------------------------------
    def _series_for(self, symbol: str) -> SymbolSeries | None:
        series = self.series.get(symbol)
        if series is None and len(self.series) < self.config.max_symbol_series:
            series = self.series[symbol] = SymbolSeries(symbol)
        return series

    def _count_series(self, symbol: str) -> SymbolSeries:
        st = self.symbols.get(symbol)
        if st is not None:
            return st.series or self.other
        return self._series_for(symbol) or self.other

    # ---- entry point -----------------------------------------------------------------------------
    def handle(self, event: Event) -> Sequence[Effect]:
        now = self.clock.monotonic()
        cls = type(event)
        if cls is PrimaryData:
            assert isinstance(event, PrimaryData)
            self._primary_data(event, now)
        elif cls is FallbackPrice:
            assert isinstance(event, FallbackPrice)
            self._fallback_price(event, now)
        elif cls is Tick:
            for st in self.symbols.values():
                st.breaker.poll(now, self.config.breaker_cooldown_s)
        elif cls is PrimaryConnection:
            assert isinstance(event, PrimaryConnection)
            self.conn_state = event.state
            if event.state != "Connected":
                self._subscribed_ok = False
                if event.state == "Disconnected":
                    self.authenticated = False
                    self.subscribed = frozenset()  # nothing is confirmed by a server we are not connected to
                self._conn_reason = event.reason or f"connection {event.state.lower()}"
        elif cls is PrimaryAuthenticated:
            assert isinstance(event, PrimaryAuthenticated)
            self.authenticated = event.ok
        elif cls is PrimarySubscribed:
            assert isinstance(event, PrimarySubscribed)
            self.subscribed = event.symbols
            self._subscribed_ok = bool(event.symbols)
            self._sub_at = now
            self._stale = False
        elif cls is PrimaryError:
            assert isinstance(event, PrimaryError)
            if event.type in self.errors:
                self.errors[event.type] += 1
            else:
                self.errors["server_error"] += 1
            self._last_error = (f"{event.type}: {event.detail}" if event.detail else event.type, now)
        elif cls is PrimaryControl:
            assert isinstance(event, PrimaryControl)
            self.control_received += event.count
        elif cls is FallbackPoll:
            assert isinstance(event, FallbackPoll)
            if event.ok:
                self.fallback_last_ok = now
                self._fallback_ok_period = event.period_s
                self.fallback_last_error = None
            elif event.error is not None:
                self.fallback_last_error = event.error
                if event.error in self.yahoo_errors:
                    self.yahoo_errors[event.error] += 1
        elif cls is DependencyLatency:
            assert isinstance(event, DependencyLatency)
            key = (event.dependency, event.method)
            hist = self.dependency_latency.get(key)
            if hist is None:
                hist = self.dependency_latency[key] = Histogram(DEPENDENCY_BUCKETS)
            hist.observe(event.seconds)
            return _NONE
        effects = self._evaluate(now)
        if self._trips:
            trips, self._trips = self._trips, []
            return [*trips, *effects]
        return effects

    # ---- health ----------------------------------------------------------------------------------
    def primary_healthy(self, now: float) -> bool:
        if not (self.conn_state == "Connected" and self.authenticated and self._subscribed_ok):
            return False
        return not self._is_stale(now)

    def _is_stale(self, now: float) -> bool:
        cfg = self.config
        if cfg.stale_after_s <= 0:
            return False
        wall = self.clock.wall_ns() / 1e9
        opened = session_opened_at(cfg.market_hours, wall, delay_seconds=cfg.market_delay_s)
        if opened is None:
            return False  # silence while the market is closed is normal
        return now - self._silent_since(now, wall, opened) > cfg.stale_after_s

    def _silent_since(self, now: float, wall: float, opened: float) -> float:
        """Monotonic start of the current silence: the latest of ack, session open and last data."""
        last = max(self._sub_at, now - (wall - opened))
        if self.last_data_at is not None and self.last_data_at > last:
            last = self.last_data_at
        return last

    def _why_unhealthy(self, now: float, stale: bool) -> str:
        # An error reported just now explains the outage better than its symptoms (auth lost, disconnected).
        reason, at = self._last_error
        if at >= now - 1.0:
            return reason
        if stale:
            return "stale stream"
        if self.conn_state != "Connected":
            return self._conn_reason
        return "not authenticated" if not self.authenticated else "not subscribed"

    def fallback_healthy(self, now: float) -> bool:
        if not self.config.fallback_enabled or self.fallback_last_ok is None:
            return False
        return now - self.fallback_last_ok <= 3.0 * self._fallback_ok_period

    def _evaluate(self, now: float) -> Sequence[Effect]:
        effects: list[Effect] = []
        linked = self.conn_state == "Connected" and self.authenticated and self._subscribed_ok
        stale = linked and self._is_stale(now)
        p_ok = linked and not stale
        if stale and not self._stale:
            # Connected but silent while the market is open: reported once per episode.
            self._stale = True
            self.errors["stale_stream"] += 1
            wall = self.clock.wall_ns() / 1e9
            opened = session_opened_at(self.config.market_hours, wall, delay_seconds=self.config.market_delay_s)
            effects.append(PrimaryStale(now - self._silent_since(now, wall, -math.inf if opened is None else opened)))
        elif not stale:
            self._stale = False  # data resumed (or the link is down): the next silence is a new episode
        if p_ok:
            if self._healthy_since is None:
                self._healthy_since = now
        else:
            if self._healthy_since is not None or self.state is State.PRIMARY_ACTIVE:
                self.primary_reason = self._why_unhealthy(now, stale)
            self._healthy_since = None
        f_ok = self.fallback_healthy(now)
        held = p_ok and self._healthy_since is not None and now - self._healthy_since >= self.config.failback_after_s
        nxt, reason = TRANSITIONS[(self.state, p_ok, f_ok, held)]
        if nxt is not self.state:
            effects.append(self._transition(nxt, reason, now))
        return effects or _NONE

    def _transition(self, new: State, reason: str, now: float) -> Transition:
        prev = self.state
        spent = now - self.state_since
        self.state_seconds[prev] += spent
        if prev is State.PRIMARY_ACTIVE:
            self._failure_at = now  # the primary's failure was detected now
            reason = f"{reason}: {self.primary_reason}"
        failover = False
        recovery: float | None = None
        if new is State.FALLBACK_ACTIVE and self._failure_at is not None:
            failover = True
            recovery = now - self._failure_at
            self.failovers += 1
            self.recovery.observe(recovery)
            self._failure_at = None
        elif new is State.PRIMARY_ACTIVE:
            self._failure_at = None
        if new is State.BOTH_UNAVAILABLE:
            self._down.append([now, math.inf])
        elif prev is State.BOTH_UNAVAILABLE:
            self._down[-1][1] = now
        self.state = new
        self.state_since = now
        self.state_since_wall = self.clock.wall_ns() / 1e9
        return Transition(prev, new, reason, spent, failover, recovery)

    # ---- primary data: the hot path ----------------------------------------------------------------
    # Measured (docs/performance.md): this loop runs once per market-data message, so it keeps the
    # per-message work to plain attribute and list operations — no method calls on the common path
    # (a live trade or quote whose price agrees with a closed breaker), counts aggregated per frame.
    # The common path repeats exactly what the validation functions and ``_admit`` do (kept equal by
    # tests/core/test_hot_path.py); everything else goes through them. Its metrics are one count and
    # one latency sum per message: the latency's first-bucket count is derived (SymbolSeries).
    def _primary_data(self, event: PrimaryData, now: float) -> None:
        wall_ns = self.clock.wall_ns()
        wall_s = wall_ns / 1e9
        wall = utc_from_ns(wall_ns)
        max_age, skew, live_max = self._max_age_s, self._skew_s, self._live_max_s
        symbols = self.symbols
        other = self.other
        metrics = self.config.metrics
        percent = self.config.breaker_percent
        closed, inf, primary = _CLOSED, _INF, PRIMARY  # locals: cheaper loads
        routed_now = self.state is State.PRIMARY_ACTIVE
        rejected = self.rejected
        n_routed = n_standby = n_rejected = n_data = 0
        for m in event.messages:
            cls = type(m)
            # Trades and quotes are nearly the whole stream: their validation is inlined (a call chain
            # per message cost a third of the core's time). tests/core/test_hot_path.py keeps the inline
            # code deciding exactly as validation.check_trade and check_quote do. `age` (seconds) is also
            # the latency observed for a routed message. Both share one timestamp tail below, which tests
            # the usual age, `live`, first: it passes both timestamp checks at once and needs no
            # histogram bucket search if routed.
            if isinstance(m, Trade):  # Trade has no subclasses: as exact as `cls is Trade`, and mypy narrows
                k = 0
                p = m.p
                price: float | None = p
                age = (wall - m.t).total_seconds()
                live = False
                if not (0.0 < p < inf):
                    reason = "invalid_price"
                elif m.s < 0:
                    reason = "invalid_size"
                else:
                    reason = None
            elif isinstance(m, Quote):  # no subclasses either
                k = 1
                bp, ap = m.bp, m.ap
                age = (wall - m.t).total_seconds()
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
            elif cls is Bar or cls is UpdatedBar or cls is DailyBar:
                assert isinstance(m, Bar)
                k = 2 if cls is Bar else (3 if cls is UpdatedBar else 4)
                reason = check_bar(m, wall, skew)
                # Only a fresh minute bar's close is a current price; updated and daily bars are aggregates.
                price = m.c if cls is Bar else None
                age = 0.0  # bars carry their start time: no latency is observed for them
                live = False
            elif cls is Unknown:
                assert isinstance(m, Unknown)
                # Counted as received and rejected, so received = routed + standby + rejected stays exact.
                if metrics:
                    self._count_series(m.S).received[K["unknown"]] += 1
                n_data += 1
                rejected["malformed"] += 1
                n_rejected += 1
                continue
            elif cls is Malformed:
                assert isinstance(m, Malformed)
                label = TYPE_LABELS.get(m.T)
                if metrics:
                    series = self._count_series(m.S)
                    kind = K[label] if label else K["unknown"]
                    series.received[kind] += 1
                    if kind in _TIMED:
                        series.unobserved += 1
                n_data += 1
                rejected["malformed"] += 1
                n_rejected += 1
                continue
            else:
                assert not isinstance(m, Unknown | Malformed | Bar)
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
                    series = self._count_series(m.S)
                    series.received[k] += 1
                    if k < 2 or k > 4:  # timed (TIMED_KINDS)
                        series.unobserved += 1
                rejected["unknown_symbol"] += 1
                n_rejected += 1
                continue
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
        self.received[PRIMARY] += n_data
        self.routed[PRIMARY] += n_routed
        self.standby[PRIMARY] += n_standby
        self.rejected_by_source[PRIMARY] += n_rejected
        if n_data:
            self.last_data_at = now
            self.last_data_wall = wall_s
        n = len(event.messages)
        if n and metrics:
            # Decode-to-routed time of the frame, spread evenly over its messages.
            total_ms = (event.decode_seconds + (self.clock.monotonic() - now)) * 1000.0
            self.processing_ms.observe_n(total_ms / n, n)

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
            (st.series or self.other).breaker_trips += 1
            assert ref is not None
            self._trips.append(BreakerTripped(st.symbol, source, price, ref, abs(price - ref) * 100.0 / ref))
        return "circuit_open"

    # ---- fallback data -----------------------------------------------------------------------------
    def _fallback_price(self, event: FallbackPrice, now: float) -> None:
        wall_ns = self.clock.wall_ns()
        self.received[FALLBACK] += 1
        st = self.symbols.get(event.symbol)
        reason = "unknown_symbol" if st is None else check_fallback(event.price, event.ts_ns, wall_ns, self._skew_s)
        if reason is None and st is not None:
            reason = self._admit(st, FALLBACK, event.price, now)
        if reason is not None:
            self.rejected[reason] += 1
            self.rejected_by_source[FALLBACK] += 1
            return
        assert st is not None
        if self.state is State.FALLBACK_ACTIVE:
            self.routed[FALLBACK] += 1
            st.routed_price = event.price
            st.routed_source = FALLBACK
            st.routed_wall = wall_ns / 1e9
        else:
            self.standby[FALLBACK] += 1

    # ---- read side (metrics, /status, tests) -------------------------------------------------------
    def state_durations(self) -> dict[State, float]:
        now = self.clock.monotonic()
        out = dict(self.state_seconds)
        out[self.state] += now - self.state_since
        return out

    def uptime_percent(self) -> float:
        now = self.clock.monotonic()
        start = max(self.started, now - UPTIME_WINDOW_S)
        while self._down and self._down[0][1] < start:
            self._down.popleft()
        window = now - start
        if window <= 0:
            return 0.0 if self.state is State.BOTH_UNAVAILABLE else 100.0
        down = sum(min(end, now) - max(begin, start) for begin, end in self._down if min(end, now) > start)
        return max(0.0, min(100.0, 100.0 * (1.0 - down / window)))

    def price_delta_percent(self, st: SymbolState) -> float | None:
        p = st.last_price.get(PRIMARY)
        f = st.last_price.get(FALLBACK)
        if p is None or f is None:
            return None
        return abs(p - f) * 100.0 / f

    def message_counts(self) -> dict[str, int]:
        """Per type, summed over symbols, plus control."""
        out = dict.fromkeys(MESSAGE_TYPES, 0)
        for series in (*self.series.values(), self.other):
            for i, n in enumerate(series.received):
                out[MESSAGE_TYPES[i]] += n
        out["control"] += self.control_received
        return out

    def status(self) -> dict[str, object]:
        now = self.clock.monotonic()
        wall = self.clock.wall_ns() / 1e9
        return {
            "router": {
                "state": self.state.name,
                "since": self.state_since_wall,
                "seconds_in_state": round(now - self.state_since, 3),
                "failovers": self.failovers,
                "uptime_percent": round(self.uptime_percent(), 4),
            },
            "sources": {
                PRIMARY: {
                    "healthy": self.primary_healthy(now),
                    "connection": self.conn_state,
                    "authenticated": self.authenticated,
                    "subscribed_symbols": len(self.subscribed),
                    "last_data_age_seconds": None if self.last_data_at is None else round(now - self.last_data_at, 3),
                    "stale": self._stale,
                    "reason": None if self.primary_healthy(now) else self.primary_reason,
                },
                FALLBACK: {
                    "enabled": self.config.fallback_enabled,
                    "healthy": self.fallback_healthy(now),
                    "last_success_age_seconds": None
                    if self.fallback_last_ok is None
                    else round(now - self.fallback_last_ok, 3),
                    "last_error": self.fallback_last_error,
                },
            },
            "symbols": {
                sym: {
                    "last_price": st.routed_price,
                    "source": st.routed_source or None,
                    "last_update_age_seconds": round(wall - st.routed_wall, 3) if st.routed_wall else None,
                    "prices": dict(st.last_price),
                    "breaker": st.breaker.state.name,
                }
                for sym, st in self.symbols.items()
            },
            "accounting": self.accounting(),
        }

    def accounting(self) -> dict[str, dict[str, int]]:
        return {
            s: {
                "received": self.received[s],
                "routed": self.routed[s],
                "standby": self.standby[s],
                "rejected": self.rejected_by_source[s],
            }
            for s in SOURCES
        }
