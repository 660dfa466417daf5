"""Per-symbol circuit breaker: closed -> open -> half-open -> closed / open again (CONTRACT section 6)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from exporter.core.breaker import Breaker, BreakerState, Verdict, agrees
from exporter.core.router import BreakerTripped
from tests.support.core import Harness

COOLDOWN = 60.0


@pytest.fixture
def live(make: Callable[..., Harness]) -> Harness:
    """Primary active with AAPL's reference at 100."""
    h = make(breaker_percent=20.0, breaker_cooldown_s=COOLDOWN)
    h.primary_up()
    h.frame(h.trade(p=100.0))
    assert h.core.symbols["AAPL"].routed_price == 100.0
    return h


def state(h: Harness, symbol: str = "AAPL") -> BreakerState:
    return h.core.symbols[symbol].breaker.state


def routed(h: Harness, symbol: str = "AAPL") -> float | None:
    return h.core.symbols[symbol].routed_price


def trip(h: Harness, p: float = 130.0) -> None:
    effects = h.frame(h.trade(p=p))
    assert [type(e) for e in effects] == [BreakerTripped]
    assert state(h) is BreakerState.OPEN


# ---- closed --------------------------------------------------------------------------------------


def test_first_price_sets_the_reference() -> None:
    b = Breaker()
    assert b.check(50.0, "alpaca", 0.0, percent=20.0, cooldown=COOLDOWN) is Verdict.ACCEPT
    assert b.reference == 50.0


@pytest.mark.parametrize("p", [80.0, 120.0, 100.0, 119.99])
def test_moves_up_to_the_percent_are_accepted(live: Harness, p: float) -> None:
    live.frame(live.trade(p=p))
    assert state(live) is BreakerState.CLOSED
    assert routed(live) == p


@pytest.mark.parametrize("p", [120.01, 79.99, 200.0, 1.0])
def test_a_larger_move_trips_and_is_rejected(live: Harness, p: float) -> None:
    effects = live.frame(live.trade(p=p))
    assert len(effects) == 1
    effect = effects[0]
    assert isinstance(effect, BreakerTripped)
    assert (effect.symbol, effect.source, effect.price, effect.reference) == ("AAPL", "alpaca", p, 100.0)
    assert effect.move_percent == pytest.approx(abs(p - 100.0))
    assert state(live) is BreakerState.OPEN
    assert live.core.series["AAPL"].breaker_trips == 1
    assert live.core.rejected["circuit_open"] == 1
    assert routed(live) == 100.0


def test_agrees_is_relative_to_the_reference() -> None:
    assert agrees(120.0, 100.0, 20.0)
    assert not agrees(120.0001, 100.0, 20.0)
    assert agrees(80.0, 100.0, 20.0)


def test_the_reference_follows_accepted_prices(live: Harness) -> None:
    for p in (115.0, 130.0, 150.0):  # each within 20 % of the previous
        live.frame(live.trade(p=p))
    assert routed(live) == 150.0
    assert live.core.symbols["AAPL"].breaker.reference == 150.0
    assert state(live) is BreakerState.CLOSED


def test_breakers_are_per_symbol(live: Harness) -> None:
    live.frame(live.trade("MSFT", p=400.0))
    trip(live)
    live.frame(live.trade("MSFT", p=401.0))
    assert routed(live, "MSFT") == 401.0
    assert state(live, "MSFT") is BreakerState.CLOSED


def test_a_standby_price_trips_too(live: Harness) -> None:
    live.yahoo(price=300.0)
    assert state(live) is BreakerState.OPEN
    assert live.core.series["AAPL"].breaker_trips == 1
    assert live.core.rejected["circuit_open"] == 1
    assert live.core.symbols["AAPL"].last_price.get("yahoo") is None


# ---- open ----------------------------------------------------------------------------------------


