"""Feed quality (exporter/core/quality.py) on the fake clock: subscriptions, halts, typical intervals,
bars against trades, outage gaps and the stream's lag."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from exporter.core.events import SubscriptionStatus
from exporter.core.quality import BARS_PENDING_MAX, INTERVAL_MIN_SAMPLES
from exporter.core.router import State
from tests.support.core import OPEN_WALL_S, SATURDAY_WALL_S, Harness

BOTH = ("trades", "bars")
M = OPEN_WALL_S  # a minute boundary while the session is open (10:30 EDT)


def symbol_status(h: Harness, symbol: str = "AAPL") -> dict[str, object]:
    status = h.core.status()["symbols"]
    assert isinstance(status, dict)
    out = status[symbol]
    assert isinstance(out, dict)
    return out


def interval(h: Harness, symbol: str = "AAPL") -> object:
    return symbol_status(h, symbol)["typical_interval_seconds"]


def every(h: Harness, seconds: float, n: int, symbol: str = "AAPL") -> None:
    """``n`` frames of one trade each, ``seconds`` apart (the first after ``seconds``), each with a tick."""
    for _ in range(n):
        h.advance(seconds)
        h.frame(h.trade(symbol))
        h.tick()


def gap_count(h: Harness) -> int:
    return h.core.quality.gaps.count


def bars_missing(h: Harness, symbol: str = "AAPL") -> int:
    return h.core.series[symbol].bars_missing


# ---- subscriptions -----------------------------------------------------------------------------------


def test_every_wanted_channel_has_no_shortfall_until_an_ack_says_otherwise(make: Callable[..., Harness]) -> None:
    h = make(channels=("trades", "quotes"))
    assert h.core.quality.missing == {"trades": (), "quotes": ()}
    sub = h.core.status()["sources"]["alpaca"]["subscription"]  # type: ignore[index]
    assert sub == {"missing": {"trades": [], "quotes": []}, "repairs": 0, "refused": [], "limit": None}


def test_subscription_status_sets_the_shortfall_repairs_and_the_refused(make: Callable[..., Harness]) -> None:
    h = make(channels=("trades", "quotes"))
    status = SubscriptionStatus(
        {"trades": ("MSFT",), "quotes": (), "lulds": ("AAPL",)}, repairs=2, refused=("MSFT",), limit=1
    )
    assert h.send(status) == []
    q = h.core.quality
    assert q.missing == {"trades": ("MSFT",), "quotes": ()}  # a channel not wanted is not reported
    assert (q.repairs, q.refused, q.limit) == (2, ("MSFT",), 1)
    sub = h.core.status()["sources"]["alpaca"]["subscription"]  # type: ignore[index]
    assert sub == {"missing": {"trades": ["MSFT"], "quotes": []}, "repairs": 2, "refused": ["MSFT"], "limit": 1}
    h.send(SubscriptionStatus({"trades": (), "quotes": ()}, repairs=3))
    assert q.missing == {"trades": (), "quotes": ()}
    assert (q.repairs, q.refused, q.limit) == (3, (), None)


# ---- halts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codes", "halted"),
    [
        ((), None),  # no status yet
        (("H",), True),  # UTP halt
        (("P",), True),  # UTP volatility pause
        (("H", "Q"), True),  # quotes resumed, trading not yet
        (("H", "T"), False),  # UTP trading resumption
        (("2",), True),  # CTA halt
        (("2", "3"), False),  # CTA resumption
        (("2", "5", "F"), True),  # other codes leave the state as it was
        (("E",), None),
        (("T",), False),
    ],
)
def test_trading_status_codes_drive_the_halted_flag(h: Harness, codes: tuple[str, ...], halted: bool | None) -> None:
    h.primary_up()
    for code in codes:
        h.frame(h.status(code=code))
    assert symbol_status(h)["halted"] is halted
    assert symbol_status(h, "MSFT")["halted"] is None


def test_after_a_resumption_the_first_price_is_the_new_reference(h: Harness) -> None:
    h.primary_up()
    h.frame(h.trade(p=100.0), h.trade("MSFT", p=100.0))
    h.frame(h.status(code="H"))
    h.advance(600.0)
    h.frame(h.status(code="T"))
    h.frame(h.trade(p=130.0), h.trade("MSFT", p=130.0))  # AAPL reopened 30 % higher; MSFT was not halted
    assert [t.symbol for t in h.trips()] == ["MSFT"]
    assert h.core.symbols["AAPL"].last_price["alpaca"] == 130.0


def test_a_resumption_without_a_halt_keeps_the_reference(h: Harness) -> None:
    h.primary_up()
    h.frame(h.trade(p=100.0))
    h.frame(h.status(code="T"))
    h.frame(h.trade(p=130.0))
    assert [t.symbol for t in h.trips()] == ["AAPL"]


def test_a_halted_symbol_learns_no_interval_during_nor_across_the_halt(h: Harness) -> None:
    h.primary_up()
    every(h, 2.0, 5)
    h.frame(h.status(code="H"))
    every(h, 2.0, 20)  # quotes and statuses during the halt
    assert h.core.symbols["AAPL"].samples == 4
    h.advance(300.0)
    h.frame(h.status(code="T"))  # the interval from before the resumption is not a sample
    h.tick()
    assert h.core.symbols["AAPL"].samples == 4
    every(h, 2.0, 1)
    assert h.core.symbols["AAPL"].samples == 5


# ---- typical interval --------------------------------------------------------------------------------


def test_the_typical_interval_is_exported_after_ten_intervals(h: Harness) -> None:
    h.primary_up()
    every(h, 2.0, INTERVAL_MIN_SAMPLES)  # the first frame starts the first interval
    assert interval(h) is None
    every(h, 2.0, 1)
    assert interval(h) == 1.0  # E[X²] / 2E[X]: the mean interval of Poisson arrivals, half a regular one
    assert symbol_status(h)["seconds_since_last_message"] == 0.0
    h.advance(7.5)
    assert symbol_status(h)["seconds_since_last_message"] == 7.5
    assert symbol_status(h, "MSFT")["seconds_since_last_message"] is None
    every(h, 12.5, 1)  # exponentially weighted: E[X] = 2 + 0.1 * (20 - 2), E[X²] = 4 + 0.1 * (400 - 4)
    assert h.core.symbols["AAPL"].interval == pytest.approx(43.6 / (2 * 3.8))


def test_messages_within_a_second_are_one_burst(h: Harness) -> None:
    h.primary_up()
    for _ in range(INTERVAL_MIN_SAMPLES + 1):
        for _ in range(3):  # a burst of three frames 0.3 s apart, then silence
            h.frame(h.trade(), h.quote(), h.trade())
            h.tick(0.3)
        h.advance(5.1)
    assert interval(h) == pytest.approx(3.0)


def test_a_closed_market_learns_nothing(make: Callable[..., Harness]) -> None:
    h = make(wall_s=SATURDAY_WALL_S)
    h.primary_up()
    every(h, 2.0, 30)
    assert h.core.symbols["AAPL"].samples == 0
    assert h.core.quality.open is False


def test_no_interval_across_the_open(make: Callable[..., Harness]) -> None:
    h = make(wall_s=OPEN_WALL_S - 3600.0 - 10.0)  # 09:29:50 EDT
    h.primary_up()
    every(h, 5.0, 1)  # 09:29:55, closed
    every(h, 10.0, 1)  # 09:30:05, open: the 10 s since the last message are not a sample
    assert h.core.quality.open is True
    assert h.core.symbols["AAPL"].samples == 0
    every(h, 2.0, 1)
    assert h.core.symbols["AAPL"].samples == 1


def test_no_interval_across_a_primary_outage(h: Harness) -> None:
    h.primary_up()
    every(h, 2.0, 3)
    h.advance(0.5)
    h.primary_down()
    h.advance(30.0)
    h.primary_up()
    every(h, 1.0, 1)
    assert h.core.symbols["AAPL"].samples == 2
    every(h, 2.0, 1)
    assert h.core.symbols["AAPL"].samples == 3


def test_a_liquid_symbol_silent_alone_is_seen_against_its_interval(h: Harness) -> None:
    """MSFT goes on, AAPL stops: the stream stays healthy while AAPL's silence outgrows its interval."""
    h.primary_up()
    for _ in range(60):
        h.advance(1.0)
        h.frame(h.trade(), h.trade("MSFT"))
        h.tick()
    for _ in range(90):
        h.tick(1.0)
        h.frame(h.trade("MSFT"))
    aapl = symbol_status(h)
    assert aapl["typical_interval_seconds"] == pytest.approx(0.5)
    assert aapl["seconds_since_last_message"] == 90.0
    assert symbol_status(h, "MSFT")["seconds_since_last_message"] == 0.0
    assert h.state is State.PRIMARY_ACTIVE


