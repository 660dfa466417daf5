"""The core's inlined trade validation decides exactly as validation.check_trade does."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core.clock import FakeClock
from exporter.core.events import PrimaryAuthenticated, PrimaryConnection, PrimaryData, PrimarySubscribed
from exporter.core.messages import Trade
from exporter.core.router import Core, CoreConfig
from exporter.core.validation import check_trade

MAX_AGE_NS = 60_000_000_000
SKEW_NS = 5_000_000_000

prices = st.one_of(
    st.floats(min_value=-10.0, max_value=1e6, allow_nan=False),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e-9]),
)
sizes = st.integers(min_value=-5, max_value=10_000)
# Offsets around both boundaries, in ns relative to now.
offsets = st.one_of(
    st.integers(min_value=-120_000_000_000, max_value=30_000_000_000),
    st.sampled_from([-MAX_AGE_NS, -MAX_AGE_NS - 1, SKEW_NS, SKEW_NS + 1, 0]),
)


@settings(max_examples=300, deadline=None)
@given(price=prices, size=sizes, offset=offsets)
def test_inlined_trade_validation_matches_check_trade(price: float, size: int, offset: int) -> None:
    clock = FakeClock()
    # A wide breaker so that only validation can reject.
    core = Core(CoreConfig(symbols=("AAPL",), stale_after_s=0, breaker_percent=1000.0), clock)
    for event in (PrimaryConnection("Connected"), PrimaryAuthenticated(True), PrimarySubscribed(frozenset({"AAPL"}))):
        core.handle(event)
    trade = Trade(S="AAPL", p=price, s=size, t=clock.wall_ns() + offset)
    expected = check_trade(trade, clock.wall_ns(), MAX_AGE_NS, SKEW_NS)
    core.handle(PrimaryData([trade], clock.monotonic()))
    got = next((reason for reason, n in core.rejected.items() if n), None)
    assert got == expected
