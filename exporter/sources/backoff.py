"""The one retry-delay policy of both adapters: jittered exponential backoff with a bounded exponent.

Attempt ``n`` (0-based) waits ``min(cap, base * 2**n * m)`` where the jitter multiplier ``m`` is drawn
uniformly from ``[low, high)``; a caller's ``floor`` (a Retry-After, Alpaca's connection-limit hold)
raises the result. The exponent stops growing once the step has reached the cap, so a source that
fails for days (an IP block, a bad URL) never overflows a float.

Pure: no clock, no sleeping — the adapters ask for a delay and wait it on their timers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Final, Literal

Jitter = Literal["full", "equal"]

# Named jitters as multiplier ranges: ``full`` draws from [0, d] (AWS' "full jitter"); ``equal`` from
# [d/2, d], never below half the step, so a run of unlucky draws cannot make a hot loop.
_NAMED: Final[dict[str, tuple[float, float]]] = {"full": (0.0, 1.0), "equal": (0.5, 1.0)}
# 2**62 times any sane base is far above any cap, and still an exact, finite float.
_MAX_EXPONENT: Final = 62


def spread(fraction: float) -> tuple[float, float]:
    """A symmetric ±``fraction`` jitter as a multiplier range, e.g. ``spread(0.2)`` → (0.8, 1.2)."""
    if not 0 <= fraction < 1:
        raise ValueError("a jitter fraction must be in [0, 1)")
    return (1.0 - fraction, 1.0 + fraction)


class Backoff:
    """Exponential backoff with jitter; ``rng`` returns floats in [0, 1) (inject one in tests)."""

    __slots__ = ("_rng", "attempt", "base", "cap", "high", "low")

    def __init__(
        self,
        base: float,
        cap: float,
        *,
        jitter: Jitter | tuple[float, float] = "equal",
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not (0 < base <= cap) or not math.isfinite(cap):
            raise ValueError("backoff needs 0 < base <= cap")
        low, high = _NAMED[jitter] if isinstance(jitter, str) else jitter
        if not 0 <= low <= high:
            raise ValueError("backoff jitter needs 0 <= low <= high")
        self.base = base
        self.cap = cap
        self.low = low
        self.high = high
        self._rng = rng
        self.attempt = 0  # failures since the last reset

    def ceiling(self) -> float:
        """The un-jittered delay of the next attempt."""
        return min(self.cap, self.base * 2.0 ** min(self.attempt, _MAX_EXPONENT))

    def next_delay(self, floor: float | None = None) -> float:
        """The next delay (at least ``floor`` when given); advances the attempt counter."""
        ceiling = self.ceiling()
        self.attempt += 1
        delay = min(self.cap, ceiling * (self.low + (self.high - self.low) * self._rng()))
        return delay if floor is None else max(delay, floor)

    def reset(self) -> None:
        self.attempt = 0
