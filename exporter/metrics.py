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
from functools import partial
from typing import Any, cast

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import UNDERSCORES
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
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


# --------------------------------------------------------------------------------------------------
# The focused renderer. prometheus_client's generic exposition builds a Sample namedtuple with a labels
# dict per sample and formats each through sorted(), str.format and floatToGoString: ≈ 60 ms for the
# ≈ 7k samples of 500 symbols (docs/performance.md). The per-symbol families are written here straight
# from the core's arrays instead — same bytes, proven against the library's encoders in
# tests/test_metrics_render.py; every other family (a few dozen samples) still goes through them.


def _escape_label_value(value: str) -> str:
    """The library's label-value escaping (text 0.0.4 and OpenMetrics alike)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _count_text(n: int) -> str:
    """``floatToGoString(float(n))`` for a count: ``"<n>.0"`` while Go would not switch to an exponent."""
    return f"{n}.0" if 0 <= n < 1_000_000 else floatToGoString(float(n))


def _float_text(d: float) -> str:
    """``floatToGoString(d)``: ``repr`` unless it is inf/nan or Go would use an exponent."""
    s = repr(d)
    if "n" in s or (d > 0 and s.find(".") > 6):
        return floatToGoString(d)
    return s


class _SymbolFamily:
    """A per-symbol family: as a ``Metric`` for the library's encoders, or rendered directly.

    ``lines()`` yields the sample lines (labels already in the library's sorted order); ``metric()``
    builds the same samples as a family object. Both read the same snapshot.
    """

    __slots__ = ("lines", "metric", "spec")

    def __init__(self, spec: Spec, metric: Callable[[], Metric], lines: Callable[[], Iterable[str]]) -> None:
        self.spec = spec
        self.metric = metric
        self.lines = lines

    def render(self, openmetrics: bool) -> str:
        spec = self.spec
        doc = spec.help.replace("\\", r"\\").replace("\n", r"\n")
        if openmetrics:
            doc = doc.replace('"', r"\"")
            name = _family_name(spec)  # OpenMetrics types the family (no _total)
        else:
            name = spec.name  # text 0.0.4 types the counter's sample name
        return f"# HELP {name} {doc}\n# TYPE {name} {spec.type}\n" + "".join(self.lines())


class _OneFamily:
    """A collector of one family, so the library's encoders can render it alone."""

    __slots__ = ("family",)

    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterator[Metric]:
        yield self.family


_EOF = "# EOF\n"


# The OpenMetrics encoder is untyped in the library.
_generate_openmetrics = cast(Callable[[Any], bytes], generate_openmetrics)


def _render_generic(collector: Any, openmetrics: bool) -> str:
    if openmetrics:
        return _generate_openmetrics(collector).decode("utf-8").removesuffix(_EOF)
    return generate_latest(collector).decode("utf-8")


class CoreCollector(Collector):
    """Projects a ``Core`` onto the catalogue. ``queue_stats`` returns (frames waiting, frames dropped).

    ``collect()`` serves the client library's encoders; ``render()`` writes the same exposition with the
    per-symbol families rendered directly (the daemon's /metrics).
    """

    def __init__(self, core: Core, queue_stats: QueueStats | None = None) -> None:
        self.core = core
        self.queue_stats = queue_stats
        self._labels: dict[str, str] = {}  # symbol label -> escaped, bounded by the series cap + symbols
        # symbol label -> the latency histogram's line prefixes (buckets..., count, sum), same bound
        self._latency_prefixes: dict[str, tuple[str, ...]] = {}

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
        for item in self._families():
            yield item.metric() if isinstance(item, _SymbolFamily) else item

    def render(self, openmetrics: bool = False) -> str:
        """Exactly what the library's text 0.0.4 (or OpenMetrics, without ``# EOF``) encoder renders for
        ``collect()``."""
        parts = []
        for item in self._families():
            if isinstance(item, _SymbolFamily):
                parts.append(item.render(openmetrics))
            else:
                parts.append(_render_generic(_OneFamily(item), openmetrics))
        return "".join(parts)

    def _label(self, value: str) -> str:
        escaped = self._labels.get(value)
        if escaped is None:
            escaped = self._labels[value] = _escape_label_value(value)
        return escaped

    def _families(self) -> Iterator[Metric | _SymbolFamily]:
        core = self.core
        now = core.clock.monotonic()
        label = self._label
        all_series = (*core.series.values(), core.other)

        f = _gauge("alpaca_connection_status")
        for conn in CONN_STATES:
            f.add_metric([conn], 1.0 if core.health.conn_state == conn else 0.0)
        yield f
        f = _gauge("alpaca_authentication_status")
        f.add_metric([], 1.0 if core.health.authenticated else 0.0)
        yield f

        def received_metric() -> Metric:
            c = _counter("alpaca_messages_received_total")
            c.add_metric(["control", ""], float(core.counters.control_received))
            for series in all_series:
                for i, n in enumerate(series.received):
                    if n:
                        c.add_metric([MESSAGE_TYPES[i], series.label], float(n))
            return c

        def received_lines() -> Iterator[str]:
            name = "alpaca_messages_received_total"
            yield f'{name}{{symbol="",type="control"}} {_count_text(core.counters.control_received)}\n'
            for series in all_series:
                lab = label(series.label)
                for i, n in enumerate(series.received):
                    if n:
                        yield f'{name}{{symbol="{lab}",type="{MESSAGE_TYPES[i]}"}} {_count_text(n)}\n'

        yield _SymbolFamily(SPECS["alpaca_messages_received_total"], received_metric, received_lines)

        c = _counter("alpaca_errors_total")
        for kind, n in core.errors.items():
            c.add_metric([kind], float(n))
        yield c

        def latency_metric() -> Metric:
            h = _histogram("alpaca_message_latency_seconds")
            for series in all_series:
                hist = series.latency_histogram()
                if any(hist.counts):
                    _add_histogram(h, [series.label], hist)
            return h

        def latency_lines() -> list[str]:
            out: list[str] = []
            append = out.append
            prefixes = self._latency_prefixes
            for series in all_series:
                hist = series.latency_histogram()
                if not any(hist.counts):
                    continue
                p = prefixes.get(series.label)
                if p is None:
                    p = prefixes[series.label] = _latency_prefixes(label(series.label), hist.bounds)
                cumulative = 0
                for prefix, n in zip(p, hist.counts, strict=False):
                    cumulative += n
                    append(prefix + (f"{cumulative}.0\n" if cumulative < 1_000_000 else _count_text(cumulative) + "\n"))
                count = f"{cumulative}.0" if cumulative < 1_000_000 else _count_text(cumulative)
                append(f"{p[-2]}{count}\n{p[-1]}{_float_text(hist.sum)}\n")
            return out

        yield _SymbolFamily(SPECS["alpaca_message_latency_seconds"], latency_metric, latency_lines)
        h = _histogram("alpaca_streaming_processing_duration_ms")
        _add_histogram(h, [], core.counters.processing_ms)
        yield h

        f = _gauge("datasource_router_state")
        f.add_metric([core.state.name], float(core.state.value))
        yield f
        c = _counter("datasource_router_failover_total")
        c.add_metric([], float(core.failovers))
        yield c
        h = _histogram("datasource_router_recovery_time_seconds")
        _add_histogram(h, [], core.failover.recovery)
        yield h
        f = _gauge("datasource_router_uptime_percent")
        f.add_metric([], core.uptime_percent())
        yield f
        f = _gauge("alpaca_subscribed_symbols_count")
        f.add_metric([], float(len(core.health.subscribed)))
        yield f

        c = _counter("datasource_router_validation_failures_total")
        for reason, n in core.rejected.items():
            c.add_metric([reason], float(n))
        yield c

        # The per-symbol gauges, read once: (symbol, price delta, [(source, last price)], last update).
        rows: list[tuple[str, float | None, list[tuple[str, float]], float]] = []
        for symbol, st in core.symbols.items():
            if st.series is None:
                continue  # past the label cap: gauges of many symbols cannot share one series
            prices = [(source, p) for source in SOURCES if (p := st.last_price.get(source)) is not None]
            rows.append((symbol, core.price_delta_percent(st), prices, st.routed_wall))

        def delta_metric() -> Metric:
            g = _gauge("datasource_router_price_delta_percent")
            for symbol, d, _, _ in rows:
                if d is not None:
                    g.add_metric([symbol], d)
            return g

        def delta_lines() -> Iterator[str]:
            name = "datasource_router_price_delta_percent"
            for symbol, d, _, _ in rows:
                if d is not None:
                    yield f'{name}{{symbol="{label(symbol)}"}} {_float_text(d)}\n'

        yield _SymbolFamily(SPECS["datasource_router_price_delta_percent"], delta_metric, delta_lines)

        def breaker_metric() -> Metric:
            c = _counter("datasource_router_circuit_breaker_total")
            for series in all_series:
                if series.breaker_trips:
                    c.add_metric([series.label, "price_movement_exceeded"], float(series.breaker_trips))
            return c

        def breaker_lines() -> Iterator[str]:
            name = "datasource_router_circuit_breaker_total"
            for series in all_series:
                if series.breaker_trips:
                    yield (
                        f'{name}{{reason="price_movement_exceeded",symbol="{label(series.label)}"}} '
                        f"{_count_text(series.breaker_trips)}\n"
                    )

        yield _SymbolFamily(SPECS["datasource_router_circuit_breaker_total"], breaker_metric, breaker_lines)

        c = _counter("datasource_router_state_duration_seconds_total")
        for state, seconds in core.state_durations().items():
            c.add_metric([state.name], seconds)
        yield c

        def last_metric() -> Metric:
            g = _gauge("datasource_router_last_price")
            for symbol, _, prices, _ in rows:
                for source, p in prices:
                    g.add_metric([symbol, source], p)
            return g

        def last_lines() -> Iterator[str]:
            name = "datasource_router_last_price"
            for symbol, _, prices, _ in rows:
                for source, p in prices:
                    yield f'{name}{{source="{source}",symbol="{label(symbol)}"}} {_float_text(p)}\n'

        yield _SymbolFamily(SPECS["datasource_router_last_price"], last_metric, last_lines)

        def updated_metric() -> Metric:
            g = _gauge("datasource_router_last_update_timestamp_seconds")
            for symbol, _, _, wall in rows:
                if wall:
                    g.add_metric([symbol], wall)
            return g

        def updated_lines() -> Iterator[str]:
            name = "datasource_router_last_update_timestamp_seconds"
            for symbol, _, _, wall in rows:
                if wall:
                    yield f'{name}{{symbol="{label(symbol)}"}} {_float_text(wall)}\n'

        yield _SymbolFamily(SPECS["datasource_router_last_update_timestamp_seconds"], updated_metric, updated_lines)

        f = _gauge("dependency_up")
        f.add_metric([PRIMARY], 1.0 if core.primary_healthy(now) else 0.0)
        f.add_metric([FALLBACK], 1.0 if core.fallback_healthy(now) else 0.0)
        yield f
        h = _histogram("dependency_latency_seconds")
        for (dep, method), hist in sorted(core.counters.dependency_latency.items()):
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
            c.add_metric([source, "rejected"], float(core.counters.rejected_by_source[source]))
        yield c
        depth, dropped = self.queue_stats() if self.queue_stats else (0, 0)
        f = _gauge("alpaca_stream_queue_frames")
        f.add_metric([], float(depth))
        yield f
        c = _counter("alpaca_stream_queue_dropped_frames_total")
        c.add_metric([], float(dropped))
        yield c


def _latency_prefixes(label: str, bounds: tuple[float, ...]) -> tuple[str, ...]:
    name = "alpaca_message_latency_seconds"
    les = (*(floatToGoString(b) for b in bounds), "+Inf")
    return (
        *(f'{name}_bucket{{le="{le}",symbol="{label}"}} ' for le in les),
        f'{name}_count{{symbol="{label}"}} ',
        f'{name}_sum{{symbol="{label}"}} ',
    )


class ExporterRegistry(CollectorRegistry):
    """A private registry that renders /metrics with :meth:`CoreCollector.render`'s fast path.

    It remembers the registration order (the order the library's encoders follow), so ``render`` can
    put the core's families between the process and platform collectors' exactly where they would be.
    """

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self._ordered: list[Collector] = []

    def register(self, collector: Collector) -> None:
        super().register(collector)
        self._ordered.append(collector)

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        self._ordered.remove(collector)

    def render(self, openmetrics: bool = False) -> bytes:
        """What ``generate_latest(self)`` (or the OpenMetrics encoder's default form) renders."""
        parts = []
        for collector in list(self._ordered):
            if isinstance(collector, CoreCollector):
                parts.append(collector.render(openmetrics))
            else:
                parts.append(_render_generic(collector, openmetrics))
        if openmetrics:
            parts.append(_EOF)
        return "".join(parts).encode("utf-8")


def render_metrics(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """/metrics content negotiation: the library's ``choose_encoder``, with the fast renderer wherever it
    renders the same bytes (text 0.0.4, and OpenMetrics 1.0.0, with the default name escaping)."""
    encoder, content_type = choose_encoder(accept)
    if isinstance(registry, ExporterRegistry):
        if encoder is generate_latest:
            return registry.render(openmetrics=False), content_type
        if isinstance(encoder, partial) and encoder.keywords.get("escaping") == UNDERSCORES:
            if encoder.func is generate_openmetrics and encoder.keywords.get("version") == "1.0.0":
                return registry.render(openmetrics=True), content_type
            if encoder.func is generate_latest:
                return registry.render(openmetrics=False), content_type
    return encoder(registry), content_type


def build_registry(core: Core, queue_stats: QueueStats | None = None) -> ExporterRegistry:
    registry = ExporterRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(CoreCollector(core, queue_stats))
    return registry


__all__ = [
    "CATALOGUE",
    "SPECS",
    "CoreCollector",
    "ExporterRegistry",
    "Spec",
    "State",
    "build_registry",
    "render_metrics",
]
