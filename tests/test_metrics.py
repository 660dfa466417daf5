"""The /metrics surface against CONTRACT section 5: names, types, labels, label values, buckets."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from exporter.app import Daemon
from exporter.core.clock import FakeClock
from exporter.core.events import DependencyLatency, FallbackPoll, PrimaryControl, PrimaryError, SubscriptionStatus
from exporter.core.messages import Unknown
from exporter.core.router import Core, CoreConfig
from exporter.metrics import build_registry
from exporter.settings import load_settings
from tests.support.core import Harness

# Written from CONTRACT section 5, not imported from the code: exposed name -> (type, label names).
CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    "alpaca_connection_status": ("gauge", frozenset({"state"})),
    "alpaca_authentication_status": ("gauge", frozenset()),
    "alpaca_messages_received_total": ("counter", frozenset({"type", "symbol"})),
    "alpaca_errors_total": ("counter", frozenset({"type"})),
    "alpaca_message_latency_seconds": ("histogram", frozenset({"symbol"})),
    "alpaca_streaming_processing_duration_ms": ("histogram", frozenset()),
    "datasource_router_state": ("gauge", frozenset({"state"})),
    "datasource_router_failover_total": ("counter", frozenset()),
    "datasource_router_recovery_time_seconds": ("histogram", frozenset()),
    "datasource_router_uptime_percent": ("gauge", frozenset()),
    "alpaca_subscribed_symbols_count": ("gauge", frozenset()),
    "datasource_router_validation_failures_total": ("counter", frozenset({"reason"})),
    "datasource_router_price_delta_percent": ("gauge", frozenset({"symbol"})),
    "datasource_router_circuit_breaker_total": ("counter", frozenset({"symbol", "reason"})),
    "datasource_router_state_duration_seconds_total": ("counter", frozenset({"state"})),
    "datasource_router_last_price": ("gauge", frozenset({"symbol", "source"})),
    "datasource_router_last_update_timestamp_seconds": ("gauge", frozenset({"symbol"})),
    "dependency_up": ("gauge", frozenset({"dependency"})),
    "dependency_latency_seconds": ("histogram", frozenset({"dependency", "method"})),
    "alpaca_exporter_build_info": ("gauge", frozenset({"version", "python_version"})),
}
# CONTRACT section 11 (feed quality), and this exporter's extra gauges that go with it (README).
FEED_QUALITY: dict[str, tuple[str, frozenset[str]]] = {
    "alpaca_subscription_missing_symbols": ("gauge", frozenset({"channel"})),
    "alpaca_subscription_repairs_total": ("counter", frozenset()),
    "datasource_router_symbol_halted": ("gauge", frozenset({"symbol"})),
    "datasource_router_symbol_message_interval_seconds": ("gauge", frozenset({"symbol"})),
    "alpaca_bars_missing_total": ("counter", frozenset({"symbol"})),
    "alpaca_stream_gap_seconds": ("histogram", frozenset()),
    "alpaca_stream_lag_seconds": ("gauge", frozenset()),
    "datasource_router_symbol_last_message_timestamp_seconds": ("gauge", frozenset({"symbol"})),
    "datasource_router_market_open": ("gauge", frozenset()),
}
GAP_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 900, 1800, math.inf]
CONN_STATES = {"Disconnected", "Connecting", "Authenticating", "Connected"}
MESSAGE_TYPES = {
    "trade", "quote", "bar", "updated_bar", "daily_bar", "status", "luld",
    "correction", "cancel_error", "imbalance", "orderbook", "control", "unknown",
}  # fmt: skip
ERROR_TYPES = {
    "connection_failed", "connection_lost", "auth_failed", "auth_timeout", "not_authenticated",
    "symbol_limit_exceeded", "connection_limit_exceeded", "slow_client", "insufficient_subscription",
    "invalid_syntax", "server_error", "decode_error", "stale_stream",
}  # fmt: skip
REASONS = {
    "invalid_price", "invalid_size", "crossed_quote", "stale_timestamp",
    "future_timestamp", "unknown_symbol", "malformed", "circuit_open",
}  # fmt: skip
ROUTER_STATES = {"PRIMARY_ACTIVE": 0.0, "FALLBACK_ACTIVE": 1.0, "BOTH_UNAVAILABLE": 2.0}
LATENCY_BUCKETS = [0.1, 0.25, 0.5, 1, 2, 5, 10, math.inf]
PROCESSING_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, math.inf]
RECOVERY_BUCKETS = [1, 5, 10, 20, 30, 60, math.inf]


def family_key(name: str, kind: str) -> str:
    # The text parser names a counter family without its _total suffix.
    return name.removesuffix("_total") if kind == "counter" else name


def scrape_with_types(core: Core) -> tuple[dict[str, list[Sample]], dict[str, str]]:
    """Samples and type by family name, from the Prometheus text format as a scraper would read it."""
    text = generate_latest(build_registry(core)).decode()
    families: dict[str, list[Sample]] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in families, f"{family.name} exposed twice"
        families[family.name] = list(family.samples)
        types[family.name] = family.type
    return families, types


def scrape(core: Core) -> dict[str, list[Sample]]:
    return scrape_with_types(core)[0]


def samples(families: dict[str, list[Sample]], name: str, suffix: str = "") -> list[Sample]:
    kind = (CONTRACT.get(name) or FEED_QUALITY[name])[0]
    return [s for s in families[family_key(name, kind)] if s.name == name + suffix]


def values(families: dict[str, list[Sample]], name: str, label: str) -> dict[str, float]:
    return {s.labels[label]: s.value for s in samples(families, name)}


def le_bounds(families: dict[str, list[Sample]], name: str, labels: dict[str, str] | None = None) -> list[float]:
    out = []
    for s in samples(families, name, "_bucket"):
        if labels is None or all(s.labels.get(k) == v for k, v in labels.items()):
            out.append(float(s.labels["le"]))
    return out


def busy_core() -> Harness:
    """A core driven through enough events that every catalogue metric has at least one series."""
    h = Harness(symbols=("AAPL", "MSFT"))
    h.send(PrimaryControl(2))
    h.primary_up()
    h.fallback_ok(period_s=60.0)
    h.frame(h.trade(p=100.0, age_s=0.3), h.quote("MSFT", 400.0, 400.2), h.bar(), Unknown(T="zz"), decode_seconds=0.001)
    h.frame(h.trade(p=-1.0), h.trade("ZZZZ"))
    h.yahoo(price=99.5)
    h.yahoo("MSFT", 400.1)
    h.frame(h.trade(p=150.0))  # breaker trip
    h.send(PrimaryError("connection_lost"))
    h.send(DependencyLatency("alpaca", "handshake", 0.12))
    h.send(DependencyLatency("yahoo", "poll", 0.4))
    h.advance(4.0)
    h.primary_down()  # failover
    h.send(FallbackPoll(ok=False, period_s=5.0, error="rate_limited"))
    h.tick(2.0)
    return h


@pytest.fixture
def fresh() -> dict[str, list[Sample]]:
    return scrape(Core(CoreConfig(symbols=("AAPL",)), FakeClock()))


@pytest.fixture
def busy() -> tuple[Harness, dict[str, list[Sample]]]:
    h = busy_core()
    return h, scrape(h.core)


# ---- names, types, label names -------------------------------------------------------------------


def quality_core() -> Harness:
    """A core with a shortfall, a halt, a learned interval, a missing bar, an outage gap and a lag."""
    h = Harness(channels=("trades", "bars", "statuses"))
    h.primary_up()
    h.send(SubscriptionStatus({"trades": ("MSFT",), "bars": (), "lulds": ("AAPL",)}, repairs=2))
    h.frame(h.trade())
    h.advance(1.0)
    h.primary_down()
    h.advance(2.0)
    h.primary_up()
    h.frame(h.status("MSFT", "H"))
    for _ in range(80):  # 160 s of AAPL trades every 2 s, none with its minute bar
        h.advance(2.0)
        h.frame(h.trade(age_s=0.5))
        h.tick()
    return h


@pytest.mark.parametrize(("contract", "core"), [(CONTRACT, busy_core), (FEED_QUALITY, quality_core)])
def test_every_catalogue_name_type_and_label_set(
    contract: dict[str, tuple[str, frozenset[str]]], core: Callable[[], Harness]
) -> None:
    families, types = scrape_with_types(core().core)
    for name, (kind, labels) in contract.items():
        key = family_key(name, kind)
        assert key in families, f"{name} missing"
        assert types[key] == kind, f"{name}: {types[key]} != {kind}"
        main = [s for s in families[key] if s.name in (name, f"{name}_bucket", f"{name}_count", f"{name}_sum")]
        assert main, f"{name} has no samples"
        for s in main:
            got = set(s.labels) - ({"le"} if s.name.endswith("_bucket") else set())
            assert got == labels, f"{s.name}: labels {sorted(got)} != {sorted(labels)}"


def test_standard_process_and_platform_collectors_are_there(fresh: dict[str, list[Sample]]) -> None:
    assert "process_cpu_seconds" in fresh
    assert "python_info" in fresh


def test_label_less_counters_and_fixed_label_values_exist_at_start(fresh: dict[str, list[Sample]]) -> None:
    assert values(fresh, "alpaca_errors_total", "type") == dict.fromkeys(ERROR_TYPES, 0.0)
    assert values(fresh, "datasource_router_validation_failures_total", "reason") == dict.fromkeys(REASONS, 0.0)
    assert values(fresh, "datasource_router_state_duration_seconds_total", "state") == dict.fromkeys(ROUTER_STATES, 0.0)
    assert [s.value for s in samples(fresh, "datasource_router_failover_total")] == [0.0]
    assert samples(fresh, "datasource_router_recovery_time_seconds", "_count")[0].value == 0.0
    assert samples(fresh, "alpaca_streaming_processing_duration_ms", "_count")[0].value == 0.0
    assert values(fresh, "alpaca_connection_status", "state") == {
        "Disconnected": 1.0,
        "Connecting": 0.0,
        "Authenticating": 0.0,
        "Connected": 0.0,
    }
    assert [s.value for s in samples(fresh, "alpaca_authentication_status")] == [0.0]
    assert values(fresh, "dependency_up", "dependency") == {"alpaca": 0.0, "yahoo": 0.0}
    assert [(s.labels, s.value) for s in samples(fresh, "datasource_router_state")] == [
        ({"state": "BOTH_UNAVAILABLE"}, 2.0)
    ]
    assert [s.value for s in samples(fresh, "datasource_router_uptime_percent")] == [0.0]
    assert [s.value for s in samples(fresh, "alpaca_subscribed_symbols_count")] == [0.0]
    (build,) = samples(fresh, "alpaca_exporter_build_info")
    assert build.value == 1.0
    assert build.labels["version"]


# ---- values after some traffic -------------------------------------------------------------------


def test_values_after_a_session(busy: tuple[Harness, dict[str, list[Sample]]]) -> None:
    h, fam = busy
    assert [(s.labels, s.value) for s in samples(fam, "datasource_router_state")] == [
        ({"state": "FALLBACK_ACTIVE"}, 1.0)
    ]
    assert [s.value for s in samples(fam, "datasource_router_failover_total")] == [1.0]
    assert samples(fam, "datasource_router_recovery_time_seconds", "_count")[0].value == 1.0
    conn = values(fam, "alpaca_connection_status", "state")
    assert set(conn) == CONN_STATES
    assert conn["Disconnected"] == 1.0
    assert sum(conn.values()) == 1.0
    assert values(fam, "alpaca_errors_total", "type")["connection_lost"] == 1.0
    assert set(values(fam, "alpaca_errors_total", "type")) == ERROR_TYPES
    reasons = values(fam, "datasource_router_validation_failures_total", "reason")
    assert set(reasons) == REASONS
    assert (reasons["invalid_price"], reasons["unknown_symbol"], reasons["circuit_open"]) == (1.0, 1.0, 1.0)
    durations = values(fam, "datasource_router_state_duration_seconds_total", "state")
    assert set(durations) == set(ROUTER_STATES)
    assert sum(durations.values()) == pytest.approx(h.elapsed())
    assert durations["PRIMARY_ACTIVE"] == pytest.approx(4.0)
    assert durations["FALLBACK_ACTIVE"] == pytest.approx(2.0)
    (uptime,) = samples(fam, "datasource_router_uptime_percent")
    assert uptime.value == pytest.approx(100.0)
    assert values(fam, "dependency_up", "dependency") == {"alpaca": 0.0, "yahoo": 1.0}

    received = {(s.labels["type"], s.labels["symbol"]): s.value for s in samples(fam, "alpaca_messages_received_total")}
    assert {t for t, _ in received} <= MESSAGE_TYPES
    assert received[("control", "")] == 2.0
    assert received[("trade", "AAPL")] == 3.0
    assert received[("quote", "MSFT")] == 1.0
    assert received[("bar", "AAPL")] == 1.0
    assert received[("trade", "ZZZZ")] == 1.0
    assert sum(v for (t, _), v in received.items() if t == "unknown") == 1.0

    trips = {
        (s.labels["symbol"], s.labels["reason"]): s.value
        for s in samples(fam, "datasource_router_circuit_breaker_total")
    }
    assert trips == {("AAPL", "price_movement_exceeded"): 1.0}

    last = {(s.labels["symbol"], s.labels["source"]): s.value for s in samples(fam, "datasource_router_last_price")}
    assert last == {
        ("AAPL", "alpaca"): 100.0,
        ("AAPL", "yahoo"): 99.5,
        ("MSFT", "alpaca"): 400.1,
        ("MSFT", "yahoo"): 400.1,
    }
    delta = values(fam, "datasource_router_price_delta_percent", "symbol")
    assert delta["AAPL"] == pytest.approx(0.5 / 99.5 * 100.0)
    assert delta["MSFT"] == pytest.approx(0.0)
    updated = values(fam, "datasource_router_last_update_timestamp_seconds", "symbol")
    assert set(updated) == {"AAPL", "MSFT"}
    assert all(abs(v - h.clock.wall_ns() / 1e9) < 60.0 for v in updated.values())

    dep = {
        (s.labels["dependency"], s.labels["method"]): s.value
        for s in samples(fam, "dependency_latency_seconds", "_count")
    }
    assert dep == {("alpaca", "handshake"): 1.0, ("yahoo", "poll"): 1.0}


def test_feed_quality_values() -> None:
    h = quality_core()
    fam = scrape(h.core)
    missing = values(fam, "alpaca_subscription_missing_symbols", "channel")
    assert missing == {"trades": 1.0, "bars": 0.0, "statuses": 0.0}
    assert [s.value for s in samples(fam, "alpaca_subscription_repairs_total")] == [2.0]
    assert values(fam, "datasource_router_symbol_halted", "symbol") == {"MSFT": 1.0}  # AAPL: no status yet
    assert values(fam, "datasource_router_symbol_message_interval_seconds", "symbol") == {"AAPL": 1.0}
    assert values(fam, "alpaca_bars_missing_total", "symbol") == {"AAPL": 1.0}  # minute 0 is due, minute 1 not yet
    assert le_bounds(fam, "alpaca_stream_gap_seconds") == GAP_BUCKETS
    assert [s.value for s in samples(fam, "alpaca_stream_gap_seconds", "_count")] == [1.0]
    assert [s.value for s in samples(fam, "alpaca_stream_gap_seconds", "_sum")] == [3.0]  # 1 s, 2 s down
    assert [s.value for s in samples(fam, "alpaca_stream_lag_seconds")] == [0.5]
    heard = values(fam, "datasource_router_symbol_last_message_timestamp_seconds", "symbol")
    assert heard == {"AAPL": pytest.approx(h.wall_s()), "MSFT": pytest.approx(h.wall_s() - 160.0)}
    assert [s.value for s in samples(fam, "datasource_router_market_open")] == [1.0]


def test_feed_quality_series_at_start(fresh: dict[str, list[Sample]]) -> None:
    """One shortfall series per wanted channel; per-symbol gauges and the lag absent until known."""
    assert values(fresh, "alpaca_subscription_missing_symbols", "channel") == {"trades": 0.0}
    assert [s.value for s in samples(fresh, "alpaca_subscription_repairs_total")] == [0.0]
    for name in (
        "datasource_router_symbol_halted",
        "datasource_router_symbol_message_interval_seconds",
        "alpaca_bars_missing_total",
        "alpaca_stream_lag_seconds",
        "datasource_router_symbol_last_message_timestamp_seconds",
    ):
        assert samples(fresh, name) == [], name
    assert [s.value for s in samples(fresh, "alpaca_stream_gap_seconds", "_count")] == [0.0]
    assert [s.value for s in samples(fresh, "datasource_router_market_open")] == [1.0]
    closed = scrape(Core(CoreConfig(symbols=("AAPL",), market_hours="never"), FakeClock()))
    assert [s.value for s in samples(closed, "datasource_router_market_open")] == [0.0]


def test_subscribed_symbols_count_follows_the_live_subscription() -> None:
    """The confirmed set: the ack's size while connected, 0 once the connection and its subscription are gone."""
    h = Harness(symbols=("AAPL", "MSFT", "SPY"))
    h.primary_up(symbols=["AAPL", "MSFT"])
    assert [s.value for s in samples(scrape(h.core), "alpaca_subscribed_symbols_count")] == [2.0]
    h.primary_down()
    assert [s.value for s in samples(scrape(h.core), "alpaca_subscribed_symbols_count")] == [0.0]