def test_bursts_do_not_pull_the_typical_interval_down(h: Harness) -> None:
    """Four trades a second apart, then a minute of silence: the mean interval is 15.75 s; the typical
    one is E[X²] / 2E[X] = (3 + 3600) / 126 ≈ 28.6 s, the silence between bursts the alert must judge."""
    h.primary_up()
    for _ in range(8):
        every(h, 1.0, 3)
        every(h, 60.0, 1)
    assert interval(h) == pytest.approx(3603.0 / 126.0, rel=0.01)


def test_an_illiquid_symbol_has_its_own_long_interval(h: Harness) -> None:
    h.primary_up()
    for _ in range(INTERVAL_MIN_SAMPLES + 2):
        h.advance(180.0)
        h.frame(h.trade("MSFT"))
        h.tick()
    assert interval(h, "MSFT") == pytest.approx(90.0)


# ---- bars against trades -----------------------------------------------------------------------------


def at(h: Harness, wall_s: float) -> None:
    """Move the clock to the Unix time ``wall_s`` (forward only)."""
    assert wall_s >= h.wall_s()
    h.advance(wall_s - h.wall_s())


def test_a_traded_minute_with_its_bar_is_not_missing(make: Callable[..., Harness]) -> None:
    h = make(channels=BOTH)
    h.primary_up()
    at(h, M + 10.0)
    h.frame(h.trade())
    at(h, M + 62.0)
    h.frame(h.minute_bar(M))
    at(h, M + 200.0)
    h.tick()
    assert bars_missing(h) == 0


