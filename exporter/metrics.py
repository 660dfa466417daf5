"""The metric catalogue in one place, and the seam that projects core state onto it.

Nothing in the hot path calls prometheus_client: the core counts in its own structures and
``CoreCollector`` turns them into metric families at scrape time (one consistent snapshot, read on the
event loop, so no lock is needed). The registry is private and passed explicitly, so tests are isolated.

Units: two names come from the seed document and keep its units for its dashboards and alert rules —
``alpaca_streaming_processing_duration_ms`` is in milliseconds and ``datasource_router_uptime_percent``
and ``datasource_router_price_delta_percent`` are percentages (0-100).
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache, partial
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
from exporter.core.quality import INTERVAL_MIN_SAMPLES
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
    # High availability (CONTRACT §13).
    Spec(
        "alpaca_exporter_leader",
        "gauge",
        (),
        "1 while this replica leads (holds the Alpaca stream), 0 on standby; 1 when leader election is off",
    ),
    Spec(
        "alpaca_exporter_leader_transitions_total",
        "counter",
        (),
        "Changes of this replica's role between leader and standby",
    ),
    # CONTRACT §12: tells the instances of a stocks + crypto + options deployment apart.
    Spec("alpaca_exporter_feed_info", "gauge", ("feed", "encoding"), "The Alpaca feed and encoding streamed; value 1"),
    # Feed quality (CONTRACT §11).
    Spec(
        "alpaca_subscription_missing_symbols",
        "gauge",
        ("channel",),
        "Symbols wanted on the channel but absent from the server's latest subscription ack",
    ),
    Spec(
        "alpaca_subscription_repairs_total",
        "counter",
        (),
        "Subscribe messages re-sent for symbols an ack left out",
    ),
    Spec(
        "datasource_router_symbol_halted",
        "gauge",
        ("symbol",),
        "1 while a trading-status message has the symbol halted or paused, else 0",
    ),
    Spec(
        "datasource_router_symbol_message_interval_seconds",
        "gauge",
        ("symbol",),
        "Typical interval between the primary's market-data messages for the symbol while the market is open",
    ),
    Spec(
        "alpaca_bars_missing_total",
        "counter",
        ("symbol",),
        "Minutes with trades but no minute bar within 90 s after the minute ended",
    ),
    Spec(
        "alpaca_stream_gap_seconds",
        "histogram",
        (),
        "Per primary outage while the market is open: seconds from the last market-data message to the next",
    ),
    Spec(
        "alpaca_stream_lag_seconds",
        "gauge",
        (),
        "Median age of the primary's trades and quotes over the last 10 s while connected",
    ),
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
    Spec(
        "datasource_router_symbol_last_message_timestamp_seconds",
        "gauge",
        ("symbol",),
        "Unix time the primary's last market-data message for the symbol was received",
    ),
    Spec(
        "datasource_router_market_open",
        "gauge",
        (),
        "1 while the session the feed follows is open (EXPORTER_MARKET_HOURS), else 0",
    ),
)
SPECS = {s.name: s for s in CATALOGUE}


def _family_name(spec: Spec) -> str:
    return spec.name.removesuffix("_total") if spec.type == "counter" else spec.name


# --------------------------------------------------------------------------------------------------
# Families. Each family the core exports is defined once, in ``CoreCollector._families``, as one of two
# shapes: ``Values`` (a counter or gauge: label values and a number per sample) or ``Histograms`` (label
# values and a ``Histogram`` per sample). Each shape is then rendered by one function per format: as a
# library ``Metric`` for its encoders (``collect()``), or written directly as text 0.0.4 or OpenMetrics
# (``render()``, the daemon's /metrics). prometheus_client's generic exposition builds a Sample
# namedtuple with a labels dict per sample and formats each through sorted(), str.format and
# floatToGoString: ≈ 60 ms for the ≈ 7k samples of 500 symbols (docs/performance.md). The direct
# writer renders the same bytes, proven against the library's encoders in tests/test_metrics_render.py.

Labels = tuple[str, ...]  # label values, in the spec's label order


@dataclass(frozen=True, slots=True)
class Values:
    spec: Spec
    samples: Iterable[tuple[Labels, float]]  # an int renders as a count


@dataclass(frozen=True, slots=True)
class Histograms:
    spec: Spec
    samples: Iterable[tuple[Labels, Histogram]]


Family = Values | Histograms


def _values(name: str, samples: Iterable[tuple[Labels, float]]) -> Values:
    return Values(SPECS[name], samples)


def _histograms(name: str, samples: Iterable[tuple[Labels, Histogram]]) -> Histograms:
    return Histograms(SPECS[name], samples)


@cache
def _le_texts(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """A histogram's ``le`` label values, +Inf last (the library's formatting)."""
    return (*(floatToGoString(b) for b in bounds), "+Inf")


def _metric(family: Family) -> Metric:
    """The family as the library's ``Metric``, for its encoders."""
    spec = family.spec
    labels = list(spec.labels)
    if isinstance(family, Histograms):
        h = HistogramMetricFamily(spec.name, spec.help, labels=labels)
        for values, hist in family.samples:
            buckets = [(le, float(c)) for le, c in zip(_le_texts(hist.bounds), hist.cumulative(), strict=True)]
            h.add_metric(list(values), buckets, hist.sum)
        return h
    m: CounterMetricFamily | GaugeMetricFamily
    if spec.type == "counter":
        m = CounterMetricFamily(_family_name(spec), spec.help, labels=labels)
    else:
        m = GaugeMetricFamily(spec.name, spec.help, labels=labels)
    for values, value in family.samples:
        m.add_metric(list(values), float(value))
    return m


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


