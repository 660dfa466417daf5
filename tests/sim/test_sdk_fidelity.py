"""Proof of fidelity: the official SDK (alpaca-py) streams from the simulator unchanged, on every feed
family (``StockDataStream``, ``CryptoDataStream``, ``OptionDataStream``, each with ``url_override``).

alpaca-py's ``run()`` wraps ``asyncio.run``, so the test drives its internal coroutine ``_run_forever()``
in the test's own loop (handlers are registered before it starts: subscribing on a running stream
from the loop thread deadlocks in alpaca-py) and stops it with ``stop_ws()``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from alpaca.data.live.crypto import CryptoDataStream
from alpaca.data.live.option import OptionDataStream
from alpaca.data.live.stock import StockDataStream
from alpaca.data.models import Bar, Orderbook, Quote, Trade

from exporter.sim.alpaca_server import AlpacaSimulator
from exporter.sim.market import Market

KEY, SECRET = "PKFIDELITY", "fidelity-secret"
SYMBOLS = ["AAPL", "MSFT", "AMD"]


@pytest.fixture
async def sim() -> AsyncIterator[AlpacaSimulator]:
    async with AlpacaSimulator(
        Market(SYMBOLS, seed=5), credentials=(KEY, SECRET), rate=0, batch_size=8, rare_probability=0
    ) as server:
        yield server


async def stop(
    stream: StockDataStream | CryptoDataStream | OptionDataStream, task: asyncio.Task[None], sim: AlpacaSimulator
) -> None:
    await stream.stop_ws()
    sim.set_rate(200)  # alpaca-py notices the stop only after its next recv (or a 5 s poll)
    async with asyncio.timeout(6):
        await task


class Collected:
    """Stream handlers that gather what they receive; ``enough`` is set once each has its share."""

    def __init__(self, **wanted: int) -> None:
        self.wanted = wanted
        self.got: dict[str, list[Any]] = {name: [] for name in wanted}
        self.enough = asyncio.Event()

    def handler(self, name: str) -> Callable[[Any], Awaitable[None]]:
        async def on_item(item: Any) -> None:
            self.got[name].append(item)
            if all(len(self.got[n]) >= k for n, k in self.wanted.items()):
                self.enough.set()

        return on_item


async def stream_generated(
    sim: AlpacaSimulator, stream: CryptoDataStream | OptionDataStream, collected: Collected, channel: str
) -> None:
    """Run ``stream`` on the simulator's generated data until ``collected`` has enough, then stop it."""
    task = asyncio.create_task(stream._run_forever())
    try:
        async with asyncio.timeout(5):
            await sim.wait_until(lambda: bool(sim.stats.subscriptions.get(channel)))
        sim.set_rate(2000)
        async with asyncio.timeout(5):
            await collected.enough.wait()
        sim.set_rate(0)
    finally:
        await stop(stream, task, sim)


@pytest.mark.parametrize("raw_data", [False, True])
async def test_sdk_receives_exact_injected_trades(sim: AlpacaSimulator, raw_data: bool) -> None:
    stream = StockDataStream(KEY, SECRET, raw_data=raw_data, url_override=sim.url("/v2/iex"))
    got: list[Any] = []
    three = asyncio.Event()

    async def on_trade(trade: Any) -> None:
        got.append(trade)
        if len(got) >= 3:
            three.set()

    stream.subscribe_trades(on_trade, "AAPL", "MSFT")
    task = asyncio.create_task(stream._run_forever())
    try:
        async with asyncio.timeout(5):
            await sim.wait_until(lambda: set(sim.stats.subscriptions.get("trades", [])) == {"AAPL", "MSFT"})
        (session,) = sim.sessions
        assert session.encoding == "msgpack"
        assert session.authenticated
        t0 = 1_741_100_462_123_456_789  # 2025-03-04T15:01:02.123456789Z
        sent = [("AAPL", 191.42, 100), ("MSFT", 402.5, 7), ("AAPL", 191.43, 300)]
        for k, (symbol, price, size) in enumerate(sent):
            assert await sim.inject_trade(symbol, price, size=size, t=t0 + k) == 1
        assert await sim.inject_trade("AMD", 150.0) == 0  # not subscribed
        async with asyncio.timeout(5):
            await three.wait()
        first = got[:3]  # stop() turns generated data on to wake the SDK's reader
    finally:
        await stop(stream, task, sim)
    if raw_data:
        assert [(m["S"], m["p"], m["s"]) for m in first] == sent
        assert [m["t"].to_unix_nano() for m in first] == [t0, t0 + 1, t0 + 2]  # msgpack.Timestamp, ns-exact
        assert all(m["x"] == "V" and m["c"] == ["@"] for m in first)
    else:
        assert all(isinstance(m, Trade) for m in first)
        assert [(m.symbol, m.price, m.size) for m in first] == sent
        assert first[0].timestamp == dt.datetime(2025, 3, 4, 15, 1, 2, 123456, tzinfo=dt.UTC)
        assert first[0].exchange == "V"
        assert first[0].conditions == ["@"]
        assert first[0].tape == "A"
    assert sim.stats.authenticated == 1