def test_a_traded_minute_without_a_bar_is_missing_90_s_after_it_ended(make: Callable[..., Harness]) -> None:
    h = make(channels=BOTH)
    h.primary_up()
    at(h, M + 10.0)
    h.frame(h.trade(), h.trade(), h.trade("MSFT"))
    h.frame(h.minute_bar(M, "MSFT"))
    at(h, M + 60.0 + 89.0)
    h.tick()
    assert bars_missing(h) == 0
    h.frame(h.minute_bar(M, updated=True))  # an updated bar is not the minute's bar
    at(h, M + 60.0 + 91.0)
    h.tick()
    h.tick(60.0)
    assert (bars_missing(h), bars_missing(h, "MSFT")) == (1, 0)


def test_a_trade_stamped_before_the_minute_boundary_belongs_to_its_minute(make: Callable[..., Harness]) -> None:
    h = make(channels=BOTH)
    h.primary_up()
    at(h, M + 60.2)
    h.frame(h.trade(age_s=0.5))  # stamped M + 59.7, received in the next minute
    h.frame(h.minute_bar(M))
    at(h, M + 400.0)
    h.tick()
    assert bars_missing(h) == 0


def test_a_late_trade_after_its_minutes_bar_is_not_missing(make: Callable[..., Harness]) -> None:
    h = make(channels=BOTH)
    h.primary_up()
    at(h, M + 61.0)
    h.frame(h.minute_bar(M))
    h.frame(h.trade(age_s=3.0))  # stamped M + 58
    at(h, M + 400.0)
    h.tick()
    assert bars_missing(h) == 0


