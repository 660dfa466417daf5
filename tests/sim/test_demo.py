"""The demo's set-up (simulators plus an in-process daemon), which the demo and the soak share."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from exporter.core.router import State
from exporter.settings import ConfigError
from exporter.sim.demo import (
    CRYPTO_DEMO_SYMBOLS,
    DEMO_SYMBOLS,
    OPTION_DEMO_SYMBOLS,
    Demo,
    DemoFeed,
    demo_settings,
)
from exporter.sim.scenario import demo_steps


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


@pytest.mark.parametrize(
    ("feed", "alpaca_feed", "path", "channels", "symbols"),
    [
        ("stocks", "iex", "/v2/iex", ["trades", "quotes", "bars", "statuses"], DEMO_SYMBOLS),
        ("crypto", "crypto", "/v1beta3/crypto/us", ["trades", "quotes", "orderbooks"], CRYPTO_DEMO_SYMBOLS),
        ("options", "indicative", "/v1beta1/indicative", ["trades", "quotes"], OPTION_DEMO_SYMBOLS),
    ],
)
def test_demo_feed_builds_the_feeds_settings(
    monkeypatch: pytest.MonkeyPatch,
    feed: DemoFeed,
    alpaca_feed: str,
    path: str,
    channels: list[str],
    symbols: list[str],
) -> None:
    monkeypatch.setenv("EXPORTER_ALPACA_ENCODING", "json")  # the user's choice, where the feed allows it
    demo = Demo(port=0, feed=feed)
    assert demo.setup.path == path
    assert demo.market.symbols == symbols
    settings = demo_settings(f"ws://127.0.0.1:8765{path}", "http://127.0.0.1:1", port=0, feed=feed)
    assert settings.alpaca_feed == alpaca_feed
    assert settings.stream_url.endswith(path)
    assert settings.alpaca_channels == channels
    assert settings.symbols == symbols
    assert settings.alpaca_encoding == ("msgpack" if feed == "options" else "json")


def test_each_feeds_scripted_minute_has_its_own_faults() -> None:
    def steps(feed: DemoFeed) -> str:
        demo = Demo(port=0, feed=feed)
        return "\n".join(step.what for step in demo_steps(demo.faults, demo.setup.family))

    stocks, crypto, options = steps("stocks"), steps("crypto"), steps("options")
    assert "halted" in stocks
    assert "missing bar" in stocks
    assert "order book crossed" not in stocks
    assert "order book crossed" in crypto
    assert "halted" not in crypto
    assert "missing bar" not in crypto
    assert "halted" not in options
    assert "order book crossed" not in options
    for text in (stocks, crypto, options):
        assert "Alpaca outage" in text
        assert "total outage" in text


def test_cli_demo_takes_a_feed() -> None:
    from exporter.cli import _parser

    assert _parser().parse_args(["demo"]).feed == "stocks"
    assert _parser().parse_args(["demo", "--feed", "crypto"]).feed == "crypto"
    with pytest.raises(SystemExit):
        _parser().parse_args(["demo", "--feed", "forex"])


@pytest.mark.parametrize("feed", ["crypto", "options"])
async def test_running_on_a_feed_subscribes_its_symbols_on_its_path(feed: DemoFeed) -> None:
    demo = Demo(port=0, feed=feed, host="127.0.0.1", log_level="WARNING")
    async with demo.running():
        sim = demo.alpaca
        async with asyncio.timeout(10):
            await sim.wait_until(lambda: bool(sim.stats.subscriptions.get("quotes")))
        (session,) = sim.sessions
        assert session.path == demo.setup.path
        assert session.encoding == "msgpack"
        assert sorted(sim.stats.subscriptions["trades"]) == sorted(demo.setup.symbols)
        if feed == "crypto":
            assert sorted(sim.stats.subscriptions["orderbooks"]) == sorted(demo.setup.symbols)
