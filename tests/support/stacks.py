"""A running daemon stack on 127.0.0.1: both simulators sharing one market, an optional fault proxy in
front of the Alpaca simulator, and an in-process Daemon with timings shortened so that a fault, a
failover or a failback plays out in a second or two.

``async with running_stack(**settings_overrides) as s`` (knobs: ``proxy``, ``rate``, ``batch_size``,
``clock``, ``sim`` — extra AlpacaSimulator arguments, ``yahoo_backoff``). :class:`Stack`'s helpers check
what every daemon test checks: /metrics answers, counting is exact. The e2e tests use it as it is; the
``rstack`` fixture adds the log levels the fault tests read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from exporter.app import Daemon, yahoo_config
from exporter.core.clock import Clock
from exporter.core.router import Core, State
from exporter.settings import Settings, load_settings
from exporter.sim.alpaca_server import AlpacaSimulator
from exporter.sim.faultproxy import FaultProxy
from exporter.sim.market import Market
from exporter.sim.yahoo_server import YahooSimulator
from exporter.sources.yahoo import YahooPoller
from exporter_tools.processes import clean_environ

SYMBOLS = ["AAPL", "MSFT", "SPY"]
KEY = "PKSTACKTESTKEY000001"
SECRET = "stack-secret-0123456789abcdef0123"


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


def fast_settings(alpaca_url: str, yahoo_url: str, **overrides: Any) -> Settings:
    """Settings for a daemon on 127.0.0.1 with every timer shortened to a fraction of a second."""
    values: dict[str, Any] = {
        "apca_api_key_id": KEY,
        "apca_api_secret_key": SECRET,
        "symbols": ",".join(SYMBOLS),
        "alpaca_url": alpaca_url,
        "alpaca_channels": "trades,quotes",
        "yahoo_url": yahoo_url,
        "yahoo_interval_seconds": 0.3,
        "yahoo_standby_interval_seconds": 0.5,
        "stale_after_seconds": 0,
        "market_hours": "always",
        "alpaca_backoff_max_seconds": 0.4,
        "alpaca_connection_limit_backoff_seconds": 0.5,
        "alpaca_ping_interval_seconds": 0.5,
        "alpaca_ping_timeout_seconds": 0.5,
        "alpaca_handshake_timeout_seconds": 1.0,
        "alpaca_fatal_retry_seconds": 2.0,
        "failback_after_seconds": 0.5,
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
    proxy: FaultProxy | None
    daemon: Daemon
    http: httpx.AsyncClient

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    @property
    def core(self) -> Core:
        return self.daemon.core

    def now(self) -> float:
        return float(self.core.clock.monotonic())

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> float:
        """Wait until ``predicate()``; return the seconds it took on the loop's clock (virtual under looptime)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"not within {timeout}s: {what or predicate}; state {self.core.state.name}") from None
        return loop.time() - start

    async def wait_state(self, state: State, timeout: float = 5.0) -> float:
        return await self.wait_for(lambda: self.core.state is state, timeout, f"state {state.name}")

    async def healthy_start(self) -> None:
        """PRIMARY_ACTIVE with a healthy hot standby: the starting point of every fault."""
        await self.wait_state(State.PRIMARY_ACTIVE)
        await self.wait_for(lambda: self.core.fallback_healthy(self.now()), 5.0, "fallback healthy")
        await self.wait_for(lambda: self.core.received["alpaca"] > 0, 5.0, "alpaca data")

    async def metrics(self) -> str:
        """/metrics must answer 200 whatever the sources are doing."""
        response = await self.http.get(self.base + "/metrics")
        assert response.status_code == 200
        assert "datasource_router_state" in response.text
        return response.text

    def assert_accounting(self, *, unsent: int = 0) -> None:
        """The identity, per source; ``unsent``: data messages we pushed outside the simulator's count
        (``send_feed`` frames)."""
        for source, acc in self.core.accounting().items():
            assert acc["received"] == acc["routed"] + acc["standby"] + acc["rejected"], (source, acc)
        # Every data message is counted exactly once in the catalogue's per-type counter too.
        counts = self.core.message_counts()
        data = sum(n for kind, n in counts.items() if kind != "control")
        assert data == self.core.received["alpaca"]
        # Nothing is counted twice across reconnects: we never count more than the server sent.
        assert self.core.received["alpaca"] <= self.alpaca.stats.messages_sent + unsent

    async def settle_exact(self, *, fresh_window: float = 0.0, timeout: float = 5.0) -> None:
        """Stop the data and check that every message the server sent was counted exactly once.

        After a lossy fault (a reset drops what was in flight) pass ``fresh_window``: the check then
        covers only the messages sent during that many seconds of the current connection.
        """
        stats, core = self.alpaca.stats, self.core
        sent0 = received0 = 0
        if fresh_window:
            self.alpaca.set_mute(True)
            await asyncio.sleep(0.3)  # let what is in flight arrive (or not)
            sent0, received0 = stats.messages_sent, core.received["alpaca"]
            self.alpaca.set_mute(False)
            await asyncio.sleep(fresh_window)
        self.alpaca.set_mute(True)
        await asyncio.sleep(0.2)  # frames already in flight (proxy queues included)
        sent = stats.messages_sent - sent0
        await self.wait_for(lambda: core.received["alpaca"] - received0 >= sent, timeout, "every sent message counted")
        await asyncio.sleep(0.1)
        assert core.received["alpaca"] - received0 == sent
        assert sent > 0
        self.assert_accounting()
        self.alpaca.set_mute(False)


