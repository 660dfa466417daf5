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

MAX_AGE_S = 60.0
SKEW_S = 5.0
MAX_AGE_US = 60_000_000
SKEW_US = 5_000_000

prices = st.one_of(
    st.floats(min_value=-10.0, max_value=1e6, allow_nan=False),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e-9]),
)
sizes = st.integers(min_value=-5, max_value=10_000)
# Offsets around both boundaries, in µs relative to now (the resolution of a message's timestamp).
offsets = st.one_of(
    st.integers(min_value=-120_000_000, max_value=30_000_000),
    st.sampled_from([-MAX_AGE_US, -MAX_AGE_US - 1, SKEW_US, SKEW_US + 1, 0]),
)


def _decision(clock: FakeClock, message: Message) -> str | None:
    # A wide breaker so that only validation can reject.
    core = Core(CoreConfig(symbols=("AAPL",), stale_after_s=0, breaker_percent=1000.0), clock)
    for event in (PrimaryConnection("Connected"), PrimaryAuthenticated(True), PrimarySubscribed(frozenset({"AAPL"}))):
        core.handle(event)
    core.handle(PrimaryData([message], clock.monotonic()))
    return next((reason for reason, n in core.rejected.items() if n), None)


@settings(max_examples=300, deadline=None)
@given(price=prices, size=sizes, offset=offsets)
def test_inlined_trade_validation_matches_check_trade(price: float, size: int, offset: int) -> None:
    clock = FakeClock()
    wall = utc_from_ns(clock.wall_ns())
    trade = Trade(S="AAPL", p=price, s=size, t=wall + timedelta(microseconds=offset))
    assert _decision(clock, trade) == check_trade(trade, wall, MAX_AGE_S, SKEW_S)


@settings(max_examples=300, deadline=None)
@given(bid=prices, ask=prices, bid_size=sizes, ask_size=sizes, offset=offsets)
def test_inlined_quote_validation_matches_check_quote(
    bid: float, ask: float, bid_size: int, ask_size: int, offset: int
) -> None:
    clock = FakeClock()
    wall = utc_from_ns(clock.wall_ns())
    quote = Quote(S="AAPL", bp=bid, ap=ask, bs=bid_size, as_=ask_size, t=wall + timedelta(microseconds=offset))
    assert _decision(clock, quote) == check_quote(quote, wall, MAX_AGE_S, SKEW_S)
