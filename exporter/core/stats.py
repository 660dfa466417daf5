"""Counters and histograms the core keeps in its own plain structures.

Metrics are a projection of this state: ``exporter.metrics`` reads it at scrape time. Keeping counts
here instead of calling prometheus_client per message is what keeps the hot path cheap.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence


class Histogram:
    """Non-cumulative bucket counts (the last bucket is +Inf) and a sum; rendered cumulatively."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_n(self, value: float, n: int) -> None:
        """``n`` observations of the same value (a frame's per-message average)."""
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        out = []
        total = 0
        for c in self.counts:
            total += c
            out.append(total)
        return out


LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
PROCESSING_MS_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
)
RECOVERY_BUCKETS = (1.0, 5.0, 10.0, 20.0, 30.0, 60.0)
DEPENDENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Message type label values of alpaca_messages_received_total, in a fixed index order.
MESSAGE_TYPES = (
    "trade",
    "quote",
    "bar",
    "updated_bar",
    "daily_bar",
    "status",
    "luld",
    "correction",
    "cancel_error",
    "imbalance",
    "control",
    "unknown",
)
K = {name: i for i, name in enumerate(MESSAGE_TYPES)}

VALIDATION_REASONS = (
    "invalid_price",
    "invalid_size",
    "crossed_quote",
    "stale_timestamp",
    "future_timestamp",
    "unknown_symbol",
    "malformed",
    "circuit_open",
)

OTHER_SYMBOL = "__other__"


class SymbolSeries:
    """Everything exported under one ``symbol`` label value (a symbol, or ``__other__`` past the cap)."""

    __slots__ = ("breaker_trips", "label", "latency", "received")

    def __init__(self, label: str) -> None:
        self.label = label
        self.received = [0] * len(MESSAGE_TYPES)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.breaker_trips = 0
