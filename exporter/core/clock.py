"""The one clock seam: monotonic seconds for timers, wall nanoseconds for exchange timestamps."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall_ns(self) -> int: ...


class SystemClock:
    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ns(self) -> int:
        return time.time_ns()


class FakeClock:
    """A clock tests move by hand: ``advance(seconds)`` moves both timelines together."""

    def __init__(self, wall_s: float = 1_773_153_000.0, mono: float = 1000.0) -> None:
        self._mono = mono
        self._wall_ns = int(wall_s * 1e9)

    def monotonic(self) -> float:
        return self._mono

    def wall_ns(self) -> int:
        return self._wall_ns

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall_ns += int(seconds * 1e9)

    def jump_wall(self, seconds: float) -> None:
        """A wall-clock step (NTP correction) that monotonic time does not see."""
        self._wall_ns += int(seconds * 1e9)
