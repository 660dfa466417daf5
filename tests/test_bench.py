"""A smoke run of the benchmark command, so it cannot rot: real workers, real sockets, tiny feeds.

No timing is asserted (figures on a shared test machine mean nothing); what is asserted is that every
stage ran, every message was counted by the exporter, and the outputs were written.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from exporter_tools.bench import Plan, bench_symbols, render_table, run_bench

REPO = Path(__file__).resolve().parents[1]


def test_bench_symbols_are_distinct_ticker_like_and_stable() -> None:
    symbols = bench_symbols(500)
    assert len(set(symbols)) == 500
    assert all(s.isalpha() and s.isupper() and 3 <= len(s) <= 4 for s in symbols)
    assert bench_symbols(500) == symbols


def test_smoke_run_writes_table_json_and_charts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = Plan(
        n_messages=1_000,
        repetitions=1,
        scrape_counts=(50,),
        scrape_renders=2,
        latency_messages=500,
        worker_timeout=30.0,
        quick=True,
        contenders=("exporter_msgpack", "sdk_raw"),
    )
    assert run_bench(quick=True, out=str(tmp_path), plan=plan) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    exporter = results["contenders"]["exporter_msgpack"]
    assert exporter["rate_median"] > 0
    assert exporter["rss_mib_median"] > 0
    # Every message of the feed went through validation and routing: nothing rejected or dropped.
    assert exporter["accounting"]["received"] == 1_000
    assert exporter["accounting"]["routed"] == 1_000
    assert exporter["rejected"] == {}
    assert exporter["dropped_frames"] == 0
    assert results["contenders"]["sdk_raw"]["rate_median"] > 0
    assert results["ratios"]["msgpack_vs_sdk_raw"]["median"] > 0

    scrape = results["scrape"]["50"]
    assert scrape["samples"] > 50 * 10  # per-symbol counts, histograms and gauges
    # Same body fast or generic, give or take the process collector's digits (tests/test_metrics_render.py
    # proves the bytes equal for a fixed state).
    assert abs(scrape["text"]["bytes"] - scrape["generic_text"]["bytes"]) < 100
    assert abs(scrape["openmetrics"]["bytes"] - scrape["generic_openmetrics"]["bytes"]) < 100
    assert scrape["http_ms"] > 0

    latency = results["latency"]
    assert latency["processing_us_p99"] >= latency["processing_us_p50"] > 0
    assert latency["frame_latency_us_p99"] > 0
    assert {t["name"] for t in results["targets"]} >= {"msgpack_vs_sdk_raw", "rss_mib_500", "p99_processing_us"}

    for chart in ("throughput.png", "scrape.png"):
        assert (tmp_path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "| exporter, msgpack |" in table
    assert table.strip() == render_table(results).strip()
    assert not math.isnan(exporter["rate_median"])


def test_crypto_feed_is_all_accepted_by_the_core() -> None:
    """The crypto run's feed is real-shaped and sound: decoded as crypto, every trade and order book update
    is counted and routed (none malformed, no book crossed), the counts are the feed's own."""
    from exporter.core.clock import FakeClock
    from exporter.core.events import PrimaryAuthenticated, PrimaryConnection, PrimaryData, PrimarySubscribed
    from exporter.core.router import Core, CoreConfig
    from exporter.sim.alpaca_server import generate_feed
    from exporter.sources.alpaca.codec import frame_decoder
    from exporter_tools.bench import CRYPTO_TRADE_SHARE, crypto_pairs

    clock = FakeClock()
    pairs = crypto_pairs(20)
    feed = generate_feed(pairs, 5_000, trade_ratio=CRYPTO_TRADE_SHARE, seed=3, start_ns=clock.wall_ns())
    assert feed.counts["o"] + feed.counts["t"] == feed.messages == 5_000
    core = Core(CoreConfig(symbols=tuple(pairs), stale_after_s=0), clock)
    for event in (PrimaryConnection("Connected"), PrimaryAuthenticated(True), PrimarySubscribed(frozenset(pairs))):
        core.handle(event)
    decode = frame_decoder("crypto", "msgpack")
    for frame in feed:
        core.handle(PrimaryData(decode(frame).messages, clock.monotonic()))
    assert core.accounting()["alpaca"]["routed"] == feed.messages
    counts = core.message_counts()
    assert (counts["trade"], counts["orderbook"]) == (feed.counts["t"], feed.counts["o"])
    assert all(st.book is not None and st.book.snapshot_seen for st in core.symbols.values())


def test_core_bench_smoke() -> None:
    """`alpaca-exporter bench --core` in miniature: every trade accounted for, figures present."""
    from exporter_tools.bench import run_core_bench

    result = run_core_bench(messages=2_000, symbols=50)
    assert result["messages"] == 2_000
    assert result["msgs_per_s"] > 0
    assert result["scrape_bytes"] > 0


@pytest.mark.parametrize(
    ("argv", "missing"),
    [
        (["bench", "--quick"], "alpaca"),
        (["bench", "--core"], "matplotlib"),
        (["soak", "--minutes", "0.1"], "exporter_tools"),
    ],
)
def test_tool_commands_name_what_to_install_when_it_is_missing(argv: list[str], missing: str) -> None:
    """A dev install without the tools extra, or the image without exporter_tools/: one line, exit 2."""
    # None in sys.modules makes every import of that module fail with ModuleNotFoundError.
    blocked = f"import sys; sys.modules[{missing!r}] = None; from exporter.cli import main; sys.exit(main({argv!r}))"
    result = subprocess.run([sys.executable, "-c", blocked], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"{argv[0]} needs the development tools: pip install 'alpaca-exporter[tools]' from a checkout "
        f"(missing: {missing})\n"
    )
