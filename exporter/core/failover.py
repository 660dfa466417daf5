"""The failover state machine: which source the router routes, and the record of how it got there.

The rules
---------
1. Everything that decides a state change lives in this file, and as much of it as possible in the
   table ``ROWS``: one literal row per transition, read as "in this state, with this health, go to
   that state, logging this reason". ``ANY`` matches either value of a health flag.
2. A state and health that no row names keep the state. That absence is the rule, not an oversight:
   ``TRANSITIONS`` spells the whole table out (3 states x 6 reachable health combinations = 18 entries)
   and is what the router looks up; rows never overlap (tests/core/test_failover.py checks both).
3. This file does not judge health (``health.py`` does) nor count messages: it is told three flags and
   the reason the primary is down, and reads the clock only to stamp a transition.

Theory of operation
-------------------
Health comes as three flags: the primary is healthy, the fallback is healthy, and the primary is
*held*, healthy for at least failback_after (held implies healthy). The machine starts in
BOTH_UNAVAILABLE and moves as soon as a source is healthy; from FALLBACK_ACTIVE it returns to a
healthy primary only once it is held (hysteresis), unless the fallback fails meanwhile.

A failover is an entry into FALLBACK_ACTIVE while a primary outage is open. The outage opens when
PRIMARY_ACTIVE is left and closes when the primary is routed again, so PRIMARY -> BOTH -> FALLBACK
within one outage is one failover, timed from the primary's failure (``recovery``), and start-up
(BOTH -> FALLBACK, no outage open) is none. Time in each state, and the BOTH_UNAVAILABLE intervals
of the last 30 days, feed the duration counters and the uptime gauge.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from itertools import product

from exporter.core.clock import Clock
from exporter.core.stats import RECOVERY_BUCKETS, Histogram


class State(IntEnum):
    PRIMARY_ACTIVE = 0
    FALLBACK_ACTIVE = 1
    BOTH_UNAVAILABLE = 2


PRIMARY_ACTIVE, FALLBACK_ACTIVE, BOTH_UNAVAILABLE = State
ANY = None

# (state, primary healthy, fallback healthy, primary held) -> (next state, reason)
Row = tuple[State, bool | None, bool | None, bool | None, State, str]
ROWS: tuple[Row, ...] = (
    (BOTH_UNAVAILABLE, True, ANY, ANY, PRIMARY_ACTIVE, "primary healthy"),
    (BOTH_UNAVAILABLE, False, True, ANY, FALLBACK_ACTIVE, "fallback healthy"),
    (PRIMARY_ACTIVE, False, True, ANY, FALLBACK_ACTIVE, "primary failed"),
    (PRIMARY_ACTIVE, False, False, ANY, BOTH_UNAVAILABLE, "primary failed, fallback down"),
    (FALLBACK_ACTIVE, True, ANY, True, PRIMARY_ACTIVE, "failback: primary healthy"),
    (FALLBACK_ACTIVE, True, False, False, PRIMARY_ACTIVE, "fallback failed, primary healthy"),
    (FALLBACK_ACTIVE, False, False, ANY, BOTH_UNAVAILABLE, "fallback failed, primary down"),
)

Health = tuple[bool, bool, bool]
# The health combinations that can occur: held implies primary healthy.
HEALTH: tuple[Health, ...] = tuple((p, f, h) for p, f, h in product((False, True), repeat=3) if p or not h)


def _matches(row: Row, state: State, health: Health) -> bool:
    return row[0] is state and all(want is ANY or want == got for want, got in zip(row[1:4], health, strict=True))


# The full table the router looks up: every state and reachable health, a row's move or a stay ("").
TRANSITIONS: dict[tuple[State, bool, bool, bool], tuple[State, str]] = {
    (state, *health): next(((row[4], row[5]) for row in ROWS if _matches(row, state, health)), (state, ""))
    for state in State
    for health in HEALTH
}


def mermaid_diagram() -> str:
    """The state diagram, generated from ROWS so it cannot go stale (README embeds it)."""
    edges: dict[tuple[str, str], set[str]] = {}
    for state, _p, _f, _h, nxt, reason in ROWS:
        edges.setdefault((state.name, nxt.name), set()).add(reason)
    lines = ["stateDiagram-v2", "    [*] --> BOTH_UNAVAILABLE"]
    for (a, b), reasons in sorted(edges.items()):
        lines.append(f"    {a} --> {b}: {' / '.join(sorted(reasons))}")
    return "\n".join(lines)


UPTIME_WINDOW_S = 30 * 86_400.0


@dataclass(frozen=True, slots=True)
class Transition:
    """Effect: the router changed state (the daemon logs it)."""

    previous: State
    new: State
    reason: str
    seconds_in_previous: float
    failover: bool = False
    recovery_seconds: float | None = None


class Failover:
    """The machine's state and its record: time per state, failovers, recovery times, downtime."""

    __slots__ = (
        "_down",
        "_failure_at",
        "_seconds",
        "clock",
        "failovers",
        "recovery",
        "since",
        "since_wall",
        "started",
        "state",
    )

    def __init__(self, clock: Clock) -> None:
        now = clock.monotonic()
        self.clock = clock
        self.state = BOTH_UNAVAILABLE
        self.since = now
        self.since_wall = clock.wall_ns() / 1e9
        self.started = now
        self._seconds = dict.fromkeys(State, 0.0)
        self.failovers = 0
        self.recovery = Histogram(RECOVERY_BUCKETS)
        self._failure_at: float | None = None  # when the open primary outage was detected
        self._down: deque[list[float]] = deque([[now, math.inf]])  # BOTH_UNAVAILABLE intervals

    def step(self, p_ok: bool, f_ok: bool, held: bool, primary_reason: str, now: float) -> Transition | None:
        """Apply the table to the current health; the transition taken, if any."""
        nxt, reason = TRANSITIONS[(self.state, p_ok, f_ok, held)]
        if nxt is self.state:
            return None
        prev = self.state
        spent = now - self.since
        self._seconds[prev] += spent
        if prev is PRIMARY_ACTIVE:
            self._failure_at = now  # the primary's failure was detected now
            reason = f"{reason}: {primary_reason}"
        failover = False
        recovery: float | None = None
        if nxt is FALLBACK_ACTIVE and self._failure_at is not None:
            failover = True
            recovery = now - self._failure_at
            self.failovers += 1
            self.recovery.observe(recovery)
            self._failure_at = None
        elif nxt is PRIMARY_ACTIVE:
            self._failure_at = None
        if nxt is BOTH_UNAVAILABLE:
            self._down.append([now, math.inf])
        elif prev is BOTH_UNAVAILABLE:
            self._down[-1][1] = now
        self.state = nxt
        self.since = now
        self.since_wall = self.clock.wall_ns() / 1e9
        return Transition(prev, nxt, reason, spent, failover, recovery)

    def durations(self, now: float) -> dict[State, float]:
        out = dict(self._seconds)
        out[self.state] += now - self.since
        return out

    def uptime_percent(self, now: float) -> float:
        start = max(self.started, now - UPTIME_WINDOW_S)
        while self._down and self._down[0][1] < start:
            self._down.popleft()
        window = now - start
        if window <= 0:
            return 0.0 if self.state is BOTH_UNAVAILABLE else 100.0
        down = sum(min(end, now) - max(begin, start) for begin, end in self._down if min(end, now) > start)
        return max(0.0, min(100.0, 100.0 * (1.0 - down / window)))
