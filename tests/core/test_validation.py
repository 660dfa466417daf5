"""Validation: every reason of the catalogue, each counted once, the message never routed."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from exporter.core.messages import (
    EPOCH,
    Bar,
    CancelError,
    Correction,
    DailyBar,
    Imbalance,
    Luld,
    Malformed,
    Message,
    Quote,
    Trade,
    TradingStatus,
    UpdatedBar,
    utc_from_ns,
)
from exporter.core.stats import VALIDATION_REASONS
from exporter.core.validation import bad_price, check_fallback, check_quote, check_trade
from tests.support.core import Harness

CONTRACT_REASONS = (
    "invalid_price",
    "invalid_size",
    "crossed_quote",
    "stale_timestamp",
    "future_timestamp",
    "unknown_symbol",
    "malformed",
    "circuit_open",
)
BAD_PRICES = [0.0, -0.01, -100.0, math.nan, math.inf, -math.inf]


@pytest.fixture
def live(make: Callable[..., Harness]) -> Harness:
    """Primary active, so an accepted message is routed and a rejected one visibly is not."""
    h = make(max_message_age_s=60.0, max_clock_skew_s=5.0)
    h.primary_up()
    return h


def rejected_once(h: Harness, message: Message, reason: str) -> None:
    before = dict(h.core.rejected)
    routed = h.core.routed["alpaca"]
    price = h.core.symbols["AAPL"].routed_price
    h.frame(message)
    diff = {k: h.core.rejected[k] - before[k] for k in before if h.core.rejected[k] != before[k]}
    assert diff == {reason: 1}
    assert h.core.routed["alpaca"] == routed
    assert h.core.symbols["AAPL"].routed_price == price


def accepted(h: Harness, message: Message) -> None:
    before = sum(h.core.rejected.values())
    routed = h.core.routed["alpaca"]
    h.frame(message)
    assert sum(h.core.rejected.values()) == before
    assert h.core.routed["alpaca"] == routed + 1


def test_reason_values_are_the_contracts() -> None:
    assert VALIDATION_REASONS == CONTRACT_REASONS


def test_all_reasons_start_at_zero(h: Harness) -> None:
    assert h.core.rejected == dict.fromkeys(CONTRACT_REASONS, 0)


# ---- invalid_price -------------------------------------------------------------------------------


@pytest.mark.parametrize("p", BAD_PRICES)
def test_trade_with_bad_price(live: Harness, p: float) -> None:
    rejected_once(live, live.trade(p=p), "invalid_price")


@pytest.mark.parametrize("p", BAD_PRICES)
def test_bar_with_bad_price(live: Harness, p: float) -> None:
    bar = Bar(S="AAPL", o=100.0, h=101.0, l=99.0, c=p, t=live.ts())
    rejected_once(live, bar, "invalid_price")


@pytest.mark.parametrize("p", BAD_PRICES)
def test_fallback_price_with_bad_price(live: Harness, p: float) -> None:
    live.yahoo(price=p)
    assert live.core.rejected["invalid_price"] == 1
    assert live.core.symbols["AAPL"].last_price == {}


@pytest.mark.parametrize(("bp", "ap"), [(math.nan, 100.0), (99.0, math.inf), (-1.0, 100.0), (99.0, -1.0), (0.0, 0.0)])
def test_quote_with_bad_side(live: Harness, bp: float, ap: float) -> None:
    rejected_once(live, live.quote(bp=bp, ap=ap), "invalid_price")


@pytest.mark.parametrize(
    "message",
    [
        Luld(S="AAPL", u=math.nan, d=90.0, t=EPOCH),
        Correction(S="AAPL", t=EPOCH, cp=0.0, cs=1),
        CancelError(S="AAPL", t=EPOCH, p=-1.0, s=1),
        Imbalance(S="AAPL", t=EPOCH, p=math.inf),
    ],
    ids=["luld", "correction", "cancel_error", "imbalance"],
)
def test_other_types_with_bad_price(live: Harness, message: Message) -> None:
    rejected_once(live, message, "invalid_price")


def test_bad_price_predicate() -> None:
    assert not bad_price(0.0001)
    assert not bad_price(1e12)
    for p in BAD_PRICES:
        assert bad_price(p)


# ---- invalid_size --------------------------------------------------------------------------------


def test_trade_with_negative_size(live: Harness) -> None:
    rejected_once(live, live.trade(s=-1), "invalid_size")


def test_trade_with_zero_size_is_accepted(live: Harness) -> None:
    accepted(live, live.trade(s=0))


def test_quote_with_negative_size(live: Harness) -> None:
    rejected_once(live, Quote(S="AAPL", bp=99.0, ap=100.0, t=live.ts(), bs=-5, as_=1), "invalid_size")
    rejected_once(live, Quote(S="AAPL", bp=99.0, ap=100.0, t=live.ts(), bs=5, as_=-1), "invalid_size")


def test_bar_with_negative_volume(live: Harness) -> None:
    rejected_once(live, Bar(S="AAPL", o=1.0, h=1.0, l=1.0, c=1.0, t=live.ts(), v=-1), "invalid_size")


def test_correction_with_negative_size(live: Harness) -> None:
    rejected_once(live, Correction(S="AAPL", t=live.ts(), cp=100.0, cs=-1), "invalid_size")


# ---- crossed_quote and one-sided quotes ----------------------------------------------------------


def test_crossed_quote(live: Harness) -> None:
    rejected_once(live, live.quote(bp=100.5, ap=100.0), "crossed_quote")


def test_locked_quote_is_accepted(live: Harness) -> None:
    accepted(live, live.quote(bp=100.0, ap=100.0))


@pytest.mark.parametrize(("bp", "ap"), [(0.0, 100.0), (100.0, 0.0)])
def test_quote_with_one_empty_side_is_accepted(live: Harness, bp: float, ap: float) -> None:
    accepted(live, live.quote(bp=bp, ap=ap))
    assert live.core.symbols["AAPL"].routed_price is None  # no midpoint from one side


def test_check_quote_direct() -> None:
    now = utc_from_ns(10**18)
    assert check_quote(Quote(S="X", bp=1.0, ap=2.0, t=now), now, 1.0, 1.0) is None
    assert check_quote(Quote(S="X", bp=2.0, ap=1.0, t=now), now, 1.0, 1.0) == "crossed_quote"
    assert check_quote(Quote(S="X", bp=0.0, ap=0.0, t=now), now, 1.0, 1.0) == "invalid_price"
    assert check_quote(Quote(S="X", bp=1.0, ap=2.0, t=now, bs=-1), now, 1.0, 1.0) == "invalid_size"


def test_check_trade_direct() -> None:
    # The reference the hot path's inlined checks are held to (tests/core/test_hot_path.py).
    now = utc_from_ns(10**18)
    assert check_trade(Trade(S="X", p=1.0, t=now, s=1), now, 1.0, 1.0) is None
    assert check_trade(Trade(S="X", p=0.0, t=now, s=1), now, 1.0, 1.0) == "invalid_price"
    assert check_trade(Trade(S="X", p=1.0, t=now, s=-1), now, 1.0, 1.0) == "invalid_size"


# ---- stale_timestamp and future_timestamp --------------------------------------------------------


def test_old_trade_is_stale(live: Harness) -> None:
    rejected_once(live, live.trade(age_s=61.0), "stale_timestamp")


def test_trade_at_the_age_limit_is_accepted(live: Harness) -> None:
    accepted(live, live.trade(age_s=60.0))


def test_old_quote_is_stale(live: Harness) -> None:
    rejected_once(live, live.quote(age_s=120.0), "stale_timestamp")


@pytest.mark.parametrize("cls", [Bar, UpdatedBar, DailyBar])
def test_bars_are_exempt_from_the_age_check(live: Harness, cls: type[Bar]) -> None:
    accepted(live, cls(S="AAPL", o=100.0, h=100.0, l=100.0, c=100.0, t=live.ts(86_400.0)))


def test_statuses_are_exempt_from_the_age_check(live: Harness) -> None:
    accepted(live, TradingStatus(S="AAPL", t=live.ts(3600.0), sc="H"))


def test_delayed_feed_age_limit(make: Callable[..., Harness]) -> None:
    h = make(max_message_age_s=960.0)
    h.primary_up()
    accepted(h, h.trade(age_s=900.0))
    rejected_once(h, h.trade(age_s=961.0), "stale_timestamp")


def test_future_trade(live: Harness) -> None:
    rejected_once(live, live.trade(age_s=-6.0), "future_timestamp")


def test_trade_within_the_skew_is_accepted(live: Harness) -> None:
    accepted(live, live.trade(age_s=-5.0))


@pytest.mark.parametrize(
    "make_message",
    [
        lambda t: Quote(S="AAPL", bp=99.0, ap=100.0, t=t),
        lambda t: Bar(S="AAPL", o=100.0, h=100.0, l=100.0, c=100.0, t=t),
        lambda t: DailyBar(S="AAPL", o=100.0, h=100.0, l=100.0, c=100.0, t=t),
        lambda t: TradingStatus(S="AAPL", t=t),
        lambda t: Luld(S="AAPL", u=110.0, d=90.0, t=t),
    ],
    ids=["quote", "bar", "daily_bar", "status", "luld"],
)
def test_every_type_rejects_the_future(live: Harness, make_message: Callable[[datetime], Message]) -> None:
    rejected_once(live, make_message(live.ts(-60.0)), "future_timestamp")


def test_future_fallback_price(live: Harness) -> None:
    live.yahoo(price=100.0, age_s=-60.0)
    assert live.core.rejected["future_timestamp"] == 1


def test_old_fallback_price_is_not_rejected_here(live: Harness) -> None:
    # The poller judges Yahoo freshness against the session (CONTRACT section 8); the core only the future.
    live.yahoo(price=100.0, age_s=3600.0)
    assert sum(live.core.rejected.values()) == 0
    assert live.core.standby["yahoo"] == 1


def test_wall_clock_step_makes_old_stamps_stale(live: Harness) -> None:
    t = live.trade()
    live.clock.jump_wall(120.0)
    rejected_once(live, t, "stale_timestamp")


def test_pure_checks_are_exact_to_the_microsecond() -> None:
    now_ns = 1_773_153_000 * 10**9
    now = utc_from_ns(now_ns)
    age, skew = timedelta(seconds=60), timedelta(seconds=5)
    us = timedelta(microseconds=1)
    assert check_trade(Trade(S="X", p=1.0, t=now - age), now, 60.0, 5.0) is None
    assert check_trade(Trade(S="X", p=1.0, t=now - age - us), now, 60.0, 5.0) == "stale_timestamp"
    assert check_trade(Trade(S="X", p=1.0, t=now + skew), now, 60.0, 5.0) is None
    assert check_trade(Trade(S="X", p=1.0, t=now + skew + us), now, 60.0, 5.0) == "future_timestamp"
    assert check_fallback(1.0, now_ns + 5 * 10**9, now_ns, 5.0) is None
    assert check_fallback(1.0, now_ns + 5 * 10**9 + 1000, now_ns, 5.0) == "future_timestamp"


# ---- unknown_symbol, malformed, circuit_open -----------------------------------------------------


def test_unknown_symbol(live: Harness) -> None:
    rejected_once(live, live.trade("NOPE"), "unknown_symbol")


def test_malformed(live: Harness) -> None:
    rejected_once(live, Malformed(T="t", S="AAPL", detail="p: expected a number"), "malformed")


def test_circuit_open(live: Harness) -> None:
    accepted(live, live.trade(p=100.0))
    rejected_once(live, live.trade(p=150.0), "circuit_open")
    rejected_once(live, live.trade(p=100.0), "circuit_open")  # open: even a sane price


# ---- exactly one reason --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (Trade(S="AAPL", p=math.nan, t=EPOCH, s=-1), "invalid_price"),  # bad price, size and stamp
        (Trade(S="AAPL", p=1.0, t=EPOCH, s=-1), "invalid_size"),  # bad size and stamp
        (Quote(S="AAPL", bp=2.0, ap=1.0, t=EPOCH), "crossed_quote"),  # crossed and stale
        (Trade(S="NOPE", p=math.nan, t=EPOCH), None),  # unknown symbol and bad price: either, but only one
    ],
)
def test_a_message_with_several_faults_counts_one_reason(live: Harness, message: Message, reason: str | None) -> None:
    before = sum(live.core.rejected.values())
    live.frame(message)
    assert sum(live.core.rejected.values()) == before + 1
    if reason is not None:
        assert live.core.rejected[reason] == 1
    acc = live.core.accounting()["alpaca"]
    assert acc["received"] == acc["routed"] + acc["standby"] + acc["rejected"]
