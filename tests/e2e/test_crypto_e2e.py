"""`alpaca-exporter demo --feed crypto`, scraped by a real Prometheus with the rules loaded: the crypto
stream (trades, quotes, order books; a crossed book), the Yahoo fallback on BTC-USD, a market that never
closes, and every operations-kit expression evaluated for a crypto instance."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.prometheus import Live, live_demo
from tests.support.promql import all_expressions

pytestmark = pytest.mark.e2e

PAIRS = ("BTC/USD", "ETH/USD", "SOL/USD")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    # Ready once the crossed book was rejected and a failover happened (the scripted spike and outage).
    ready = (
        'datasource_router_validation_failures_total{reason="crossed_quote"} > 0'
        " and on () datasource_router_failover_total > 0"
    )
    with live_demo(tmp_path_factory, ready, "--feed", "crypto") as live:
        yield live


def test_the_instance_says_it_watches_crypto(live: Live) -> None:
    assert live.prom.query('alpaca_exporter_feed_info{feed="crypto", encoding="msgpack"} == 1')
    assert live.value("min_over_time(datasource_router_market_open[5m])") == 1  # 24/7, whatever the hour


def test_every_crypto_message_type_is_counted_per_pair(live: Live) -> None:
    for kind in ("trade", "quote", "orderbook"):
        counted = live.prom.query(f'alpaca_messages_received_total{{type="{kind}"}} > 0')
        assert {s["metric"]["symbol"] for s in counted} >= set(PAIRS), kind
    assert live.value("max_over_time(alpaca_subscribed_symbols_count[5m])") == len(PAIRS)
    assert live.value('max(alpaca_subscription_missing_symbols{channel="orderbooks"})') == 0


def test_a_crossed_book_is_rejected_and_books_never_set_a_price(live: Live) -> None:
    assert live.value('datasource_router_validation_failures_total{reason="crossed_quote"}') >= 1
    # Prices from both sources for every pair: Yahoo answered BTC-USD for BTC/USD.
    for pair in PAIRS:
        for source in ("alpaca", "yahoo"):
            assert live.value(f'datasource_router_last_price{{symbol="{pair}", source="{source}"}}') > 0
    assert live.value('max(datasource_router_price_delta_percent{symbol="BTC/USD"})') < 5


def test_the_fallback_took_over_and_gave_back(live: Live) -> None:
    assert live.value("datasource_router_failover_total") >= 1
    assert live.value('max_over_time(datasource_router_state{state="FALLBACK_ACTIVE"}[5m])') == 1


def test_every_ops_kit_expression_evaluates_for_a_crypto_instance(live: Live) -> None:
    variables = {"instance": live.target, "feed": "crypto", "symbol": "BTC/USD|ETH/USD", "__range": "2m"}
    errors = []
    for e in all_expressions(variables):
        try:
            live.prom.query(e.expr)
        except Exception as exc:  # collect all, report all
            errors.append(f"{e.source}: {exc}")
    assert not errors, "\n".join(errors)
    rules = [r for g in live.prom.rules() for r in g["rules"]]
    assert not [r["name"] for r in rules if r.get("health") == "err"]
