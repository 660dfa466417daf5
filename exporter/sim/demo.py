"""``alpaca-exporter demo``: both simulators on loopback, the daemon pointed at them, a scripted day.

No credentials, no network. Timings are shortened (seconds instead of minutes) so every catalogue
metric moves within the first minute.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from exporter.app import Daemon, quiet_libraries
from exporter.logs import configure_logging
from exporter.settings import Settings, load_settings
from exporter.sim.alpaca_server import AlpacaSimulator
from exporter.sim.market import Market
from exporter.sim.scenario import demo_steps, run_scenario
from exporter.sim.yahoo_server import YahooSimulator

DEMO_SYMBOLS = ["AAPL", "MSFT", "SPY", "NVDA", "TSLA"]
DEMO_KEY = "DEMOKEYID0000000000"
DEMO_SECRET = "demo-secret-not-a-real-one-000000000000"  # noqa: S105 - the simulator's demo credentials


def demo_settings(alpaca_url: str, yahoo_url: str, *, port: int | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "apca_api_key_id": DEMO_KEY,
        "apca_api_secret_key": DEMO_SECRET,
        "symbols": ",".join(DEMO_SYMBOLS),
        "alpaca_url": alpaca_url,
        "alpaca_channels": "trades,quotes,bars",
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
    values.update(overrides)
    # The user's own EXPORTER_* settings (port, host, log format) still apply where the demo sets nothing.
    return load_settings(env_file=None, **values)


class Demo:
    def __init__(self, *, port: int | None = None, rate: float = 200.0, **overrides: Any) -> None:
        self.market = Market(DEMO_SYMBOLS, seed=7)
        self.alpaca = AlpacaSimulator(
            self.market,
            credentials=(DEMO_KEY, DEMO_SECRET),
            rate=rate,
            batch_size=10,
            zombie_hold=1.5,
            rare_probability=0.02,
            bar_period=10.0,
        )
        self.yahoo = YahooSimulator(self.market)
        self.port = port
        self.overrides = overrides
        self.daemon: Daemon | None = None

    async def run(self, duration: float | None = None, announce: Any = None) -> None:
        async with self.alpaca, self.yahoo:
            settings = demo_settings(self.alpaca.url("/v2/iex"), self.yahoo.url, port=self.port, **self.overrides)
            self.daemon = daemon = Daemon(settings)
            runner = asyncio.create_task(daemon.run())
            await daemon.wait_started()
            if announce:
                announce(
                    f"alpaca-exporter demo: metrics at http://127.0.0.1:{daemon.port}/metrics "
                    f"(status /status, ready /readyz); Alpaca simulator {self.alpaca.url('/v2/iex')}, "
                    f"Yahoo simulator {self.yahoo.url}"
                )
            scenario = asyncio.create_task(
                run_scenario(demo_steps(self.alpaca, self.yahoo, DEMO_SYMBOLS), announce=announce)
            )
            try:
                if duration is not None:
                    await asyncio.wait({runner}, timeout=duration)
                    daemon.stop()
                await runner
            finally:
                scenario.cancel()
                daemon.stop()
                await asyncio.gather(scenario, return_exceptions=True)


def _announce(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_demo(*, port: int | None = None, duration: float | None = None) -> int:
    level = os.environ.get("EXPORTER_LOG_LEVEL", "INFO").upper()
    fmt = os.environ.get("EXPORTER_LOG_FORMAT", "console").lower()
    configure_logging(level, "json" if fmt == "json" else "console", secrets=[DEMO_SECRET])
    quiet_libraries()
    logging.getLogger("exporter.sim").setLevel(logging.WARNING)

    async def main() -> None:
        demo = Demo(port=port)
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