def test_router_state_has_exactly_one_series_in_every_state() -> None:
    h = Harness()
    for step, expected in (
        (lambda: None, "BOTH_UNAVAILABLE"),
        (h.primary_up, "PRIMARY_ACTIVE"),
        (lambda: (h.fallback_ok(60.0), h.primary_down()), "FALLBACK_ACTIVE"),
    ):
        step()
        fam = scrape(h.core)
        assert [(s.labels["state"], s.value) for s in samples(fam, "datasource_router_state")] == [
            (expected, ROUTER_STATES[expected])
        ]


# ---- histograms ----------------------------------------------------------------------------------


def test_histogram_buckets_are_the_contracts(busy: tuple[Harness, dict[str, list[Sample]]]) -> None:
    _, fam = busy
    assert le_bounds(fam, "alpaca_message_latency_seconds", {"symbol": "AAPL"}) == LATENCY_BUCKETS
    assert le_bounds(fam, "alpaca_streaming_processing_duration_ms") == PROCESSING_BUCKETS
    assert le_bounds(fam, "datasource_router_recovery_time_seconds") == RECOVERY_BUCKETS


def test_histograms_render_what_the_client_library_would(busy: tuple[Harness, dict[str, list[Sample]]]) -> None:
    """Same observations into a prometheus_client Histogram: identical bucket, count and sum samples."""
    _h, fam = busy
    reference = CollectorRegistry()
    hist = Histogram("ref", "reference", buckets=[0.1, 0.25, 0.5, 1, 2, 5, 10], registry=reference)
    hist.observe(0.3)  # the one routed AAPL trade was 0.3 s old
    ref = {
        (s.name.removeprefix("ref"), s.labels.get("le")): s.value
        for f in text_string_to_metric_families(generate_latest(reference).decode())
        for s in f.samples
        if not s.name.endswith("_created")
    }
    ours = {
        (s.name.removeprefix("alpaca_message_latency_seconds"), s.labels.get("le")): s.value
        for suffix in ("_bucket", "_count", "_sum")
        for s in samples(fam, "alpaca_message_latency_seconds", suffix)
        if s.labels["symbol"] == "AAPL"
    }
    assert ours.keys() == ref.keys()
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value), key


