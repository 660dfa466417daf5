"""Proof of fidelity: the official SDK (alpaca-py) streams from the simulator unchanged.

alpaca-py's ``run()`` wraps ``asyncio.run``, so the test drives its internal coroutine ``_run_forever()``
in the test's own loop (handlers are registered before it starts: subscribing on a running stream
from the loop thread deadlocks in alpaca-py) and stops it with ``stop_ws()``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alpaca.data.live.stock import StockDataStream
from alpaca.data.models import Bar, Quote, Trade

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


async def stop(stream: StockDataStream, task: asyncio.Task[None], sim: AlpacaSimulator) -> None:
    await stream.stop_ws()
    sim.set_rate(200)  # alpaca-py notices the stop only after its next recv (or a 5 s poll)
    async with asyncio.timeout(6):
        await task


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