def _header(spec: Spec, openmetrics: bool) -> str:
    doc = spec.help.replace("\\", r"\\").replace("\n", r"\n")
    if openmetrics:
        doc = doc.replace('"', r"\"")
        name = _family_name(spec)  # OpenMetrics types the family (no _total)
    else:
        name = spec.name  # text 0.0.4 types the counter's sample name
    return f"# HELP {name} {doc}\n# TYPE {name} {spec.type}\n"


class _Writer:
    """Writes families' sample lines directly; the lines are the same in both formats.

    Caches escaped label values and each histogram series' line prefixes, both bounded by the core's
    series cap (plus the configured symbols and the few dependency series).
    """

    __slots__ = ("_escaped", "_histogram_prefixes", "_prefix_templates")

    def __init__(self) -> None:
        self._escaped: dict[str, str] = {}
        self._histogram_prefixes: dict[tuple[str, Labels], tuple[str, ...]] = {}
        self._prefix_templates: dict[str, str] = {}

    def text(self, family: Family) -> str:
        return _header(family.spec, openmetrics=False) + "".join(self._lines(family))

    def openmetrics(self, family: Family) -> str:
        return _header(family.spec, openmetrics=True) + "".join(self._lines(family))

    def _lines(self, family: Family) -> list[str]:
        out: list[str] = []
        append = out.append
        if isinstance(family, Values):
            prefix = self._sample_prefix(family.spec)
            escape = self._escape
            for values, value in family.samples:
                number = _count_text(value) if type(value) is int else _float_text(value)
                append(f"{prefix.format(*map(escape, values))}{number}\n")
            return out
        prefixes = self._histogram_prefixes
        for values, hist in family.samples:
            key = (family.spec.name, values)
            p = prefixes.get(key)
            if p is None:
                p = prefixes[key] = self._prefixes(family.spec, values, hist.bounds)
            cumulative = 0
            for prefix, n in zip(p, hist.counts, strict=False):
                cumulative += n
                append(prefix + (f"{cumulative}.0\n" if cumulative < 1_000_000 else _count_text(cumulative) + "\n"))
            append(f"{p[-2]}{_count_text(cumulative)}\n{p[-1]}{_float_text(hist.sum)}\n")
        return out

    def _prefixes(self, spec: Spec, values: Labels, bounds: tuple[float, ...]) -> tuple[str, ...]:
        """A histogram series' line prefixes: one per bucket (+Inf last), then _count and _sum."""
        pairs = [f'{n}="{v}"' for n, v in sorted(zip(spec.labels, map(self._escape, values), strict=True))]
        at = sum(n < "le" for n in spec.labels)  # where ``le`` sorts among the family's labels
        head = "".join(f"{pair}," for pair in pairs[:at])
        tail = "".join(f",{pair}" for pair in pairs[at:])
        plain = "{" + ",".join(pairs) + "}" if pairs else ""
        return (
            *(f'{spec.name}_bucket{{{head}le="{le}"{tail}}} ' for le in _le_texts(bounds)),
            f"{spec.name}_count{plain} ",
            f"{spec.name}_sum{plain} ",
        )

    def _sample_prefix(self, spec: Spec) -> str:
        """The family's ``name{label="{i}",...} `` as a format string over its label values (built once)."""
        prefix = self._prefix_templates.get(spec.name)
        if prefix is None:
            # Label values go in as format arguments: the template's own braces are doubled.
            order = sorted(range(len(spec.labels)), key=spec.labels.__getitem__)
            labels = ",".join([f'{spec.labels[i]}="{{{i}}}"' for i in order])
            prefix = self._prefix_templates[spec.name] = f"{spec.name}{{{{{labels}}}}} " if labels else f"{spec.name} "
        return prefix

    def _escape(self, value: str) -> str:
        escaped = self._escaped.get(value)
        if escaped is None:
            escaped = self._escaped[value] = _escape_label_value(value)
        return escaped