def test_a_reconnect_forgets_the_bars_it_could_not_receive(make: Callable[..., Harness]) -> None:
    h = make(channels=BOTH)
    h.primary_up()
    at(h, M + 10.0)
    h.frame(h.trade())
    at(h, M + 20.0)
    h.primary_down()
    at(h, M + 200.0)  # the bar of minute M was due while disconnected
    h.primary_up()
    h.tick()
    assert bars_missing(h) == 0
    h.frame(h.trade(age_s=10.0))  # minute M + 3
    at(h, M + 400.0)
    h.tick()
    assert bars_missing(h) == 1


def test_a_quick_reconnect_registers_the_same_minute_again(make: Callable[..., Harness]) -> None:
    h = make(channels=BOTH)
    h.primary_up()
    at(h, M + 10.0)
    h.frame(h.trade())
    h.advance(5.0)
    h.primary_down()
    h.advance(5.0)
    h.primary_up()
    h.frame(h.trade())  # still minute M: pending again since the outage forgot it
    at(h, M + 200.0)
    h.tick()
    assert bars_missing(h) == 1


def test_bars_are_not_checked_without_both_channels(make: Callable[..., Harness]) -> None:
    h = make(channels=("trades", "quotes"))
    h.primary_up()
    at(h, M + 10.0)
    h.frame(h.trade(), h.minute_bar(M - 60.0))
    at(h, M + 400.0)
    h.tick()
    assert bars_missing(h) == 0
    assert not h.core.symbols["AAPL"].pending_minutes


def test_a_symbol_without_a_bars_subscription_is_not_missing_bars(make: Callable[..., Harness]) -> None:
    h = make(channels=BOTH)
    h.primary_up()
    h.send(SubscriptionStatus({"trades": (), "bars": ("AAPL",)}))
    at(h, M + 10.0)
    h.frame(h.trade(), h.trade("MSFT"))
    at(h, M + 400.0)
    h.tick()
    assert (bars_missing(h), bars_missing(h, "MSFT")) == (0, 1)


def test_pending_minutes_are_bounded_and_past_the_cap_count_under_other(make: Callable[..., Harness]) -> None:
    h = make(channels=BOTH, max_message_age_s=3600.0, max_symbol_series=1)
    h.primary_up()
    at(h, M + 1200.0)
    h.frame(*(h.trade("MSFT", age_s=60.0 * i) for i in range(20, 0, -1)))
    assert len(h.core.symbols["MSFT"].pending_minutes) == BARS_PENDING_MAX
    h.tick()
    # The latest eight minutes were kept; the last two are not due yet.
    assert h.core.counters.other.bars_missing == BARS_PENDING_MAX - 2
    assert "MSFT" not in h.core.series


# ---- outage gaps -------------------------------------------------------------------------------------


def test_the_gap_of_a_disconnect_runs_from_the_last_message_to_the_first_after(h: Harness) -> None:
    h.primary_up()
    h.frame(h.trade())
    h.advance(1.0)
    h.primary_down()
    h.advance(3.0)
    h.primary_up()
    h.advance(0.5)
    assert gap_count(h) == 0
    h.frame(h.trade())
    assert (gap_count(h), h.core.quality.gaps.sum) == (1, 4.5)
    h.advance(1.0)
    h.frame(h.trade())
    assert gap_count(h) == 1


def test_the_gap_of_a_mute_stream_is_its_whole_silence(make: Callable[..., Harness]) -> None:
    h = make(stale_after_s=30.0)
    h.primary_up()
    h.frame(h.trade())
    for _ in range(100):
        h.tick(1.0)
    assert h.stale_effects()
    h.frame(h.trade())
    assert (gap_count(h), h.core.quality.gaps.sum) == (1, 100.0)


