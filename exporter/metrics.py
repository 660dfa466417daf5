"""The metric catalogue in one place, and the seam that projects core state onto it.

Nothing in the hot path calls prometheus_client: the core counts in its own structures and
``CoreCollector`` turns them into metric families at scrape time (one consistent snapshot, read on the
event loop, so no lock is needed). The registry is private and passed explicitly, so tests are isolated.

Units: two names come from the seed document and keep its units for its dashboards and alert rules —
``alpaca_streaming_processing_duration_ms`` is in milliseconds and ``datasource_router_uptime_percent``
and ``datasource_router_price_delta_percent`` are percentages (0-100).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import cast

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _float_to_go

from exporter import __version__
from exporter.core.events import CONN_STATES
from exporter.core.router import FALLBACK, PRIMARY, SOURCES, Core, State
from exporter.core.stats import MESSAGE_TYPES, Histogram

# The client library's own le formatting, so our buckets render exactly as its Histogram's do.
floatToGoString = cast(Callable[[float], str], _float_to_go)


@dataclass(frozen=True)
class Spec:
    name: str  # exposed name (counters include _total)
    type: str
    labels: tuple[str, ...]
    help: str


CATALOGUE: tuple[Spec, ...] = (
    Spec("alpaca_connection_status", "gauge", ("state",), "Alpaca stream connection state: 1 on the current state"),
    Spec("alpaca_authentication_status", "gauge", (), "1 when the Alpaca stream is authenticated, else 0"),
    Spec(
        "alpaca_messages_received_total",
        "counter",
        ("type", "symbol"),
        "Messages received from the Alpaca stream, data and control (symbol empty for control)",
    ),
    Spec("alpaca_errors_total", "counter", ("type",), "Alpaca stream errors by type"),
    Spec(
        "alpaca_message_latency_seconds",
        "histogram",
        ("symbol",),
        "Now minus the message's own timestamp when it is routed, in seconds",
    ),
    Spec(
        "alpaca_streaming_processing_duration_ms",
        "histogram",
        (),
        "Time to process one message from decode to routed, in milliseconds",
    ),
    Spec(
        "datasource_router_state",
        "gauge",
        ("state",),
        "Current router state: 0=PRIMARY_ACTIVE 1=FALLBACK_ACTIVE 2=BOTH_UNAVAILABLE (one series, labelled by name)",
    ),
    Spec(
        "datasource_router_failover_total",
        "counter",
        (),
        "Entries into FALLBACK_ACTIVE caused by a primary failure",
    ),
    Spec(
        "datasource_router_recovery_time_seconds",
        "histogram",
        (),
        "Per failover: seconds from detecting the primary's failure to entering FALLBACK_ACTIVE",
    ),
    Spec(
        "datasource_router_uptime_percent",
        "gauge",
        (),
        "Percent of time not in BOTH_UNAVAILABLE over the last 30 days of this process's life",
    ),
    Spec("alpaca_subscribed_symbols_count", "gauge", (), "Symbols the Alpaca server confirmed in its subscription ack"),
    Spec(
        "datasource_router_validation_failures_total",
        "counter",
        ("reason",),
        "Messages rejected by the router, by reason",
    ),
    Spec(
        "datasource_router_price_delta_percent",
        "gauge",
        ("symbol",),
        "Absolute difference between the primary's and the fallback's latest price, in percent of the fallback's",
    ),
    Spec(
        "datasource_router_circuit_breaker_total",
        "counter",
        ("symbol", "reason"),
        "Circuit breaker trips by symbol",
    ),
    Spec(
        "datasource_router_state_duration_seconds_total",
        "counter",
        ("state",),
        "Seconds spent in each router state",
    ),
    Spec("datasource_router_last_price", "gauge", ("symbol", "source"), "Last accepted price per symbol and source"),
    Spec(
        "datasource_router_last_update_timestamp_seconds",
        "gauge",
        ("symbol",),
        "Unix time of the last routed update per symbol",
    ),
    Spec("dependency_up", "gauge", ("dependency",), "1 when the upstream is usable (healthy), else 0"),
    Spec(
        "dependency_latency_seconds",
        "histogram",
        ("dependency", "method"),
        "Latency of calls to upstreams: Alpaca handshake steps, Yahoo polls",
    ),
    Spec("alpaca_exporter_build_info", "gauge", ("version", "python_version"), "Build information; value 1"),
    # Additions of this exporter beyond the contract's catalogue (README, "Extra metrics").
    Spec("yahoo_errors_total", "counter", ("type",), "Yahoo poll failures by type"),
    Spec(
        "datasource_router_messages_total",
        "counter",
        ("source", "outcome"),
        "Data messages by source and outcome (routed, standby, rejected): received = sum of outcomes",
    ),
    Spec("alpaca_stream_queue_frames", "gauge", (), "Frames waiting between the socket reader and the router"),
    Spec(
        "alpaca_stream_queue_dropped_frames_total",
        "counter",
        (),
        "Frames dropped because the router queue was full (a slow consumer, measured not hidden)",
    ),
)
SPECS = {s.name: s for s in CATALOGUE}


def _family_name(spec: Spec) -> str:
    return spec.name.removesuffix("_total") if spec.type == "counter" else spec.name


def _counter(name: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    spec = SPECS[name]
    return CounterMetricFamily(_family_name(spec), spec.help, labels=list(labels or spec.labels))


def _gauge(name: str) -> GaugeMetricFamily:
    spec = SPECS[name]
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))


def _histogram(name: str) -> HistogramMetricFamily:
    spec = SPECS[name]
    return HistogramMetricFamily(spec.name, spec.help, labels=list(spec.labels))


def _add_histogram(family: HistogramMetricFamily, labels: list[str], hist: Histogram) -> None:
    cumulative = hist.cumulative()
    buckets = [(floatToGoString(b), float(c)) for b, c in zip(hist.bounds, cumulative, strict=False)]
    buckets.append(("+Inf", float(cumulative[-1])))
    family.add_metric(labels, buckets, hist.sum)


QueueStats = Callable[[], tuple[int, int]]


class CoreCollector(Collector):
    """Projects a ``Core`` onto the catalogue. ``queue_stats`` returns (frames waiting, frames dropped)."""

    def __init__(self, core: Core, queue_stats: QueueStats | None = None) -> None:
        self.core = core
        self.queue_stats = queue_stats

    def describe(self) -> Iterable[Metric]:
        # Describing is cheap here (no collect): registration stays O(1) and name clashes still show.
        for spec in CATALOGUE:
            if spec.type == "counter":
                yield CounterMetricFamily(_family_name(spec), spec.help, labels=list(spec.labels))
            elif spec.type == "histogram":
                yield HistogramMetricFamily(spec.name, spec.help, labels=list(spec.labels))
            else:
                yield GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))

    def collect(self) -> Iterator[Metric]:
        core = self.core
        now = core.clock.monotonic()

        f = _gauge("alpaca_connection_status")
        for conn in CONN_STATES:
            f.add_metric([conn], 1.0 if core.conn_state == conn else 0.0)
        yield f
        f = _gauge("alpaca_authentication_status")
        f.add_metric([], 1.0 if core.authenticated else 0.0)
        yield f

        c = _counter("alpaca_messages_received_total")
        c.add_metric(["control", ""], float(core.control_received))
        for series in (*core.series.values(), core.other):
            for i, n in enumerate(series.received):
                if n:
                    c.add_metric([MESSAGE_TYPES[i], series.label], float(n))
        yield c

        c = _counter("alpaca_errors_total")
        for kind, n in core.errors.items():
            c.add_metric([kind], float(n))
        yield c

        h = _histogram("alpaca_message_latency_seconds")
        for series in (*core.series.values(), core.other):
            if any(series.latency.counts):
                _add_histogram(h, [series.label], series.latency)
        yield h
        h = _histogram("alpaca_streaming_processing_duration_ms")
        _add_histogram(h, [], core.processing_ms)
        yield h

        f = _gauge("datasource_router_state")
        f.add_metric([core.state.name], float(core.state.value))
        yield f
        c = _counter("datasource_router_failover_total")
        c.add_metric([], float(core.failovers))
        yield c
        h = _histogram("datasource_router_recovery_time_seconds")
        _add_histogram(h, [], core.recovery)
        yield h
        f = _gauge("datasource_router_uptime_percent")
        f.add_metric([], core.uptime_percent())
        yield f
        f = _gauge("alpaca_subscribed_symbols_count")
        f.add_metric([], float(len(core.subscribed)))
        yield f

        c = _counter("datasource_router_validation_failures_total")
        for reason, n in core.rejected.items():
            c.add_metric([reason], float(n))
        yield c

        delta = _gauge("datasource_router_price_delta_percent")
        last = _gauge("datasource_router_last_price")
        updated = _gauge("datasource_router_last_update_timestamp_seconds")
        for symbol, st in core.symbols.items():
            if st.series is None:
                continue  # past the label cap: gauges of many symbols cannot share one series
            d = core.price_delta_percent(st)
            if d is not None:
                delta.add_metric([symbol], d)
            for source in SOURCES:
                p = st.last_price.get(source)
                if p is not None:
                    last.add_metric([symbol, source], p)
            if st.routed_wall:
                updated.add_metric([symbol], st.routed_wall)
        yield delta

        c = _counter("datasource_router_circuit_breaker_total")
        for series in (*core.series.values(), core.other):
            if series.breaker_trips:
                c.add_metric([series.label, "price_movement_exceeded"], float(series.breaker_trips))
        yield c

        c = _counter("datasource_router_state_duration_seconds_total")
        for state, seconds in core.state_durations().items():
            c.add_metric([state.name], seconds)
        yield c
        yield last
        yield updated

        f = _gauge("dependency_up")
        f.add_metric([PRIMARY], 1.0 if core.primary_healthy(now) else 0.0)
        f.add_metric([FALLBACK], 1.0 if core.fallback_healthy(now) else 0.0)
        yield f
        h = _histogram("dependency_latency_seconds")
        for (dep, method), hist in sorted(core.dependency_latency.items()):
            _add_histogram(h, [dep, method], hist)
        yield h

        f = _gauge("alpaca_exporter_build_info")
        f.add_metric([__version__, platform.python_version()], 1.0)
        yield f

        c = _counter("yahoo_errors_total")
        for kind, n in core.yahoo_errors.items():
            c.add_metric([kind], float(n))
        yield c
        c = _counter("datasource_router_messages_total")
        for source in SOURCES:
            c.add_metric([source, "routed"], float(core.routed[source]))
            c.add_metric([source, "standby"], float(core.standby[source]))
            c.add_metric([source, "rejected"], float(core.rejected_by_source[source]))
        yield c
        depth, dropped = self.queue_stats() if self.queue_stats else (0, 0)
        f = _gauge("alpaca_stream_queue_frames")
        f.add_metric([], float(depth))
        yield f
        c = _counter("alpaca_stream_queue_dropped_frames_total")
        c.add_metric([], float(dropped))
        yield c


def build_registry(core: Core, queue_stats: QueueStats | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(CoreCollector(core, queue_stats))
    return registry


__all__ = ["CATALOGUE", "SPECS", "CoreCollector", "Spec", "State", "build_registry"]