QueueStats = Callable[[], tuple[int, int]]
# (1 if leading else 0, role changes so far); None: no leader election, always the leader.
LeaderStats = Callable[[], tuple[float, float]]

_EOF = "# EOF\n"


# The OpenMetrics encoder is untyped in the library.
_generate_openmetrics = cast(Callable[[Any], bytes], generate_openmetrics)


def _render_generic(collector: Any, openmetrics: bool) -> str:
    if openmetrics:
        return _generate_openmetrics(collector).decode("utf-8").removesuffix(_EOF)
    return generate_latest(collector).decode("utf-8")


class CoreCollector(Collector):
    """Projects a ``Core`` onto the catalogue. ``queue_stats`` returns (frames waiting, frames dropped);
    ``feed_info`` is the (feed, encoding) streamed (no ``alpaca_exporter_feed_info`` series without it).

    ``collect()`` serves the client library's encoders; ``render()`` writes the same exposition directly
    (the daemon's /metrics). Both read the families ``_families`` defines.
    """

    def __init__(
        self,
        core: Core,
        queue_stats: QueueStats | None = None,
        leader: LeaderStats | None = None,
        feed_info: tuple[str, str] | None = None,
    ) -> None:
        self.core = core
        self.queue_stats = queue_stats
        self.leader = leader
        self.feed_info = feed_info
        self._writer = _Writer()

    def describe(self) -> Iterable[Metric]:
        # Describing is cheap here (no collect): registration stays O(1) and name clashes still show.
        for spec in CATALOGUE:
            yield _metric(Histograms(spec, ()) if spec.type == "histogram" else Values(spec, ()))

    def collect(self) -> Iterator[Metric]:
        for family in self._families():
            yield _metric(family)

    def render(self, openmetrics: bool = False) -> str:
        """Exactly what the library's text 0.0.4 (or OpenMetrics, without ``# EOF``) encoder renders for
        ``collect()``."""
        write = self._writer.openmetrics if openmetrics else self._writer.text
        return "".join([write(family) for family in self._families()])

    def _families(self) -> Iterator[Family]:
        core = self.core
        health, counters, failover, ingest = core.health, core.counters, core.failover, core.ingest
        now = core.clock.monotonic()
        all_series = (*counters.series.values(), counters.other)

        yield _values("alpaca_connection_status", [((c,), 1.0 if health.conn_state == c else 0.0) for c in CONN_STATES])
        yield _values("alpaca_authentication_status", [((), 1.0 if health.authenticated else 0.0)])
        received: list[tuple[Labels, float]] = [(("control", ""), counters.control_received)]
        received += [((MESSAGE_TYPES[i], s.label), n) for s in all_series for i, n in enumerate(s.received) if n]
        yield _values("alpaca_messages_received_total", received)
        yield _values("alpaca_errors_total", [((kind,), n) for kind, n in counters.errors.items()])
        latency = ((s.label, s.latency_histogram()) for s in all_series)
        yield _histograms("alpaca_message_latency_seconds", [((sym,), h) for sym, h in latency if any(h.counts)])
        yield _histograms("alpaca_streaming_processing_duration_ms", [((), counters.processing_ms)])

        yield _values("datasource_router_state", [((failover.state.name,), float(failover.state.value))])
        yield _values("datasource_router_failover_total", [((), failover.failovers)])
        yield _histograms("datasource_router_recovery_time_seconds", [((), failover.recovery)])
        yield _values("datasource_router_uptime_percent", [((), failover.uptime_percent(now))])
        yield _values("alpaca_subscribed_symbols_count", [((), float(len(health.subscribed)))])
        yield _values(
            "datasource_router_validation_failures_total", [((reason,), n) for reason, n in counters.rejected.items()]
        )

        # The per-symbol gauges, of symbols with their own series (past the label cap, gauges of many
        # symbols cannot share one series).
        states = [st for st in ingest.symbols.values() if st.series is not None]
        deltas = ((st.symbol, ingest.price_delta_percent(st)) for st in states)
        yield _values("datasource_router_price_delta_percent", [((sym,), d) for sym, d in deltas if d is not None])
        trips = [((s.label, "price_movement_exceeded"), s.breaker_trips) for s in all_series if s.breaker_trips]
        yield _values("datasource_router_circuit_breaker_total", trips)
        durations = failover.durations(now)
        yield _values("datasource_router_state_duration_seconds_total", [((s.name,), durations[s]) for s in State])
        prices = [
            ((st.symbol, src), p) for st in states for src in SOURCES if (p := st.last_price.get(src)) is not None
        ]
        yield _values("datasource_router_last_price", prices)
        updates = [((st.symbol,), st.routed_wall) for st in states if st.routed_wall]
        yield _values("datasource_router_last_update_timestamp_seconds", updates)

        up = [((PRIMARY,), health.primary_healthy(now)), ((FALLBACK,), health.fallback_healthy(now))]
        yield _values("dependency_up", [(labels, 1.0 if ok else 0.0) for labels, ok in up])
        yield _histograms("dependency_latency_seconds", sorted(counters.dependency_latency.items()))
        yield _values("alpaca_exporter_build_info", [((__version__, platform.python_version()), 1.0)])
        leading, role_changes = self.leader() if self.leader else (1.0, 0.0)
        yield _values("alpaca_exporter_leader", [((), leading)])
        yield _values("alpaca_exporter_leader_transitions_total", [((), role_changes)])
        yield _values("alpaca_exporter_feed_info", [] if self.feed_info is None else [(self.feed_info, 1.0)])

        quality = core.quality
        missing = [((channel,), float(len(symbols))) for channel, symbols in quality.missing.items()]
        yield _values("alpaca_subscription_missing_symbols", missing)
        yield _values("alpaca_subscription_repairs_total", [((), quality.repairs)])
        halted = [((st.symbol,), 1.0 if st.halted else 0.0) for st in states if st.halted is not None]
        yield _values("datasource_router_symbol_halted", halted)
        intervals = [((st.symbol,), st.interval) for st in states if st.samples >= INTERVAL_MIN_SAMPLES]
        yield _values("datasource_router_symbol_message_interval_seconds", intervals)
        yield _values("alpaca_bars_missing_total", [((s.label,), s.bars_missing) for s in all_series if s.bars_missing])
        yield _histograms("alpaca_stream_gap_seconds", [((), quality.gaps)])
        yield _values("alpaca_stream_lag_seconds", [] if quality.lag is None else [((), quality.lag)])

        yield _values("yahoo_errors_total", [((kind,), n) for kind, n in counters.yahoo_errors.items()])
        outcomes = (
            ("routed", counters.routed),
            ("standby", counters.standby),
            ("rejected", counters.rejected_by_source),
        )
        yield _values(
            "datasource_router_messages_total", [((src, out), c[src]) for src in SOURCES for out, c in outcomes]
        )
        depth, dropped = self.queue_stats() if self.queue_stats else (0, 0)
        yield _values("alpaca_stream_queue_frames", [((), float(depth))])
        yield _values("alpaca_stream_queue_dropped_frames_total", [((), dropped)])
        wall = core.clock.wall_ns() / 1e9
        heard = [((st.symbol,), wall - (now - st.heard_at)) for st in states if st.heard_at > -math.inf]
        yield _values("datasource_router_symbol_last_message_timestamp_seconds", heard)
        yield _values("datasource_router_market_open", [((), 1.0 if quality.open else 0.0)])


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


