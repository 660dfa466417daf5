"""The Alpaca client against the real simulator over 127.0.0.1: one test per behaviour.

The tests run on virtual loop time (``looptime``): the sockets are real, but whenever nothing but timers
is pending the loop's clock jumps to the next one, so backoffs, pings and timeouts cost no wall time.
Every time here is the loop's (``now()``), which is the clock the client's timers run on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from exporter.core import messages as m
from exporter.core.events import (
    ALPACA_ERROR_TYPES,
    DependencyLatency,
    Event,
    PrimaryAuthenticated,
    PrimaryConnection,
    PrimaryControl,
    PrimaryData,
    PrimaryError,
    PrimarySubscribed,
    SubscriptionStatus,
)
from exporter.sim.alpaca_server import AlpacaSimulator, generate_feed
from exporter.sim.faultproxy import FaultProxy
from exporter.sim.market import Market
from exporter.sources.alpaca.client import AlpacaClient, AlpacaClientConfig
from exporter.sources.alpaca.codec import Encoding

pytestmark = pytest.mark.looptime

KEY, SECRET = "PKTESTKEY", "sekrit-value-123"
SYMBOLS = ("AAPL", "MSFT")
ENCODINGS: list[Encoding] = ["json", "msgpack"]


def now() -> float:
    return asyncio.get_running_loop().time()


class Recorder:
    """The ``emit`` callback: keeps every event with the monotonic time it arrived."""

    def __init__(self) -> None:
        self.events: list[tuple[float, Event]] = []

    def __call__(self, event: Event) -> None:
        self.events.append((now(), event))

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for _, e in self.events if isinstance(e, kind)]

    def states(self) -> list[str]:
        return [e.state for e in self.of(PrimaryConnection)]

    def errors(self) -> list[str]:
        return [e.type for e in self.of(PrimaryError)]

    def messages(self) -> list[m.Message]:
        return [msg for e in self.of(PrimaryData) for msg in e.messages]

    def times(self, predicate: Callable[[Event], bool]) -> list[float]:
        return [t for t, e in self.events if predicate(e)]

    async def wait(self, predicate: Callable[[], bool], within: float = 3.0) -> None:
        """Poll until ``predicate()`` holds; fail the test after ``within`` seconds."""
        timeout = within
        deadline = now() + timeout
        while not predicate():
            if now() > deadline:
                raise AssertionError(
                    f"condition not met within {timeout}s; states={self.states()} errors={self.errors()}"
                )
            await asyncio.sleep(0.01)

    def connected_count(self) -> int:
        return self.states().count("Connected")


def _config(sim: AlpacaSimulator, encoding: Encoding = "msgpack", **overrides: Any) -> AlpacaClientConfig:
    base = AlpacaClientConfig(
        url=sim.url("/v2/iex"),
        key=KEY,
        secret=SECRET,
        symbols=SYMBOLS,
        channels=("trades", "quotes"),
        encoding=encoding,
        open_timeout=2.0,
        step_timeout=1.0,
        ping_interval=1.0,
        ping_timeout=1.0,
        close_timeout=0.5,
        backoff_base=0.05,
        backoff_max=0.2,
        connection_limit_backoff=0.5,
        fatal_retry=30.0,
        healthy_reset=60.0,
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def market() -> Market:
    return Market(["AAPL", "MSFT", "SPY"], seed=1)


@contextlib.asynccontextmanager
async def running(config: AlpacaClientConfig) -> AsyncIterator[tuple[AlpacaClient, Recorder]]:
    """A client running in a task; stopped (and checked to have stopped) on exit."""
    recorder = Recorder()
    client = AlpacaClient(config, recorder)
    task = asyncio.create_task(client.run())
    try:
        yield client, recorder
    finally:
        async with asyncio.timeout(3.0):
            await client.stop()
            await task


async def _sim(market: Market, **kwargs: Any) -> AlpacaSimulator:
    kwargs.setdefault("credentials", (KEY, SECRET))
    kwargs.setdefault("rate", 0.0)  # no generated data unless a test asks for it
    sim = AlpacaSimulator(market, **kwargs)
    await sim.start()
    return sim


# ------------------------------------------------------------------ handshake and counts


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_handshake_events_and_negotiated_encoding(market: Market, encoding: Encoding) -> None:
    async with await _sim(market) as sim, running(_config(sim, encoding)) as (client, rec):
        await rec.wait(lambda: rec.connected_count() == 1)
        assert rec.states() == ["Connecting", "Authenticating", "Connected"]
        assert [e.ok for e in rec.of(PrimaryAuthenticated)] == [True]
        assert rec.of(PrimarySubscribed) == [PrimarySubscribed(frozenset(SYMBOLS))]
        assert [e.method for e in rec.of(DependencyLatency)] == ["connect", "auth", "subscribe"]
        assert all(e.dependency == "alpaca" and e.seconds >= 0 for e in rec.of(DependencyLatency))
        # connected, authenticated, subscription: one control message each
        assert sum(e.count for e in rec.of(PrimaryControl)) == 3
        assert rec.errors() == []
        (session,) = sim.sessions
        assert session.encoding == encoding  # the Content-Type header did (or did not) ask for msgpack
        assert session.subscriptions()["trades"] == list(SYMBOLS)
        assert session.subscriptions()["quotes"] == list(SYMBOLS)
        status = client.status
        assert (status.state, status.connected, status.authenticated) == ("Connected", True, True)
        assert status.subscribed_symbols == frozenset(SYMBOLS)
        assert (status.connection_attempts, status.reconnects, status.last_error) == (1, 0, None)


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_exact_message_counts(market: Market, encoding: Encoding) -> None:
    feed = generate_feed(list(SYMBOLS), 5_000, batch=100, encoding=encoding, seed=3)
    async with await _sim(market, feed=feed) as sim, running(_config(sim, encoding)) as (_, rec):
        async with asyncio.timeout(5.0):
            await sim.feed_done.wait()
        await rec.wait(lambda: len(rec.messages()) >= feed.messages, within=5.0)
        await asyncio.sleep(0.05)  # nothing beyond the feed may arrive
        received = rec.messages()
        assert len(received) == feed.messages == sim.stats.messages_sent == 5_000
        assert sum(isinstance(x, m.Trade) for x in received) == feed.counts["t"] == sim.stats.sent_by_type["t"]
        assert sum(isinstance(x, m.Quote) for x in received) == feed.counts["q"] == sim.stats.sent_by_type["q"]
        data_events = rec.of(PrimaryData)
        assert len(data_events) == len(feed) == sim.stats.feed_frames_sent  # one event per frame
        assert all(e.decode_seconds >= 0 and e.received_at >= 0 for e in data_events)
        controls = sum(sim.stats.sent_by_type[k] for k in ("success", "error", "subscription"))
        assert sum(e.count for e in rec.of(PrimaryControl)) == controls == 3
        assert rec.errors() == []


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_generated_stream_counts_match_the_simulator(market: Market, encoding: Encoding) -> None:
    channels = ("trades", "quotes", "bars", "dailyBars", "statuses", "lulds", "imbalances")
    async with (
        await _sim(market, rate=2_000.0, batch_size=20, rare_probability=0.2) as sim,
        running(_config(sim, encoding, channels=channels)) as (client, rec),
    ):
        await rec.wait(lambda: len(rec.messages()) >= 400)
        sim.set_rate(0.0)
        await sim.flush_bars()  # bars and daily bars of the running period
        await asyncio.sleep(0.3)  # the generator notices the rate change within 0.25 s
        sent = sim.stats.messages_sent
        await rec.wait(lambda: len(rec.messages()) == sent)
        received = rec.messages()
        assert not any(isinstance(x, (m.Malformed, m.Unknown)) for x in received)
        by_tag: dict[str, int] = {}
        for x in received:
            tag = type(x).__struct_config__.tag
            assert isinstance(tag, str)
            by_tag[tag] = by_tag.get(tag, 0) + 1
        expected = {k: v for k, v in sim.stats.sent_by_type.items() if k not in ("success", "error", "subscription")}
        assert by_tag == expected
        assert client.status.connected


# ------------------------------------------------------------------ errors and policies


async def test_bad_credentials_fatal_and_not_retried_soon(market: Market) -> None:
    async with await _sim(market) as sim, running(_config(sim, secret="wrong", fatal_retry=30.0)) as (client, rec):
        await rec.wait(lambda: "auth_failed" in rec.errors())
        await rec.wait(lambda: client.status.next_retry_in is not None)
        status = client.status
        assert status.next_retry_in is not None
        assert 25.0 <= status.next_retry_in <= 33.0  # fatal_retry (30 s) plus at most 10 % jitter
        assert status.state == "Disconnected"
        assert not status.authenticated
        assert status.last_error is not None
        assert status.last_error.startswith("auth_failed")
        await asyncio.sleep(0.3)
        assert sim.stats.connections == 1  # no hot loop
        assert rec.of(PrimaryAuthenticated) == [PrimaryAuthenticated(False)]
        assert "Connected" not in rec.states()


async def test_insufficient_subscription_is_fatal(market: Market) -> None:
    sim = await _sim(market, entitled_feeds=frozenset({"sip"}))
    async with sim, running(_config(sim)) as (client, rec):
        await rec.wait(lambda: client.status.next_retry_in is not None)
        assert rec.errors() == ["insufficient_subscription"]
        assert client.status.next_retry_in is not None
        assert client.status.next_retry_in > 25.0
        assert sim.stats.connections == 1


async def test_symbol_limit_with_nothing_fitting_is_fatal(market: Market) -> None:
    sim = await _sim(market, symbol_limit=0)
    async with sim, running(_config(sim)) as (client, rec):
        await rec.wait(lambda: client.status.next_retry_in is not None)
        # The whole list, then [AAPL] alone: refused, so [MSFT] cannot fit either and is not sent.
        assert rec.errors() == ["symbol_limit_exceeded"] * 2
        assert sim.stats.client_messages["subscribe"] == 2
        assert rec.of(PrimaryAuthenticated) == [PrimaryAuthenticated(True), PrimaryAuthenticated(False)]
        assert client.status.next_retry_in is not None
        assert client.status.next_retry_in > 25.0
        assert "Connected" not in rec.states()
        # We closed the connection ourselves, properly.
        await rec.wait(lambda: sim.stats.client_close_codes == [1000])


# ------------------------------------------------------------------ subscriptions checked and repaired


def _complete(*channels: str) -> dict[str, tuple[str, ...]]:
    return dict.fromkeys(channels, ())


async def test_symbol_limit_keeps_the_symbols_that_fit(market: Market) -> None:
    sim = await _sim(market, symbol_limit=1)
    async with sim, running(_config(sim)) as (client, rec):
        await rec.wait(lambda: rec.connected_count() == 1)
        await asyncio.sleep(60.0)  # no repair of a refused symbol on this connection
        # [AAPL, MSFT] refused, then [AAPL] held, then [MSFT] refused: the plan is full.
        assert sim.stats.client_messages["subscribe"] == 3
        assert rec.errors() == ["symbol_limit_exceeded"] * 2
        assert sim.stats.subscriptions["trades"] == ["AAPL"]
        status = client.status
        assert status.connected
        assert status.subscribed_symbols == frozenset({"AAPL"})
        assert status.subscription_refused == ("MSFT",)
        assert status.subscription_missing == {"trades": ("MSFT",), "quotes": ("MSFT",)}
        assert status.symbol_limit is None  # Alpaca's text names no number
        refused = SubscriptionStatus({"trades": ("MSFT",), "quotes": ("MSFT",)}, refused=("MSFT",))
        assert rec.of(SubscriptionStatus) == [
            SubscriptionStatus({"trades": ("MSFT",), "quotes": ("MSFT",)}),  # the ack of [AAPL]
            refused,  # the outcome
        ]


async def test_a_partial_ack_is_repaired_with_the_missing_symbols_only(market: Market) -> None:
    async with await _sim(market) as sim:
        sim.apply_partially(1, count=1)  # the first subscribe keeps only the first symbol of each list
        async with running(_config(sim, encoding="json")) as (client, rec):
            await rec.wait(lambda: client.status.subscription_repairs == 1)
            await rec.wait(lambda: len(rec.of(SubscriptionStatus)) == 4)
            await asyncio.sleep(60.0)
            lacking = SubscriptionStatus({"trades": ("MSFT",), "quotes": ("MSFT",)})
            repaired = SubscriptionStatus(_complete("trades", "quotes"), repairs=1)
            assert rec.of(SubscriptionStatus) == [lacking, lacking, repaired, repaired]  # each ack, each outcome
            assert sim.stats.client_messages["subscribe"] == 2
            assert sim.stats.subscriptions["trades"] == ["AAPL", "MSFT"]
            assert client.status.subscription_missing == _complete("trades", "quotes")
            # The repair waited a backoff step (equal jitter of a 1 s base: 0.5-1 s) after the ack.
            acks = rec.times(lambda e: isinstance(e, SubscriptionStatus))
            assert 0.5 <= acks[2] - acks[1] <= 1.1


async def test_repairs_are_bounded_then_keep_reporting_what_is_missing(market: Market) -> None:
    async with await _sim(market, partial_subscribe=1) as sim:  # every subscribe keeps one symbol per list
        config = _config(sim, symbols=("AAPL", "MSFT", "SPY"), channels=("trades",), repair_attempts=1)
        async with running(config) as (client, rec):
            await rec.wait(lambda: client.status.subscription_repairs == 1)
            await asyncio.sleep(120.0)  # no second attempt on this connection
            # [AAPL, MSFT, SPY] kept AAPL; the repair [MSFT, SPY] kept MSFT.
            assert sim.stats.client_messages["subscribe"] == 2
            assert client.status.subscription_repairs == 1
            assert client.status.subscription_missing == {"trades": ("SPY",)}
            assert rec.of(SubscriptionStatus)[-1] == SubscriptionStatus({"trades": ("SPY",)}, repairs=1)


async def test_large_lists_go_in_chunks_so_none_is_half_applied(market: Market) -> None:
    symbols = ("AAPL", "AMD", "MSFT", "NVDA", "SPY")
    # A server that applies only the first two symbols of any list...
    async with await _sim(market, partial_subscribe=2) as sim:
        # ...meets subscribe messages of one symbol (two channels) each.
        config = _config(sim, symbols=symbols, subscribe_chunk=2)
        async with running(config) as (client, rec):
            await rec.wait(lambda: rec.connected_count() == 1)
            await asyncio.sleep(60.0)
            assert sim.stats.client_messages["subscribe"] == 5
            assert sim.stats.subscriptions["quotes"] == list(symbols)
            assert client.status.subscription_repairs == 0
            assert rec.of(SubscriptionStatus)[-1] == SubscriptionStatus(_complete("trades", "quotes"))
            assert len(rec.of(SubscriptionStatus)) == 6  # five acks and the outcome


# code → (error type, the client keeps the stream, how it reconnects)
MID_STREAM = {
    400: ("invalid_syntax", True, None),
    401: ("not_authenticated", False, "soon"),
    402: ("auth_failed", False, "fatal"),
    403: ("server_error", True, None),
    404: ("auth_timeout", False, "soon"),
    405: ("symbol_limit_exceeded", True, None),
    406: ("connection_limit_exceeded", False, "floor"),
    407: ("slow_client", False, "soon"),
    408: ("server_error", False, "fatal"),
    409: ("insufficient_subscription", False, "fatal"),
    410: ("server_error", True, None),
    411: ("server_error", False, "fatal"),
    412: ("server_error", False, "fatal"),
    413: ("server_error", True, None),
    500: ("server_error", False, "soon"),
    599: ("server_error", False, "soon"),
}


@pytest.mark.parametrize(("code", "expected"), MID_STREAM.items(), ids=[str(c) for c in MID_STREAM])
async def test_every_error_code_while_streaming(
    market: Market, code: int, expected: tuple[str, bool, str | None]
) -> None:
    error_type, stays, retry = expected
    async with await _sim(market) as sim, running(_config(sim, connection_limit_backoff=0.4)) as (client, rec):
        await rec.wait(lambda: rec.connected_count() == 1)
        await sim.send_error(code, close=False)  # the server keeps the socket: the client decides
        await rec.wait(lambda: error_type in rec.errors())
        assert rec.errors() == [error_type]
        assert error_type in ALPACA_ERROR_TYPES
        if stays:
            await asyncio.sleep(0.1)
            assert client.status.connected
            assert sim.stats.connections == 1
            return
        await rec.wait(lambda: "Disconnected" in rec.states())
        if retry == "fatal":
            await rec.wait(lambda: client.status.next_retry_in is not None)
            assert client.status.next_retry_in is not None
            assert client.status.next_retry_in > 25.0
            await asyncio.sleep(0.1)
            assert sim.stats.connections == 1
        elif retry == "floor":
            await rec.wait(lambda: rec.connected_count() == 2, within=3.0)
            gone = rec.times(lambda e: isinstance(e, PrimaryConnection) and e.state == "Disconnected")[0]
            back = rec.times(lambda e: isinstance(e, PrimaryConnection) and e.state == "Connecting")[1]
            assert back - gone >= 0.4
        else:
            await rec.wait(lambda: rec.connected_count() == 2)
            assert sim.stats.client_messages["auth"] == 2
            assert sim.stats.client_messages["subscribe"] == 2
        # The client closed the errored connection itself, with a close frame.
        await rec.wait(lambda: len(sim.stats.client_close_codes) >= 1)
        assert sim.stats.client_close_codes[0] == 1000


async def test_slow_client_error_then_close(market: Market) -> None:
    async with await _sim(market) as sim, running(_config(sim)) as (_, rec):
        await rec.wait(lambda: rec.connected_count() == 1)
        await sim.send_error(407, close=True, abort=True)
        await rec.wait(lambda: rec.connected_count() == 2)
        assert rec.errors() == ["slow_client"]  # the drop itself is explained by the 407: not counted twice


async def test_disconnect_without_the_407_frame_is_connection_lost(market: Market) -> None:
    async with await _sim(market) as sim, running(_config(sim)) as (_, rec):
        await rec.wait(lambda: rec.connected_count() == 1)
        await sim.send_error(407, close=True, send_frame=False)
        await rec.wait(lambda: rec.connected_count() == 2)
        assert rec.errors() == ["connection_lost"]


async def test_http_refusal_is_connection_failed_then_recovers(market: Market) -> None:
    async with await _sim(market) as sim:
        sim.refuse_connections(503, count=2)
        async with running(_config(sim)) as (client, rec):
            await rec.wait(lambda: rec.connected_count() == 1)
            assert rec.errors() == ["connection_failed", "connection_failed"]
            assert sim.stats.rejected[503] == 2
            assert client.status.reconnects == 2


async def test_unknown_path_is_fatal(market: Market) -> None:
    async with await _sim(market) as sim:
        config = dataclasses.replace(_config(sim), url=sim.url("/v1beta1/crypto"))
        async with running(config) as (client, rec):
            await rec.wait(lambda: client.status.next_retry_in is not None)
            assert rec.errors() == ["connection_failed"]
            assert client.status.next_retry_in is not None
            assert client.status.next_retry_in > 25.0
            assert sim.stats.rejected[404] == 1


async def test_nothing_listening_backs_off(market: Market) -> None:
    sim = await _sim(market)
    port = sim.port
    await sim.stop()  # the port is free again: connection refused
    config = dataclasses.replace(_config(sim), url=f"ws://127.0.0.1:{port}/v2/iex", backoff_base=0.1, backoff_max=0.4)
    async with running(config) as (client, rec):
        await rec.wait(lambda: client.status.connection_attempts >= 4)
        starts = rec.times(lambda e: isinstance(e, PrimaryConnection) and e.state == "Connecting")
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert all(gap >= 0.05 for gap in gaps)  # equal jitter: at least half the base
        assert set(rec.errors()) == {"connection_failed"}


async def test_handshake_step_timeout() -> None:
    """A server that upgrades and then says nothing: the `connected` step times out."""
    held: list[ServerConnection] = []

    async def silent(conn: ServerConnection) -> None:
        held.append(conn)
        with contextlib.suppress(Exception):
            await conn.wait_closed()

    async with serve(silent, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        config = AlpacaClientConfig(
            url=f"ws://127.0.0.1:{port}/v2/iex",
            key=KEY,
            secret=SECRET,
            symbols=SYMBOLS,
            step_timeout=0.3,
            close_timeout=0.3,
            backoff_base=5.0,
            backoff_max=10.0,
        )
        async with running(config) as (client, rec):
            started = now()
            await rec.wait(lambda: "connection_failed" in rec.errors())
            assert 0.25 <= now() - started <= 1.5
            assert client.status.last_error is not None
            assert "no connected reply" in client.status.last_error
            await rec.wait(lambda: client.status.next_retry_in is not None)  # after closing the socket
            assert rec.states() == ["Connecting", "Disconnected"]


# ------------------------------------------------------------------ reconnects and liveness


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_reconnect_and_resubscribe_after_a_drop(market: Market, encoding: Encoding) -> None:
    async with await _sim(market, rate=200.0) as sim, running(_config(sim, encoding)) as (client, rec):
        await rec.wait(lambda: rec.connected_count() == 1 and len(rec.messages()) > 0)
        await sim.drop_connections(hold_slot=False)
        await rec.wait(lambda: rec.connected_count() == 2)
        assert rec.errors() == ["connection_lost"]
        assert [e.ok for e in rec.of(PrimaryAuthenticated)] == [True, False, True]
        assert rec.of(PrimarySubscribed) == [PrimarySubscribed(frozenset(SYMBOLS))] * 2
        assert sim.stats.client_messages["auth"] == 2
        assert sim.stats.client_messages["subscribe"] == 2
        (session,) = sim.sessions
        assert session.subscriptions()["trades"] == list(SYMBOLS)  # the full set, again
        assert session.subscriptions()["quotes"] == list(SYMBOLS)
        before = len(rec.messages())
        await rec.wait(lambda: len(rec.messages()) > before)  # data flows on the new connection
        assert client.status.reconnects == 1
        handshake = ["Connecting", "Authenticating", "Connected"]
        assert rec.states() == [*handshake, "Disconnected", *handshake]


async def test_backoff_resets_after_a_healthy_period(market: Market) -> None:
    async with await _sim(market) as sim:
        sim.refuse_connections(503, count=6)  # six failures: the backoff climbs (equal jitter, x2 each)
        config = _config(sim, backoff_base=0.01, backoff_max=2.0, healthy_reset=0.1)
        async with running(config) as (_, rec):
            await rec.wait(lambda: rec.connected_count() == 1)
            starts = rec.times(lambda e: isinstance(e, PrimaryConnection) and e.state == "Connecting")
            assert starts[-1] - starts[-2] >= 0.15  # the 6th wait: between 0.16 and 0.32 s
            await asyncio.sleep(0.15)  # healthy for longer than healthy_reset
            await sim.drop_connections(hold_slot=False)
            await rec.wait(lambda: rec.connected_count() == 2)
            gone = rec.times(lambda e: isinstance(e, PrimaryConnection) and e.state == "Disconnected")[-1]
            back = rec.times(lambda e: isinstance(e, PrimaryConnection) and e.state == "Connecting")[-1]
            assert back - gone < 0.2  # the first step again (<= 10 ms), not the next one (>= 0.32 s)


async def test_connection_limit_406_waits_at_least_the_floor(market: Market) -> None:
    # The drop leaves a zombie slot (as Alpaca does for ~90 s); reconnecting inside it gets 406.
    async with (
        await _sim(market, zombie_hold=0.5) as sim,
        running(_config(sim, connection_limit_backoff=0.3, backoff_base=0.01, backoff_max=0.02)) as (_, rec),
    ):
        await rec.wait(lambda: rec.connected_count() == 1)
        await sim.drop_connections(hold_slot=True)
        await rec.wait(lambda: rec.connected_count() == 2, within=4.0)
        assert "connection_limit_exceeded" in rec.errors()
        assert sim.stats.errors_sent[406] >= 1
        # After every 406, the next attempt came no sooner than the floor (0.3 s), although the
        # exponential backoff alone would have retried within 20 ms.
        events = rec.events
        for k, (t406, event) in enumerate(events):
            if isinstance(event, PrimaryError) and event.type == "connection_limit_exceeded":
                t_next = next(t for t, e in events[k:] if isinstance(e, PrimaryConnection) and e.state == "Connecting")
                assert t_next - t406 >= 0.3
        # No hammering while the slot is held: the first, the 406s (one per floor inside the 0.5 s
        # hold), and the one that succeeds.
        assert sim.stats.connections <= 4


async def test_dead_socket_detected_within_the_ping_timeout(market: Market) -> None:
    # A long close timeout: the failure is reported before the closing handshake, not after it.
    config = {"ping_interval": 0.2, "ping_timeout": 0.2, "close_timeout": 1.0}
    async with await _sim(market) as sim, running(_config(sim, **config)) as (_, rec):
        await rec.wait(lambda: rec.connected_count() == 1)
        await asyncio.sleep(0.5)  # pongs flow: the connection stays up
        assert rec.errors() == []
        sim.set_pong(False)
        silenced = now()
        await rec.wait(lambda: "connection_lost" in rec.errors(), within=2.0)
        detected = rec.times(lambda e: isinstance(e, PrimaryError) and e.type == "connection_lost")[0]
        # At most one ping interval and the pong timeout (plus scheduling slack), not the close timeout.
        assert detected - silenced <= 0.2 + 0.2 + 0.5
        assert rec.of(PrimaryError)[0].detail == "no pong within 0.2s"
        assert rec.errors() == ["connection_lost"]  # counted once, not again when the socket closes
        await rec.wait(lambda: len(sim.stats.client_close_codes) >= 1)
        assert sim.stats.client_close_codes[0] == 1000  # still closed politely: no zombie slot
        sim.set_pong(True)
        await rec.wait(lambda: rec.connected_count() == 2)


async def test_data_is_proof_of_life_while_a_pong_is_late(market: Market) -> None:
    """On a busy stream over a slow link the pong queues behind data: frames still arriving mean the link
    works. Only when neither the pong nor any frame comes within the timeout is the link dead."""
    config = {"ping_interval": 0.2, "ping_timeout": 0.2}
    async with await _sim(market, rate=200.0) as sim, running(_config(sim, **config)) as (_, rec):
        await rec.wait(lambda: rec.connected_count() == 1)
        sim.set_pong(False)  # the pongs are stuck behind the data for good
        received = len(rec.messages())
        await asyncio.sleep(1.0)  # five ping periods
        assert len(rec.messages()) > received  # data kept coming
        assert rec.errors() == []
        sim.set_rate(0.0)  # now nothing at all comes back
        await rec.wait(lambda: "connection_lost" in rec.errors(), within=2.0)
        assert rec.of(PrimaryError)[0].detail == "no pong within 0.2s"


@pytest.mark.looptime(False)  # the slow resolver runs in a thread, in real time: so must the timeouts
async def test_each_open_step_has_its_own_timeout(market: Market, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow resolver and a slow link: the lookup and the upgrade each fit ``open_timeout``, together
    they do not. Timed step by step, the client connects; timed as a whole it never could."""
    resolve = socket.getaddrinfo

    def slow_resolver(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "slow-dns.test":
            time.sleep(0.2)
            host = "127.0.0.1"
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_resolver)
    async with await _sim(market) as sim, FaultProxy("127.0.0.1", sim.port) as proxy:
        proxy.set_latency(0.1)  # the upgrade takes a 0.2 s round trip
        url = proxy.url("/v2/iex").replace("127.0.0.1", "slow-dns.test")
        async with running(_config(sim, url=url, open_timeout=0.35)) as (_, rec):
            await rec.wait(lambda: rec.connected_count() == 1, within=5.0)
        assert rec.errors() == []