def test_open_rejects_everything_during_the_cooldown_and_counts_one_trip(live: Harness) -> None:
    trip(live)
    for p in (100.0, 130.0, 131.0, 100.5):
        live.advance(COOLDOWN / 5)
        effects = live.frame(live.trade(p=p))
        assert effects == []
        assert state(live) is BreakerState.OPEN
    assert live.core.rejected["circuit_open"] == 5
    assert live.core.series["AAPL"].breaker_trips == 1
    assert len(live.trips()) == 1
    assert routed(live) == 100.0


def test_tick_after_the_cooldown_makes_it_half_open(live: Harness) -> None:
    trip(live)
    live.tick(COOLDOWN - 0.1)
    assert state(live) is BreakerState.OPEN
    live.tick(0.1)
    assert state(live) is BreakerState.HALF_OPEN
    assert live.core.status()["symbols"]["AAPL"]["breaker"] == "HALF_OPEN"  # type: ignore[index]


# ---- half-open -----------------------------------------------------------------------------------


def test_half_open_confirmed_by_the_old_reference(live: Harness) -> None:
    trip(live, 300.0)
    live.advance(COOLDOWN)
    live.frame(live.trade(p=101.0))
    assert state(live) is BreakerState.CLOSED
    assert routed(live) == 101.0
    assert live.core.symbols["AAPL"].breaker.reference == 101.0


def test_half_open_confirmed_by_the_other_source(make: Callable[..., Harness]) -> None:
    h = make(breaker_cooldown_s=COOLDOWN)
    h.primary_up()
    h.frame(h.trade(p=100.0))
    trip(h, 130.0)
    h.advance(10.0)
    h.yahoo(price=129.0)  # seen during the cooldown: rejected, but remembered for confirmation
    assert h.core.rejected["circuit_open"] == 2
    h.advance(COOLDOWN)
    h.frame(h.trade(p=130.5))  # the first half-open price, confirmed by Yahoo's 129
    assert state(h) is BreakerState.CLOSED
    assert routed(h) == 130.5
    assert h.core.symbols["AAPL"].breaker.reference == 130.5


def test_other_source_price_from_before_the_trip_does_not_confirm(make: Callable[..., Harness]) -> None:
    h = make(breaker_cooldown_s=COOLDOWN)
    h.primary_up()
    h.yahoo(price=130.0)  # reference 130 from Yahoo
    h.advance(1.0)
    h.yahoo(price=130.0)
    h.frame(h.trade(p=100.0))  # 100 vs 130: trips
    assert state(h) is BreakerState.OPEN
    h.advance(COOLDOWN)
    h.frame(h.trade(p=100.0))  # Yahoo's 130 is older than the trip; 100 is not the old reference 130
    assert state(h) is BreakerState.HALF_OPEN
    assert routed(h) is None


def test_half_open_confirmed_by_two_agreeing_prices(live: Harness) -> None:
    trip(live, 130.0)
    live.advance(COOLDOWN)
    live.frame(live.trade(p=130.0))
    assert state(live) is BreakerState.HALF_OPEN
    assert routed(live) == 100.0
    live.frame(live.trade(p=131.0))
    assert state(live) is BreakerState.CLOSED
    assert routed(live) == 131.0


def test_unconfirmed_half_open_price_opens_it_again(live: Harness) -> None:
    trip(live, 130.0)
    live.advance(COOLDOWN)
    live.frame(live.trade(p=130.0))
    live.frame(live.trade(p=200.0))  # agrees with neither the candidate nor the reference
    assert state(live) is BreakerState.OPEN
    assert routed(live) == 100.0
    # Open again for a full cooldown.
    live.advance(COOLDOWN - 1.0)
    live.frame(live.trade(p=100.0))
    assert state(live) is BreakerState.OPEN
    assert routed(live) == 100.0
    live.advance(1.0)
    live.frame(live.trade(p=100.0))
    assert state(live) is BreakerState.CLOSED
    assert routed(live) == 100.0
    assert live.core.series["AAPL"].breaker_trips == 1


