"""The production clock reads the system's monotonic and wall clocks (everything else uses FakeClock)."""

from __future__ import annotations

import time

from exporter.core.clock import SystemClock


def test_system_clock_reads_the_monotonic_and_the_wall_clock() -> None:
    clock = SystemClock()
    before_mono, before_wall = time.monotonic(), time.time_ns()
    mono, wall = clock.monotonic(), clock.wall_ns()
    after_mono, after_wall = time.monotonic(), time.time_ns()
    assert before_mono <= mono <= after_mono
    assert before_wall <= wall <= after_wall
