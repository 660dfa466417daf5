"""The real console program as a user runs it: signals, exit codes, and secrets in everything it writes."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx

from exporter_tools.processes import spawn
from tests.support.stacks import PROCESS_KEY as KEY
from tests.support.stacks import PROCESS_SECRET as SECRET
from tests.support.stacks import process_env


async def test_sigterm_stops_gracefully_with_a_close_frame(sims: Any) -> None:
    alpaca, yahoo = sims
    proc = await spawn(process_env(alpaca, yahoo), "run")
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
        sys.executable, "-m", "exporter", "check-config", env=process_env(alpaca, yahoo), stdout=-1, stderr=-1
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
        env=process_env(alpaca, yahoo, EXPORTER_PORT="http", EXPORTER_ALPACA_ENCODING="xml"),
        stdout=-1,
        stderr=-1,
    )
    out, err = await bad.communicate()
    text = err.decode()
    assert bad.returncode == 2
    assert "EXPORTER_PORT" in text
    assert "EXPORTER_ALPACA_ENCODING" in text
    assert "Traceback" not in text + out.decode()