def test_no_gap_outside_the_session_nor_into_the_close(make: Callable[..., Harness]) -> None:
    closed = make(wall_s=SATURDAY_WALL_S)
    closed.primary_up()
    closed.frame(closed.trade())
    closed.primary_down()
    closed.primary_up()
    closed.frame(closed.trade())
    assert gap_count(closed) == 0
    h = make(wall_s=OPEN_WALL_S + 5.5 * 3600.0 - 10.0)  # 15:59:50 EDT
    h.primary_up()
    h.frame(h.trade())
    h.primary_down()
    h.tick(20.0)  # 16:00:10: closed
    h.primary_up()
    h.frame(h.trade())
    assert gap_count(h) == 0


def test_no_gap_without_data_before_the_outage(h: Harness) -> None:
    h.primary_up()
    h.primary_down()
    h.primary_up()
    h.frame(h.trade())
    assert gap_count(h) == 0


# ---- lag ---------------------------------------------------------------------------------------------


def test_lag_is_the_median_age_over_the_last_ten_seconds(h: Harness) -> None:
    h.primary_up()
    h.frame(h.trade(age_s=30.0))
    h.advance(11.0)
    h.frame(h.trade(age_s=1.0))
    h.frame(h.quote(age_s=9.0), h.trade(age_s=2.0))  # one sample per frame: its last trade or quote
    h.frame(h.quote(age_s=4.0), h.minute_bar(M))
    h.frame(h.minute_bar(M))  # no trade nor quote: no sample
    h.tick()
    assert h.core.quality.lag == 2.0
    assert h.core.status()["sources"]["alpaca"]["lag_seconds"] == 2.0  # type: ignore[index]
    h.tick(10.5)
    assert h.core.quality.lag is None


def test_lag_ignores_ages_the_validation_rejects(make: Callable[..., Harness]) -> None:
    """A message older than max_message_age_s is a stale_timestamp rejection, not a lag sample: a
    step of the host's wall clock makes every message look that old, and must not fail over."""
    h = make(max_message_age_s=60.0, max_stream_lag_s=30.0)
    h.primary_up()
    h.fallback_ok()
    for _ in range(5):
        h.frame(h.trade(age_s=3600.0))
        h.tick(1.0)
    assert h.core.quality.lag is None
    assert h.state is State.PRIMARY_ACTIVE
    h.frame(h.trade(age_s=59.0))
    h.tick()
    assert h.core.quality.lag == 59.0


def test_lag_is_measured_only_while_connected(h: Harness) -> None:
    h.primary_up()
    h.frame(h.trade(age_s=3.0))
    h.primary_down()
    h.tick()
    assert h.core.quality.lag is None
    h.primary_up()
    h.tick()
    assert h.core.quality.lag is None


def test_a_lagging_stream_fails_over_and_comes_back_when_it_catches_up(make: Callable[..., Harness]) -> None:
    h = make(max_stream_lag_s=30.0, failback_after_s=5.0)
    h.primary_up()
    h.fallback_ok()
    h.frame(h.trade(age_s=0.2))
    h.tick()
    assert h.state is State.PRIMARY_ACTIVE
    for _ in range(5):
        h.frame(h.trade(age_s=40.0))
        h.tick(1.0)
    assert h.state is State.FALLBACK_ACTIVE
    assert h.transitions()[-1].reason == "primary failed: stream lagging"
    assert not h.core.primary_healthy(h.clock.monotonic())
    assert gap_count(h) == 0  # data kept flowing: not an outage of the data
    for _ in range(20):
        h.fallback_ok()
        h.frame(h.trade(age_s=0.2))
        h.tick(1.0)
    assert h.state is State.PRIMARY_ACTIVE


@pytest.mark.parametrize(("config", "age"), [({"max_stream_lag_s": 0.0}, 50.0), ({"market_delay_s": 900.0}, 920.0)])
def test_lag_that_does_not_count_against_the_primary(
    make: Callable[..., Harness], config: dict[str, float], age: float
) -> None:
    h = make(max_message_age_s=960.0, **config)
    h.primary_up()
    h.fallback_ok()
    for _ in range(5):
        h.frame(h.trade(age_s=age))
        h.tick(1.0)
    assert h.core.quality.lag == age
    assert h.state is State.PRIMARY_ACTIVE
