"""SymbolSeries.latency_histogram() (a derived first-bucket count) equals a plain histogram of the routed
messages' latencies, whatever the mix of outcomes: routed, standby, rejected, malformed, unknown symbol,
bars, past the label cap, ages in every bucket and in the future."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core.events import PrimaryData
from exporter.core.messages import (
    Bar,
    Correction,
    Luld,
    Malformed,
    Message,
    Quote,
    Trade,
    TradingStatus,
    Unknown,
    utc_from_ns,
)
from exporter.core.stats import LATENCY_BUCKETS, Histogram
from tests.support.core import Harness

SYMBOLS = ("AAPL", "MSFT", "IBM")
AGES = (-3.0, -0.001, 0.0, 0.05, 0.1, 0.100001, 0.3, 1.0, 4.0, 9.9, 30.0, 90.0)  # 90 s: stale


def _message(kind: str, symbol: str, age: float, price: float, wall_ns: int) -> Message:
    t = utc_from_ns(wall_ns) - timedelta(seconds=age)
    if kind == "trade":
        return Trade(S=symbol, p=price, t=t, s=1)
    if kind == "quote":
        return Quote(S=symbol, bp=price, ap=price + 0.02, t=t, bs=1, as_=1)
    if kind == "bar":
        return Bar(S=symbol, o=price, h=price, l=price, c=price, t=t)
    if kind == "status":
        return TradingStatus(S=symbol, t=t)
    if kind == "luld":
        return Luld(S=symbol, u=price * 1.1, d=price * 0.9, t=t)
    if kind == "correction":
        return Correction(S=symbol, t=t, cp=price, cs=1)
    if kind == "malformed":
        return Malformed(T="t", S=symbol, detail="p missing")
    return Unknown(T="zz", S=symbol)


steps = st.lists(
    st.tuples(
        st.sampled_from(["trade", "quote", "bar", "status", "luld", "correction", "malformed", "unknown"]),
        st.sampled_from([*SYMBOLS, "NEW1", "NEW2"]),  # NEW*: unknown symbols, one past the cap
        st.sampled_from(AGES),
        st.sampled_from([100.0, 100.5, 180.0, -1.0]),  # 180: trips the breaker; -1: invalid
        st.sampled_from(["up", "down", "same", "same", "same"]),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(steps=steps)
def test_derived_latency_histogram_equals_a_plain_one(steps: list[tuple[str, str, float, float, str]]) -> None:
    h = Harness(symbols=SYMBOLS, max_symbol_series=4)
    core = h.core
    expected: dict[str, Histogram] = {}
    for kind, symbol, age, price, link in steps:
        if link == "up":
            h.primary_up()
        elif link == "down":
            h.primary_down()
        before = core.routed["alpaca"]
        wall_ns = h.clock.wall_ns()
        message = _message(kind, symbol, age, price, wall_ns)
        h.send(PrimaryData([message], h.clock.monotonic()))
        if core.routed["alpaca"] > before and kind not in ("bar", "malformed", "unknown"):
            assert isinstance(message, Trade | Quote | TradingStatus | Luld | Correction)
            latency = (utc_from_ns(wall_ns) - message.t).total_seconds()
            label = core.ingest.count_series(symbol).label
            expected.setdefault(label, Histogram(LATENCY_BUCKETS)).observe(max(latency, 0.0))
        h.advance(0.01)
    for series in (*core.series.values(), core.other):
        got = series.latency_histogram()
        want = expected.get(series.label, Histogram(LATENCY_BUCKETS))
        assert got.counts == want.counts, series.label
        assert got.sum == pytest.approx(want.sum, rel=1e-12, abs=1e-12), series.label


def test_histogram_renders_cumulatively_with_the_inf_bucket_last() -> None:
    hist = Histogram((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 3.0, 3.0):  # a value on a bound falls in that bound's bucket (le)
        hist.observe(value)
    assert hist.counts == [2, 1, 2]
    assert hist.cumulative() == [2, 3, 5]
    assert hist.count == 5
    assert hist.sum == pytest.approx(9.0)