def test_a_genuine_gap_heals_after_one_cooldown(live: Harness) -> None:
    """The price really jumps 30 % and stays: rejected for one cooldown, then routed."""
    prices: list[float | None] = []
    for i in range(80):
        live.frame(live.trade(p=130.0 + (i % 3) * 0.1))
        prices.append(routed(live))
        live.advance(1.0)
    assert prices[0] == 100.0
    healed = next(i for i, p in enumerate(prices) if p != 100.0)
    assert COOLDOWN <= healed <= COOLDOWN + 2
    assert all(p is not None and p > 129.0 for p in prices[healed:])
    assert state(live) is BreakerState.CLOSED
    assert live.core.series["AAPL"].breaker_trips == 1


def test_a_genuine_gap_confirmed_by_the_fallback_heals_at_the_first_half_open_price(live: Harness) -> None:
    trip(live, 130.0)
    live.advance(COOLDOWN / 2)
    live.yahoo(price=130.2)
    live.advance(COOLDOWN / 2)
    live.frame(live.trade(p=130.1))
    assert routed(live) == 130.1


@pytest.mark.parametrize("spike", [1000.0, 0.5, 125.0])
def test_a_bad_print_never_gets_through(live: Harness, spike: float) -> None:
    seen: list[float | None] = []
    for i in range(200):
        p = spike if i == 5 else 100.0 + (i % 5) * 0.2
        live.frame(live.trade(p=p))
        seen.append(routed(live))
        if i % 7 == 0:
            live.yahoo(price=100.0)
        live.advance(1.0)
    assert spike not in seen
    assert spike not in live.core.symbols["AAPL"].last_price.values()
    assert live.core.series["AAPL"].breaker_trips == 1
    assert state(live) is BreakerState.CLOSED
    assert seen[-1] == pytest.approx(100.0 + (199 % 5) * 0.2)


def test_a_bad_print_in_half_open_does_not_get_through(live: Harness) -> None:
    trip(live, 130.0)
    live.advance(COOLDOWN)
    live.frame(live.trade(p=500.0))  # a bad print as the first half-open price: only a candidate
    assert routed(live) == 100.0
    live.frame(live.trade(p=100.2))  # agrees with the old reference
    assert routed(live) == 100.2
    assert state(live) is BreakerState.CLOSED


def test_a_bad_fallback_print_does_not_get_through(make: Callable[..., Harness]) -> None:
    h = make(breaker_cooldown_s=COOLDOWN)
    h.fallback_ok(period_s=600.0)
    h.yahoo(price=100.0)
    h.yahoo(price=10.0)  # bad print from Yahoo while it is the active source
    assert routed(h) == 100.0
    h.advance(COOLDOWN)
    h.yahoo(price=100.1)
    assert routed(h) == 100.1


def test_pure_breaker_walk() -> None:
    b = Breaker()
    kw = {"percent": 20.0, "cooldown": 10.0}
    assert b.check(100.0, "alpaca", 0.0, **kw) is Verdict.ACCEPT
    assert b.check(150.0, "alpaca", 1.0, **kw) is Verdict.TRIP
    assert b.opened_at == 1.0
    assert b.check(150.0, "alpaca", 10.9, **kw) is Verdict.REJECT
    assert b.state is BreakerState.OPEN
    b.poll(11.0, 10.0)
    assert b.state is BreakerState.HALF_OPEN
    assert b.check(150.0, "alpaca", 11.0, **kw) is Verdict.REJECT  # candidate
    assert b.check(150.0, "yahoo", 11.5, **kw) is Verdict.REJECT  # another source's price is not consecutive
    assert b.check(151.0, "yahoo", 12.0, **kw) is Verdict.ACCEPT  # yahoo's own consecutive price
    assert b.state is BreakerState.CLOSED
    assert b.reference == 151.0
