"""The focused /metrics renderer renders exactly what prometheus_client's encoders render, byte for byte.

The core is driven into a state that exercises every per-symbol family and the formatting corners:
counts past Go's exponent switch, label values that need escaping, the ``__other__`` series past the
label cap, breaker trips, prices from both sources, empty and non-empty histograms.
"""

from __future__ import annotations

from functools import partial

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.core.clock import FakeClock
from exporter.core.events import (
    DependencyLatency,
    FallbackPoll,
    FallbackPrice,
    PrimaryAuthenticated,
    PrimaryConnection,
    PrimaryData,
    PrimaryError,
    PrimarySubscribed,
    SubscriptionStatus,
    Tick,
)
from exporter.core.messages import Bar, Malformed, Quote, Trade, TradingStatus, Unknown, utc_from_ns
from exporter.core.router import Core, CoreConfig
from exporter.metrics import CoreCollector, ExporterRegistry, build_registry, negotiate, render_metrics

# A configured symbol with characters to escape; the last two are past the default cap of four series.
SYMBOLS = ("AAPL", 'ODD"\\\nSYM', "MSFT", "BRK.B", "SPY", "QQQ")


def busy_core(*, max_series: int = 4) -> tuple[Core, FakeClock]:
    clock = FakeClock()
    core = Core(
        CoreConfig(
            symbols=SYMBOLS,
            stale_after_s=0.0,
            max_symbol_series=max_series,
            breaker_percent=20.0,
            channels=("trades", "quotes", "bars", "statuses"),
        ),
        clock,
    )
    core.handle(PrimaryConnection("Connected"))
    core.handle(PrimaryAuthenticated(True))
    core.handle(PrimarySubscribed(frozenset(SYMBOLS)))
    core.handle(FallbackPoll(ok=True, period_s=5.0))
    wall = clock.wall_ns()
    messages: list[object] = []
    for k, symbol in enumerate(SYMBOLS):
        for j in range(3):
            # Latencies from 1 ms to 12 s: every bucket, +Inf included.
            age_ns = [1_000_000, 300_000_000, 1_500_000_000, 12_000_000_000][(k + j) % 4]
            messages.append(Trade(S=symbol, p=100.0 + k + j / 100, t=utc_from_ns(wall - age_ns), s=10))
            messages.append(Quote(S=symbol, bp=100.0 + k, ap=100.02 + k, t=utc_from_ns(wall - age_ns // 2)))
        messages.append(Bar(S=symbol, o=1.0, h=2.0, l=0.5, c=100.0 + k, t=utc_from_ns(wall - 60_000_000_000)))
    messages.append(Trade(S="ZZZ", p=5.0, t=utc_from_ns(wall), s=1))  # unknown: counted under __other__
    messages.append(Unknown(T="zz", S="AAPL"))
    messages.append(Malformed(T="t", S="MSFT", detail="missing p"))
    core.handle(PrimaryData(messages, received_at=clock.monotonic(), decode_seconds=0.0001))
    # A breaker trip (a 50 % print), a fallback price for a price delta, an error, a handshake latency.
    core.handle(PrimaryData([Trade(S="AAPL", p=150.0, t=utc_from_ns(wall), s=1)], received_at=clock.monotonic()))
    core.handle(FallbackPrice("MSFT", 101.5, wall))
    core.handle(PrimaryError("slow_client", "407"))
    core.handle(DependencyLatency("alpaca", "auth", 0.012))
    # Feed quality: a shortfall and repairs, a halt, an outage's gap, learned intervals, a missing bar, a lag.
    core.handle(SubscriptionStatus({"trades": ('ODD"\\\nSYM',), "bars": ("SPY", "QQQ")}, repairs=3))
    core.handle(PrimaryData([TradingStatus(S="MSFT", t=utc_from_ns(wall), sc="H")], received_at=clock.monotonic()))
    core.handle(PrimaryConnection("Disconnected"))
    clock.advance(2.5)
    for _ in range(12):
        clock.advance(1.5)
        core.handle(PrimaryConnection("Connected"))
        core.handle(PrimaryAuthenticated(True))
        core.handle(PrimarySubscribed(frozenset(SYMBOLS)))
        t = utc_from_ns(clock.wall_ns() - 250_000_000)
        core.handle(PrimaryData([Trade(S=s, p=101.0, t=t, s=1) for s in SYMBOLS[1:]], received_at=clock.monotonic()))
        core.handle(Tick())
    clock.advance(200.0)  # the minutes traded above are past their bar's 90 s
    t = utc_from_ns(clock.wall_ns() - 250_000_000)
    core.handle(PrimaryData([Trade(S="BRK.B", p=101.0, t=t, s=1)], received_at=clock.monotonic()))
    core.handle(Tick())
    # Counts past 1e6 render with Go's exponent form.
    core.series["AAPL"].received[0] += 12_345_678
    core.series["AAPL"].latency.counts[0] += 2_000_000
    core.counters.control_received = 7_654_321
    clock.advance(12.5)
    return core, clock


def core_only(core: Core) -> tuple[CollectorRegistry, ExporterRegistry]:
    plain = CollectorRegistry(auto_describe=True)
    plain.register(CoreCollector(core))
    fast = ExporterRegistry()
    fast.register(CoreCollector(core))
    return plain, fast


def test_text_renders_exactly_what_generate_latest_renders() -> None:
    core, _ = busy_core()
    plain, fast = core_only(core)
    expected = generate_latest(plain)
    assert fast.render(openmetrics=False) == expected
    # The state really exercises the per-symbol families and their corners.
    text = expected.decode()
    assert 'alpaca_messages_received_total{symbol="AAPL",type="trade"} 1.2345682e+07' in text
    assert 'symbol="ODD\\"\\\\\\nSYM"' in text
    assert 'alpaca_message_latency_seconds_bucket{le="+Inf",symbol="__other__"}' in text
    assert 'datasource_router_circuit_breaker_total{reason="price_movement_exceeded",symbol="AAPL"} 1.0' in text
    assert 'datasource_router_price_delta_percent{symbol="MSFT"}' in text
    assert 'datasource_router_last_price{source="yahoo",symbol="MSFT"} 101.5' in text
    assert "datasource_router_last_update_timestamp_seconds{" in text


def test_openmetrics_renders_exactly_what_the_library_renders() -> None:
    core, _ = busy_core()
    plain, fast = core_only(core)
    assert fast.render(openmetrics=True) == generate_openmetrics(plain)


def test_repeated_renders_with_changing_state_stay_identical() -> None:
    # The renderer caches label and line prefixes: they must follow new series and new counts.
    core, clock = busy_core(max_series=10)
    plain, fast = core_only(core)
    for step in range(3):
        wall = clock.wall_ns()
        now, earlier = utc_from_ns(wall), utc_from_ns(wall - 400_000_000)
        core.handle(PrimaryData([Trade(S=f"NEW{step}", p=10.0, t=now, s=1)], received_at=clock.monotonic()))
        core.handle(PrimaryData([Trade(S="SPY", p=103.0, t=earlier, s=1)], received_at=clock.monotonic()))
        clock.advance(1.0)
        assert fast.render(openmetrics=False) == generate_latest(plain)
        assert fast.render(openmetrics=True) == generate_openmetrics(plain)


def test_empty_core_renders_identically() -> None:
    core = Core(CoreConfig(symbols=("AAPL",)), FakeClock())
    plain, fast = core_only(core)
    assert fast.render() == generate_latest(plain)
    assert fast.render(openmetrics=True) == generate_openmetrics(plain)


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        ("", False),
        ("text/plain; version=0.0.4", False),
        ("application/openmetrics-text; version=1.0.0", True),
        ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", True),
        ("application/openmetrics-text; version=1.0.0; escaping=underscores", True),
    ],
)
def test_daemon_negotiation_takes_the_fast_path_with_identical_output(accept: str, openmetrics: bool) -> None:
    core, _ = busy_core()
    registry = build_registry(core)
    # The fast path is the registry's own renderer: its output is identical by design, so only the
    # choice itself shows that it was taken.
    render, _ = negotiate(registry, accept)
    assert isinstance(render, partial)
    assert render.func == registry.render
    assert render.keywords == {"openmetrics": openmetrics}
    body, content_type = render_metrics(registry, accept)
    assert content_type.startswith("application/openmetrics-text") == openmetrics
    # The process collector's values move between two renders: compare everything else, line by line.
    expected = (generate_openmetrics(registry) if openmetrics else generate_latest(registry)).decode()

    def stable(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("process_")]

    assert stable(body.decode()) == stable(expected)
    assert body.decode().endswith("# EOF\n") == openmetrics


def test_other_escaping_schemes_fall_back_to_the_library() -> None:
    core, _ = busy_core()
    registry = build_registry(core)
    accept = "application/openmetrics-text; version=1.0.0; escaping=dots"
    render, _ = negotiate(registry, accept)
    assert isinstance(render, partial)
    assert render.func != registry.render
    body, content_type = render_metrics(registry, accept)
    assert "escaping=dots" in content_type
    assert body.decode().endswith("# EOF\n")
    assert "alpaca_messages_received_total" in body.decode() or "alpaca__messages" in body.decode()