@contextlib.asynccontextmanager
async def running_stack(
    *,
    proxy: bool = False,
    proxy_recv_buffer: int | None = None,
    rate: float = 300.0,
    batch_size: int = 5,
    clock: Clock | None = None,
    sim: dict[str, Any] | None = None,
    yahoo_backoff: float | None = 0.3,
    yahoo: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    """Start the stack, yield it, stop the daemon (bounded) and the simulators.

    ``yahoo_backoff``: the poller's first backoff. The daemon's own 5 s (yahoo.md) would make every
    Yahoo fault last seconds; ``None`` keeps the daemon's poller exactly as configured (``yahoo``:
    other YahooConfig fields to replace).
    """
    async with contextlib.AsyncExitStack() as stack:
        market, alpaca, yahoo_sim = await stack.enter_async_context(
            simulators(SYMBOLS, (KEY, SECRET), rate=rate, batch_size=batch_size, **(sim or {}))
        )
        fault: FaultProxy | None = None
        url = overrides.pop("alpaca_url", alpaca.url("/v2/iex"))
        if proxy:
            fault = await stack.enter_async_context(
                FaultProxy("127.0.0.1", alpaca.port, upstream_recv_buffer=proxy_recv_buffer)
            )
            url = fault.url("/v2/iex")
        settings = fast_settings(url, yahoo_sim.url, **overrides)
        daemon = Daemon(settings, clock=clock)
        if yahoo_backoff is not None or yahoo:
            config = yahoo_config(settings)
            if yahoo_backoff is not None:
                config = dataclasses.replace(config, backoff_initial=yahoo_backoff, backoff_max=1.0)
            config = dataclasses.replace(config, **(yahoo or {}))
            if daemon.yahoo is not None:
                await daemon.yahoo.aclose()
            daemon.yahoo = YahooPoller(config, daemon.queue.put)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=5.0))
        runner = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.wait_started(), 5)
        try:
            yield Stack(market, alpaca, yahoo_sim, fault, daemon, http)
        finally:
            daemon.stop()
            await asyncio.wait_for(runner, 8)


def records(caplog: pytest.LogCaptureFixture, logger: str, message: str, level: int | None = None) -> list[Any]:
    """Log records of ``logger`` whose message starts with ``message`` (at ``level`` when given)."""
    return [
        r
        for r in caplog.records
        if r.name == logger and r.getMessage().startswith(message) and (level is None or r.levelno == level)
    ]


# ---- daemons as child processes (exporter_tools/processes.py) ----------------------------------------

PROCESS_KEY = "PKPROCESSKEY7777777X"
PROCESS_SECRET = "proc-secret-Zq9w8e7r6t5y4u3i2o1p"


@contextlib.asynccontextmanager
async def process_simulators() -> AsyncIterator[tuple[AlpacaSimulator, YahooSimulator]]:
    market = Market(["AAPL", "MSFT"], seed=5)
    alpaca = AlpacaSimulator(
        market, credentials=(PROCESS_KEY, PROCESS_SECRET), rate=100.0, compression=None, zombie_hold=0.2
    )
    yahoo = YahooSimulator(market)
    async with alpaca, yahoo:
        yield alpaca, yahoo


def process_env(alpaca: AlpacaSimulator, yahoo: YahooSimulator, **extra: str) -> dict[str, str]:
    """The environment of a daemon process against the pair of ``process_simulators``."""
    env = clean_environ()
    env.update(
        {
            "APCA_API_KEY_ID": PROCESS_KEY,
            "APCA_API_SECRET_KEY": PROCESS_SECRET,
            "EXPORTER_SYMBOLS": "AAPL,MSFT",
            "EXPORTER_ALPACA_URL": alpaca.url("/v2/iex"),
            "EXPORTER_YAHOO_URL": yahoo.url,
            "EXPORTER_YAHOO_INTERVAL_SECONDS": "0.3",
            "EXPORTER_YAHOO_STANDBY_INTERVAL_SECONDS": "0.5",
            "EXPORTER_HOST": "127.0.0.1",
            "EXPORTER_PORT": "0",
            "EXPORTER_ALPACA_BACKOFF_MAX_SECONDS": "0.5",
            "EXPORTER_ALPACA_FATAL_RETRY_SECONDS": "0.5",
            "EXPORTER_MARKET_HOURS": "always",
            "EXPORTER_STALE_AFTER_SECONDS": "1",
        }
    )
    env.update(extra)
    return env
