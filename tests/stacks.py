"""Both simulators on 127.0.0.1 sharing one market: the base of the daemon test stacks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from exporter.sim.alpaca_server import AlpacaSimulator
from exporter.sim.market import Market
from exporter.sim.yahoo_server import YahooSimulator


@contextlib.asynccontextmanager
async def simulators(
    symbols: Sequence[str], credentials: tuple[str, str], *, rate: float, batch_size: int, **sim: Any
) -> AsyncIterator[tuple[Market, AlpacaSimulator, YahooSimulator]]:
    """Fast test knobs: a short zombie hold, no rare message types, no compression (``sim`` overrides)."""
    market = Market(symbols, seed=3)
    knobs: dict[str, Any] = {"zombie_hold": 0.2, "rare_probability": 0.0, "compression": None, **sim}
    alpaca = AlpacaSimulator(market, credentials=credentials, rate=rate, batch_size=batch_size, **knobs)
    yahoo = YahooSimulator(market)
    async with alpaca, yahoo:
        yield market, alpaca, yahoo