def test_processing_histogram_counts_every_message(busy: tuple[Harness, dict[str, list[Sample]]]) -> None:
    _, fam = busy
    # Frames of 4, 2 and 1 messages.
    assert samples(fam, "alpaca_streaming_processing_duration_ms", "_count")[0].value == 7.0


def test_latency_only_for_routed_trades_and_quotes(busy: tuple[Harness, dict[str, list[Sample]]]) -> None:
    _, fam = busy
    counts = {s.labels["symbol"]: s.value for s in samples(fam, "alpaca_message_latency_seconds", "_count")}
    assert counts == {"AAPL": 1.0, "MSFT": 1.0}  # the bar, the rejected and the unknown-symbol trades are not


# ---- the symbol label cap ------------------------------------------------------------------------


def test_symbol_label_is_capped_with_other() -> None:
    h = Harness(symbols=("AAPL", "MSFT", "SPY", "QQQ"), max_symbol_series=2)
    h.primary_up()
    h.frame(*(h.trade(s) for s in ("AAPL", "MSFT", "SPY", "QQQ", "ZZZZ", "YYYY")))
    h.frame(h.trade("SPY", p=500.0))  # SPY's breaker trips: counted under __other__
    fam = scrape(h.core)
    for name in (
        "alpaca_messages_received_total",
        "alpaca_message_latency_seconds",
        "datasource_router_circuit_breaker_total",
    ):
        suffix = "_count" if CONTRACT[name][0] == "histogram" else ""
        labels = {s.labels["symbol"] for s in samples(fam, name, suffix)} - {""}
        assert labels <= {"AAPL", "MSFT", "__other__"}, (name, labels)
        assert "__other__" in labels, name
    received = {
        s.labels["symbol"]: s.value
        for s in samples(fam, "alpaca_messages_received_total")
        if s.labels["type"] == "trade"
    }
    assert received == {"AAPL": 1.0, "MSFT": 1.0, "__other__": 5.0}
    for name in ("datasource_router_last_price", "datasource_router_last_update_timestamp_seconds"):
        assert {s.labels["symbol"] for s in samples(fam, name)} <= {"AAPL", "MSFT"}


