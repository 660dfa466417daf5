"""DataSourceRouter (CONTRACT section 6): transitions, failover accounting, staleness, durations, routing."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from exporter.core.events import (
    ALPACA_ERROR_TYPES,
    DependencyLatency,
    FallbackPoll,
    PrimaryAuthenticated,
    PrimaryConnection,
    PrimaryControl,
    PrimaryError,
    PrimarySubscribed,
)
from exporter.core.failover import TRANSITIONS, UPTIME_WINDOW_S, State, Transition, mermaid_diagram
from exporter.core.health import PrimaryStale
from exporter.core.messages import DailyBar, Malformed, TradingStatus, Unknown, UpdatedBar
from exporter.core.stats import OTHER_SYMBOL, PROCESSING_MS_BUCKETS, K
from tests.support.core import SATURDAY_WALL_S, Harness, only_transition

P, F, B = State.PRIMARY_ACTIVE, State.FALLBACK_ACTIVE, State.BOTH_UNAVAILABLE
DAY = 86_400.0


def failed_over(make: Callable[..., Harness], **config: object) -> Harness:
    """Primary active, then lost with a healthy fallback: FALLBACK_ACTIVE after one failover."""
    h = make(**config)
    h.primary_up()
    h.fallback_ok(period_s=60.0)
    h.primary_down()
    assert h.state is F
    assert h.core.failovers == 1
    return h


# ---- start-up and health inputs ------------------------------------------------------------------


def test_starts_in_both_unavailable(h: Harness) -> None:
    assert h.state is B
    assert h.core.failovers == 0
    assert h.core.uptime_percent() == 0.0
    assert sum(h.core.state_durations().values()) == 0.0


def test_primary_healthy_needs_connected_authenticated_and_subscribed(h: Harness) -> None:
    assert h.send(PrimaryConnection("Connected")) == []
    assert h.state is B
    assert h.send(PrimaryAuthenticated(True)) == []
    assert h.state is B
    t = only_transition(h.send(PrimarySubscribed(frozenset({"AAPL"}))))
    assert isinstance(t, Transition)
    assert (t.previous, t.new) == (B, P)
    assert t.reason == "primary healthy"
    assert not t.failover
    assert t.recovery_seconds is None
    assert h.core.failovers == 0


@pytest.mark.parametrize("missing", ["connected", "authenticated", "subscribed"])
def test_primary_missing_one_input_is_not_healthy(h: Harness, missing: str) -> None:
    if missing != "connected":
        h.send(PrimaryConnection("Connected"))
    if missing != "authenticated":
        h.send(PrimaryAuthenticated(True))
    if missing != "subscribed":
        h.send(PrimarySubscribed(frozenset({"AAPL"})))
    h.tick(1.0)
    assert h.state is B
    assert not h.core.primary_healthy(h.clock.monotonic())


def test_empty_subscription_ack_is_not_healthy(h: Harness) -> None:
    h.primary_up(symbols=[])
    assert h.state is B


@pytest.mark.parametrize("state", ["Connecting", "Authenticating", "Disconnected"])
def test_leaving_connected_makes_primary_unhealthy(h: Harness, state: str) -> None:
    h.primary_up()
    assert h.state is P
    h.send(PrimaryConnection(state, "went away"))  # type: ignore[arg-type]
    assert h.state is B
    t = h.transitions()[-1]
    assert (t.previous, t.new) == (P, B)
    assert "went away" in t.reason


def test_auth_lost_makes_primary_unhealthy(h: Harness) -> None:
    h.primary_up()
    h.send(PrimaryAuthenticated(False))
    assert h.state is B


def test_reconnect_needs_a_fresh_subscription_ack(h: Harness) -> None:
    h.primary_up()
    h.primary_down()
    h.send(PrimaryConnection("Connected"))
    h.send(PrimaryAuthenticated(True))
    assert h.state is B  # the old ack does not count for the new connection
    h.send(PrimarySubscribed(frozenset({"AAPL"})))
    assert h.state is P


def test_fallback_from_start_up_is_not_a_failover(h: Harness) -> None:
    t = only_transition(h.fallback_ok())
    assert (t.previous, t.new, t.reason) == (B, F, "fallback healthy")
    assert not t.failover
    assert h.core.failovers == 0
    assert h.core.failover.recovery.count == 0


def test_fallback_health_lasts_three_poll_periods(h: Harness) -> None:
    h.fallback_ok(period_s=5.0)
    h.tick(15.0)
    assert h.state is F
    assert h.core.fallback_healthy(h.clock.monotonic())
    h.tick(0.01)
    assert h.state is B
    t = h.transitions()[-1]
    assert (t.previous, t.new, t.reason) == (F, B, "fallback failed, primary down")
    assert t.seconds_in_previous == pytest.approx(15.01)


def test_failed_poll_does_not_extend_fallback_health(h: Harness) -> None:
    h.fallback_ok(period_s=5.0)
    h.advance(10.0)
    h.fallback_fail(period_s=5.0, error="rate_limited")
    assert h.state is F
    assert h.core.yahoo_errors["rate_limited"] == 1
    h.tick(5.01)
    assert h.state is B


def test_fallback_health_window_uses_the_period_in_force(h: Harness) -> None:
    h.fallback_ok(period_s=60.0)
    h.tick(170.0)
    assert h.state is F
    h.fallback_ok(period_s=5.0)  # now polled fast: three fast periods
    h.tick(15.5)
    assert h.state is B


def test_disabled_fallback_is_never_healthy(make: Callable[..., Harness]) -> None:
    h = make(fallback_enabled=False)
    h.fallback_ok()
    assert h.state is B
    h.primary_up()
    h.primary_down()
    assert h.state is B
    assert h.core.failovers == 0


# ---- failover ------------------------------------------------------------------------------------


def test_primary_failure_with_healthy_fallback_is_a_failover(h: Harness) -> None:
    h.primary_up()
    h.fallback_ok(period_s=60.0)
    assert h.state is P
    h.advance(12.0)
    t = only_transition(h.primary_down("connection reset by peer"))
    assert (t.previous, t.new) == (P, F)
    assert t.reason.startswith("primary failed")
    assert "connection reset by peer" in t.reason
    assert t.failover
    assert t.recovery_seconds == 0.0
    assert t.seconds_in_previous == pytest.approx(12.0)
    assert h.core.failovers == 1
    assert h.core.failover.recovery.count == 1


def test_failover_through_both_unavailable_counts_once_with_recovery_time(h: Harness) -> None:
    h.primary_up()
    h.advance(3.0)
    t1 = only_transition(h.primary_down())
    assert (t1.previous, t1.new) == (P, B)
    assert t1.reason.startswith("primary failed, fallback down")
    assert not t1.failover
    assert h.core.failovers == 0
    h.advance(7.0)
    t2 = only_transition(h.fallback_ok())
    assert (t2.previous, t2.new) == (B, F)
    assert t2.failover
    assert t2.recovery_seconds == pytest.approx(7.0)
    assert h.core.failovers == 1
    # 7 s falls in the (5, 10] bucket of 1 5 10 20 30 60.
    assert h.core.failover.recovery.bounds == (1.0, 5.0, 10.0, 20.0, 30.0, 60.0)
    assert h.core.failover.recovery.counts == [0, 0, 1, 0, 0, 0, 0]
    assert h.core.failover.recovery.sum == pytest.approx(7.0)


def test_fallback_flapping_within_one_outage_is_one_failover(make: Callable[..., Harness]) -> None:
    h = failed_over(make)
    h.tick(181.0)  # fallback's last success is now older than 3 x 60 s
    assert h.state is B
    h.fallback_ok(period_s=60.0)
    assert h.state is F
    assert h.core.failovers == 1
    assert h.core.failover.recovery.count == 1


def test_each_outage_counts_its_own_failover(make: Callable[..., Harness]) -> None:
    h = failed_over(make, failback_after_s=10.0)
    h.primary_up()
    h.tick(10.0)
    assert h.state is P
    h.fallback_ok(period_s=60.0)
    h.primary_down()
    assert h.state is F
    assert h.core.failovers == 2
    assert h.core.failover.recovery.count == 2


def test_outage_recovered_by_primary_is_not_a_failover(h: Harness) -> None:
    h.primary_up()
    h.primary_down()
    assert h.state is B
    t = only_transition(h.primary_up())
    assert (t.previous, t.new, t.failover) == (B, P, False)
    # The next entry into FALLBACK_ACTIVE without a new primary failure would be start-up-like, but
    # here the primary fails again first, so it is a failover.
    h.primary_down()
    h.fallback_ok()
    assert h.core.failovers == 1


def test_both_unavailable_goes_to_primary_when_it_recovers_first(h: Harness) -> None:
    h.primary_up()
    h.primary_down()
    assert h.state is B
    h.advance(4.0)
    t = only_transition(h.primary_up())
    assert (t.previous, t.new, t.reason) == (B, P, "primary healthy")
    assert t.seconds_in_previous == pytest.approx(4.0)


# ---- failback and hysteresis ---------------------------------------------------------------------


def test_failback_only_after_failback_after_of_primary_health(make: Callable[..., Harness]) -> None:
    h = failed_over(make, failback_after_s=30.0)
    h.advance(5.0)
    h.primary_up()
    assert h.state is F  # healthy, but not for long enough
    h.tick(29.9)
    assert h.state is F
    t = only_transition(h.tick(0.1))
    assert (t.previous, t.new) == (F, P)
    assert t.reason == "failback: primary healthy"
    assert not t.failover
    assert t.seconds_in_previous == pytest.approx(35.0)


def test_a_flap_resets_the_failback_timer(make: Callable[..., Harness]) -> None:
    h = failed_over(make, failback_after_s=30.0)
    h.primary_up()
    h.tick(20.0)
    h.primary_down()
    h.primary_up()
    h.tick(20.0)  # 40 s healthy in total, but only 20 s continuously
    assert h.state is F
    h.tick(9.9)
    assert h.state is F
    h.tick(0.1)
    assert h.state is P


def test_staleness_also_resets_the_failback_timer(make: Callable[..., Harness]) -> None:
    h = failed_over(make, failback_after_s=30.0, stale_after_s=10.0, market_hours="always")
    h.primary_up()
    h.tick(11.0)  # connected but silent: stale, not healthy
    assert not h.core.primary_healthy(h.clock.monotonic())
    h.frame(h.trade())
    h.tick(10.0)
    h.frame(h.trade())
    h.tick(10.0)
    h.frame(h.trade())
    h.tick(9.9)
    assert h.state is F  # healthy only since the first trade, 29.9 s ago
    h.frame(h.trade())
    h.tick(0.1)
    assert h.state is P


def test_fallback_failing_while_primary_healthy_but_not_held(make: Callable[..., Harness]) -> None:
    h = failed_over(make, failback_after_s=1000.0)
    h.primary_up()
    h.tick(5.0)
    assert h.state is F
    assert h.fallback_fail(period_s=60.0) == []  # a failed poll alone does not end the health window
    h.tick(175.0)
    assert h.state is F
    t = only_transition(h.tick(1.0))  # the last success is now older than 3 x 60 s
    assert (t.previous, t.new) == (F, P)
    assert t.reason == "fallback failed, primary healthy"
    assert not t.failover


def test_zero_failback_after_fails_back_at_once(make: Callable[..., Harness]) -> None:
    h = failed_over(make, failback_after_s=0.0)
    h.primary_up()
    assert h.state is P


# ---- the table itself ----------------------------------------------------------------------------


def test_transition_table_is_total_over_reachable_flags() -> None:
    for state in State:
        for p in (False, True):
            for f in (False, True):
                for held in (False, True) if p else (False,):
                    assert (state, p, f, held) in TRANSITIONS, (state, p, f, held)


def test_transition_table_rules() -> None:
    for (state, p, f, held), (nxt, reason) in TRANSITIONS.items():
        if state is B or state is P:
            expected = P if p else (F if f else B)
        else:
            expected = P if held or (p and not f) else (F if f else B)
        assert nxt is expected, (state, p, f, held)
        assert bool(reason) == (nxt is not state)


def test_mermaid_diagram_shows_every_edge() -> None:
    diagram = mermaid_diagram()
    assert diagram.startswith("stateDiagram-v2")
    assert "[*] --> BOTH_UNAVAILABLE" in diagram
    for (state, _p, _f, _h), (nxt, reason) in TRANSITIONS.items():
        if nxt is not state:
            line = next(li for li in diagram.splitlines() if li.strip().startswith(f"{state.name} --> {nxt.name}:"))
            assert reason in line


def test_a_walk_takes_every_edge_of_the_table(make: Callable[..., Harness]) -> None:
    """One scenario through every edge: each (previous, new, reason) of the table is produced for real."""
    h = make(failback_after_s=10.0)
    h.fallback_ok(period_s=5.0)  # B -> F: fallback healthy
    h.tick(16.0)  # F -> B: fallback failed, primary down
    h.primary_up()  # B -> P: primary healthy
    h.fallback_ok(period_s=5.0)
    h.primary_down()  # P -> F: primary failed
    h.primary_up()
    h.tick(10.0)  # F -> P: failback
    h.fallback_ok(period_s=5.0)
    h.primary_down()  # P -> F
    h.primary_up()
    h.tick(16.0)  # F -> P: fallback failed, primary healthy (held too: 16 s >= 10 s)
    h2 = make(failback_after_s=100.0)
    h2.fallback_ok(period_s=5.0)
    h2.primary_up()
    h2.tick(16.0)  # F -> P with the primary healthy but not held
    h.primary_down()  # P -> B: primary failed, fallback down
    taken = {(t.previous, t.new, t.reason.split(":")[0] if t.previous is P else t.reason) for t in h.transitions()}
    taken |= {(t.previous, t.new, t.reason) for t in h2.transitions()}
    table = {(s, n, r) for (s, *_), (n, r) in TRANSITIONS.items() if n is not s}
    assert table <= taken


# ---- staleness -----------------------------------------------------------------------------------


def stale_harness(make: Callable[..., Harness], **config: object) -> Harness:
    config.setdefault("market_hours", "always")
    h = make(stale_after_s=30.0, failback_after_s=5.0, **config)
    h.primary_up()
    h.fallback_ok(period_s=600.0)  # stays healthy through the whole test
    return h


def test_silence_longer_than_stale_after_fails_over(make: Callable[..., Harness]) -> None:
    h = stale_harness(make)
    assert h.state is P
    h.frame(h.trade())
    h.tick(30.0)
    assert h.state is P  # exactly stale_after is not yet stale
    effects = h.tick(0.5)
    stale = [e for e in effects if isinstance(e, PrimaryStale)]
    assert len(stale) == 1
    assert stale[0].silent_seconds == pytest.approx(30.5)
    assert h.core.errors["stale_stream"] == 1
    assert h.state is F
    t = h.transitions()[-1]
    assert t.failover
    assert "stale" in t.reason
    # Once per episode.
    h.tick(10.0)
    h.tick(100.0)
    assert len(h.stale_effects()) == 1
    assert h.core.errors["stale_stream"] == 1


def test_stale_is_measured_from_the_subscription_ack_without_data(make: Callable[..., Harness]) -> None:
    h = stale_harness(make)
    h.tick(30.0)
    assert h.state is P
    h.tick(1.0)
    assert h.state is F
    assert len(h.stale_effects()) == 1


def test_stale_primary_recovers_when_data_resumes(make: Callable[..., Harness]) -> None:
    h = stale_harness(make)
    h.tick(31.0)
    assert h.state is F
    h.frame(h.trade())
    assert h.core.primary_healthy(h.clock.monotonic())
    h.tick(5.0)
    assert h.state is P
    assert h.transitions()[-1].reason == "failback: primary healthy"


def test_every_stale_episode_is_reported(make: Callable[..., Harness]) -> None:
    """After data resumed, the next silence is a new episode: a second PrimaryStale and error count."""
    h = stale_harness(make)
    h.tick(31.0)
    assert len(h.stale_effects()) == 1
    h.frame(h.trade())
    h.tick(5.0)
    assert h.state is P
    h.tick(31.0)
    assert h.state is F
    assert len(h.stale_effects()) == 2
    assert h.core.errors["stale_stream"] == 2


def test_resubscription_starts_a_new_episode(make: Callable[..., Harness]) -> None:
    h = stale_harness(make)
    h.tick(31.0)
    h.primary_down()
    h.primary_up()
    h.tick(5.0)
    assert h.state is P
    h.tick(31.0)
    assert len(h.stale_effects()) == 2
    assert h.core.errors["stale_stream"] == 2


def test_stale_with_fallback_down_goes_to_both_unavailable(make: Callable[..., Harness]) -> None:
    h = make(stale_after_s=30.0, market_hours="always")
    h.primary_up()
    h.tick(31.0)
    assert h.state is B
    assert h.core.errors["stale_stream"] == 1


def test_market_never_is_never_stale(make: Callable[..., Harness]) -> None:
    h = stale_harness(make, market_hours="never")
    h.tick(DAY)
    assert h.state is P
    assert h.stale_effects() == []
    assert h.core.errors["stale_stream"] == 0


def test_zero_stale_after_disables_staleness(make: Callable[..., Harness]) -> None:
    h = make(stale_after_s=0.0, market_hours="always")
    h.primary_up()
    h.tick(DAY)
    assert h.state is P
    assert h.stale_effects() == []


def test_regular_hours_silence_on_a_weekend_is_not_stale(make: Callable[..., Harness]) -> None:
    h = make(stale_after_s=30.0, market_hours="regular", wall_s=SATURDAY_WALL_S)
    h.primary_up()
    h.tick(3600.0)
    assert h.state is P
    assert h.stale_effects() == []


def test_silence_before_the_open_is_not_counted(make: Callable[..., Harness]) -> None:
    """Staleness is silence while the market is open: at 09:30:10 there were only 10 s of it."""
    open_at = datetime(2026, 3, 10, 9, 30, tzinfo=ZoneInfo("America/New_York")).timestamp()
    h = make(stale_after_s=30.0, market_hours="regular", wall_s=open_at - 1800.0)
    h.primary_up()
    h.tick(1800.0 + 10.0)
    assert h.state is P
    assert h.stale_effects() == []
    h.tick(20.0)
    assert h.state is P  # 30 s into the session: not yet
    h.tick(1.0)
    assert h.state is B
    assert len(h.stale_effects()) == 1


def test_regular_hours_silence_in_session_is_stale(make: Callable[..., Harness]) -> None:
    h = make(stale_after_s=30.0, market_hours="regular")  # Tuesday 10:30 New York
    h.primary_up()
    h.tick(31.0)
    assert h.state is B
    assert len(h.stale_effects()) == 1


# ---- durations and uptime ------------------------------------------------------------------------


def test_state_durations_add_up_to_elapsed_time(make: Callable[..., Harness]) -> None:
    h = make(failback_after_s=0.0)
    h.advance(5.0)
    h.primary_up()
    h.advance(10.0)
    h.fallback_ok(period_s=60.0)
    h.primary_down()
    h.advance(7.0)
    h.tick(173.0)  # exactly three periods since the poll: still healthy
    assert h.state is F
    h.tick(1.0)
    assert h.state is B
    h.advance(3.0)
    d = h.core.state_durations()
    assert d[B] == pytest.approx(5.0 + 3.0)
    assert d[P] == pytest.approx(10.0)
    assert d[F] == pytest.approx(181.0)
    assert sum(d.values()) == pytest.approx(h.elapsed())


def test_uptime_counts_both_unavailable_as_down(h: Harness) -> None:
    h.advance(10.0)
    h.primary_up()
    h.advance(90.0)
    assert h.core.uptime_percent() == pytest.approx(90.0)
    h.primary_down()
    h.advance(100.0)
    assert h.core.uptime_percent() == pytest.approx(45.0)
    assert 0.0 <= h.core.uptime_percent() <= 100.0


def test_uptime_is_100_when_never_down_after_start(h: Harness) -> None:
    h.primary_up()
    h.advance(3600.0)
    assert h.core.uptime_percent() == 100.0


def test_uptime_window_is_thirty_days(h: Harness) -> None:
    assert UPTIME_WINDOW_S == 30 * DAY
    h.advance(DAY)  # down for the first day
    h.primary_up()
    h.advance(29.5 * DAY)
    # Window [0.5 d, 30.5 d]: half a day of it is down.
    assert h.core.uptime_percent() == pytest.approx(100.0 * (1 - 0.5 / 30))
    h.advance(DAY)
    assert h.core.uptime_percent() == pytest.approx(100.0)
    h.primary_down()
    h.advance(3 * DAY)
    assert h.core.uptime_percent() == pytest.approx(100.0 * (1 - 3 / 30))


# ---- routing, accounting, histograms -------------------------------------------------------------


def test_only_the_active_sources_prices_are_routed(make: Callable[..., Harness]) -> None:
    h = make()
    h.primary_up()
    h.fallback_ok(period_s=60.0)
    h.frame(h.trade(p=100.0))
    h.yahoo(price=99.0)
    st = h.core.symbols["AAPL"]
    assert (st.routed_price, st.routed_source) == (100.0, "alpaca")
    assert st.last_price == {"alpaca": 100.0, "yahoo": 99.0}
    assert h.core.routed == {"alpaca": 1, "yahoo": 0}
    assert h.core.standby == {"alpaca": 0, "yahoo": 1}
    h.primary_down()
    assert h.state is F
    h.yahoo(price=98.0)
    h.frame(h.trade(p=101.0))  # a frame still in the pipe after the drop: standby data
    assert (st.routed_price, st.routed_source) == (98.0, "yahoo")
    assert st.last_price == {"alpaca": 101.0, "yahoo": 98.0}
    assert h.core.routed == {"alpaca": 1, "yahoo": 1}
    assert h.core.standby == {"alpaca": 1, "yahoo": 1}


def test_nothing_is_routed_while_both_unavailable(h: Harness) -> None:
    h.frame(h.trade())
    h.yahoo()
    st = h.core.symbols["AAPL"]
    assert st.routed_price is None
    assert st.routed_source == ""
    assert h.core.routed == {"alpaca": 0, "yahoo": 0}
    assert h.core.standby == {"alpaca": 1, "yahoo": 1}


def test_routed_update_time_is_the_wall_clock(h: Harness) -> None:
    h.primary_up()
    h.frame(h.trade(age_s=2.0))
    assert h.core.symbols["AAPL"].routed_wall == pytest.approx(h.clock.wall_ns() / 1e9)


def test_price_delta_percent_of_the_fallback(h: Harness) -> None:
    st = h.core.symbols["AAPL"]
    assert h.core.price_delta_percent(st) is None
    h.frame(h.trade(p=101.0))
    assert h.core.price_delta_percent(st) is None
    h.yahoo(price=100.0)
    assert h.core.price_delta_percent(st) == pytest.approx(1.0)
    h.frame(h.trade(p=95.0))
    assert h.core.price_delta_percent(st) == pytest.approx(5.0)


def test_quote_midpoint_is_the_routed_price(h: Harness) -> None:
    h.primary_up()
    h.frame(h.quote(bp=99.0, ap=101.0))
    assert h.core.symbols["AAPL"].routed_price == pytest.approx(100.0)


def test_latency_is_observed_for_routed_trades_and_quotes_only(h: Harness) -> None:
    series = h.core.series["AAPL"]
    h.frame(h.trade(age_s=0.3))  # standby (BOTH_UNAVAILABLE): not observed
    assert series.latency_histogram().count == 0
    h.primary_up()
    h.frame(h.trade(age_s=0.3), h.quote(age_s=1.5))
    assert series.latency_histogram().count == 2
    assert series.latency_histogram().bounds == (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
    assert series.latency_histogram().counts == [0, 0, 1, 0, 1, 0, 0, 0]
    assert series.latency_histogram().sum == pytest.approx(1.8)
    # Bars carry their interval start, not an event time.
    h.frame(
        h.bar(age_s=30.0),
        UpdatedBar(S="AAPL", o=1, h=1, l=1, c=1, t=h.ts(60.0)),
        DailyBar(S="AAPL", o=1, h=1, l=1, c=1, t=h.ts(3600.0)),
    )
    assert series.latency_histogram().count == 2
    # Rejected messages are not routed.
    h.frame(h.trade(p=-1.0, age_s=0.3))
    assert series.latency_histogram().count == 2


def test_latency_of_a_message_stamped_slightly_ahead_is_zero(h: Harness) -> None:
    h.primary_up()
    h.frame(h.trade(age_s=-1.0))  # within the 5 s skew tolerance
    series = h.core.series["AAPL"]
    assert series.latency.count == 1
    assert series.latency.sum == 0.0


def test_processing_histogram_has_one_observation_per_message(h: Harness) -> None:
    assert h.core.counters.processing_ms.bounds == PROCESSING_MS_BUCKETS
    h.primary_up()
    h.frame(
        h.trade(),
        h.trade(p=0.0),
        h.trade("ZZZZ"),
        Unknown(T="zz", S="AAPL"),
        Malformed(T="t", S="AAPL", detail="missing p"),
        decode_seconds=0.005,
    )
    hist = h.core.counters.processing_ms
    assert hist.count == 5
    # 5 ms over 5 messages = 1 ms each, in the le=1 bucket.
    assert hist.sum == pytest.approx(5.0)
    assert hist.counts[PROCESSING_MS_BUCKETS.index(1.0)] == 5
    h.frame()
    assert hist.count == 5


def test_unknown_symbol_is_counted_and_rejected(h: Harness) -> None:
    h.primary_up()
    h.frame(h.trade("ZZZZ"))
    h.yahoo("ZZZZ")
    assert h.core.rejected["unknown_symbol"] == 2
    assert h.core.message_counts()["trade"] == 1
    assert h.core.series["ZZZZ"].received[K["trade"]] == 1
    assert "ZZZZ" not in h.core.symbols
    assert h.core.accounting()["alpaca"] == {"received": 1, "routed": 0, "standby": 0, "rejected": 1}
    assert h.core.accounting()["yahoo"] == {"received": 1, "routed": 0, "standby": 0, "rejected": 1}


def test_symbol_series_are_capped_with_other(make: Callable[..., Harness]) -> None:
    h = make(symbols=("AAPL", "MSFT", "SPY"), max_symbol_series=2)
    h.primary_up()
    h.frame(h.trade("AAPL"), h.trade("MSFT"), h.trade("SPY"), h.trade("ZZZZ"))
    assert set(h.core.series) == {"AAPL", "MSFT"}
    other = h.core.other
    assert other.label == OTHER_SYMBOL
    assert other.received[K["trade"]] == 2  # SPY (configured, past the cap) and ZZZZ (unknown)
    # SPY is still routed and measured, under __other__.
    assert h.core.symbols["SPY"].routed_price == 100.0
    assert other.latency_histogram().count == 1
    assert h.core.message_counts()["trade"] == 4


def test_unknown_message_types_are_counted_not_routed(h: Harness) -> None:
    h.primary_up()
    h.frame(Unknown(T="zz", S="AAPL"), Unknown(T="yy"))
    counts = h.core.message_counts()
    assert counts["unknown"] == 2
    assert sum(counts.values()) == 2
    assert h.core.routed["alpaca"] == 0
    # Rejected as malformed, so received = routed + standby + rejected stays exact.
    assert h.core.rejected["malformed"] == 2
    assert h.core.accounting()["alpaca"] == {"received": 2, "routed": 0, "standby": 0, "rejected": 2}


def test_malformed_message_of_a_known_type(h: Harness) -> None:
    h.primary_up()
    h.frame(Malformed(T="q", S="AAPL", detail="bp: expected a number"), h.trade())
    assert h.core.rejected["malformed"] == 1
    assert h.core.series["AAPL"].received[K["quote"]] == 1
    assert h.core.series["AAPL"].received[K["trade"]] == 1
    assert h.core.accounting()["alpaca"] == {"received": 2, "routed": 1, "standby": 0, "rejected": 1}
    # A malformed item whose type is not a stocks type is an unknown message.
    h.frame(Malformed(T="zz", S="AAPL"))
    assert h.core.rejected["malformed"] == 2
    assert h.core.message_counts()["unknown"] == 1


def test_other_message_types_are_counted_by_type(h: Harness) -> None:
    h.primary_up()
    h.frame(TradingStatus(S="AAPL", t=h.ts(), sc="H"))
    assert h.core.series["AAPL"].received[K["status"]] == 1
    assert h.core.accounting()["alpaca"]["received"] == 1
    assert h.core.symbols["AAPL"].routed_price is None


def test_control_messages_and_errors_are_counted(h: Harness) -> None:
    h.send(PrimaryControl(3))
    h.send(PrimaryControl())
    assert h.core.message_counts()["control"] == 4
    for kind in ALPACA_ERROR_TYPES:
        h.send(PrimaryError(kind))
    h.send(PrimaryError("something new", "code 999"))
    assert h.core.errors["server_error"] == 2
    assert all(h.core.errors[k] == 1 for k in ALPACA_ERROR_TYPES if k != "server_error")
    assert h.core.accounting()["alpaca"]["received"] == 0


def test_dependency_latency_is_kept_per_dependency_and_method(h: Harness) -> None:
    h.send(DependencyLatency("alpaca", "handshake", 0.2))
    h.send(DependencyLatency("alpaca", "handshake", 0.3))
    h.send(DependencyLatency("yahoo", "poll", 0.05))
    assert h.core.counters.dependency_latency[("alpaca", "handshake")].count == 2
    assert h.core.counters.dependency_latency[("yahoo", "poll")].sum == pytest.approx(0.05)


def test_accounting_is_exact_over_a_mixed_session(h: Harness) -> None:
    h.primary_up()
    h.fallback_ok(period_s=60.0)
    h.frame(h.trade(), h.trade(p=math.nan), h.quote(bp=101.0, ap=100.0), h.bar(), h.trade("ZZZZ"))
    h.yahoo(price=100.0)
    h.yahoo(price=-1.0)
    h.frame(h.trade(p=200.0))  # trips the breaker
    h.primary_down()
    h.yahoo(price=100.5)
    h.frame(h.trade(p=100.2))  # open breaker: circuit_open
    for source, acc in h.core.accounting().items():
        assert acc["received"] == acc["routed"] + acc["standby"] + acc["rejected"], source
    assert sum(h.core.rejected.values()) == sum(a["rejected"] for a in h.core.accounting().values())
    assert h.core.accounting()["alpaca"] == {"received": 7, "routed": 2, "standby": 0, "rejected": 5}
    assert h.core.accounting()["yahoo"] == {"received": 3, "routed": 0, "standby": 1, "rejected": 2}


def test_fallback_poll_without_error_type_is_not_counted(h: Harness) -> None:
    h.send(FallbackPoll(ok=False, period_s=5.0))
    assert sum(h.core.yahoo_errors.values()) == 0
    assert h.state is B


@pytest.mark.parametrize("metrics", [True, False])
def test_metrics_off_keeps_every_outcome_and_skips_only_the_per_symbol_bookkeeping(
    make: Callable[..., Harness], metrics: bool
) -> None:
    h = failed_over(make, metrics=metrics)
    h.primary_up()  # healthy but not held: the primary's data is standby
    standby = [h.trade(p=100.1), h.quote()]
    rejected = [h.trade(p=-1.0), h.trade("ZZZ"), Unknown(T="zz", S="AAPL"), Malformed(T="t", S="AAPL", detail="no p")]
    h.frame(*standby, *rejected)
    h.tick(30.0)  # failback
    assert h.state is P
    h.frame(h.trade(p=100.2), h.quote(age_s=0.5), h.bar(c=100.3))
    assert h.core.accounting()["alpaca"] == {"received": 9, "routed": 3, "standby": 2, "rejected": 4}
    assert {k: v for k, v in h.core.rejected.items() if v} == {"invalid_price": 1, "unknown_symbol": 1, "malformed": 2}
    assert h.core.symbols["AAPL"].routed_price == 100.3
    # Only the bookkeeping behind alpaca_messages_received_total, latency and processing time is skipped.
    counted = sum(sum(s.received) for s in (*h.core.series.values(), h.core.other))
    assert counted == (9 if metrics else 0)
    assert (h.core.series["AAPL"].latency_histogram().count == 2) is metrics
    assert (h.core.counters.processing_ms.count == 9) is metrics


def test_state_since_and_fallback_last_ok_are_monotonic_times(h: Harness) -> None:
    assert h.core.state_since == h.start
    assert h.core.fallback_last_ok is None
    h.advance(3.0)
    h.fallback_ok()  # BOTH_UNAVAILABLE -> FALLBACK_ACTIVE now
    assert h.core.fallback_last_ok == h.start + 3.0
    assert h.core.state_since == h.start + 3.0
    h.advance(1.0)
    h.fallback_ok()
    assert h.core.fallback_last_ok == h.start + 4.0
    assert h.core.state_since == h.start + 3.0


def test_the_failover_reason_is_an_error_reported_within_the_last_second(h: Harness) -> None:
    h.primary_up()
    h.fallback_ok(period_s=60.0)
    h.send(PrimaryError("auth_failed", "token revoked"))
    t = only_transition(h.send(PrimaryAuthenticated(False)))
    assert t.reason == "primary failed: auth_failed: token revoked"  # the error, not its symptom
    h.primary_up()
    h.tick(30.0)  # failback
    h.send(PrimaryError("slow_client"))
    h.advance(1.5)  # an older error no longer explains the outage: the symptom does
    t = only_transition(h.send(PrimaryAuthenticated(False)))
    assert t.reason == "primary failed: not authenticated"


def test_an_empty_subscription_ack_is_the_failover_reason(h: Harness) -> None:
    h.primary_up()
    h.fallback_ok(period_s=60.0)
    t = only_transition(h.send(PrimarySubscribed(frozenset())))
    assert t.reason == "primary failed: not subscribed"
