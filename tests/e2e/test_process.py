"""The real console program as a user runs it: signals, exit codes, and secrets in everything it writes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from exporter.sim.alpaca_server import AlpacaSimulator
from exporter.sim.market import Market
from exporter.sim.yahoo_server import YahooSimulator
from exporter_tools.processes import spawn

KEY = "PKPROCESSKEY7777777X"
SECRET = "proc-secret-Zq9w8e7r6t5y4u3i2o1p"


@pytest.fixture
async def sims() -> AsyncIterator[tuple[AlpacaSimulator, YahooSimulator]]:
    market = Market(["AAPL", "MSFT"], seed=5)
    alpaca = AlpacaSimulator(market, credentials=(KEY, SECRET), rate=100.0, compression=None, zombie_hold=0.2)
    yahoo = YahooSimulator(market)
    async with alpaca, yahoo:
        yield alpaca, yahoo


def _env(alpaca: AlpacaSimulator, yahoo: YahooSimulator, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPORTER_", "APCA_"))}
    env.update(
        {
            "APCA_API_KEY_ID": KEY,
            "APCA_API_SECRET_KEY": SECRET,
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


async def test_sigterm_stops_gracefully_with_a_close_frame(sims: Any) -> None:
    alpaca, yahoo = sims
    proc = await spawn(_env(alpaca, yahoo), "run")
    port = await proc.started()
    async with httpx.AsyncClient() as http:
        for _ in range(100):
            if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
    start = asyncio.get_running_loop().time()
    code, out, err = await proc.terminate()
    assert code == 0, err
    assert asyncio.get_running_loop().time() - start < 5.0
    assert alpaca.stats.last_client_close_code == 1000
    assert "Traceback" not in out + err
    for line in out.splitlines():
        event = json.loads(line)  # every stdout line is one JSON object
        assert {"timestamp", "level", "logger", "message"} <= set(event)


async def test_check_config_masks_secrets_and_bad_config_exits_2(sims: Any) -> None:
    alpaca, yahoo = sims
    ok = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "check-config", env=_env(alpaca, yahoo), stdout=-1, stderr=-1
    )
    out, err = await ok.communicate()
    assert ok.returncode == 0
    assert KEY not in out.decode() + err.decode()
    assert SECRET not in out.decode() + err.decode()
    bad = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        "run",
        env=_env(alpaca, yahoo, EXPORTER_PORT="http", EXPORTER_ALPACA_ENCODING="xml"),
        stdout=-1,
        stderr=-1,
    )
    out, err = await bad.communicate()
    text = err.decode()
    assert bad.returncode == 2
    assert "EXPORTER_PORT" in text
    assert "EXPORTER_ALPACA_ENCODING" in text
    assert "Traceback" not in text + out.decode()
