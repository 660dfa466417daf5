"""A small harness that drives ``Core`` with a ``FakeClock``: events in, effects collected, time by hand."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from exporter.core.clock import FakeClock
from exporter.core.events import (
    Event,
    FallbackPoll,
    FallbackPrice,
    PrimaryAuthenticated,
    PrimaryConnection,
    PrimaryData,
    PrimarySubscribed,
    Tick,
)
from exporter.core.messages import Bar, Message, Quote, Trade, TradingStatus, UpdatedBar, utc_from_ns
from exporter.core.router import BreakerTripped, Core, CoreConfig, Effect, PrimaryStale, State, Transition

SYMBOLS = ("AAPL", "MSFT")
# Tuesday 2026-03-10 14:30 UTC = 10:30 EDT: the regular session is open (the FakeClock default).
OPEN_WALL_S = 1_773_153_000.0
# Saturday 2026-03-14 15:00 UTC: no session.
SATURDAY_WALL_S = 1_773_500_400.0


class Harness:
    """Drives one core. Staleness is off by default so transition tests only see what they set up."""

    def __init__(self, symbols: Sequence[str] = SYMBOLS, wall_s: float = OPEN_WALL_S, **config: Any) -> None:
        config.setdefault("stale_after_s", 0.0)
        self.clock = FakeClock(wall_s=wall_s)
        self.core = Core(CoreConfig(symbols=tuple(symbols), **config), self.clock)
        self.start = self.clock.monotonic()
        self.effects: list[Effect] = []

    # ---- driving ---------------------------------------------------------------------------------
    def send(self, event: Event) -> list[Effect]:
        effects = list(self.core.handle(event))
        self.effects.extend(effects)
        return effects

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def tick(self, seconds: float = 0.0) -> list[Effect]:
        self.clock.advance(seconds)
        return self.send(Tick())

    def primary_up(self, symbols: Sequence[str] | None = None) -> list[Effect]:
        out = self.send(PrimaryConnection("Connected"))
        out += self.send(PrimaryAuthenticated(True))
        out += self.send(PrimarySubscribed(frozenset(self.core.config.symbols if symbols is None else symbols)))
        return out

    def primary_down(self, reason: str = "connection lost") -> list[Effect]:
        return self.send(PrimaryConnection("Disconnected", reason))

    def fallback_ok(self, period_s: float = 5.0) -> list[Effect]:
        return self.send(FallbackPoll(ok=True, period_s=period_s))

    def fallback_fail(self, period_s: float = 5.0, error: str = "timeout") -> list[Effect]:
        return self.send(FallbackPoll(ok=False, period_s=period_s, error=error))

    # ---- messages --------------------------------------------------------------------------------
    def ts_ns(self, age_s: float = 0.0) -> int:
        return self.clock.wall_ns() - int(age_s * 1e9)

    def ts(self, age_s: float = 0.0) -> datetime:
        return utc_from_ns(self.clock.wall_ns() - int(age_s * 1e9))

    def trade(self, symbol: str = "AAPL", p: float = 100.0, *, age_s: float = 0.0, s: int = 10) -> Trade:
        return Trade(S=symbol, p=p, t=self.ts(age_s), s=s)

    def quote(self, symbol: str = "AAPL", bp: float = 99.9, ap: float = 100.1, *, age_s: float = 0.0) -> Quote:
        return Quote(S=symbol, bp=bp, ap=ap, t=self.ts(age_s), bs=1, as_=1)

    def bar(self, symbol: str = "AAPL", c: float = 100.0, *, age_s: float = 0.0) -> Bar:
        return Bar(S=symbol, o=c, h=c, l=c, c=c, t=self.ts(age_s), v=100)

    def minute_bar(
        self, minute_start_s: float, symbol: str = "AAPL", c: float = 100.0, *, updated: bool = False
    ) -> Bar:
        """The bar of the minute starting at the Unix time ``minute_start_s`` (an updated bar if asked)."""
        cls = UpdatedBar if updated else Bar
        return cls(S=symbol, o=c, h=c, l=c, c=c, t=utc_from_ns(int(minute_start_s * 1e9)), v=100)

    def status(self, symbol: str = "AAPL", code: str = "H", *, age_s: float = 0.0) -> TradingStatus:
        return TradingStatus(S=symbol, t=self.ts(age_s), sc=code)

    def wall_s(self) -> float:
        return self.clock.wall_ns() / 1e9

    def frame(self, *messages: Message, decode_seconds: float = 0.0) -> list[Effect]:
        return self.send(PrimaryData(list(messages), received_at=self.clock.monotonic(), decode_seconds=decode_seconds))

    def yahoo(self, symbol: str = "AAPL", price: float = 100.0, *, age_s: float = 0.0) -> list[Effect]:
        return self.send(FallbackPrice(symbol, price, self.ts_ns(age_s)))

    # ---- reading ---------------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self.core.state

    def transitions(self) -> list[Transition]:
        return [e for e in self.effects if isinstance(e, Transition)]

    def stale_effects(self) -> list[PrimaryStale]:
        return [e for e in self.effects if isinstance(e, PrimaryStale)]

    def trips(self) -> list[BreakerTripped]:
        return [e for e in self.effects if isinstance(e, BreakerTripped)]

    def elapsed(self) -> float:
        return self.clock.monotonic() - self.start


def only_transition(effects: Sequence[Effect]) -> Transition:
    """The one effect of an event that is expected to cause exactly one transition and nothing else."""
    assert len(effects) == 1, effects
    (effect,) = effects
    assert isinstance(effect, Transition), effect
    return effect