async def test_sdk_streams_generated_trades_quotes_and_bars(sim: AlpacaSimulator) -> None:
    stream = StockDataStream(KEY, SECRET, url_override=sim.url("/v2/iex"))
    trades: list[Trade] = []
    quotes: list[Quote] = []
    bars: list[Bar] = []
    enough = asyncio.Event()
    bar_seen = asyncio.Event()

    async def on_trade(trade: Trade) -> None:
        trades.append(trade)
        if len(trades) >= 100 and len(quotes) >= 50:
            enough.set()

    async def on_quote(quote: Quote) -> None:
        quotes.append(quote)
        if len(trades) >= 100 and len(quotes) >= 50:
            enough.set()

    async def on_bar(bar: Bar) -> None:
        bars.append(bar)
        bar_seen.set()

    stream.subscribe_trades(on_trade, "AAPL", "MSFT")
    stream.subscribe_quotes(on_quote, "AMD")
    stream.subscribe_bars(on_bar, "AAPL")
    task = asyncio.create_task(stream._run_forever())
    try:
        async with asyncio.timeout(5):
            await sim.wait_until(lambda: bool(sim.stats.subscriptions.get("bars")))
        sim.set_rate(2000)
        async with asyncio.timeout(5):
            await enough.wait()
        sim.set_rate(0)
        await asyncio.sleep(0.05)
        await sim.flush_bars()
        async with asyncio.timeout(5):
            await bar_seen.wait()
    finally:
        await stop(stream, task, sim)
    assert {t.symbol for t in trades} == {"AAPL", "MSFT"}
    assert {q.symbol for q in quotes} == {"AMD"}
    for trade in trades:
        assert trade.price == pytest.approx(sim.market.price(trade.symbol), rel=0.05)
        assert trade.size > 0
    for quote in quotes:
        assert 0 < quote.bid_price < quote.ask_price
    assert bars[0].symbol == "AAPL"
    assert bars[0].high >= bars[0].low > 0
    assert bars[0].trade_count > 0
    assert sim.stats.client_messages["auth"] == 1
    assert sim.stats.last_client_close_code == 1000  # alpaca-py closes properly on stop


CRYPTO = ["BTC/USD", "ETH/USD", "SOL/USD"]
OPTIONS = ["AAPL250117C00150000", "SPY250321P00500000"]
T0 = 1_741_100_462_123_456_789  # 2025-03-04T15:01:02.123456789Z


@pytest.fixture
async def feeds_sim() -> AsyncIterator[AlpacaSimulator]:
    async with AlpacaSimulator(
        Market(CRYPTO + OPTIONS, seed=5), credentials=(KEY, SECRET), rate=0, batch_size=8
    ) as server:
        yield server