# ---- exposition formats --------------------------------------------------------------------------


def test_openmetrics_exposition_parses(busy: tuple[Harness, dict[str, list[Sample]]]) -> None:
    h, _ = busy
    text = generate_openmetrics(build_registry(h.core)).decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    for name, (kind, _labels) in CONTRACT.items():
        key = family_key(name, kind)
        assert key in families, name
        assert families[key].type == kind, name


def test_a_scrape_does_not_change_the_core(busy: tuple[Harness, dict[str, list[Sample]]]) -> None:
    h, first = busy
    second = scrape(h.core)

    def core_families(families: dict[str, list[Sample]]) -> dict[str, list[Sample]]:
        # The process collector's CPU and memory readings move on their own between two scrapes.
        return {k: v for k, v in families.items() if not k.startswith(("process_", "python_"))}

    assert core_families(first) == core_families(second)


# ---- the feed (CONTRACT section 12) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("feed", "encoding", "symbols"),
    [("iex", "json", "AAPL"), ("crypto", "msgpack", "BTC/USD"), ("opra", "msgpack", "AAPL250117C00150000")],
)
def test_the_daemon_exposes_its_feed_and_encoding(feed: str, encoding: str, symbols: str) -> None:
    settings = load_settings(
        env_file=None,
        apca_api_key_id="PKFEEDINFO",
        apca_api_secret_key="feed-info-secret",
        symbols=symbols,
        alpaca_feed=feed,
        alpaca_encoding=encoding,
    )
    text = generate_latest(Daemon(settings).registry).decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "alpaca_exporter_feed_info"]
    assert family.type == "gauge"
    assert [(s.labels, s.value) for s in family.samples] == [({"feed": feed, "encoding": encoding}, 1.0)]
