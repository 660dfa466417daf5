"""The demo's set-up (simulators plus an in-process daemon), which the demo and the soak share."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from exporter.core.router import State
from exporter.settings import ConfigError
from exporter.sim.demo import DEMO_SYMBOLS, Demo


async def test_running_serves_the_daemon_on_the_simulators_and_stops_it() -> None:
    demo = Demo(port=0, host="127.0.0.1", log_level="WARNING")
    async with demo.running() as daemon, httpx.AsyncClient(timeout=5.0) as http:
        assert demo.daemon is daemon
        base = f"http://127.0.0.1:{daemon.port}"
        assert (await http.get(base + "/metrics")).status_code == 200
        async with asyncio.timeout(10):
            while daemon.core.state is not State.PRIMARY_ACTIVE:
                await asyncio.sleep(0.05)
    assert daemon.stopping.is_set()
    async with httpx.AsyncClient(timeout=5.0) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(base + "/healthz")


async def test_running_raises_when_the_daemon_cannot_start() -> None:
    """A busy port ends the start with the bind error instead of waiting for a start that never comes."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        demo = Demo(port=taken.getsockname()[1], host="127.0.0.1", log_level="WARNING")

        async def start() -> None:
            async with demo.running():
                pytest.fail("the daemon started on a busy port")

        attempt = asyncio.create_task(start())
        done, _ = await asyncio.wait({attempt}, timeout=10)
        if not done:
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
        assert done, "the start waits for ever on a busy port"
        with pytest.raises(ConfigError, match=r"EXPORTER_PORT: cannot listen on .*: Address already in use"):
            attempt.result()


async def test_the_demo_repairs_a_partial_subscription_and_sees_a_halt() -> None:
    demo = Demo(port=0, host="127.0.0.1", log_level="WARNING")
    async with demo.running() as daemon:
        client, sim = daemon.alpaca, demo.alpaca
        async with asyncio.timeout(10):
            while not client.status.connected:
                await asyncio.sleep(0.05)
            assert sim.stats.subscriptions["statuses"] == sorted(DEMO_SYMBOLS)  # the halt's channel
            await demo.faults.partial_subscription(3)
            await sim.drop_connections(hold_slot=False)
            while client.status.subscription_repairs < 1 or not client.status.connected:
                await asyncio.sleep(0.05)
            while any(client.status.subscription_missing.values()):
                await asyncio.sleep(0.05)
        assert sim.stats.client_messages["subscribe"] == 3  # first connection, the partial one, the repair
        assert sim.stats.subscriptions["trades"] == sorted(DEMO_SYMBOLS)
        halts = sim.stats.sent_by_type["s"]
        await demo.faults.halt()
        assert sim.halted == {demo.faults.second}
        await demo.faults.halt(False)
        assert sim.halted == set()
        assert sim.stats.sent_by_type["s"] >= halts + 2
