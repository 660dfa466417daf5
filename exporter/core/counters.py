"""The core's counters: what happened, counted exactly, for metrics, /status and the accounting.

Counting is exact: each data message is received once and then either accepted (routed when its
source is the active one, otherwise kept as standby data) or rejected with exactly one reason. The
per-symbol counts live in ``SymbolSeries``, one per ``symbol`` label value, capped: configured symbols
first, in order, then unknown symbols as they appear, and past the cap everything is ``__other__``.
"""

from __future__ import annotations

from exporter.core.config import SOURCES
from exporter.core.events import ALPACA_ERROR_TYPES, YAHOO_ERROR_TYPES, DependencyLatency
from exporter.core.stats import (
    DEPENDENCY_BUCKETS,
    MESSAGE_TYPES,
    OTHER_SYMBOL,
    PROCESSING_MS_BUCKETS,
    VALIDATION_REASONS,
    Histogram,
    SymbolSeries,
)


class Counters:
    __slots__ = (
        "control_received",
        "dependency_latency",
        "errors",
        "max_series",
        "other",
        "processing_ms",
        "received",
        "rejected",
        "rejected_by_source",
        "routed",
        "series",
        "standby",
        "yahoo_errors",
    )

    def __init__(self, max_series: int) -> None:
        self.max_series = max_series
        self.series: dict[str, SymbolSeries] = {}
        self.other = SymbolSeries(OTHER_SYMBOL)
        self.control_received = 0
        self.errors = dict.fromkeys(ALPACA_ERROR_TYPES, 0)
        self.yahoo_errors = dict.fromkeys(YAHOO_ERROR_TYPES, 0)
        self.rejected = dict.fromkeys(VALIDATION_REASONS, 0)
        self.received = dict.fromkeys(SOURCES, 0)  # data messages (alpaca) / prices (yahoo)
        self.routed = dict.fromkeys(SOURCES, 0)
        self.standby = dict.fromkeys(SOURCES, 0)
        self.rejected_by_source = dict.fromkeys(SOURCES, 0)
        self.processing_ms = Histogram(PROCESSING_MS_BUCKETS)
        self.dependency_latency: dict[tuple[str, str], Histogram] = {}

    def series_for(self, symbol: str) -> SymbolSeries | None:
        """The symbol's own series, created while under the cap; None past it."""
        series = self.series.get(symbol)
        if series is None and len(self.series) < self.max_series:
            series = self.series[symbol] = SymbolSeries(symbol)
        return series

    def error(self, type_: str) -> None:
        self.errors[type_ if type_ in self.errors else "server_error"] += 1

    def yahoo_error(self, type_: str | None) -> None:
        if type_ in self.yahoo_errors:
            self.yahoo_errors[type_] += 1

    def dependency(self, event: DependencyLatency) -> None:
        key = (event.dependency, event.method)
        hist = self.dependency_latency.get(key)
        if hist is None:
            hist = self.dependency_latency[key] = Histogram(DEPENDENCY_BUCKETS)
        hist.observe(event.seconds)

    def message_counts(self) -> dict[str, int]:
        """Per type, summed over symbols, plus control."""
        out = dict.fromkeys(MESSAGE_TYPES, 0)
        for series in (*self.series.values(), self.other):
            for i, n in enumerate(series.received):
                out[MESSAGE_TYPES[i]] += n
        out["control"] += self.control_received
        return out

    def accounting(self) -> dict[str, dict[str, int]]:
        return {
            s: {
                "received": self.received[s],
                "routed": self.routed[s],
                "standby": self.standby[s],
                "rejected": self.rejected_by_source[s],
            }
            for s in SOURCES
        }
