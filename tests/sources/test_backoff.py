"""The shared retry-delay policy of both adapters (exporter/sources/backoff.py)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from exporter.sources.backoff import Backoff, spread


def _seq(*values: float) -> Callable[[], float]:
    it: Iterator[float] = itertools.cycle(values)
    return lambda: next(it)


def test_equal_jitter_bounds_and_cap() -> None:
    low = Backoff(1.0, 8.0, jitter="equal", rng=_seq(0.0))
    assert [low.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    high = Backoff(1.0, 8.0, jitter="equal", rng=_seq(0.999999))
    delays = [high.next_delay() for _ in range(6)]
    assert delays == pytest.approx([1.0, 2.0, 4.0, 8.0, 8.0, 8.0], rel=1e-5)


def test_full_jitter() -> None:
    backoff = Backoff(2.0, 10.0, jitter="full", rng=_seq(0.5))
    assert [backoff.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_symmetric_spread_is_clamped_at_the_cap() -> None:
    backoff = Backoff(1.0, 4.0, jitter=spread(0.5), rng=_seq(0.0, 0.999999))
    delays = [backoff.next_delay() for _ in range(4)]
    assert delays == pytest.approx([0.5, 3.0, 2.0, 4.0], rel=1e-5)  # 4 * 1.5 is clamped to the cap


def test_floor_raises_the_delay_but_still_counts_the_attempt() -> None:
    backoff = Backoff(1.0, 60.0, rng=_seq(0.0))
    assert backoff.next_delay(floor=30.0) == 30.0
    assert backoff.next_delay(floor=0.1) == 1.0
    assert backoff.attempt == 2


def test_reset_and_long_outages_never_overflow() -> None:
    backoff = Backoff(5.0, 300.0, jitter=spread(0.2), rng=_seq(0.5))
    for _ in range(10_000):  # the exponent is bounded: days of failures build no huge number
        backoff.next_delay()
    assert backoff.next_delay() == 300.0
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() == 5.0


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0), (1.0, float("inf"))])
def test_rejects_bad_bounds(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base, cap)


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_spread_rejects_bad_fractions(fraction: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        spread(fraction)
