"""``alpaca-exporter simulate``: only the two simulators, for other tools and for benchmarks."""

from __future__ import annotations

import asyncio
import os
import signal

from exporter.sim.alpaca_server import AlpacaSimulator
from exporter.sim.market import Market
from exporter.sim.yahoo_server import YahooSimulator


def run_simulators(host: str, alpaca_port: int, yahoo_port: int, symbols: list[str], *, rate: float = 50.0) -> int:
    key = os.environ.get("APCA_API_KEY_ID")
    secret = os.environ.get("APCA_API_SECRET_KEY")
    credentials = (key, secret) if key and secret else None

    async def main() -> None:
        market = Market(symbols)
        alpaca = AlpacaSimulator(market, host=host, port=alpaca_port, credentials=credentials, rate=rate)
        yahoo = YahooSimulator(market, host=host, port=yahoo_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with alpaca, yahoo:
            print(f"alpaca ws://{host}:{alpaca.port}", flush=True)
            print(f"yahoo http://{host}:{yahoo.port}", flush=True)
            await stop.wait()

    asyncio.run(main())
    return 0