def negotiate(registry: CollectorRegistry, accept: str) -> tuple[Callable[[], bytes], str]:
    """/metrics content negotiation: the library's ``choose_encoder``, with the direct renderer wherever it
    renders the same bytes (text 0.0.4, and OpenMetrics 1.0.0, with the default name escaping).
    Returns the renderer chosen and the content type."""
    encoder, content_type = choose_encoder(accept)
    if isinstance(registry, ExporterRegistry):
        if encoder is generate_latest:
            return partial(registry.render, openmetrics=False), content_type
        if isinstance(encoder, partial) and encoder.keywords.get("escaping") == UNDERSCORES:
            if encoder.func is generate_openmetrics and encoder.keywords.get("version") == "1.0.0":
                return partial(registry.render, openmetrics=True), content_type
            if encoder.func is generate_latest:
                return partial(registry.render, openmetrics=False), content_type
    return partial(encoder, registry), content_type


def render_metrics(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    render, content_type = negotiate(registry, accept)
    return render(), content_type


def build_registry(
    core: Core,
    queue_stats: QueueStats | None = None,
    leader: LeaderStats | None = None,
    feed_info: tuple[str, str] | None = None,
) -> ExporterRegistry:
    registry = ExporterRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(CoreCollector(core, queue_stats, leader, feed_info))
    return registry


__all__ = [
    "CATALOGUE",
    "SPECS",
    "CoreCollector",
    "ExporterRegistry",
    "Spec",
    "State",
    "build_registry",
    "negotiate",
    "render_metrics",
]