async def test_a_failing_liveness_check_drops_the_link_instead_of_leaving_it_unwatched(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    config = {"ping_interval": 0.1, "ping_timeout": 0.2}
    async with await _sim(market) as sim, running(_config(sim, **config)) as (client, rec):
        await rec.wait(lambda: rec.connected_count() == 1)
        ws = client._ws
        assert ws is not None

        async def broken_ping(data: bytes | None = None) -> Any:
            raise RuntimeError("a bug in the liveness check")

        ws.ping = broken_ping  # type: ignore[method-assign]
        await rec.wait(lambda: rec.connected_count() == 2)  # dropped, then reconnected by the policy
        assert any(r.getMessage() == "alpaca liveness check failed" and r.exc_info for r in caplog.records)
        assert sim.stats.client_close_codes[0] == 1000


async def test_mute_socket_then_request_reconnect(market: Market) -> None:
    async with await _sim(market, rate=200.0) as sim, running(_config(sim)) as (client, rec):
        await rec.wait(lambda: rec.connected_count() == 1 and len(rec.messages()) > 0)
        sim.set_mute(True)
        await asyncio.sleep(0.1)
        count = len(rec.messages())
        await asyncio.sleep(0.4)
        # Mute but alive: pings are answered, nothing is wrong at the transport level.
        assert len(rec.messages()) == count
        assert client.status.connected
        assert rec.errors() == []
        client.request_reconnect("stale_stream")
        await rec.wait(lambda: rec.connected_count() == 2)
        disconnected = [e for e in rec.of(PrimaryConnection) if e.state == "Disconnected"]
        assert disconnected[0].reason == "stale_stream"
        assert rec.errors() == []  # the core counts stale_stream; the client adds nothing
        await rec.wait(lambda: len(sim.stats.client_close_codes) >= 1)
        assert sim.stats.client_close_codes[0] == 1000  # closed properly: no zombie slot
        sim.set_mute(False)
        await rec.wait(lambda: len(rec.messages()) > count)


async def test_request_reconnect_without_a_connection_is_ignored(market: Market) -> None:
    async with await _sim(market) as sim:
        client = AlpacaClient(_config(sim), Recorder())
        client.request_reconnect("stale_stream")  # not running: nothing to do, nothing raised
        assert client.status.state == "Disconnected"


# ------------------------------------------------------------------ malformed data


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_malformed_frames_counted_while_the_connection_stays(market: Market, encoding: Encoding) -> None:
    async with await _sim(market) as sim, running(_config(sim, encoding)) as (client, rec):
        await rec.wait(lambda: rec.connected_count() == 1)
        for kind in ("garbage", "truncated", "not_array"):
            await sim.send_malformed(kind)  # type: ignore[arg-type]
        await rec.wait(lambda: len(rec.errors()) == 3)
        assert rec.errors() == ["decode_error"] * 3
        await sim.send_missing_field("AAPL")
        await sim.send_unknown("AAPL")
        await rec.wait(lambda: len(rec.messages()) == 3)
        malformed, unknown, trade = rec.messages()
        assert isinstance(malformed, m.Malformed)
        assert (malformed.T, malformed.S) == ("t", "AAPL")
        assert unknown == m.Unknown(T="zz", S="AAPL")
        assert isinstance(trade, m.Trade)
        assert trade.S == "AAPL"
        assert client.status.connected
        assert sim.stats.connections == 1
        assert rec.states()[-1] == "Connected"


async def test_a_failing_consumer_does_not_stop_the_reader(market: Market) -> None:
    seen: list[Event] = []

    def emit(event: Event) -> None:
        seen.append(event)
        if isinstance(event, PrimaryData):
            raise RuntimeError("consumer bug")

    async with await _sim(market, rate=500.0) as sim:
        client = AlpacaClient(_config(sim), emit)
        task = asyncio.create_task(client.run())
        try:
            await Recorder().wait(lambda: sum(isinstance(e, PrimaryData) for e in seen) >= 5)
            assert client.status.connected
        finally:
            await client.stop()
            await task


# ------------------------------------------------------------------ shutdown and secrets


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_clean_shutdown_sends_close_1000(market: Market, encoding: Encoding) -> None:
    async with await _sim(market, rate=200.0) as sim:
        rec = Recorder()
        client = AlpacaClient(_config(sim, encoding), rec)
        task = asyncio.create_task(client.run())
        await rec.wait(lambda: rec.connected_count() == 1)
        started = now()
        await client.stop()
        await asyncio.wait_for(task, 1.0)
        assert now() - started < 1.0
        await rec.wait(lambda: sim.stats.client_close_codes == [1000])
        assert rec.states()[-1] == "Disconnected"
        assert rec.of(PrimaryAuthenticated)[-1] == PrimaryAuthenticated(False)
        assert rec.errors() == []
        assert client.status.state == "Disconnected"


async def test_stop_during_a_long_backoff_is_prompt(market: Market) -> None:
    async with await _sim(market) as sim:
        rec = Recorder()
        client = AlpacaClient(_config(sim, secret="wrong", fatal_retry=600.0), rec)
        task = asyncio.create_task(client.run())
        await rec.wait(lambda: client.status.next_retry_in is not None)
        started = now()
        await client.stop()
        await asyncio.wait_for(task, 1.0)
        assert now() - started < 0.5


async def test_secret_never_in_logs_or_repr(market: Market, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with await _sim(market, credentials=(KEY, "another-secret")) as sim:
        config = _config(sim)
        assert SECRET not in repr(config)
        assert KEY not in repr(config)
        async with running(config) as (client, rec):
            # Until the retry is scheduled: the failure's log line comes just before it.
            await rec.wait(lambda: "auth_failed" in rec.errors() and client.status.next_retry_in is not None)
            assert SECRET not in repr(client.status)
    # Our side only: the simulator (a test server) logs the frames it receives at DEBUG.
    ours = [r for r in caplog.records if not r.name.startswith("exporter.sim")]
    assert ours  # the failure was logged
    for record in ours:
        text = record.getMessage() + repr(record.__dict__)
        assert SECRET not in text
        assert KEY not in text
    assert any(r.name == "exporter.alpaca" and r.levelno == logging.ERROR for r in caplog.records)


def test_config_validation() -> None:
    good = AlpacaClientConfig(url="ws://127.0.0.1:1/v2/iex", key=KEY, secret=SECRET, symbols=SYMBOLS)
    assert good.encoding == "msgpack"
    assert good.ping_timeout <= 10  # seconds, not minutes
    assert good.max_message_bytes >= 16 * 2**20
    for bad in (
        {"url": "http://x/v2/iex"},
        {"symbols": ()},
        {"channels": ("news",)},
        {"encoding": "xml"},
        {"step_timeout": 0},
        {"backoff_base": 5.0, "backoff_max": 1.0},
    ):
        with pytest.raises(ValueError, match=r"."):
            dataclasses.replace(good, **bad)


async def test_a_long_list_goes_in_messages_of_200_entries(market: Market) -> None:
    symbols = tuple(f"S{i:03d}" for i in range(450))
    async with await _sim(market) as sim, running(_config(sim, symbols=symbols, channels=("trades",))) as (client, rec):
        await rec.wait(lambda: rec.connected_count() == 1)
        assert sim.stats.client_messages["subscribe"] == 3  # 200 + 200 + 50
        assert client.status.subscribed_symbols == frozenset(symbols)
        assert rec.of(SubscriptionStatus) == [SubscriptionStatus({"trades": ()})] * 4  # three acks, the outcome


# ------------------------------------------------------------------ crypto and options (CONTRACT section 12)

PAIRS = ("BTC/USD", "ETH/USD")
CONTRACTS = ("AAPL270115C00200000", "SPY270115P00550000")


def _tags(received: list[m.Message]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for x in received:
        tag = type(x).__struct_config__.tag
        assert isinstance(tag, str)
        counts[tag] = counts.get(tag, 0) + 1
    return counts


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_exact_counts_of_a_crypto_feed_with_order_books(encoding: Encoding) -> None:
    feed = generate_feed(list(PAIRS), 4_000, batch=100, encoding=encoding, seed=5)
    market = Market(list(PAIRS), seed=1)
    config = _config(
        AlpacaSimulator(market), encoding, symbols=PAIRS, channels=("trades", "quotes", "orderbooks"), family="crypto"
    )
    async with await _sim(market, feed=feed) as sim:
        config = dataclasses.replace(config, url=sim.feed_url("crypto"))
        async with running(config) as (_, rec):
            async with asyncio.timeout(5.0):
                await sim.feed_done.wait()
            await rec.wait(lambda: len(rec.messages()) >= feed.messages, within=5.0)
            await asyncio.sleep(0.05)
            received = rec.messages()
    # The feed, plus the snapshot of each book the server sends after the subscription ack.
    assert len(received) == sim.stats.messages_sent == feed.messages + len(PAIRS) == 4_002
    assert _tags(received) == {k: v for k, v in sim.stats.sent_by_type.items() if len(k) == 1}
    assert _tags(received)["o"] == feed.counts["o"] + len(PAIRS)
    assert _tags(received)["t"] == feed.counts["t"]
    assert all(type(x) in (m.CryptoTrade, m.Orderbook) for x in received)
    assert any(isinstance(x, m.CryptoTrade) and x.s != int(x.s) for x in received)  # fractional sizes
    assert rec.errors() == []


async def test_generated_crypto_and_options_streams_decode_wholly() -> None:
    cases = (
        ("crypto", PAIRS, ("trades", "quotes", "orderbooks", "bars"), {m.CryptoTrade, m.CryptoQuote, m.Orderbook}),
        ("indicative", CONTRACTS, ("trades", "quotes"), {m.OptionTrade, m.OptionQuote}),
        ("opra", CONTRACTS, ("trades", "quotes"), {m.OptionTrade, m.OptionQuote}),
    )
    for feed_name, symbols, channels, types in cases:
        market = Market(list(symbols), seed=2)
        family = "crypto" if feed_name == "crypto" else "options"
        async with await _sim(market, rate=2_000.0, batch_size=20) as sim:
            config = _config(sim, "msgpack", symbols=symbols, channels=channels, family=family)
            config = dataclasses.replace(config, url=sim.feed_url(feed_name))
            async with running(config) as (client, rec):
                await rec.wait(lambda: len(rec.messages()) >= 400)
                sim.set_rate(0.0)
                await asyncio.sleep(0.3)  # the generator notices the rate change within 0.25 s
                sent = sim.stats.messages_sent
                await rec.wait(lambda sent=sent: len(rec.messages()) == sent)
                received = rec.messages()
                assert client.status.subscribed_symbols == frozenset(symbols)
        expected = {k: v for k, v in sim.stats.sent_by_type.items() if k not in ("success", "error", "subscription")}
        assert _tags(received) == expected, feed_name
        assert {type(x) for x in received} <= types | {m.CryptoBar}, feed_name
        assert types - {m.Orderbook} <= {type(x) for x in received}, feed_name
        assert rec.errors() == [], feed_name


async def test_options_refuse_json_with_412_and_the_client_does_not_hammer(market: Market) -> None:
    option_market = Market(list(CONTRACTS), seed=3)
    async with await _sim(option_market) as sim:
        config = _config(sim, "json", symbols=CONTRACTS, family="options")
        config = dataclasses.replace(config, url=sim.feed_url("opra"))
        async with running(config) as (_, rec):
            await rec.wait(lambda: "server_error" in rec.errors())
            await asyncio.sleep(5.0)  # far less than the fatal retry period
            assert sim.stats.errors_sent[412] == 1
            assert rec.connected_count() == 0
