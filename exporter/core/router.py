"""The DataSourceRouter: one entry point over the core's four parts.

Theory of operation
-------------------
``Core.handle(event)`` is the only entry point. It reads the injected clock once, hands the event to
the part it concerns, lets ``Health`` judge both sources and ``Failover`` apply its transition table,
and returns the effects (breaker trips, a stale stream, a transition) for the daemon to log and act
on. No I/O, no sleeping, no logging, no prometheus: time comes from the clock, the outside world from
events, and metrics read the state kept in the parts.

  failover.py  the state machine: its table (ROWS), failovers, recovery, time per state, uptime
  health.py    source health: the adapters' reports judged against the clock
  ingest.py    the hot path: market data validated, checked against breakers, routed or kept standby
  counters.py  exact counts of everything above, per symbol series under a label cap
  quality.py   feed quality: subscriptions, halts, typical intervals, bars vs trades, gaps, lag
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from exporter.core.clock import Clock
from exporter.core.config import FALLBACK, PRIMARY, SOURCES, CoreConfig
from exporter.core.counters import Counters
from exporter.core.events import (
    DependencyLatency,
    Event,
    FallbackPoll,
    FallbackPrice,
    PrimaryAuthenticated,
    PrimaryConnection,
    PrimaryControl,
    PrimaryData,
    PrimaryError,
    PrimarySubscribed,
    SubscriptionStatus,
    Tick,
)
from exporter.core.failover import TRANSITIONS, Failover, State, Transition, mermaid_diagram
from exporter.core.health import Health, PrimaryStale
from exporter.core.ingest import BreakerTripped, Ingest, SymbolState
from exporter.core.quality import INTERVAL_MIN_SAMPLES, Quality

Effect = Transition | BreakerTripped | PrimaryStale
_NONE: tuple[Effect, ...] = ()
_PRIMARY_ACTIVE = State.PRIMARY_ACTIVE
_FALLBACK_ACTIVE = State.FALLBACK_ACTIVE


class Core:
    def __init__(self, config: CoreConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.counters = Counters(config.max_symbol_series)
        self.quality = Quality(config, clock, self.counters.other)
        self.ingest = Ingest(config, clock, self.counters, self.quality)
        self.health = Health(config, clock)
        self._primary_ok = False  # the primary's health at the last evaluation (outages start on its fall)
        self.failover = Failover(clock)
        # What other code reads (metrics' tests, the benchmark, the soak): the parts' own objects.
        c = self.counters
        self.errors, self.yahoo_errors, self.rejected = c.errors, c.yahoo_errors, c.rejected
        self.received, self.routed, self.standby = c.received, c.routed, c.standby
        self.series, self.other, self.symbols = c.series, c.other, self.ingest.symbols

    # ---- entry point -----------------------------------------------------------------------------
    def handle(self, event: Event) -> Sequence[Effect]:
        now = self.clock.monotonic()
        cls = type(event)
        if cls is PrimaryData:
            assert isinstance(event, PrimaryData)
            if self.ingest.primary(event, now, self.failover.state is _PRIMARY_ACTIVE):
                self.health.last_data_at = now
        elif cls is FallbackPrice:
            assert isinstance(event, FallbackPrice)
            self.ingest.fallback(event, now, self.failover.state is _FALLBACK_ACTIVE)
        elif cls is Tick:
            self.ingest.tick(now)
            self.quality.tick(now, self.clock.wall_ns() / 1e9, self.health.connected, self.symbols.values())
            self.health.lagging = self.quality.lagging
        elif cls is PrimaryConnection:
            assert isinstance(event, PrimaryConnection)
            self.health.connection(event)
            if event.state != "Connected":
                self.ingest.primary_lost()
        elif cls is PrimaryAuthenticated:
            assert isinstance(event, PrimaryAuthenticated)
            self.health.authenticated = event.ok
        elif cls is PrimarySubscribed:
            assert isinstance(event, PrimarySubscribed)
            self.health.subscription(event.symbols, now)
        elif cls is SubscriptionStatus:
            assert isinstance(event, SubscriptionStatus)
            self.quality.subscription(event)
            return _NONE  # what the client could not subscribe changes no health
        elif cls is PrimaryError:
            assert isinstance(event, PrimaryError)
            self.counters.error(event.type)
            self.health.error(event.type, event.detail, now)
        elif cls is PrimaryControl:
            assert isinstance(event, PrimaryControl)
            self.counters.control_received += event.count
        elif cls is FallbackPoll:
            assert isinstance(event, FallbackPoll)
            self.health.poll(event, now)
            self.counters.yahoo_error(event.error)
        else:
            assert isinstance(event, DependencyLatency)
            self.counters.dependency(event)
            return _NONE  # a timing report changes no health
        return self._evaluate(now)

    def _evaluate(self, now: float) -> Sequence[Effect]:
        health = self.health
        p_ok, f_ok, held, stale = health.judge(now, self.failover.state is _PRIMARY_ACTIVE)
        if p_ok is not self._primary_ok:
            self._primary_ok = p_ok
            if not p_ok and health.data_outage():
                self.quality.outage(now, health.last_data_at)
        transition = self.failover.step(p_ok, f_ok, held, health.primary_reason, now)
        trips = self.ingest.take_trips()
        if stale is None and transition is None and not trips:
            return _NONE
        effects: list[Effect] = [*trips]
        if stale is not None:
            self.counters.errors["stale_stream"] += 1
            effects.append(stale)
        if transition is not None:
            effects.append(transition)
        return effects

    # ---- read side (metrics, /status, tests) -------------------------------------------------------
    @property
    def state(self) -> State:
        return self.failover.state

    @property
    def state_since(self) -> float:
        return self.failover.since

    @property
    def failovers(self) -> int:
        return self.failover.failovers

    @property
    def fallback_last_ok(self) -> float | None:
        return self.health.fallback_last_ok

    def primary_healthy(self, now: float) -> bool:
        return self.health.primary_healthy(now)

    def fallback_healthy(self, now: float) -> bool:
        return self.health.fallback_healthy(now)

    def state_durations(self) -> dict[State, float]:
        return self.failover.durations(self.clock.monotonic())

    def uptime_percent(self) -> float:
        return self.failover.uptime_percent(self.clock.monotonic())

    def price_delta_percent(self, st: SymbolState) -> float | None:
        return self.ingest.price_delta_percent(st)

    def message_counts(self) -> dict[str, int]:
        return self.counters.message_counts()

    def accounting(self) -> dict[str, dict[str, int]]:
        return self.counters.accounting()

    def status(self) -> dict[str, object]:
        now = self.clock.monotonic()
        wall = self.clock.wall_ns() / 1e9
        failover, health, quality = self.failover, self.health, self.quality
        primary_healthy = health.primary_healthy(now)
        return {
            "router": {
                "state": failover.state.name,
                "since": failover.since_wall,
                "seconds_in_state": round(now - failover.since, 3),
                "failovers": failover.failovers,
                "uptime_percent": round(failover.uptime_percent(now), 4),
            },
            "sources": {
                PRIMARY: {
                    "healthy": primary_healthy,
                    "connection": health.conn_state,
                    "authenticated": health.authenticated,
                    "subscribed_symbols": len(health.subscribed),
                    "last_data_age_seconds": None
                    if health.last_data_at is None
                    else round(now - health.last_data_at, 3),
                    "stale": health.stale,
                    "lag_seconds": None if quality.lag is None else round(quality.lag, 3),
                    "subscription": quality.subscription_status(),
                    "reason": None if primary_healthy else health.primary_reason,
                },
                FALLBACK: {
                    "enabled": self.config.fallback_enabled,
                    "healthy": health.fallback_healthy(now),
                    "last_success_age_seconds": None
                    if health.fallback_last_ok is None
                    else round(now - health.fallback_last_ok, 3),
                    "last_error": health.fallback_last_error,
                },
            },
            "symbols": {
                sym: {
                    "last_price": st.routed_price,
                    "source": st.routed_source or None,
                    "last_update_age_seconds": round(wall - st.routed_wall, 3) if st.routed_wall else None,
                    "prices": dict(st.last_price),
                    "breaker": st.breaker.state.name,
                    "halted": st.halted,
                    "typical_interval_seconds": round(st.interval, 3) if st.samples >= INTERVAL_MIN_SAMPLES else None,
                    "seconds_since_last_message": None if st.heard_at == -math.inf else round(now - st.heard_at, 3),
                }
                for sym, st in self.symbols.items()
            },
            "accounting": self.accounting(),
        }


__all__ = [
    "FALLBACK",
    "PRIMARY",
    "SOURCES",
    "TRANSITIONS",
    "BreakerTripped",
    "Core",
    "CoreConfig",
    "Effect",
    "PrimaryStale",
    "State",
    "SymbolState",
    "Transition",
    "mermaid_diagram",
]
