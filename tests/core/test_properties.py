"""Property-based tests: random event sequences against the router's invariants (CONTRACT section 6)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.core.events import (
    Event,
    FallbackPoll,
    PrimaryAuthenticated,
    PrimaryConnection,
    PrimaryError,
    PrimarySubscribed,
    Tick,
)
from exporter.core.messages import Malformed, Message, Unknown
from exporter.core.router import Transition
from exporter.core.stats import VALIDATION_REASONS
from exporter.metrics import CoreCollector
from tests.support.core import Harness

SYMS = ("AAPL", "MSFT", "SPY")
BAD_PRICES = (0.0, -1.0, math.nan, math.inf)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- random event sequences ----------------------------------------------------------------------
# Steps are data; the harness turns them into events at the clock's current time.


@dataclass(frozen=True)
class Advance:
    seconds: float


@dataclass(frozen=True)
class Frame:
    items: tuple[tuple[str, str, float, float], ...]  # (kind, symbol, price, age seconds)


@dataclass(frozen=True)
class Yahoo:
    symbol: str
    price: float
    age: float


@dataclass(frozen=True)
class PrimaryUp:
    """The whole handshake at once (connected, authenticated, subscribed), so sequences reach PRIMARY_ACTIVE."""

    symbols: frozenset[str]


Step = Event | Advance | Frame | Yahoo | PrimaryUp

symbols = st.sampled_from((*SYMS, "ZZZZ"))
prices = st.one_of(st.floats(95.0, 105.0), st.floats(95.0, 105.0), st.sampled_from(BAD_PRICES), st.floats(1.0, 1000.0))
ages = st.one_of(st.just(0.0), st.floats(-10.0, 120.0))
items = st.tuples(st.sampled_from(("trade", "quote", "crossed", "bar", "unknown", "malformed")), symbols, prices, ages)
steps: st.SearchStrategy[Step] = st.one_of(
    st.builds(PrimaryUp, st.frozensets(st.sampled_from(SYMS), min_size=1)),
    st.builds(FallbackPoll, st.just(True), st.sampled_from((5.0, 60.0))),
    st.builds(PrimaryConnection, st.sampled_from(("Disconnected", "Connecting", "Authenticating", "Connected"))),
    st.builds(PrimaryAuthenticated, st.booleans()),
    st.builds(PrimarySubscribed, st.frozensets(st.sampled_from(SYMS), max_size=3)),
    st.builds(PrimaryError, st.sampled_from(("connection_lost", "slow_client", "whatever"))),
    st.builds(
        FallbackPoll,
        st.booleans(),
        st.sampled_from((5.0, 60.0)),
        st.sampled_from((None, "timeout", "rate_limited")),
    ),
    st.builds(Tick),
    st.builds(Advance, st.sampled_from((0.0, 0.5, 3.0, 10.0, 31.0, 61.0, 200.0))),
    st.builds(Frame, st.lists(items, max_size=6).map(tuple)),
    st.builds(Yahoo, symbols, prices, ages),
)


def build(h: Harness, item: tuple[str, str, float, float]) -> Message:
    kind, sym, p, age = item
    if kind == "trade":
        return h.trade(sym, p, age_s=age)
    if kind == "quote":
        return h.quote(sym, p, p + 0.02 if math.isfinite(p) else p, age_s=age)
    if kind == "crossed":
        return h.quote(sym, p + 1.0, p, age_s=age)
    if kind == "bar":
        return h.bar(sym, p, age_s=age)
    if kind == "unknown":
        return Unknown(T="zz", S=sym)
    return Malformed(T="t", S=sym)


def run(h: Harness, step: Step) -> list[Transition]:
    if isinstance(step, Advance):
        h.advance(step.seconds)
        return []
    if isinstance(step, PrimaryUp):
        effects = h.primary_up(sorted(step.symbols))
    elif isinstance(step, Frame):
        effects = h.frame(*(build(h, it) for it in step.items))
    elif isinstance(step, Yahoo):
        effects = h.yahoo(step.symbol, step.price, age_s=step.age)
    else:
        effects = h.send(step)
    return [e for e in effects if isinstance(e, Transition)]


configs = st.fixed_dictionaries(
    {
        "stale_after_s": st.sampled_from((0.0, 30.0)),
        "market_hours": st.sampled_from(("always", "never", "regular")),
        "failback_after_s": st.sampled_from((0.0, 5.0, 30.0)),
        "max_symbol_series": st.sampled_from((1, 2, 500)),
        "fallback_enabled": st.booleans(),
    }
)


@FAST
@given(configs, st.lists(steps, min_size=10, max_size=80))
def test_router_invariants_hold_after_every_event(config: dict[str, Any], seq: list[Step]) -> None:
    h = Harness(symbols=SYMS, **config)
    for step in seq:
        before = h.state
        routed_before = {sym: (ss.routed_price, ss.routed_source) for sym, ss in h.core.symbols.items()}
        transitions = run(h, step)
        core = h.core
        now = h.clock.monotonic()

        # Only the active source's prices are routed, and only valid prices.
        for sym, ss in core.symbols.items():
            if (ss.routed_price, ss.routed_source) != routed_before[sym]:
                assert isinstance(step, Frame | Yahoo)
                if isinstance(step, Frame):
                    assert (before.name, ss.routed_source) == ("PRIMARY_ACTIVE", "alpaca")
                else:
                    assert (before.name, ss.routed_source, step.symbol) == ("FALLBACK_ACTIVE", "yahoo", sym)
            if ss.routed_price is not None:
                assert 0.0 < ss.routed_price < math.inf

        # Exactly one state, and the transitions reported lead to it.
        assert sum(s is core.state for s in type(core.state)) == 1
        if transitions:
            assert transitions[0].previous is before
            assert all(a.new is b.previous for a, b in itertools.pairwise(transitions))
            assert transitions[-1].new is core.state
        else:
            assert core.state is before
        # The state agrees with the health of the sources (DependencyLatency aside, every event evaluates).
        if not isinstance(step, Advance):
            p_ok, f_ok = core.primary_healthy(now), core.fallback_healthy(now)
            if core.state.name == "PRIMARY_ACTIVE":
                assert p_ok
            elif core.state.name == "FALLBACK_ACTIVE":
                assert f_ok
            else:
                assert not p_ok
                assert not f_ok

        # Exact accounting per source, and every rejection has one reason.
        acc = core.accounting()
        for source in ("alpaca", "yahoo"):
            a = acc[source]
            assert a["received"] == a["routed"] + a["standby"] + a["rejected"], (source, a)
        assert sum(core.rejected.values()) == acc["alpaca"]["rejected"] + acc["yahoo"]["rejected"]
        assert set(core.rejected) == set(VALIDATION_REASONS)

        # Durations add up to the elapsed time; uptime is a percentage.
        assert math.isclose(sum(core.state_durations().values()), h.elapsed(), abs_tol=1e-6)
        assert all(d >= 0.0 for d in core.state_durations().values())
        assert 0.0 <= core.uptime_percent() <= 100.0
        if h.elapsed() > 0:
            # Within the 30-day window, uptime is exactly the share of time not in BOTH_UNAVAILABLE.
            down = core.state_durations()[type(core.state).BOTH_UNAVAILABLE]
            assert math.isclose(core.uptime_percent(), 100.0 * (1.0 - down / h.elapsed()), abs_tol=1e-6)

        # Failovers: each one observed its recovery time; start-up never counts.
        assert core.failovers == core.failover.recovery.count
        assert core.failovers == sum(t.failover for t in h.transitions())
        # The label cap holds.
        assert len(core.series) <= h.core.config.max_symbol_series

    # One series for the router state on the metrics side, whatever happened.
    families = {m.name: m for m in CoreCollector(h.core).collect()}
    assert len(families["datasource_router_state"].samples) == 1
    assert families["datasource_router_state"].samples[0].labels == {"state": h.state.name}


# ---- a single bad print never becomes the routed price -------------------------------------------


@st.composite
def walks_with_one_spike(draw: st.DrawFn) -> tuple[list[float], int, float, list[float], list[bool]]:
    n = draw(st.integers(8, 80))
    steps_pct = draw(st.lists(st.floats(-1.5, 1.5), min_size=n, max_size=n))
    walk = [100.0]
    for pct in steps_pct[1:]:
        walk.append(walk[-1] * (1 + pct / 100.0))
    at = draw(st.integers(1, n - 2))  # normal prices before and after
    factor = draw(st.sampled_from((0.05, 0.5, 0.7, 1.3, 2.0, 10.0, 100.0)))
    gaps = draw(st.lists(st.sampled_from((0.0, 0.5, 1.0, 5.0, 30.0, 61.0)), min_size=n, max_size=n))
    yahoo_here = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return walk, at, factor, gaps, yahoo_here


@FAST
@given(
    walks_with_one_spike(),
    st.sampled_from(("alpaca", "yahoo")),
    st.sampled_from(("primary", "fallback")),
    st.sampled_from((10.0, 60.0)),
)
def test_a_single_bad_print_never_becomes_the_routed_price(
    case: tuple[list[float], int, float, list[float], list[bool]], spike_source: str, active: str, cooldown: float
) -> None:
    walk, at, factor, gaps, yahoo_here = case
    h = Harness(symbols=("AAPL",), breaker_cooldown_s=cooldown)
    if active == "primary":
        h.primary_up()
    else:
        h.fallback_ok(period_s=1e6)
    spike = walk[at] * factor
    for i, price in enumerate(walk):
        h.advance(gaps[i])
        st_ = h.core.symbols["AAPL"]
        routed_before = st_.routed_price
        if i == at:
            if spike_source == "alpaca":
                h.frame(h.trade(p=spike))
            else:
                h.yahoo(price=spike)
            # The bad print changes nothing that is routed.
            assert st_.routed_price == routed_before
        else:
            h.frame(h.trade(p=price))
            if yahoo_here[i]:
                h.yahoo(price=price * 1.001)
        h.tick()
        assert st_.routed_price != spike
        assert spike not in st_.last_price.values()
    assert h.core.series["AAPL"].breaker_trips >= 1