async def test_crypto_sdk_receives_exact_trades_quotes_and_orderbooks(feeds_sim: AlpacaSimulator) -> None:
    sim = feeds_sim
    stream = CryptoDataStream(KEY, SECRET, url_override=sim.url("/v1beta3/crypto/us"))
    trades: list[Trade] = []
    quotes: list[Quote] = []
    books: list[Orderbook] = []
    done = asyncio.Event()

    async def check() -> None:
        if len(trades) >= 3 and len(quotes) >= 2 and len(books) >= 2:
            done.set()

    async def on_trade(trade: Trade) -> None:
        trades.append(trade)
        await check()

    async def on_quote(quote: Quote) -> None:
        quotes.append(quote)
        await check()

    async def on_book(book: Orderbook) -> None:
        books.append(book)
        await check()

    stream.subscribe_trades(on_trade, "BTC/USD", "ETH/USD")
    stream.subscribe_quotes(on_quote, "SOL/USD")
    stream.subscribe_orderbooks(on_book, "BTC/USD")
    task = asyncio.create_task(stream._run_forever())
    try:
        async with asyncio.timeout(5):
            await sim.wait_until(lambda: sim.stats.subscriptions.get("orderbooks") == ["BTC/USD"])
        (session,) = sim.sessions
        assert (session.encoding, session.feed) == ("msgpack", "crypto")
        sent_trades = [("BTC/USD", 90_123.45, 0.00042), ("ETH/USD", 3_012.5, 1.5), ("BTC/USD", 90_124, 2)]
        items: list[dict[str, Any]] = [
            {"T": "t", "S": s, "p": p, "s": size, "t": T0 + k, "i": 2**40 + k, "tks": "BS"[k % 2]}
            for k, (s, p, size) in enumerate(sent_trades)
        ]
        items += [
            {"T": "q", "S": "SOL/USD", "bp": 150.1, "bs": 12.25, "ap": 150.2, "as": 3, "t": T0},
            {"T": "q", "S": "SOL/USD", "bp": 150, "bs": 0.5, "ap": 150.3, "as": 7.75, "t": T0 + 1},
            {
                "T": "o",
                "S": "BTC/USD",
                "t": T0,
                "b": [{"p": 90_000.5, "s": 0}],
                "a": [{"p": 90_300, "s": 0.75}],
                "r": False,
            },
            {"T": "t", "S": "SOL/USD", "p": 150.0, "s": 1.0, "t": T0, "i": 1, "tks": "B"},  # not subscribed
        ]
        assert await sim.inject(items, only_subscribed=True) == 1
        async with asyncio.timeout(5):
            await done.wait()
        counts = dict(sim.stats.sent_by_type)
        got = (list(trades), list(quotes), list(books))
    finally:
        await stop(stream, task, sim)
    trades, quotes, books = got
    assert (len(trades), len(quotes), len(books)) == (3, 2, 2)
    assert (counts["t"], counts["q"], counts["o"]) == (3, 2, 2)  # what the SDK got is what was sent
    assert all(isinstance(t, Trade) for t in trades)
    assert [(t.symbol, t.price, t.size) for t in trades] == [(s, float(p), float(z)) for s, p, z in sent_trades]
    assert [t.id for t in trades] == [2**40, 2**40 + 1, 2**40 + 2]
    assert trades[0].timestamp == dt.datetime(2025, 3, 4, 15, 1, 2, 123456, tzinfo=dt.UTC)
    assert trades[0].exchange is None
    assert trades[0].conditions is None
    assert [(q.bid_price, q.bid_size, q.ask_price, q.ask_size) for q in quotes] == [
        (150.1, 12.25, 150.2, 3.0),
        (150.0, 0.5, 150.3, 7.75),
    ]
    snapshot, delta = books
    assert isinstance(snapshot, Orderbook)
    assert snapshot.symbol == "BTC/USD"
    assert snapshot.reset is True
    assert len(snapshot.bids) == len(snapshot.asks) == 5
    assert max(b.price for b in snapshot.bids) < min(a.price for a in snapshot.asks)
    assert 60_000 < snapshot.bids[0].price < 130_000
    assert delta.reset is False
    assert [(b.price, b.size) for b in delta.bids] == [(90_000.5, 0.0)]
    assert [(a.price, a.size) for a in delta.asks] == [(90_300.0, 0.75)]


async def test_crypto_sdk_streams_generated_data(feeds_sim: AlpacaSimulator) -> None:
    sim = feeds_sim
    stream = CryptoDataStream(KEY, SECRET, url_override=sim.url("/v1beta3/crypto/us"))
    collected = Collected(trades=100, books=30)
    stream.subscribe_trades(collected.handler("trades"), *CRYPTO)
    stream.subscribe_orderbooks(collected.handler("books"), "ETH/USD")
    await stream_generated(sim, stream, collected, "orderbooks")
    trades: list[Trade] = collected.got["trades"]
    books: list[Orderbook] = collected.got["books"]
    assert {t.symbol for t in trades} == set(CRYPTO)
    for trade in trades:
        assert trade.price == pytest.approx(sim.market.price(trade.symbol), rel=0.05)
        assert trade.size > 0
        assert trade.id is not None
        assert trade.id > 2**32
    assert any(t.size != int(t.size) for t in trades)
    assert books[0].reset is True
    assert not any(b.reset for b in books[1:])
    assert any(level.size == 0 for b in books[1:] for level in b.bids + b.asks)  # level removals


