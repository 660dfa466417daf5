"""Crypto and options in the core: trades and quotes move prices as stock ones do; order books are
counted and checked (a crossed book is ``crossed_quote``) and never move a price (orderbook.py)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from exporter.core.messages import (
    BookLevel,
    CryptoBar,
    CryptoQuote,
    CryptoTrade,
    CryptoUpdatedBar,
    Malformed,
    Message,
    OptionQuote,
    OptionTrade,
    Orderbook,
)
from exporter.core.orderbook import MAX_LEVELS, Book
from tests.support.core import Harness

BTC, ETH = "BTC/USD", "ETH/USD"
OCC = "AAPL250117C00150000"


@pytest.fixture
def live(make: Callable[..., Harness]) -> Harness:
    h = make(symbols=(BTC, ETH, OCC), max_message_age_s=60.0, max_clock_skew_s=5.0)
    h.primary_up()
    return h


def levels(*pairs: tuple[float, float]) -> list[BookLevel]:
    return [BookLevel(p=p, s=s) for p, s in pairs]


def book(
    h: Harness,
    b: list[BookLevel] | None = None,
    a: list[BookLevel] | None = None,
    *,
    r: bool = False,
    symbol: str = BTC,
    age_s: float = 0.0,
) -> Orderbook:
    return Orderbook(S=symbol, t=h.ts(age_s), b=b or [], a=a or [], r=r)


def outcome(h: Harness, *messages: Message) -> dict[str, int]:
    """What one frame changed: routed count and rejections by reason."""
    before_routed, before = h.core.routed["alpaca"], dict(h.core.rejected)
    h.frame(*messages)
    out = {k: h.core.rejected[k] - before[k] for k in before if h.core.rejected[k] != before[k]}
    out["routed"] = h.core.routed["alpaca"] - before_routed
    return out


# ---- trades and quotes: exactly as stocks --------------------------------------------------------


def test_crypto_trade_with_fractional_size_moves_the_price(live: Harness) -> None:
    trade = CryptoTrade(S=BTC, p=87000.5, t=live.ts(), s=0.0004, i=2**63 + 5, tks="S")
    assert outcome(live, trade) == {"routed": 1}
    st = live.core.symbols[BTC]
    assert st.routed_price == 87000.5
    assert st.last_price["alpaca"] == 87000.5
    assert live.core.message_counts()["trade"] == 1


def test_crypto_trade_negative_size_is_invalid_size(live: Harness) -> None:
    assert outcome(live, CryptoTrade(S=BTC, p=1.0, t=live.ts(), s=-0.5)) == {"invalid_size": 1, "routed": 0}


def test_crypto_trades_trip_the_breaker_as_stocks_do(live: Harness) -> None:
    outcome(live, CryptoTrade(S=BTC, p=100.0, t=live.ts(), s=0.1))
    assert outcome(live, CryptoTrade(S=BTC, p=150.0, t=live.ts(), s=0.1)) == {"circuit_open": 1, "routed": 0}
    assert [t.symbol for t in live.trips()] == [BTC]


def test_crypto_trade_timestamps_are_judged(live: Harness) -> None:
    assert outcome(live, CryptoTrade(S=BTC, p=1.0, t=live.ts(age_s=120.0), s=0.1)) == {
        "stale_timestamp": 1,
        "routed": 0,
    }


def test_crypto_quote_fractional_sizes_mid_price_and_crossing(live: Harness) -> None:
    quote = CryptoQuote(S=ETH, bp=2000.0, ap=2001.0, t=live.ts(), bs=1.25, as_=0.5)
    assert outcome(live, quote) == {"routed": 1}
    assert live.core.symbols[ETH].routed_price == 2000.5
    crossed = CryptoQuote(S=ETH, bp=2002.0, ap=2001.0, t=live.ts(), bs=1.0, as_=1.0)
    assert outcome(live, crossed) == {"crossed_quote": 1, "routed": 0}
    assert outcome(live, CryptoQuote(S=ETH, bp=1.0, ap=2.0, t=live.ts(), bs=-0.1)) == {
        "invalid_size": 1,
        "routed": 0,
    }


def test_option_trade_and_quote_move_the_price(live: Harness) -> None:
    assert outcome(live, OptionTrade(S=OCC, p=3.45, t=live.ts(), s=2, x="C", c="I")) == {"routed": 1}
    assert live.core.symbols[OCC].routed_price == 3.45
    assert outcome(live, OptionQuote(S=OCC, bp=3.4, ap=3.5, t=live.ts(), bs=10, as_=12, c="A")) == {"routed": 1}
    assert live.core.symbols[OCC].routed_price == pytest.approx(3.45)
    counts = live.core.message_counts()
    assert (counts["trade"], counts["quote"]) == (1, 1)


def test_crypto_bars_follow_the_stock_rules(live: Harness) -> None:
    bar = CryptoBar(S=BTC, o=1.0, h=2.0, l=0.5, c=1.5, t=live.ts(), v=0.25)
    updated = CryptoUpdatedBar(S=BTC, o=1.0, h=2.0, l=0.5, c=9.0, t=live.ts(), v=0.3)
    assert outcome(live, bar, updated) == {"routed": 2}
    assert live.core.symbols[BTC].routed_price == 1.5  # the minute bar's close; the updated bar is no price
    counts = live.core.message_counts()
    assert (counts["bar"], counts["updated_bar"]) == (1, 1)


# ---- order books ---------------------------------------------------------------------------------


def test_orderbook_is_counted_and_never_moves_a_price(live: Harness) -> None:
    outcome(live, CryptoTrade(S=BTC, p=100.0, t=live.ts(), s=0.1))
    snapshot = book(live, levels((200.0, 1.0)), levels((201.0, 1.0)), r=True)  # far from the trade's price
    assert outcome(live, snapshot) == {"routed": 1}
    st = live.core.symbols[BTC]
    assert (st.routed_price, st.last_price["alpaca"], st.breaker.reference) == (100.0, 100.0, 100.0)
    assert live.core.message_counts()["orderbook"] == 1
    assert st.routed_wall == live.wall_s()  # an update, for the freshness gauge
    assert not live.trips()


def test_orderbook_proves_the_symbol_alive(live: Harness) -> None:
    live.advance(5.0)
    outcome(live, book(live, levels((1.0, 1.0)), r=True))
    assert live.core.symbols[BTC].heard_at == live.clock.monotonic()


def test_snapshot_replaces_deltas_apply_and_size_zero_removes(live: Harness) -> None:
    outcome(live, book(live, levels((100.0, 1.0), (99.0, 2.0)), levels((101.0, 1.0), (102.0, 3.0)), r=True))
    b = live.core.symbols[BTC].book
    assert b is not None
    assert (b.bids, b.asks) == ({100.0: 1.0, 99.0: 2.0}, {101.0: 1.0, 102.0: 3.0})
    outcome(live, book(live, levels((100.0, 0.0), (98.5, 0.25)), levels((101.0, 4.0), (103.0, 0.0))))
    assert (b.bids, b.asks) == ({99.0: 2.0, 98.5: 0.25}, {101.0: 4.0, 102.0: 3.0})
    assert (b.best_bid, b.best_ask) == (99.0, 101.0)
    outcome(live, book(live, levels((50.0, 1.0)), [], r=True))
    assert (b.bids, b.asks, b.best_ask) == ({50.0: 1.0}, {}, math.inf)


def test_crossed_book_is_crossed_quote_and_still_applied(live: Harness) -> None:
    outcome(live, book(live, levels((100.0, 1.0)), levels((101.0, 1.0)), r=True))
    assert outcome(live, book(live, levels((101.0, 0.5)))) == {"crossed_quote": 1, "routed": 0}  # locked: 101 >= 101
    # The book followed the server all the same: removing the crossing bid makes it sound again.
    assert outcome(live, book(live, levels((101.0, 0.0)))) == {"routed": 1}
    assert live.core.symbols[BTC].routed_price is None


def test_removing_the_best_level_rescans_the_side(live: Harness) -> None:
    outcome(live, book(live, levels((100.0, 1.0), (99.0, 1.0)), levels((101.0, 1.0), (103.0, 1.0)), r=True))
    outcome(live, book(live, levels((100.0, 0.0)), levels((101.0, 0.0))))
    b = live.core.symbols[BTC].book
    assert b is not None
    assert (b.best_bid, b.best_ask) == (99.0, 103.0)
    assert outcome(live, book(live, [], levels((99.5, 1.0)))) == {"routed": 1}  # 99 < 99.5: sound
    assert outcome(live, book(live, [], levels((99.0, 1.0)))) == {"crossed_quote": 1, "routed": 0}
    outcome(live, book(live, levels((99.0, 0.0))))  # the last bid goes: an empty side is never crossed
    assert (b.bids, b.best_bid) == ({}, -math.inf)


def test_deltas_before_any_snapshot_are_applied_but_not_judged(live: Harness) -> None:
    assert outcome(live, book(live, levels((105.0, 1.0)), levels((101.0, 1.0)))) == {"routed": 1}
    b = live.core.symbols[BTC].book
    assert b is not None
    assert (b.bids, b.asks, b.snapshot_seen) == ({105.0: 1.0}, {101.0: 1.0}, False)
    assert outcome(live, book(live, levels((106.0, 1.0)))) == {"routed": 1}
    # From the snapshot on, the book is judged.
    assert outcome(live, book(live, levels((100.0, 1.0)), levels((101.0, 1.0)), r=True)) == {"routed": 1}
    assert outcome(live, book(live, levels((102.0, 1.0)))) == {"crossed_quote": 1, "routed": 0}


def test_a_lost_connection_forgets_the_books(live: Harness) -> None:
    outcome(live, book(live, levels((100.0, 1.0)), levels((101.0, 1.0)), r=True))
    live.primary_down()
    live.primary_up()
    assert live.core.symbols[BTC].book is None
    # A delta of the new connection is not judged against the old connection's levels.
    assert outcome(live, book(live, levels((101.5, 1.0)))) == {"routed": 1}


@pytest.mark.parametrize(
    ("b", "a", "reason"),
    [
        (levels((0.0, 1.0)), [], "invalid_price"),
        ([], levels((math.nan, 1.0)), "invalid_price"),
        ([], levels((math.inf, 1.0)), "invalid_price"),
        (levels((100.0, -1.0)), [], "invalid_size"),
        ([], levels((101.0, math.inf)), "invalid_size"),
        ([], levels((101.0, math.nan)), "invalid_size"),
    ],
)
def test_unusable_levels_reject_the_update_unapplied(
    live: Harness, b: list[BookLevel], a: list[BookLevel], reason: str
) -> None:
    outcome(live, book(live, levels((100.0, 1.0)), levels((101.0, 1.0)), r=True))
    assert outcome(live, book(live, [*levels((99.0, 5.0)), *b], a)) == {reason: 1, "routed": 0}
    st = live.core.symbols[BTC]
    assert st.book is not None
    assert 99.0 not in st.book.bids  # nothing of the rejected update was applied


def test_orderbook_timestamps_future_rejected_old_snapshot_accepted(live: Harness) -> None:
    assert outcome(live, book(live, levels((1.0, 1.0)), r=True, age_s=-60.0)) == {"future_timestamp": 1, "routed": 0}
    assert live.core.symbols[BTC].book is None
    # A quiet pair's snapshot carries its last change, maybe long ago: not stale.
    assert outcome(live, book(live, levels((1.0, 1.0)), r=True, age_s=3600.0)) == {"routed": 1}


def test_orderbook_of_an_unknown_symbol(live: Harness) -> None:
    assert outcome(live, book(live, levels((1.0, 1.0)), r=True, symbol="DOGE/USD")) == {
        "unknown_symbol": 1,
        "routed": 0,
    }
    assert live.core.message_counts()["orderbook"] == 1


def test_malformed_orderbook_is_counted_as_an_orderbook(live: Harness) -> None:
    assert outcome(live, Malformed(T="o", S=BTC, detail="Expected `float`")) == {"malformed": 1, "routed": 0}
    assert live.core.message_counts()["orderbook"] == 1


def test_routed_orderbooks_are_timed(live: Harness) -> None:
    outcome(live, book(live, levels((1.0, 1.0)), r=True, age_s=0.05))
    outcome(live, book(live, levels((1.0, 2.0)), age_s=3.0))
    series = live.core.series[BTC]
    hist = series.latency_histogram()
    assert hist.count == 2
    assert hist.sum == pytest.approx(3.05)


def test_standby_orderbooks_apply_the_book(make: Callable[..., Harness]) -> None:
    h = make(symbols=(BTC,))
    outcome(h, book(h, levels((100.0, 1.0)), levels((101.0, 1.0)), r=True))
    assert h.core.standby["alpaca"] == 1
    assert outcome(h, book(h, levels((102.0, 1.0)))) == {"crossed_quote": 1, "routed": 0}


# ---- the book's memory bound ----------------------------------------------------------------------


def test_book_keeps_the_best_levels_past_the_cap() -> None:
    b = Book()
    n = MAX_LEVELS * 2
    bids = [BookLevel(p=float(1000 - k), s=1.0) for k in range(n)]
    asks = [BookLevel(p=float(2000 + k), s=1.0) for k in range(n)]
    b.apply(Orderbook(S=BTC, t=Harness().ts(), b=bids, a=asks, r=True))
    assert len(b.bids) == len(b.asks) == MAX_LEVELS
    assert (max(b.bids), min(b.bids)) == (1000.0, float(1000 - MAX_LEVELS + 1))  # the farthest went
    assert (min(b.asks), max(b.asks)) == (2000.0, float(2000 + MAX_LEVELS - 1))
    # Deltas adding deep levels one by one: the side never holds more than the cap and its slack.
    for k in range(n):
        b.apply(Orderbook(S=BTC, t=Harness().ts(), b=[BookLevel(p=0.001 * (k + 1), s=1.0)]))
        assert len(b.bids) <= MAX_LEVELS + MAX_LEVELS // 4
    assert b.best_bid == 1000.0
