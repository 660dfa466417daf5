"""The API key and secret appear nowhere the process writes, in a run full of failures: logs at DEBUG in
both formats (tracebacks included), /status, /metrics and the other pages, check-config, a start-up
crash (bad web config), a configuration error, and the shutdown — with the credentials also embedded in
both upstream URLs and echoed back by the server in its error messages."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import sys
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from exporter.sim.alpaca_server import AlpacaSimulator
from exporter.sim.market import Market
from exporter.sim.yahoo_server import YahooSimulator

KEY = "PKLEAKCANARY00000007"
SECRET = "leak-canary-secret-Zq9w8e7r6t5y4u3i"
FORMS = (
    KEY,
    SECRET,
    urllib.parse.quote(SECRET, safe=""),
    base64.b64encode(f"{KEY}:{SECRET}".encode()).decode(),  # a Basic auth header built from the URL
)


@pytest.fixture
async def sims() -> AsyncIterator[tuple[AlpacaSimulator, YahooSimulator]]:
    market = Market(["AAPL", "MSFT"], seed=5)
    # The server knows other credentials: every auth fails (402) with ours in flight.
    alpaca = AlpacaSimulator(
        market, credentials=("PKSOMEONEELSE0000000", "other-secret-000000000000"), rate=50.0, compression=None
    )
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
            # Credentials where they should never be: URL userinfo and a query parameter.
            "EXPORTER_ALPACA_URL": f"ws://{KEY}:{SECRET}@127.0.0.1:{alpaca.port}/v2/iex",
            "EXPORTER_YAHOO_URL": f"{yahoo.url}/?apikey={SECRET}",
            "EXPORTER_YAHOO_INTERVAL_SECONDS": "0.3",
            "EXPORTER_YAHOO_STANDBY_INTERVAL_SECONDS": "0.5",
            "EXPORTER_HOST": "127.0.0.1",
            "EXPORTER_PORT": "0",
            "EXPORTER_ALPACA_BACKOFF_MAX_SECONDS": "0.3",
            "EXPORTER_ALPACA_FATAL_RETRY_SECONDS": "0.3",
            "EXPORTER_ALPACA_HANDSHAKE_TIMEOUT_SECONDS": "0.5",
            "EXPORTER_MARKET_HOURS": "always",
            "EXPORTER_STALE_AFTER_SECONDS": "0.5",
            "EXPORTER_LOG_LEVEL": "DEBUG",
        }
    )
    env.update(extra)
    return env


async def _run(env: dict[str, str], *args: str, timeout: float = 10.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def _daemon_run(alpaca: AlpacaSimulator, yahoo: YahooSimulator, log_format: str) -> str:
    """Run the daemon through a sequence of failures; return everything it wrote and served."""
    env = _env(alpaca, yahoo, EXPORTER_LOG_FORMAT=log_format)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        "run",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    port: int | None = None
    async with asyncio.timeout(10):
        while port is None:
            line = (await proc.stdout.readline()).decode(errors="replace")
            assert line, "".join(lines)
            lines.append(line)
            served = re.search(r"serving /metrics on https?://[^\s\"]+:(\d+)", line)
            if served:
                port = int(served.group(1))
    reader = asyncio.create_task(proc.stdout.read())
    bodies: list[str] = []
    async with httpx.AsyncClient(timeout=5.0) as http:
        base = f"http://127.0.0.1:{port}"
        yahoo.rate_limit(seconds=0.6)
        await asyncio.sleep(0.8)
        yahoo.server_error(500, seconds=0.5)
        await asyncio.sleep(0.6)
        # Accept our credentials now, so the stream gets further: errors echoing the key, bad frames.
        alpaca._credentials = (KEY, SECRET)
        await asyncio.sleep(1.0)
        await alpaca.send_error(400, close=False, msg=f"invalid syntax near key={KEY} secret={SECRET}")
        await alpaca.send_malformed("garbage")
        await alpaca.send_error(500, close=True, msg=f"internal error for {KEY}")
        await asyncio.sleep(0.5)
        await alpaca.drop_connections(hold_slot=False)
        await asyncio.sleep(0.5)
        for path in ("/metrics", "/status", "/readyz", "/healthz", "/"):
            response = await http.get(base + path)
            bodies.append(response.text)
        om = await http.get(base + "/metrics", headers={"Accept": "application/openmetrics-text"})
        bodies.append(om.text)
    proc.terminate()
    await asyncio.wait_for(proc.wait(), 8)
    assert proc.returncode == 0
    return "".join(lines) + (await reader).decode(errors="replace") + "\n".join(bodies)


def _assert_clean(text: str, where: str) -> None:
    for form in FORMS:
        assert form not in text, f"{where} leaked {form[:6]}…"


@pytest.mark.parametrize("log_format", ["json", "console"])
async def test_nothing_the_process_writes_contains_the_credentials(sims: Any, log_format: str) -> None:
    alpaca, yahoo = sims
    everything = await _daemon_run(alpaca, yahoo, log_format)
    # The failures did happen and were reported...
    assert "auth_failed" in everything
    assert "rate_limited" in everything or "Too Many Requests" in everything
    assert "invalid syntax" in everything  # the server's message is logged, its secret part is not
    assert "DEBUG" in everything or '"level": "DEBUG"' in everything
    assert alpaca.stats.auth_failures >= 1
    # ...without the credentials in any spelling.
    _assert_clean(everything, f"the {log_format} run")


async def test_check_config_and_crash_output_mask_the_credentials(sims: Any) -> None:
    alpaca, yahoo = sims
    code, out = await _run(_env(alpaca, yahoo), "check-config")
    assert code == 0, out
    assert "EXPORTER_ALPACA_URL=" in out
    _assert_clean(out, "check-config")
    # A crash at start-up: the web config names a missing certificate.
    code, out = await _run(_env(alpaca, yahoo, EXPORTER_WEB_CONFIG_FILE="/nonexistent/web.yml"), "run")
    assert code == 2
    assert "EXPORTER_WEB_CONFIG_FILE" in out
    assert "Traceback" not in out
    _assert_clean(out, "a start-up crash")
    # The secret pasted into the wrong variables: the errors name the variables, never the value.
    code, out = await _run(
        _env(alpaca, yahoo, EXPORTER_PORT=SECRET, EXPORTER_SYMBOLS=f"AAPL,{SECRET}", EXPORTER_LOG_LEVEL=KEY),
        "check-config",
    )
    assert code == 2
    assert "EXPORTER_PORT" in out
    assert "EXPORTER_SYMBOLS" in out
    assert "EXPORTER_LOG_LEVEL" in out
    _assert_clean(out, "configuration errors")
