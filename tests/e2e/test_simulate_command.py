"""`alpaca-exporter simulate`: both simulators on the ports asked for, speaking their protocols."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import httpx
from websockets.asyncio.client import connect


async def test_simulate_prints_both_servers_and_serves_them() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPORTER_", "APCA_"))}
    env.update({"APCA_API_KEY_ID": "PKSIMULATE0000000001", "APCA_API_SECRET_KEY": "sim-secret-000000000000"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        "simulate",
        "--alpaca-port",
        "0",
        "--yahoo-port",
        "0",
        "--symbols",
        "AAPL,MSFT",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().split()
        second = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().split()
        assert first[0] == "alpaca"
        assert first[1].startswith("ws://127.0.0.1:")
        assert second[0] == "yahoo"
        assert second[1].startswith("http://127.0.0.1:")

        async with connect(first[1] + "/v2/iex") as ws:
            assert json.loads(await ws.recv()) == [{"T": "success", "msg": "connected"}]
            # The credentials from the environment are the ones it accepts.
            await ws.send(json.dumps({"action": "auth", "key": "PKWRONG", "secret": "nope"}))
            assert json.loads(await ws.recv())[0]["code"] == 402
        async with connect(first[1] + "/v2/iex") as ws:
            await ws.recv()
            await ws.send(
                json.dumps({"action": "auth", "key": env["APCA_API_KEY_ID"], "secret": env["APCA_API_SECRET_KEY"]})
            )
            assert json.loads(await ws.recv()) == [{"T": "success", "msg": "authenticated"}]
            await ws.send(json.dumps({"action": "subscribe", "trades": ["AAPL"]}))
            ack = json.loads(await ws.recv())[0]
            assert ack["T"] == "subscription"
            assert ack["trades"] == ["AAPL"]
            async with asyncio.timeout(5):
                while True:
                    items = json.loads(await ws.recv())
                    if any(i["T"] == "t" and i["S"] == "AAPL" for i in items):
                        break

        async with httpx.AsyncClient() as http:
            chart = (await http.get(second[1] + "/v8/finance/chart/MSFT?interval=1m&range=1d")).json()
            assert chart["chart"]["result"][0]["meta"]["regularMarketPrice"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
