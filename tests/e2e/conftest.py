"""A running stack for daemon tests: both simulators on 127.0.0.1 and a Daemon pointed at them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from exporter.app import Daemon
from exporter.core.router import State
from exporter.settings import Settings, load_settings
from exporter.sim.alpaca_server import AlpacaSimulator
from exporter.sim.market import Market
from exporter.sim.yahoo_server import YahooSimulator
from tests.stacks import simulators

SYMBOLS = ["AAPL", "MSFT", "SPY"]
KEY = "PKE2ETESTKEY00000001"
SECRET = "e2e-secret-value-0123456789abcdef"


def stack_settings(alpaca: AlpacaSimulator, yahoo: YahooSimulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "apca_api_key_id": KEY,
        "apca_api_secret_key": SECRET,
        "symbols": ",".join(SYMBOLS),
        "alpaca_url": alpaca.url("/v2/iex"),
        "alpaca_channels": "trades,quotes",
        "yahoo_url": yahoo.url,
        "yahoo_interval_seconds": 0.3,
        "yahoo_standby_interval_seconds": 0.6,
        "stale_after_seconds": 0,
        "market_hours": "always",
        "alpaca_backoff_max_seconds": 0.5,
        "alpaca_connection_limit_backoff_seconds": 0.3,
        "alpaca_ping_interval_seconds": 1.0,
        "alpaca_ping_timeout_seconds": 1.0,
        "alpaca_handshake_timeout_seconds": 2.0,
        "failback_after_seconds": 1.0,
        "circuit_breaker_cooldown_seconds": 1.0,
        "host": "127.0.0.1",
        "port": 0,
    }
    values.update(overrides)
    return load_settings(env_file=None, **values)


@dataclass
class Stack:
    market: Market
    alpaca: AlpacaSimulator
    yahoo: YahooSimulator
    daemon: Daemon

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> float:
        """Wait until ``predicate()``; return the seconds it took."""
        start = time.monotonic()
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
        return time.monotonic() - start

    async def wait_state(self, state: State, timeout: float = 5.0) -> float:
        return await self.wait_for(lambda: self.daemon.core.state is state, timeout)


@pytest.fixture
def stack_factory() -> Callable[..., Any]:
    """``async with stack_factory(**settings_overrides) as stack`` (sim knobs: ``rate``, ``batch_size``)."""
    import contextlib

    @contextlib.asynccontextmanager
    async def make(*, rate: float = 200.0, batch_size: int = 5, **overrides: Any) -> AsyncIterator[Stack]:
        async with simulators(SYMBOLS, (KEY, SECRET), rate=rate, batch_size=batch_size) as (market, alpaca, yahoo):
            daemon = Daemon(stack_settings(alpaca, yahoo, **overrides))
            runner = asyncio.create_task(daemon.run())
            await asyncio.wait_for(daemon.wait_started(), 5)
            try:
                yield Stack(market, alpaca, yahoo, daemon)
            finally:
                daemon.stop()
                await asyncio.wait_for(runner, 6)

    return make
