"""Wall-clock steps (NTP corrections, a VM resumed from suspend): timers run on monotonic time and
ignore them; message ages are judged against the new wall time, so a step shows up as rejected
messages (stale or future), logged once per step, and heals when the clock is right again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from exporter.core.clock import FakeClock
from exporter.core.events import (
    FallbackPoll,
    PrimaryAuthenticated,
    PrimaryConnection,
    PrimaryData,
    PrimarySubscribed,
    Tick,
)
from exporter.core.messages import Trade, utc_from_ns
from exporter.core.router import Core, CoreConfig, State
from tests.support.stacks import records


class SteppedClock:
    """The system clock, with a wall-time offset a test can step."""

    def __init__(self) -> None:
        self.offset_ns = 0

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ns(self) -> int:
        return time.time_ns() + self.offset_ns

    def step(self, seconds: float) -> None:
        self.offset_ns += int(seconds * 1e9)


class TrueFakeClock(FakeClock):
    """A FakeClock that also remembers the true time (what the exchange stamps)."""

    def __init__(self) -> None:
        super().__init__()
        self.true_wall_ns = self.wall_ns()

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        self.true_wall_ns += int(seconds * 1e9)


def _healthy_core(clock: TrueFakeClock) -> Core:
    core = Core(CoreConfig(symbols=("AAPL",), stale_after_s=10.0, market_hours="always", failback_after_s=5.0), clock)
    core.handle(PrimaryConnection("Connected", "subscribed"))
    core.handle(PrimaryAuthenticated(True))
    core.handle(PrimarySubscribed(frozenset({"AAPL"})))
    core.handle(FallbackPoll(True, 5.0))
    assert core.state is State.PRIMARY_ACTIVE
    return core


def _trade(clock: TrueFakeClock, price: float = 100.0) -> PrimaryData:
    # Stamped by the exchange with the true time: the local clock's steps do not move it.
    return PrimaryData([Trade("AAPL", price, utc_from_ns(clock.true_wall_ns))], clock.monotonic(), 0.0)


@pytest.mark.parametrize(("step", "reason"), [(3600.0, "stale_timestamp"), (-3600.0, "future_timestamp")])
def test_core_wall_step_rejects_by_age_but_timers_hold(step: float, reason: str) -> None:
    clock = TrueFakeClock()
    core = _healthy_core(clock)
    core.handle(_trade(clock))
    durations = core.state_durations()
    clock.jump_wall(step)
    for _ in range(20):  # 20 s of data and ticks under the wrong wall time
        clock.advance(1.0)
        core.handle(_trade(clock))
        core.handle(Tick())
        core.handle(FallbackPoll(True, 5.0))
    assert core.state is State.PRIMARY_ACTIVE  # staleness, failback and cooldown timers are monotonic
    assert core.rejected[reason] == 20
    assert core.errors["stale_stream"] == 0  # data kept arriving: not a silent stream
    after = core.state_durations()
    assert after[State.PRIMARY_ACTIVE] - durations[State.PRIMARY_ACTIVE] == pytest.approx(20.0)
    assert core.uptime_percent() == pytest.approx(
        100.0 * core.state_durations()[State.PRIMARY_ACTIVE] / sum(after.values())
    )
    acc = core.accounting()["alpaca"]
    assert acc["received"] == acc["routed"] + acc["standby"] + acc["rejected"] == 21
    clock.jump_wall(-step)  # the clock is corrected: messages are accepted again
    clock.advance(1.0)
    routed = core.routed["alpaca"]
    core.handle(_trade(clock))
    assert core.routed["alpaca"] == routed + 1


def test_core_breaker_cooldown_ignores_wall_steps() -> None:
    clock = TrueFakeClock()
    core = Core(CoreConfig(symbols=("AAPL",), stale_after_s=0, market_hours="always", breaker_cooldown_s=60.0), clock)
    core.handle(PrimaryConnection("Connected", "subscribed"))
    core.handle(PrimaryAuthenticated(True))
    core.handle(PrimarySubscribed(frozenset({"AAPL"})))
    core.handle(_trade(clock, 100.0))
    core.handle(_trade(clock, 200.0))  # trips
    assert core.symbols["AAPL"].breaker.state.name == "OPEN"
    clock.jump_wall(7200.0)
    clock.true_wall_ns += int(7200 * 1e9)  # even if the exchange agreed: the cooldown is monotonic
    core.handle(Tick())
    assert core.symbols["AAPL"].breaker.state.name == "OPEN"


async def test_daemon_clock_step_is_logged_once_and_heals(rstack: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The daemon's wall clock jumps an hour ahead for a second, then back: the router stays on the
    primary (its timers are monotonic), every Alpaca message meanwhile is rejected as stale_timestamp,
    each step is logged once, and routing resumes after the correction."""
    clock = SteppedClock()
    async with rstack(clock=clock) as s:
        await s.healthy_start()
        caplog.clear()
        stale_before = s.core.rejected["stale_timestamp"]
        clock.step(3600.0)
        await s.wait_for(lambda: s.core.rejected["stale_timestamp"] > stale_before + 20, 3.0, "stale rejections")
        routed = s.core.routed["alpaca"]
        await asyncio.sleep(0.5)
        assert s.core.routed["alpaca"] == routed  # nothing routed with a wrong clock
        await s.metrics()
        assert s.core.state is State.PRIMARY_ACTIVE
        clock.step(-3600.0)
        await s.wait_for(lambda: s.core.routed["alpaca"] > routed + 10, 3.0, "routing resumes")
        await s.wait_for(lambda: len(records(caplog, "exporter.app", "wall clock stepped")) >= 2, 1.0, "2 steps")
        await asyncio.sleep(0.5)  # more ticks: still one line per step
        steps = records(caplog, "exporter.app", "wall clock stepped")
        assert [round(r.step_seconds) for r in steps] == [3600, -3600]
        assert records(caplog, "exporter.router", "router state transition") == []
        s.assert_accounting()
