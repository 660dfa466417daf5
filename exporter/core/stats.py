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
GAP_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0)  # CONTRACT §11
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
    "orderbook",
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


# Message kinds (indexes into MESSAGE_TYPES) whose routed messages are observed in the latency histogram:
# those that carry an event time. Bars carry the start of their interval; control and unknown no time.
# The hot path (ingest.py) tests "timed" as ``k < 2 or k > 4``: the untimed bars are 2..4 and control
# and unknown never reach that test.
TIMED_KINDS = tuple(
    K[name] for name in ("trade", "quote", "status", "luld", "correction", "cancel_error", "imbalance", "orderbook")
)


class SymbolSeries:
    """Everything exported under one ``symbol`` label value (a symbol, or ``__other__`` past the cap).

    The latency histogram is kept in two parts, because the core's common case — a routed message whose
    latency falls in the first bucket — must touch as little as possible (docs/performance.md): that
    case adds only to ``live_sum``, and its count is derived at scrape time as the timed messages
    received minus those not observed (``unobserved``: rejected, standby, malformed, unknown symbol)
    minus the observations ``latency`` holds explicitly (every other bucket, and clamped negative ages).
    ``latency_histogram()`` puts the parts together; ``tests/core/test_latency_histogram.py`` checks it
    against a plain histogram.
    """

    __slots__ = ("bars_missing", "breaker_trips", "label", "latency", "live_sum", "received", "unobserved")

    def __init__(self, label: str) -> None:
        self.label = label
        self.received = [0] * len(MESSAGE_TYPES)
        self.latency = Histogram(LATENCY_BUCKETS)  # explicit observations only
        self.live_sum = 0.0  # sum of the first-bucket observations not in ``latency``
        self.unobserved = 0  # timed messages received but not observed (not routed)
        self.breaker_trips = 0
        self.bars_missing = 0  # minutes with trades but no minute bar (quality.py)

    def latency_histogram(self) -> Histogram:
        """The full latency histogram of this series (a new object; for scrapes and reports)."""
        received = self.received
        explicit = self.latency
        live = sum(received[k] for k in TIMED_KINDS) - self.unobserved - sum(explicit.counts)
        full = Histogram(explicit.bounds)
        full.counts = list(explicit.counts)
        full.counts[0] += live
        full.sum = explicit.sum + self.live_sum
        return full
