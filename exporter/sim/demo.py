"""``alpaca-exporter demo [--feed stocks|crypto|options]``: both simulators on loopback, the daemon
pointed at them, a scripted day.

No credentials, no network. Timings are shortened (seconds instead of minutes) so every catalogue
metric moves within the first minute. ``--feed`` picks the Alpaca feed the minute plays on: the stocks
feed (IEX), crypto (``BTC/USD``...) or the indicative options feed (OCC symbols, msgpack).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from exporter.app import Daemon, quiet_libraries
from exporter.feeds import FEEDS, Family
from exporter.logs import configure_logging
from exporter.settings import Settings, load_settings
from exporter.sim.alpaca_server import AlpacaSimulator
from exporter.sim.market import Market
from exporter.sim.scenario import Faults, demo_steps, run_scenario
from exporter.sim.yahoo_server import YahooSimulator

DEMO_SYMBOLS = ["AAPL", "MSFT", "SPY", "NVDA", "TSLA"]
CRYPTO_DEMO_SYMBOLS = ["BTC/USD", "ETH/USD", "SOL/USD"]
OPTION_DEMO_SYMBOLS = ["AAPL270115C00200000", "SPY270115P00550000", "NVDA270115C00150000"]
DEMO_KEY = "DEMOKEYID0000000000"
DEMO_SECRET = "demo-secret-not-a-real-one-000000000000"  # noqa: S105 - the simulator's demo credentials


DemoFeed = Literal["stocks", "crypto", "options"]


@dataclass(frozen=True, slots=True)
class FeedSetup:
    """What ``demo --feed`` plays on: the Alpaca feed (a row of :data:`exporter.feeds.FEEDS`), its
    symbols and the channels the daemon subscribes."""

    feed: str
    symbols: list[str]
    channels: str

    @property
    def family(self) -> Family:
        return FEEDS[self.feed].family

    @property
    def path(self) -> str:
        return FEEDS[self.feed].path


DEMO_FEEDS: dict[DemoFeed, FeedSetup] = {
    # statuses for the halt, bars with trades for the missing bar (CONTRACT section 11).
    "stocks": FeedSetup("iex", DEMO_SYMBOLS, "trades,quotes,bars,statuses"),
    # order books for the crossed book (CONTRACT section 12).
    "crypto": FeedSetup("crypto", CRYPTO_DEMO_SYMBOLS, "trades,quotes,orderbooks"),
    "options": FeedSetup("indicative", OPTION_DEMO_SYMBOLS, "trades,quotes"),
}


def demo_settings(
    alpaca_url: str, yahoo_url: str, *, port: int | None, feed: DemoFeed = "stocks", **overrides: Any
) -> Settings:
    setup = DEMO_FEEDS[feed]
    values: dict[str, Any] = {
        "apca_api_key_id": DEMO_KEY,
        "apca_api_secret_key": DEMO_SECRET,
        "symbols": ",".join(setup.symbols),
        "alpaca_feed": setup.feed,
        "alpaca_url": alpaca_url,
        "alpaca_channels": setup.channels,
        "yahoo_url": yahoo_url,
        "yahoo_interval_seconds": 1.0,
        "yahoo_standby_interval_seconds": 2.0,
        "stale_after_seconds": 2.0,
        "market_hours": "always",
        "alpaca_backoff_max_seconds": 2.0,
        "alpaca_connection_limit_backoff_seconds": 2.0,
        "alpaca_ping_interval_seconds": 2.0,
        "alpaca_ping_timeout_seconds": 2.0,
        "alpaca_fatal_retry_seconds": 10.0,
        "failback_after_seconds": 5.0,
        "circuit_breaker_cooldown_seconds": 6.0,
    }
    if port is not None:
        values["port"] = port
    encodings = FEEDS[setup.feed].encodings
    if len(encodings) == 1:  # options: msgpack only, whatever EXPORTER_ALPACA_ENCODING says
        values["alpaca_encoding"] = encodings[0]
    values.update(overrides)
    # The user's own EXPORTER_* settings (port, host, log format) still apply where the demo sets nothing.
    return load_settings(env_file=None, **values)


class Demo:
    """Both simulators on loopback and the daemon pointed at them: the demo, and the soak's set-up."""

    def __init__(
        self,
        *,
        port: int | None = None,
        feed: DemoFeed = "stocks",
        rate: float = 200.0,
        seed: int = 7,
        zombie_hold: float = 1.5,
        request_log: int = 100_000,
        **overrides: Any,
    ) -> None:
        self.feed = feed
        self.setup = setup = DEMO_FEEDS[feed]
        self.market = Market(setup.symbols, seed=seed)
        self.alpaca = AlpacaSimulator(
            self.market,
            credentials=(DEMO_KEY, DEMO_SECRET),
            rate=rate,
            batch_size=10,
            zombie_hold=zombie_hold,
            rare_probability=0.02,
            bar_period=10.0,
        )
        # request_log: how many requests the Yahoo simulator remembers for tests (about 1 KB each).
        self.yahoo = YahooSimulator(self.market, max_log=request_log)
        self.faults = Faults(self.alpaca, self.yahoo, setup.symbols)
        self.port = port
        self.overrides = overrides
        self.daemon: Daemon | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Daemon]:
        """The simulators serving and the daemon started; on exit the daemon stops, then the simulators."""
        async with self.alpaca, self.yahoo:
            settings = demo_settings(
                self.alpaca.url(self.setup.path), self.yahoo.url, port=self.port, feed=self.feed, **self.overrides
            )
            self.daemon = daemon = Daemon(settings)
            runner = asyncio.create_task(daemon.run())
            try:
                started = asyncio.create_task(daemon.wait_started())
                await asyncio.wait({started, runner}, return_when=asyncio.FIRST_COMPLETED)
                if not started.done():  # the daemon failed to start (a busy port): raise its error
                    started.cancel()
                    runner.result()
                yield daemon
            finally:
                daemon.stop()
                await runner

    async def run(self, duration: float | None = None, announce: Callable[[str], None] | None = None) -> None:
        """Until stopped (or ``duration`` seconds), with the scripted day of faults."""
        async with self.running() as daemon:
            if announce:
                announce(
                    f"alpaca-exporter demo: metrics at http://127.0.0.1:{daemon.port}/metrics "
                    f"(status /status, ready /readyz); Alpaca simulator {self.alpaca.url(self.setup.path)}, "
                    f"Yahoo simulator {self.yahoo.url}"
                )
            steps = demo_steps(self.faults, self.setup.family)
            scenario = asyncio.create_task(run_scenario(steps, announce=announce))
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(daemon.stopping.wait(), duration)
            finally:
                scenario.cancel()
                await asyncio.gather(scenario, return_exceptions=True)


def _announce(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_demo(*, port: int | None = None, duration: float | None = None, feed: DemoFeed = "stocks") -> int:
    level = os.environ.get("EXPORTER_LOG_LEVEL", "INFO").upper()
    fmt = os.environ.get("EXPORTER_LOG_FORMAT", "console").lower()
    configure_logging(level, "json" if fmt == "json" else "console", secrets=[DEMO_SECRET])
    quiet_libraries()
    logging.getLogger("exporter.sim").setLevel(logging.WARNING)

    async def main() -> None:
        demo = Demo(port=port, feed=feed)
        loop = asyncio.get_running_loop()
        import signal

        task = asyncio.current_task()
        assert task is not None

        def stop() -> None:
            if demo.daemon is not None:
                demo.daemon.stop()
            else:
                task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await demo.run(duration, announce=_announce)

    asyncio.run(main())
    return 0