@pytest.mark.parametrize("feed", ["indicative", "opra"])
async def test_option_sdk_receives_exact_trades_and_quotes(feeds_sim: AlpacaSimulator, feed: str) -> None:
    sim = feeds_sim
    stream = OptionDataStream(KEY, SECRET, url_override=sim.url(f"/v1beta1/{feed}"))
    trades: list[Trade] = []
    quotes: list[Quote] = []
    done = asyncio.Event()

    async def on_trade(trade: Trade) -> None:
        trades.append(trade)
        if len(trades) >= 2 and quotes:
            done.set()

    async def on_quote(quote: Quote) -> None:
        quotes.append(quote)
        if len(trades) >= 2 and quotes:
            done.set()

    stream.subscribe_trades(on_trade, *OPTIONS)
    stream.subscribe_quotes(on_quote, OPTIONS[0])
    task = asyncio.create_task(stream._run_forever())
    try:
        async with asyncio.timeout(5):
            await sim.wait_until(lambda: sim.stats.subscriptions.get("quotes") == OPTIONS[:1])
        (session,) = sim.sessions
        assert (session.encoding, session.feed) == ("msgpack", feed)
        assert await sim.inject_trade(OPTIONS[0], 3.45, size=2, t=T0) == 1
        assert await sim.inject_trade(OPTIONS[1], 12.1, size=1, t=T0 + 1) == 1
        quote = {
            "T": "q",
            "S": OPTIONS[0],
            "t": T0,
            "bx": "C",
            "bp": 3.4,
            "bs": 53,
            "ax": "N",
            "ap": 3.5,
            "as": 38,
            "c": "A",
        }
        ignored = {**quote, "S": OPTIONS[1]}  # quotes of the second contract were not subscribed
        assert await sim.inject([quote, ignored], only_subscribed=True) == 1
        async with asyncio.timeout(5):
            await done.wait()
        counts = dict(sim.stats.sent_by_type)
        got = (list(trades), list(quotes))
    finally:
        await stop(stream, task, sim)
    trades, quotes = got
    assert (len(trades), len(quotes)) == (2, 1) == (counts["t"], counts["q"])
    assert [(t.symbol, t.price, t.size, t.conditions) for t in trades] == [
        (OPTIONS[0], 3.45, 2.0, "I"),
        (OPTIONS[1], 12.1, 1.0, "I"),
    ]
    assert trades[0].timestamp == dt.datetime(2025, 3, 4, 15, 1, 2, 123456, tzinfo=dt.UTC)
    assert trades[0].exchange is not None
    assert trades[0].tape is None
    (q,) = quotes
    assert isinstance(q, Quote)
    assert (q.symbol, q.bid_price, q.bid_size, q.ask_price, q.ask_size, q.conditions) == (
        OPTIONS[0],
        3.4,
        53.0,
        3.5,
        38.0,
        "A",
    )


async def test_option_sdk_streams_generated_data(feeds_sim: AlpacaSimulator) -> None:
    sim = feeds_sim
    stream = OptionDataStream(KEY, SECRET, url_override=sim.url("/v1beta1/opra"))
    collected = Collected(trades=50, quotes=50)
    stream.subscribe_trades(collected.handler("trades"), *OPTIONS)
    stream.subscribe_quotes(collected.handler("quotes"), *OPTIONS)
    await stream_generated(sim, stream, collected, "quotes")
    trades: list[Trade] = collected.got["trades"]
    quotes: list[Quote] = collected.got["quotes"]
    assert {t.symbol for t in trades} == {q.symbol for q in quotes} == set(OPTIONS)
    for trade in trades:
        assert 0.1 < trade.price < 20
        assert trade.size >= 1
        assert isinstance(trade.conditions, str)
    for quote in quotes:
        assert 0 < quote.bid_price < quote.ask_price
        assert isinstance(quote.conditions, str)
