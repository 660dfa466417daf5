"""The core's inlined trade and quote validation decides exactly as validation.check_trade/check_quote do."""

from __future__ import annotations

import math
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core.clock import FakeClock
from exporter.core.events import PrimaryAuthenticated, PrimaryConnection, PrimaryData, PrimarySubscribed
from exporter.core.messages import Message, Quote, Trade, utc_from_ns
from exporter.core.router import Core, CoreConfig
from exporter.core.validation import check_quote, check_trade

# (max message age, clock skew) in seconds: the defaults, and a max age below the latency histogram's
# first bucket (0.1 s) with no skew allowed, where "live" and "valid" part ways.
LIMITS = [(60.0, 5.0), (0.05, 0.0)]

prices = st.one_of(
    st.floats(min_value=-10.0, max_value=1e6, allow_nan=False),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e-9]),
)
sizes = st.integers(min_value=-5, max_value=10_000)
# Offsets around every boundary (max age, skew, the first latency bucket), in µs relative to now (the
# resolution of a message's timestamp).
edges = [edge for max_age, skew in LIMITS for edge in (-round(max_age * 1e6), round(skew * 1e6))] + [-100_000]
offsets = st.one_of(
    st.integers(min_value=-120_000_000, max_value=30_000_000),
    st.integers(min_value=-200_000, max_value=10_000),
    st.sampled_from([e + d for e in edges for d in (-1, 0, 1)]),
)
limits = st.sampled_from(LIMITS)


def _decision(clock: FakeClock, message: Message, max_age: float, skew: float) -> str | None:
    # A wide breaker so that only validation can reject.
    config = CoreConfig(
        symbols=("AAPL",), stale_after_s=0, breaker_percent=1000.0, max_message_age_s=max_age, max_clock_skew_s=skew
    )
    core = Core(config, clock)
    for event in (PrimaryConnection("Connected"), PrimaryAuthenticated(True), PrimarySubscribed(frozenset({"AAPL"}))):
        core.handle(event)
    core.handle(PrimaryData([message], clock.monotonic()))
    return next((reason for reason, n in core.rejected.items() if n), None)


@settings(max_examples=300, deadline=None)
@given(price=prices, size=sizes, offset=offsets, limit=limits)
def test_inlined_trade_validation_matches_check_trade(
    price: float, size: int, offset: int, limit: tuple[float, float]
) -> None:
    clock = FakeClock()
    wall = utc_from_ns(clock.wall_ns())
    trade = Trade(S="AAPL", p=price, s=size, t=wall + timedelta(microseconds=offset))
    assert _decision(clock, trade, *limit) == check_trade(trade, wall, *limit)


@settings(max_examples=300, deadline=None)
@given(bid=prices, ask=prices, bid_size=sizes, ask_size=sizes, offset=offsets, limit=limits)
def test_inlined_quote_validation_matches_check_quote(
    bid: float, ask: float, bid_size: int, ask_size: int, offset: int, limit: tuple[float, float]
) -> None:
    clock = FakeClock()
    wall = utc_from_ns(clock.wall_ns())
    quote = Quote(S="AAPL", bp=bid, ap=ask, bs=bid_size, as_=ask_size, t=wall + timedelta(microseconds=offset))
    assert _decision(clock, quote, *limit) == check_quote(quote, wall, *limit)
