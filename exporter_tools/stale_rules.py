"""The old and the new ``MarketDataStale`` rule over a simulated session (issue 13's measurement).

A real ``Core`` on a fake clock is fed one regular session (09:30-16:00 ET) of trades for ``symbols``
symbols of skewed activity: each symbol's mean time between bursts is log-uniform between 0.5 s and
15 min (so many trade every few minutes), modulated by the day's U shape (busy open and close, a
midday lull), and a burst carries more trades over the next seconds. At 11:00 ET ``silenced`` of the
most liquid symbols stop for good. Both rules are evaluated every 15 s on what the exporter exports:

  old  no routed update for 600 s while another symbol updated within 120 s, ``for: 5m``
       (config/alerts.yml before issue 13);
  new  silence since the primary's last message > max(60 s, 14 typical intervals), the interval
       learned, the session open longer than that threshold, ``for: 2m`` (issue 13).

A firing is false unless it is for a silenced symbol after it went silent. Run:
``python -m exporter_tools.stale_rules [--symbols 500] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from exporter.core.clock import FakeClock
from exporter.core.events import PrimaryAuthenticated, PrimaryConnection, PrimaryData, PrimarySubscribed, Tick
from exporter.core.messages import Trade, utc_from_ns
from exporter.core.quality import INTERVAL_MIN_SAMPLES
from exporter.core.router import Core, CoreConfig

SESSION_OPEN_WALL_S = 1_773_149_400.0  # Tuesday 2026-03-10 09:30 EDT
SESSION_S = 6.5 * 3600.0
SILENCE_AT_S = 5400.0  # 11:00 ET
STEP_S = 1.0  # one frame and one tick a second
EVAL_S = 15.0  # Prometheus' evaluation interval


@dataclass
class Rule:
    """One alert rule's pending/firing bookkeeping per symbol."""

    hold_s: float
    pending_since: dict[str, float] = field(default_factory=dict)
    firing: set[str] = field(default_factory=set)
    firings: list[tuple[str, float]] = field(default_factory=list)  # (symbol, when it started firing)

    def evaluate(self, t: float, active: set[str]) -> None:
        for symbol in list(self.pending_since):
            if symbol not in active:
                del self.pending_since[symbol]
                self.firing.discard(symbol)
        for symbol in active:
            since = self.pending_since.setdefault(symbol, t)
            if t - since >= self.hold_s and symbol not in self.firing:
                self.firing.add(symbol)
                self.firings.append((symbol, t))


def _activity(t: float) -> float:
    """The day's shape: busy after the open and before the close, a lull at midday (mean ≈ 1)."""
    return 0.6 + 1.2 * math.exp(-t / 1800.0) + 0.9 * math.exp(-(SESSION_S - t) / 1800.0)


def simulate(
    *, symbols: int = 500, silenced: int = 10, seed: int = 1, session_s: float = SESSION_S
) -> dict[str, object]:
    rng = random.Random(seed)
    names = [f"S{i:03d}" for i in range(symbols)]
    mean_gap = [10 ** rng.uniform(math.log10(0.5), math.log10(900.0)) for _ in names]
    liquid = sorted(range(symbols), key=mean_gap.__getitem__)[:silenced]
    silent = {names[i] for i in liquid}
    clock = FakeClock(wall_s=SESSION_OPEN_WALL_S)
    core = Core(CoreConfig(symbols=tuple(names), stale_after_s=30.0, fallback_enabled=False), clock)
    core.handle(PrimaryConnection("Connected"))
    core.handle(PrimaryAuthenticated(True))
    core.handle(PrimarySubscribed(frozenset(names)))
    burst_left = [0] * symbols
    old, new = Rule(hold_s=300.0), Rule(hold_s=120.0)
    last_heard: dict[str, float] = {}  # symbol -> wall time of its last message (for detection delays)
    messages = 0
    t = 0.0
    next_eval = EVAL_S
    while t < session_s:
        clock.advance(STEP_S)
        t += STEP_S
        wall_ns = clock.wall_ns()
        ts = utc_from_ns(wall_ns)
        shape = _activity(t) * STEP_S
        frame = []
        for i, name in enumerate(names):
            if t >= SILENCE_AT_S and name in silent:
                continue
            emit = False
            if burst_left[i] and rng.random() < 0.6:
                burst_left[i] -= 1
                emit = True
            if rng.random() < 1.0 - math.exp(-shape / mean_gap[i]):
                burst_left[i] = int(rng.expovariate(0.5))  # a burst: about two more trades to come
                emit = True
            if emit:
                frame.append(Trade(S=name, p=100.0, t=ts, s=100))
                last_heard[name] = wall_ns / 1e9
        if frame:
            messages += len(frame)
            core.handle(PrimaryData(frame, received_at=clock.monotonic()))
        core.handle(Tick())
        if t >= next_eval:
            next_eval += EVAL_S
            _evaluate(core, wall_ns / 1e9, t, old, new)
    return _report(core, old, new, silent, last_heard, messages, symbols)


def _evaluate(core: Core, wall: float, since_open: float, old: Rule, new: Rule) -> None:
    now = core.clock.monotonic()
    states = core.symbols.values()
    silences = {st.symbol: wall - st.routed_wall for st in states if st.routed_wall}
    fresh_somewhere = bool(silences) and min(silences.values()) < 120.0
    old.evaluate(since_open, {s for s, silence in silences.items() if silence > 600.0 and fresh_somewhere})
    stale = set()
    for st in states:
        if st.samples < INTERVAL_MIN_SAMPLES or st.halted:
            continue
        threshold = max(60.0, 14.0 * st.interval)
        if now - st.heard_at > threshold and threshold < since_open:
            stale.add(st.symbol)
    new.evaluate(since_open, stale)


def _report(
    core: Core, old: Rule, new: Rule, silent: set[str], last_heard: dict[str, float], messages: int, symbols: int
) -> dict[str, object]:
    open_wall = SESSION_OPEN_WALL_S

    def split(rule: Rule) -> tuple[list[tuple[str, float]], list[float]]:
        false = [(s, t) for s, t in rule.firings if s not in silent or t < SILENCE_AT_S]
        delays = sorted(t - (last_heard[s] - open_wall) for s, t in rule.firings if s in silent and t >= SILENCE_AT_S)
        return false, delays

    out: dict[str, object] = {"symbols": symbols, "messages": messages, "silenced": len(silent)}
    for label, rule in (("old", old), ("new", new)):
        false, delays = split(rule)
        out[label] = {
            "false_firings": len(false),
            "symbols_falsely_firing": len({s for s, _ in false}),
            "caught": len(delays),
            "detection_s_min": round(delays[0], 1) if delays else None,
            "detection_s_median": round(delays[len(delays) // 2], 1) if delays else None,
            "detection_s_max": round(delays[-1], 1) if delays else None,
        }
    intervals = sorted(st.interval for st in core.symbols.values() if st.samples >= INTERVAL_MIN_SAMPLES)
    out["learned_intervals"] = len(intervals)
    out["interval_s_median"] = round(intervals[len(intervals) // 2], 2) if intervals else None
    out["interval_s_max"] = round(intervals[-1], 1) if intervals else None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter_tools.stale_rules", description=__doc__)
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--silenced", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result = simulate(symbols=args.symbols, silenced=args.silenced, seed=args.seed)
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
