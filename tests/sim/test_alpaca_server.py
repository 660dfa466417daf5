"""The Alpaca stream simulator, driven by a raw ``websockets`` client over 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import socket
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from exporter.sim.alpaca_codec import rfc3339
from exporter.sim.alpaca_server import AlpacaSimulator, Feed, generate_feed
from exporter.sim.market import Market

KEY, SECRET = "PKTEST", "s3cr3t"
SYMBOLS = ["AAPL", "MSFT", "AMD", "SPY"]
RFC3339_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?Z$")
DATA_TYPES = frozenset("tqbudslcxi")


@pytest.fixture
async def sim() -> AsyncIterator[AlpacaSimulator]:
    async with AlpacaSimulator(
        Market(SYMBOLS, seed=1), credentials=(KEY, SECRET), rate=0, auth_timeout=5.0, zombie_hold=0.4
    ) as server:
        yield server


def decode(frame: str | bytes) -> list[dict[str, Any]]:
    if isinstance(frame, str):
        out: list[dict[str, Any]] = json.loads(frame)
    else:
        out = msgpack.unpackb(frame)
    assert isinstance(out, list)
    return out


async def recv(ws: ClientConnection, limit: float = 2.0) -> list[dict[str, Any]]:
    async with asyncio.timeout(limit):
        return decode(await ws.recv())


async def open_ws(
    sim: AlpacaSimulator, path: str = "/v2/iex", *, mp: bool = False, headers: dict[str, str] | None = None, **kw: Any
) -> ClientConnection:
    extra = dict(headers or {})
    if mp:
        extra["Content-Type"] = "application/msgpack"
    ws = await connect(sim.url(path), additional_headers=extra, open_timeout=2, close_timeout=1, **kw)
    assert await recv(ws) == [{"T": "success", "msg": "connected"}]
    return ws


def pack(msg: dict[str, Any], mp: bool) -> str | bytes:
    return msgpack.packb(msg) if mp else json.dumps(msg)


async def auth(ws: ClientConnection, key: str = KEY, secret: str = SECRET, *, mp: bool = False) -> list[dict[str, Any]]:
    await ws.send(pack({"action": "auth", "key": key, "secret": secret}, mp))
    return await recv(ws)


async def session(sim: AlpacaSimulator, path: str = "/v2/iex", *, mp: bool = False, key: str = KEY) -> ClientConnection:
    ws = await open_ws(sim, path, mp=mp)
    assert await auth(ws, key, mp=mp) == [{"T": "success", "msg": "authenticated"}]
    return ws


async def subscribe(
    ws: ClientConnection, mp: bool = False, action: str = "subscribe", **channels: list[str]
) -> dict[str, Any]:
    await ws.send(pack({"action": action, **channels}, mp))
    while True:  # data frames may precede the ack
        frame = await recv(ws)
        if frame[0]["T"] == "subscription":
            assert len(frame) == 1
            return frame[0]


def error(code: int, msg: str) -> list[dict[str, Any]]:
    return [{"T": "error", "code": code, "msg": msg}]


async def drain_forever(ws: ClientConnection) -> None:
    async with asyncio.timeout(3):
        while True:
            await ws.recv()


async def drain_until_quiet(ws: ClientConnection, quiet: float) -> int:
    """Read frames until none arrives for ``quiet`` seconds; how many were read."""
    n = 0
    async with asyncio.timeout(5):
        while True:
            try:
                await recv(ws, quiet)
            except TimeoutError:
                return n
            n += 1


async def closed_code(ws: ClientConnection) -> int | None:
    """Drain until the connection ends; the close code the client received (None: no close frame)."""
    with pytest.raises(ConnectionClosed):
        await drain_forever(ws)
    rcvd = ws.protocol.close_rcvd
    return rcvd.code if rcvd is not None else None


# ---------------------------------------------------------------- handshake and auth


async def test_connected_then_authenticated_json(sim: AlpacaSimulator) -> None:
    ws = await open_ws(sim)
    reply = await auth(ws)
    assert reply == [{"T": "success", "msg": "authenticated"}]
    await ws.close()
    await asyncio.sleep(0.05)
    assert sim.stats.connections == 1
    assert sim.stats.authenticated == 1
    assert sim.stats.last_client_close_code == 1000
    assert sim.stats.sent_by_type["success"] == 2


async def test_connected_frame_is_exact_json_text(sim: AlpacaSimulator) -> None:
    async with connect(sim.url()) as ws:
        assert await ws.recv() == '[{"T":"success","msg":"connected"}]'


async def test_auth_failed_402_stays_open_by_default(sim: AlpacaSimulator) -> None:
    ws = await open_ws(sim)
    assert await auth(ws, secret="wrong") == error(402, "auth failed")
    # still open and unauthenticated: a correct auth now succeeds
    assert await auth(ws) == [{"T": "success", "msg": "authenticated"}]
    assert sim.stats.auth_failures == 1
    await ws.close()


async def test_auth_failed_closes_with_knob() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), credentials=(KEY, SECRET), rate=0, close_on_auth_failure=True) as sim:
        ws = await open_ws(sim)
        assert await auth(ws, key="nope") == error(402, "auth failed")
        assert await closed_code(ws) == 1008


async def test_any_credentials_accepted_without_configured_ones() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), rate=0) as sim:
        ws = await session(sim, key="whatever")
        await ws.close()


async def test_auth_timeout_404_then_close() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), rate=0, auth_timeout=0.2) as sim:
        ws = await open_ws(sim)
        assert await recv(ws) == error(404, "auth timeout")
        assert await closed_code(ws) == 1008


async def test_subscribe_before_auth_401(sim: AlpacaSimulator) -> None:
    ws = await open_ws(sim)
    await ws.send(json.dumps({"action": "subscribe", "trades": ["AAPL"]}))
    assert await recv(ws) == error(401, "not authenticated")
    assert await auth(ws) == [{"T": "success", "msg": "authenticated"}]
    await ws.close()


@pytest.mark.parametrize("mp", [False, True])
async def test_header_auth_then_auth_message_is_403(sim: AlpacaSimulator, mp: bool) -> None:
    ws = await open_ws(sim, mp=mp, headers={"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET})
    assert await recv(ws) == [{"T": "success", "msg": "authenticated"}]
    assert await auth(ws, mp=mp) == error(403, "already authenticated")
    ack = await subscribe(ws, mp, trades=["AAPL"])
    assert ack["trades"] == ["AAPL"]
    await ws.close()


async def test_header_auth_with_wrong_secret_is_402(sim: AlpacaSimulator) -> None:
    ws = await open_ws(sim, headers={"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": "bad"})
    assert await recv(ws) == error(402, "auth failed")
    await ws.close()


async def test_feed_entitlement_409_closes() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), rate=0, entitled_feeds=frozenset({"iex"})) as sim:
        ws = await open_ws(sim, "/v2/sip")
        assert await auth(ws) == error(409, "insufficient subscription")
        assert await closed_code(ws) == 1008
        ok = await session(sim, "/v2/iex")
        await ok.close()


async def test_unknown_action_and_bad_json_are_400(sim: AlpacaSimulator) -> None:
    ws = await session(sim)
    for bad in ("{not json", json.dumps({"action": "listen"}), json.dumps([1, 2]), json.dumps({"trades": ["A"]})):
        await ws.send(bad)
        assert await recv(ws) == error(400, "invalid syntax")
    await ws.send(json.dumps({"action": "subscribe", "trades": "AAPL"}))
    assert await recv(ws) == error(400, "invalid syntax")
    await ws.send(json.dumps({"action": "subscribe", "trades": ["bad symbol"]}))
    assert await recv(ws) == error(400, "invalid syntax")
    await ws.send(json.dumps({"action": "subscribe", "orderbooks": ["AAPL"]}))
    assert await recv(ws) == error(410, "invalid subscribe action for this feed")
    assert sim.stats.errors_sent == Counter({400: 6, 410: 1})
    await ws.close()


# ---------------------------------------------------------------- HTTP-level refusals


async def test_unknown_path_is_http_404(sim: AlpacaSimulator) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(sim.url("/v1beta2/crypto"), open_timeout=2)
    assert info.value.response.status_code == 404
    assert sim.stats.rejected[404] == 1


@pytest.mark.parametrize(
    "path", ["/v2/iex", "/v2/sip", "/v2/delayed_sip", "/v2/test", "/v1beta1/boats", "/v1beta1/overnight"]
)
async def test_every_stocks_path_is_served(sim: AlpacaSimulator, path: str) -> None:
    ws = await open_ws(sim, path)
    await ws.close()


async def test_refuse_connections_then_accept(sim: AlpacaSimulator) -> None:
    sim.refuse_connections(503, count=1)
    with pytest.raises(InvalidStatus) as info:
        await connect(sim.url(), open_timeout=2)
    assert info.value.response.status_code == 503
    ws = await open_ws(sim)  # the refusal was for one attempt only
    await ws.close()
    sim.refuse_connections(429)
    for _ in range(2):
        with pytest.raises(InvalidStatus):
            await connect(sim.url(), open_timeout=2)
    sim.refuse_connections(None)
    ws = await open_ws(sim)
    await ws.close()
    assert sim.stats.rejected == Counter({503: 1, 429: 2})


async def test_too_many_connects_per_minute_is_429() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), rate=0, max_connects_per_minute=2) as sim:
        for _ in range(2):
            ws = await open_ws(sim)
            await ws.close()
        with pytest.raises(InvalidStatus) as info:
            await connect(sim.url(), open_timeout=2)
        assert info.value.response.status_code == 429


async def test_close_new_connections(sim: AlpacaSimulator) -> None:
    sim.close_new_connections(True)
    async with connect(sim.url(), open_timeout=2) as ws:
        assert await closed_code(ws) == 1011
    sim.close_new_connections(False)
    ws2 = await open_ws(sim)
    await ws2.close()


# ---------------------------------------------------------------- connection limit


async def test_second_session_same_key_is_406_and_freed_by_close(sim: AlpacaSimulator) -> None:
    first = await session(sim)
    second = await open_ws(sim)
    assert await auth(second) == error(406, "connection limit exceeded")
    # another endpoint is another slot
    other = await session(sim, "/v2/sip")
    await first.close()  # a proper close frees the slot at once
    await asyncio.sleep(0.05)
    assert await auth(second) == [{"T": "success", "msg": "authenticated"}]
    await second.close()
    await other.close()


async def test_another_key_is_not_limited() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), rate=0) as sim:
        a = await session(sim, key="A")
        b = await session(sim, key="B")
        await a.close()
        await b.close()


async def test_zombie_hold_after_server_side_drop(sim: AlpacaSimulator) -> None:
    ws = await session(sim)
    await sim.drop_connections()
    assert await closed_code(ws) is None  # no close frame: the client sees 1006
    again = await open_ws(sim)
    assert await auth(again) == error(406, "connection limit exceeded")
    await asyncio.sleep(0.45)  # zombie_hold=0.4 in the fixture
    assert await auth(again) == [{"T": "success", "msg": "authenticated"}]
    await again.close()


async def test_zombie_hold_after_client_drops_tcp(sim: AlpacaSimulator) -> None:
    ws = await session(sim)
    ws.transport.abort()
    await asyncio.sleep(0.05)
    assert sim.stats.last_client_close_code is None
    again = await open_ws(sim)
    assert await auth(again) == error(406, "connection limit exceeded")
    sim.clear_zombies()
    assert await auth(again) == [{"T": "success", "msg": "authenticated"}]
    await again.close()


async def test_drop_without_hold_frees_slot(sim: AlpacaSimulator) -> None:
    ws = await session(sim)
    await sim.drop_connections(hold_slot=False)
    assert await closed_code(ws) is None
    again = await session(sim)
    await again.close()


async def test_406_close_knob() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), rate=0, close_on_connection_limit=True) as sim:
        first = await session(sim)
        second = await open_ws(sim)
        assert await auth(second) == error(406, "connection limit exceeded")
        assert await closed_code(second) == 1008
        await first.close()


# ---------------------------------------------------------------- subscriptions


async def test_additive_and_subtractive_acks_show_full_state(sim: AlpacaSimulator) -> None:
    ws = await session(sim)
    ack = await subscribe(ws, trades=["AAPL"], quotes=["MSFT", "AMD"], dailyBars=["SPY"])
    assert ack == {
        "T": "subscription",
        "trades": ["AAPL"],
        "quotes": ["MSFT", "AMD"],
        "bars": [],
        "updatedBars": [],
        "dailyBars": ["SPY"],
        "statuses": [],
        "lulds": [],
        "corrections": ["AAPL"],
        "cancelErrors": ["AAPL"],
    }
    assert next(iter(ack)) == "T"
    ack = await subscribe(ws, action="unsubscribe", quotes=["AMD"])
    assert ack["quotes"] == ["MSFT"]
    assert ack["trades"] == ["AAPL"]
    assert ack["dailyBars"] == ["SPY"]
    ack = await subscribe(ws, trades=["MSFT"], bars=["*"])
    assert ack["trades"] == ["AAPL", "MSFT"]
    assert ack["corrections"] == ack["cancelErrors"] == ["AAPL", "MSFT"]
    assert ack["bars"] == ["*"]
    assert sim.stats.subscriptions["trades"] == ["AAPL", "MSFT"]
    ack = await subscribe(ws, action="unsubscribe", trades=["AAPL", "MSFT"], bars=["*"])
    assert ack["trades"] == []
    assert ack["bars"] == []
    assert ack["corrections"] == []
    await ws.close()


async def test_symbol_limit_405_leaves_state_unchanged() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), rate=0, symbol_limit=2) as sim:
        ws = await session(sim)
        assert (await subscribe(ws, trades=["AAPL"], quotes=["AAPL", "MSFT"]))["quotes"] == ["AAPL", "MSFT"]
        await ws.send(json.dumps({"action": "subscribe", "trades": ["AMD"]}))
        assert await recv(ws) == error(405, "symbol limit exceeded")
        await ws.send(json.dumps({"action": "subscribe", "bars": ["*"]}))
        assert await recv(ws) == error(405, "symbol limit exceeded")
        ack = await subscribe(ws, action="unsubscribe", quotes=["MSFT"])  # state as before the refusals
        assert ack["trades"] == ["AAPL"]
        assert ack["quotes"] == ["AAPL"]
        assert ack["bars"] == []
        await ws.close()


async def test_test_stream_ack_keys_and_fakepaca() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), rate=500, batch_size=5) as sim:
        ws = await session(sim, "/v2/test")
        ack = await subscribe(ws, trades=["FAKEPACA"], quotes=["FAKEPACA"])
        assert list(ack) == ["T", "trades", "quotes", "bars"]
        for _ in range(5):
            for item in await recv(ws):
                assert item["S"] == "FAKEPACA"
                assert item["T"] in ("t", "q")
        await ws.send(json.dumps({"action": "subscribe", "statuses": ["FAKEPACA"]}))
        frame = await recv(ws)
        while frame[0]["T"] != "error":
            frame = await recv(ws)
        assert frame == error(410, "invalid subscribe action for this feed")
        await ws.close()


async def test_fragmented_subscribe_is_reassembled(sim: AlpacaSimulator) -> None:
    ws = await session(sim, mp=True)
    symbols = [f"S{i:05d}" for i in range(5000)]
    body = msgpack.packb({"action": "subscribe", "trades": symbols})
    await ws.send([body[i : i + 4096] for i in range(0, len(body), 4096)])  # fragments, like alpaca-py
    ack = await subscribe(ws, True, trades=[])  # the next ack shows the reassembled state
    assert ack["trades"] == symbols
    await ws.close()


# ---------------------------------------------------------------- encodings and data


async def test_msgpack_frames_are_binary_with_t_first_and_ext_timestamps() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), rate=1000, batch_size=8, rare_probability=0.2) as sim:
        ws = await session(sim, mp=True)
        await subscribe(ws, True, trades=["AAPL"], quotes=["AAPL"], statuses=["*"], lulds=["*"])
        seen: Counter[str] = Counter()
        for _ in range(20):
            raw = await ws.recv()
            assert isinstance(raw, bytes)
            pairs = msgpack.unpackb(raw, object_pairs_hook=list)
            for item in pairs:
                assert item[0][0] == "T"
                fields = dict(item)
                seen[fields["T"]] += 1
                assert isinstance(fields["t"], msgpack.Timestamp)
            assert b"\xd7\xff" in raw or b"\xc7\x0c\xff" in raw  # ext -1, 64- or 96-bit form
        assert seen["t"]
        assert seen["q"]
        await ws.close()


async def test_json_frames_are_text_with_trimmed_rfc3339() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), rate=1000, batch_size=8) as sim:
        ws = await session(sim)
        await subscribe(ws, trades=["AAPL"], quotes=["MSFT"])
        for _ in range(20):
            raw = await ws.recv()
            assert isinstance(raw, str)
            for item in json.loads(raw, object_pairs_hook=list):
                assert item[0][0] == "T"
                assert RFC3339_RE.match(dict(item)["t"])
        await ws.close()


def test_rfc3339_trims_trailing_zeros() -> None:
    base = 1_741_100_462 * 1_000_000_000  # 2025-03-04T15:01:02Z
    assert rfc3339(base) == "2025-03-04T15:01:02Z"
    assert rfc3339(base + 200_000_000) == "2025-03-04T15:01:02.2Z"
    assert rfc3339(base + 123_456_789) == "2025-03-04T15:01:02.123456789Z"
    assert rfc3339(base + 835_409_580) == "2025-03-04T15:01:02.83540958Z"


@pytest.mark.parametrize("mp", [False, True])
async def test_data_only_for_subscribed_and_counts_exact(mp: bool) -> None:
    async with AlpacaSimulator(Market(SYMBOLS, seed=3), rate=3000, batch_size=6, rare_probability=0.05) as sim:
        ws = await session(sim, mp=mp)
        await subscribe(ws, mp, trades=["AAPL"], quotes=["MSFT"])
        got: Counter[str] = Counter()
        frames = 0
        sizes: set[int] = set()
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.4
        while loop.time() < end:
            frame = await recv(ws)
            frames += 1
            sizes.add(len(frame))
            for item in frame:
                got[item["T"]] += 1
                allowed = {"t": "AAPL", "q": "MSFT", "c": "AAPL", "x": "AAPL"}
                assert allowed.get(item["T"]) == item["S"], item
        # Mute, then a control round trip: every data frame sent before the ack has been read.
        sim.set_mute(True)
        await ws.send(pack({"action": "subscribe"}, mp))
        while (frame := await recv(ws))[0]["T"] != "subscription":
            frames += 1
            for item in frame:
                got[item["T"]] += 1
        sent = Counter({k: v for k, v in sim.stats.sent_by_type.items() if k in DATA_TYPES})
        assert got == sent
        assert sim.stats.messages_sent == sum(got.values())
        assert sim.stats.frames_sent == frames + 4  # connected, authenticated, 2 acks
        assert got["t"] > 20
        assert got["q"] > 20
        assert max(sizes) > 1  # batched
        await ws.close()


async def test_rate_is_respected_and_throttle() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), rate=400, batch_size=4) as sim:
        ws = await open_ws(sim, max_queue=None)  # unread frames must not stall the closing handshake
        await auth(ws)
        await subscribe(ws, trades=["*"])
        await asyncio.sleep(0.5)
        n1 = sim.stats.messages_sent
        assert 120 <= n1 <= 260  # ~200 expected
        sim.set_rate(0)
        await asyncio.sleep(0.05)
        n2 = sim.stats.messages_sent
        await asyncio.sleep(0.3)
        assert sim.stats.messages_sent == n2
        sim.set_rate(400)
        await asyncio.sleep(0.3)
        assert sim.stats.messages_sent > n2
        await ws.close()


async def test_bars_follow_the_sessions_trades() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), rate=2000, batch_size=5, rare_probability=0) as sim:
        ws = await session(sim)
        await subscribe(ws, trades=["AAPL"], bars=["AAPL"], dailyBars=["AAPL"])
        prices: list[float] = []
        while len(prices) < 50:
            prices += [item["p"] for item in await recv(ws) if item["T"] == "t"]
        sim.set_rate(0)
        await asyncio.sleep(0.05)
        await sim.flush_bars()
        bar = daily = None
        async with asyncio.timeout(2):
            while bar is None or daily is None:
                for item in await recv(ws):
                    if item["T"] == "t":
                        prices.append(item["p"])
                    elif item["T"] == "b":
                        bar = item
                    elif item["T"] == "d":
                        daily = item
        assert list(bar) == ["T", "S", "o", "h", "l", "c", "v", "t", "n", "vw"]
        assert bar["S"] == "AAPL"
        assert bar["n"] == len(prices)
        assert bar["o"] == prices[0]
        assert bar["c"] == prices[-1]
        assert bar["h"] == max(prices)
        assert bar["l"] == min(prices)
        assert RFC3339_RE.match(bar["t"])
        assert bar["t"].endswith(":00Z")
        assert daily["S"] == "AAPL"
        assert daily["n"] >= bar["n"]
        await ws.close()


# ---------------------------------------------------------------- faults


async def test_mute_still_answers_pings(sim: AlpacaSimulator) -> None:
    sim.set_rate(2000)
    ws = await session(sim)
    await subscribe(ws, trades=["AAPL"])
    await recv(ws)
    sim.set_mute(True)
    await asyncio.sleep(0.05)
    await drain_until_quiet(ws, 0.3)  # what was in flight, then silence
    async with asyncio.timeout(1):
        await (await ws.ping())
    assert sim.stats.pongs_sent >= 1
    sim.set_mute(False)
    assert (await recv(ws))[0]["T"] == "t"
    await ws.close()


async def test_no_pong_makes_client_keepalive_time_out(sim: AlpacaSimulator) -> None:
    ws = await open_ws(sim, ping_interval=0.1, ping_timeout=0.2)
    await auth(ws)
    await asyncio.sleep(0.3)
    assert sim.stats.pongs_sent >= 1  # answered while enabled
    sim.set_pong(False)
    received = sim.stats.pings_received
    with pytest.raises(ConnectionClosedError) as info:
        async with asyncio.timeout(3):
            await ws.recv()
    assert info.value.sent is not None
    assert info.value.sent.code == 1011
    await asyncio.sleep(0.05)
    assert sim.stats.last_client_close_code == 1011
    assert sim.stats.pings_received > received
    sim.set_pong(True)
    ws2 = await open_ws(sim)
    async with asyncio.timeout(1):
        await (await ws2.ping())
    await ws2.close()


async def test_malformed_frames(sim: AlpacaSimulator) -> None:
    js = await session(sim)
    mp = await session(sim, "/v2/sip", mp=True)
    await sim.send_malformed()
    with pytest.raises(json.JSONDecodeError):
        json.loads(await js.recv())
    with pytest.raises((msgpack.ExtraData, msgpack.FormatError, ValueError)):
        msgpack.unpackb(await mp.recv())
    await sim.send_malformed("wrong_frame_type")
    assert isinstance(await js.recv(), bytes)
    assert isinstance(await mp.recv(), str)
    await sim.send_malformed("not_array")
    assert isinstance(json.loads(await js.recv()), dict)
    raw = await mp.recv()
    assert isinstance(raw, bytes)
    assert isinstance(msgpack.unpackb(raw), dict)
    assert sim.stats.malformed_sent == 6
    await js.close()
    await mp.close()


@pytest.mark.parametrize(("code", "send_frame"), [(407, True), (407, False), (500, True)])
async def test_error_then_close(sim: AlpacaSimulator, code: int, send_frame: bool) -> None:
    ws = await session(sim)
    await sim.send_error(code, close=True, send_frame=send_frame)
    if send_frame:
        assert (await recv(ws))[0]["code"] == code
    assert await closed_code(ws) == (1011 if code == 500 else 1008)
    assert sim.stats.errors_sent[code] == (1 if send_frame else 0)


async def test_error_without_close_and_abort(sim: AlpacaSimulator) -> None:
    ws = await session(sim)
    await sim.send_error(500, close=False)
    assert await recv(ws) == error(500, "internal error")
    await sim.send_error(407, close=True, abort=True)
    assert (await recv(ws))[0]["code"] == 407
    assert await closed_code(ws) is None


@pytest.mark.parametrize("mp", [False, True])
async def test_invalid_prices(sim: AlpacaSimulator, mp: bool) -> None:
    ws = await session(sim, mp=mp)
    await subscribe(ws, mp, trades=["AAPL"])
    assert await sim.inject_trade("AAPL", 0.0) == 1
    assert (await recv(ws))[0]["p"] == 0.0
    await sim.inject_trade("AAPL", -5.0)
    assert (await recv(ws))[0]["p"] == -5.0
    assert await sim.inject_trade("MSFT", 1.0) == 0  # not subscribed: not sent
    await sim.inject_trade("AAPL", math.nan)
    raw = await ws.recv()
    if mp:
        assert math.isnan(msgpack.unpackb(raw)[0]["p"])
    else:
        assert isinstance(raw, str)
        assert '"p":NaN' in raw
    await ws.close()


async def test_spike_multiplies_next_trade(sim: AlpacaSimulator) -> None:
    ws = await session(sim)
    await subscribe(ws, trades=["AAPL"])
    sim.set_batch_size(1)
    sim.set_rate(200)
    normal = (await recv(ws))[0]["p"]
    sim.spike("AAPL", 1.5)
    for _ in range(5):
        price = (await recv(ws))[0]["p"]
        if price > normal * 1.3:
            break
    assert price == pytest.approx(normal * 1.5, rel=0.02)
    assert (await recv(ws))[0]["p"] == pytest.approx(normal, rel=0.02)  # one print only
    await ws.close()


async def test_unknown_type_unknown_keys_and_missing_field(sim: AlpacaSimulator) -> None:
    ws = await session(sim, mp=True)
    await sim.send_unknown("AAPL")
    frame = await recv(ws)
    assert [item["T"] for item in frame] == ["zz", "t"]
    assert frame[1]["new_key"] == {"nested": [1, 2]}
    assert isinstance(frame[1]["r"], msgpack.Timestamp)
    await sim.send_missing_field("AAPL")
    (item,) = await recv(ws)
    assert item["T"] == "t"
    assert "p" not in item
    assert "t" not in item
    await sim.inject([{"S": "AAPL", "T": "q", "bp": 1, "ap": 2, "t": 5}])
    raw = msgpack.unpackb(await ws.recv(), object_pairs_hook=list)
    assert raw[0][0] == ("T", "q")  # moved first
    await ws.close()


async def test_client_close_code_recorded(sim: AlpacaSimulator) -> None:
    ws = await session(sim)
    await ws.close(code=1000)
    await asyncio.sleep(0.05)
    assert sim.stats.last_client_close_code == 1000
    ws = await session(sim)
    await ws.close(code=4000, reason="bye")
    await asyncio.sleep(0.05)
    assert sim.stats.client_close_codes == [1000, 4000]
    assert sim.stats.active == 0


async def test_server_pings_knob() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), rate=0, ping_interval=0.05, ping_timeout=0.5) as sim:
        ws = await session(sim)
        await asyncio.sleep(0.3)
        # The client answers automatically; the server keeps the connection.
        ws.pong_waiter = None
        await ws.close()
        await asyncio.sleep(0.05)
        assert sim.stats.last_client_close_code == 1000


async def test_slow_client_gets_407() -> None:
    async with AlpacaSimulator(
        Market(SYMBOLS), rate=1e6, batch_size=200, slow_client_limit=64 * 1024, rare_probability=0
    ) as sim:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", sim.port))
        ws = await connect(sim.url(), sock=sock, open_timeout=2, max_queue=1)
        await recv(ws)
        await auth(ws)
        await ws.send(json.dumps({"action": "subscribe", "trades": ["*"], "quotes": ["*"]}))
        async with asyncio.timeout(5):  # the client reads nothing meanwhile
            await sim.wait_until(lambda: sim.stats.errors_sent[407] == 1)
        assert await closed_code(ws) is None  # the server gave up without a close handshake


# ---------------------------------------------------------------- feed mode


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_send_feed_delivers_exactly_the_frames(sim: AlpacaSimulator, encoding: str) -> None:
    mp = encoding == "msgpack"
    feed = generate_feed(SYMBOLS, 5000, batch=100, encoding="msgpack" if mp else "json", seed=7)
    assert isinstance(feed, Feed)
    assert len(feed) == 50
    assert feed.messages == 5000
    ws = await session(sim, mp=mp)
    await subscribe(ws, mp, trades=["*"], quotes=["*"])

    async def read_all() -> list[str | bytes]:
        return [await ws.recv() for _ in feed]

    result, received = await asyncio.gather(sim.send_feed(feed), read_all())
    assert list(received) == list(feed)
    assert result.sessions == 1
    assert result.frames == 50
    assert result.bytes == sum(len(f) for f in feed)
    items = [item for frame in received for item in decode(frame)]
    assert Counter(item["T"] for item in items) == feed.counts
    assert {item["S"] for item in items} == set(SYMBOLS)
    assert sim.stats.feed_frames_sent == 50
    assert sim.stats.messages_sent == 5000
    await ws.close()


async def test_constructor_feed_streams_after_subscription() -> None:
    feed = generate_feed(["AAPL"], 300, batch=7, encoding="json", seed=1)
    async with AlpacaSimulator(Market(SYMBOLS), feed=feed) as sim:
        ws = await session(sim)
        await subscribe(ws, trades=["AAPL"])
        got = [await ws.recv() for _ in feed]
        assert got == list(feed)
        async with asyncio.timeout(1):
            await sim.feed_done.wait()
        await ws.close()


# ---------------------------------------------------------------- feed quality faults


async def test_partial_subscription_keeps_the_first_symbols_of_each_list(sim: AlpacaSimulator) -> None:
    sim.apply_partially(2, count=1)
    ws = await session(sim)
    ack = await subscribe(ws, trades=["AAPL", "MSFT", "AMD", "SPY"], quotes=["SPY", "AMD", "MSFT"])
    assert (ack["trades"], ack["quotes"]) == (["AAPL", "MSFT"], ["SPY", "AMD"])
    assert ack["corrections"] == ["AAPL", "MSFT"]
    # Only the next subscribe was partial: the repair of the rest is applied in full.
    ack = await subscribe(ws, trades=["AMD", "SPY"], quotes=["MSFT"])
    assert (ack["trades"], ack["quotes"]) == (["AAPL", "MSFT", "AMD", "SPY"], ["SPY", "AMD", "MSFT"])
    await ws.close()


async def _collect(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                items += decode(await ws.recv())
    return items


# Real trading-status codes: CTA (tapes A and B) and UTP (tape C).
HALT_CODES = {"A": "2", "B": "2", "C": "H"}
RESUME_CODES = {"A": "3", "B": "3", "C": "T"}


@pytest.mark.parametrize("symbol", ["AAPL", "SPY", "GOOG"])  # tapes A, B and C in the simulator
async def test_halt_and_resume_with_the_tapes_status_codes(symbol: str) -> None:
    symbols = [*SYMBOLS, "GOOG"]
    async with AlpacaSimulator(Market(symbols, seed=1), rate=2000, batch_size=5, rare_probability=0) as sim:
        ws = await session(sim)
        await subscribe(ws, trades=symbols, statuses=[symbol])
        assert await sim.halt(symbol) == 1
        items = await _collect(ws, 0.4)
        statuses = [it for it in items if it["T"] == "s"]
        assert [s["sc"] for s in statuses] == [HALT_CODES[statuses[0]["z"]]]
        assert statuses[0]["S"] == symbol
        after = items[items.index(statuses[0]) + 1 :]
        assert [it for it in after if it["S"] == symbol] == []  # nothing trades while halted
        assert any(it["T"] == "t" for it in after)  # the others do
        assert await sim.resume(symbol) == 1
        items = await _collect(ws, 0.4)
        resumed = [it for it in items if it["T"] == "s"]
        assert [s["sc"] for s in resumed] == [RESUME_CODES[resumed[0]["z"]]]
        assert any(it["T"] == "t" and it["S"] == symbol for it in items)
        await ws.close()


async def test_a_volatility_pause_on_tape_c_is_p() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), rate=0) as sim:
        ws = await session(sim)
        await subscribe(ws, statuses=["GOOG"])  # GOOG is on tape C in the simulator
        await sim.halt("GOOG", pause=True)
        (status,) = await recv(ws)
        assert (status["sc"], status["rc"], status["z"]) == ("P", "LUDP", "C")
        await ws.close()


async def test_an_illiquid_symbol_trades_once_per_interval() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), rate=2000, batch_size=5, rare_probability=0) as sim:
        sim.set_illiquid("AAPL", 300.0)
        ws = await session(sim)
        await subscribe(ws, trades=["AAPL", "MSFT"])
        trades = Counter(it["S"] for it in await _collect(ws, 0.5) if it["T"] == "t")
        assert trades["AAPL"] == 1
        assert trades["MSFT"] > 100
        await ws.close()


async def test_a_dropped_minute_bar_is_withheld_while_its_trades_were_sent() -> None:
    async with AlpacaSimulator(Market(SYMBOLS), rate=2000, batch_size=5, rare_probability=0) as sim:
        ws = await session(sim)
        await subscribe(ws, trades=["AAPL", "MSFT"], bars=["AAPL", "MSFT"])
        traded = Counter(it["S"] for it in await _collect(ws, 0.2) if it["T"] == "t")
        assert traded["AAPL"] > 0
        assert traded["MSFT"] > 0
        sim.drop_bar("AAPL")
        sim.set_rate(0)
        await asyncio.sleep(0.05)
        await sim.flush_bars()
        bars = [it["S"] for it in await _collect(ws, 0.3) if it["T"] == "b"]
        assert bars == ["MSFT"]
        # Only one bar was dropped: the next minute's comes.
        sim.set_rate(2000)
        await _collect(ws, 0.1)
        sim.set_rate(0)
        await asyncio.sleep(0.05)
        await sim.flush_bars()
        assert sorted(it["S"] for it in await _collect(ws, 0.3) if it["T"] == "b") == ["AAPL", "MSFT"]
        await ws.close()


async def test_an_updated_bar_follows_its_bar_half_a_period_later() -> None:
    market = Market(SYMBOLS)
    async with AlpacaSimulator(
        market, rate=2000, batch_size=5, rare_probability=0, bar_period=1.0, updated_bar_probability=0
    ) as sim:
        ws = await session(sim)
        await subscribe(ws, trades=["AAPL"], bars=["AAPL"], updatedBars=["AAPL"])
        sim.update_bar("AAPL")
        items = await _collect(ws, 2.5)
        bars = [it for it in items if it["T"] == "b"]
        updates = [it for it in items if it["T"] == "u"]
        assert len(updates) == 1  # forced once; the probability is 0 otherwise
        (revised,) = [b for b in bars if b["t"] == updates[0]["t"]]
        assert updates[0]["v"] == revised["v"] + 100
        assert items.index(updates[0]) > items.index(revised)
        await ws.close()


# ---------------------------------------------------------------- crypto and options feeds

CRYPTO = ["BTC/USD", "ETH/USD", "SOL/USD"]
OPTIONS = ["AAPL250117C00150000", "SPY250321P00500000"]
CRYPTO_PATH, OPRA_PATH = "/v1beta3/crypto/us", "/v1beta1/opra"
SATURDAY_NOON_UTC = 1_797_076_800  # 2026-12-12 (a Saturday) 12:00:00 UTC
TUESDAY_1500_UTC = 1_796_742_000  # 2026-12-08 (a Tuesday) 15:00:00 UTC = 10:00 New York


def feeds_sim(**kw: Any) -> AlpacaSimulator:
    options = {"rate": 0, "rare_probability": 0.0, **kw}  # any credentials
    market = options.pop("market", None) or Market(SYMBOLS + CRYPTO + OPTIONS, seed=4)
    return AlpacaSimulator(market, **options)


async def data_items(ws: ClientConnection, n: int) -> list[dict[str, Any]]:
    """Read frames until ``n`` data items have arrived (each with ``T`` as its first key)."""
    items: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while len(items) < n:
            raw = await ws.recv()
            pairs = (
                msgpack.unpackb(raw, object_pairs_hook=list)
                if isinstance(raw, bytes)
                else json.loads(raw, object_pairs_hook=list)
            )
            assert all(item[0][0] == "T" for item in pairs)
            items.extend(item for item in decode(raw) if item["T"] not in ("success", "error", "subscription"))
    return items


@pytest.mark.parametrize(
    ("path", "mp"),
    [(CRYPTO_PATH, False), (CRYPTO_PATH, True), ("/v1beta1/indicative", True), (OPRA_PATH, True)],
)
async def test_crypto_and_options_paths_are_served(path: str, mp: bool) -> None:
    async with feeds_sim() as sim:
        ws = await session(sim, path, mp=mp)
        assert sim.sessions[0].feed == path.rsplit("/", 1)[-1].replace("us", "crypto")
        await ws.close()


@pytest.mark.parametrize("path", ["/v1beta1/indicative", OPRA_PATH])
async def test_options_refuse_json_with_412_then_close(path: str) -> None:
    async with feeds_sim() as sim:
        ws = await connect(sim.url(path), open_timeout=2, close_timeout=1)
        assert await recv(ws) == error(412, "option messages are only available in MsgPack format")
        assert await closed_code(ws) == 1008
        assert sim.stats.errors_sent[412] == 1
        assert sim.stats.sent_by_type["success"] == 0  # no `connected` either


async def test_options_412_at_auth_with_the_knob() -> None:
    async with feeds_sim(options_json_error="auth") as sim:
        ws = await open_ws(sim, OPRA_PATH)
        assert await auth(ws) == error(412, "option messages are only available in MsgPack format")
        assert await closed_code(ws) == 1008
        assert sim.stats.authenticated == 0


async def test_crypto_accepts_json_and_stocks_still_do() -> None:
    async with feeds_sim() as sim:
        for path in (CRYPTO_PATH, "/v2/iex"):
            ws = await session(sim, path, key=f"K{path}")
            await ws.close()
        assert sim.stats.errors_sent[412] == 0


async def test_ack_keys_per_feed() -> None:
    async with feeds_sim() as sim:
        crypto = await session(sim, CRYPTO_PATH)
        ack = await subscribe(crypto, trades=["BTC/USD"], orderbooks=["ETH/USD"], dailyBars=["*"])
        assert list(ack) == ["T", "trades", "quotes", "orderbooks", "bars", "updatedBars", "dailyBars"]
        assert ack["trades"] == ["BTC/USD"]
        assert ack["orderbooks"] == ["ETH/USD"]
        assert ack["dailyBars"] == ["*"]
        options = await session(sim, OPRA_PATH, mp=True)
        ack = await subscribe(options, True, trades=OPTIONS, quotes=OPTIONS[:1])
        assert ack == {"T": "subscription", "trades": OPTIONS, "quotes": OPTIONS[:1]}
        ack = await subscribe(options, True, "unsubscribe", trades=OPTIONS[1:])
        assert ack == {"T": "subscription", "trades": OPTIONS[:1], "quotes": OPTIONS[:1]}
        await crypto.close()
        await options.close()


async def test_channels_a_feed_lacks_are_410_and_leave_the_state() -> None:
    async with feeds_sim() as sim:
        options = await session(sim, OPRA_PATH, mp=True)
        await subscribe(options, True, trades=OPTIONS[:1])
        for channel in ("bars", "updatedBars", "dailyBars", "orderbooks"):
            await options.send(pack({"action": "subscribe", channel: OPTIONS[:1]}, True))
            assert await recv(options) == error(410, "invalid subscribe action for this feed")
        crypto = await session(sim, CRYPTO_PATH)
        for channel in ("statuses", "lulds", "imbalances", "news"):
            await crypto.send(json.dumps({"action": "subscribe", channel: ["BTC/USD"]}))
            assert await recv(crypto) == error(410, "invalid subscribe action for this feed")
        iex = await session(sim, "/v2/iex", key="OTHER")
        await iex.send(json.dumps({"action": "subscribe", "orderbooks": ["AAPL"]}))
        assert await recv(iex) == error(410, "invalid subscribe action for this feed")
        assert sim.stats.subscriptions["trades"] == OPTIONS[:1]
        assert sim.stats.errors_sent[410] == 9
        for ws in (options, crypto, iex):
            await ws.close()


@pytest.mark.parametrize(
    ("path", "mp", "bad"),
    [
        (CRYPTO_PATH, False, "AAPL"),
        (CRYPTO_PATH, False, "btc/usd"),
        (CRYPTO_PATH, False, "AAPL250117C00150000"),
        (OPRA_PATH, True, "BTC/USD"),
        (OPRA_PATH, True, "AAPL"),
        (OPRA_PATH, True, "AAPL251317C00150000"),  # month 13
    ],
)
async def test_symbols_a_feed_cannot_carry_are_400(path: str, mp: bool, bad: str) -> None:
    async with feeds_sim() as sim:
        ws = await session(sim, path, mp=mp)
        good = "BTC/USD" if path == CRYPTO_PATH else OPTIONS[0]
        await ws.send(pack({"action": "subscribe", "trades": [good, bad]}, mp))
        assert await recv(ws) == error(400, "invalid syntax")
        assert (await subscribe(ws, mp, trades=[good]))["trades"] == [good]
        await ws.close()


async def test_star_option_quotes_are_413_but_star_trades_are_not() -> None:
    async with feeds_sim() as sim:
        ws = await session(sim, OPRA_PATH, mp=True)
        await ws.send(pack({"action": "subscribe", "quotes": ["*"]}, True))
        assert await recv(ws) == error(413, "star subscription is not allowed for option quotes")
        assert (await subscribe(ws, True, trades=["*"]))["trades"] == ["*"]
        await ws.close()


@pytest.mark.parametrize("mp", [False, True])
async def test_crypto_trades_quotes_and_bars_have_their_feeds_shapes(mp: bool) -> None:
    async with feeds_sim(batch_size=8) as sim:
        ws = await session(sim, CRYPTO_PATH, mp=mp)
        await subscribe(ws, mp, trades=["BTC/USD", "ETH/USD"], quotes=["SOL/USD"], bars=["BTC/USD"])
        sim.set_rate(2000)
        items = await data_items(ws, 300)
        sim.set_rate(0)
        trades = [item for item in items if item["T"] == "t"]
        quotes = [item for item in items if item["T"] == "q"]
        assert len(trades) + len(quotes) == len(items)
        assert trades
        assert quotes
        for trade in trades:
            assert set(trade) == {"T", "S", "p", "s", "t", "i", "tks"}
            assert trade["S"] in ("BTC/USD", "ETH/USD")
            assert isinstance(trade["s"], float)
            assert trade["s"] > 0
            assert trade["i"] > 2**32  # 64-bit ids
            assert trade["tks"] in ("B", "S")
        assert any(t["s"] != int(t["s"]) for t in trades)  # fractional sizes
        assert {t["tks"] for t in trades} == {"B", "S"}
        btc = [t["p"] for t in trades if t["S"] == "BTC/USD"]
        assert btc
        assert all(60_000 < p < 130_000 for p in btc)
        for quote in quotes:
            assert set(quote) == {"T", "S", "bp", "bs", "ap", "as", "t"}  # no exchanges, conditions, tape
            assert quote["S"] == "SOL/USD"
            assert 0 < quote["bp"] < quote["ap"]
            assert isinstance(quote["bs"], float)
            assert isinstance(quote["as"], float)
        await sim.flush_bars()
        async with asyncio.timeout(5):  # data frames in flight may come first
            while not (bars := [item for item in await data_items(ws, 1) if item["T"] == "b"]):
                pass
        assert bars[0]["S"] == "BTC/USD"
        assert isinstance(bars[0]["v"], float)
        assert bars[0]["v"] > 0
        await ws.close()


async def test_options_trades_and_quotes_have_their_feeds_shapes() -> None:
    async with feeds_sim(batch_size=8) as sim:
        ws = await session(sim, OPRA_PATH, mp=True)
        await subscribe(ws, True, trades=OPTIONS, quotes=OPTIONS)
        sim.set_rate(2000)
        items = [item for item in await data_items(ws, 200)]
        sim.set_rate(0)
        kinds = Counter(item["T"] for item in items)
        assert set(kinds) == {"t", "q"}
        assert kinds["t"] > 20
        assert kinds["q"] > 20
        for item in items:
            assert item["S"] in OPTIONS
            assert isinstance(item["t"], msgpack.Timestamp)
            assert isinstance(item["c"], str)
            assert len(item["c"]) == 1
            if item["T"] == "t":
                assert set(item) == {"T", "S", "t", "p", "s", "x", "c"}
                assert isinstance(item["s"], int)
                assert item["s"] > 0
                assert 0.1 < item["p"] < 20  # a premium of a few dollars
            else:
                assert set(item) == {"T", "S", "t", "bx", "bp", "bs", "ax", "ap", "as", "c"}
                assert 0 < item["bp"] < item["ap"] < 20
        await ws.close()


def apply_book(book: dict[str, dict[float, float]], item: dict[str, Any]) -> None:
    if item["r"]:
        book["b"], book["a"] = {}, {}
    for side in ("b", "a"):
        for level in item[side]:
            if level["s"] == 0:
                del book[side][level["p"]]  # a removal names a level the book has
            else:
                book[side][level["p"]] = level["s"]


def crossed(book: dict[str, dict[float, float]]) -> bool:
    return bool(book["b"]) and bool(book["a"]) and max(book["b"]) >= min(book["a"])


@pytest.mark.parametrize("mp", [False, True])
async def test_orderbooks_start_with_a_snapshot_then_deltas_that_stay_uncrossed(mp: bool) -> None:
    async with feeds_sim(batch_size=4, market=Market(CRYPTO, seed=9, volatility=0.005)) as sim:
        ws = await session(sim, CRYPTO_PATH, mp=mp)
        await subscribe(ws, mp, orderbooks=["BTC/USD", "ETH/USD"])
        snapshots = await recv(ws)  # the frame right after the ack
        assert [(o["T"], o["S"], o["r"]) for o in snapshots] == [("o", "BTC/USD", True), ("o", "ETH/USD", True)]
        assert all(len(o["b"]) == len(o["a"]) == 5 for o in snapshots)
        books = {o["S"]: {"b": {}, "a": {}} for o in snapshots}
        for o in snapshots:
            apply_book(books[o["S"]], o)
            assert not crossed(books[o["S"]])
        sim.set_rate(2000)
        items = [item for item in await data_items(ws, 400)]
        sim.set_rate(0)
        removals = 0
        for o in items:
            assert o["T"] == "o"
            assert o["r"] is False
            assert list(o) == ["T", "S", "t", "b", "a", "r"]
            apply_book(books[o["S"]], o)
            assert not crossed(books[o["S"]]), o
            removals += sum(level["s"] == 0 for side in ("b", "a") for level in o[side])
            assert all(isinstance(level["s"], float) for side in ("b", "a") for level in o[side])
        assert removals > 10
        assert all(len(book["b"]) <= 10 and len(book["a"]) <= 10 for book in books.values())
        assert 60_000 < max(books["BTC/USD"]["b"]) < 130_000
        with contextlib.suppress(TimeoutError):  # frames still in flight
            while True:
                for o in await recv(ws, 0.2):
                    apply_book(books[o["S"]], o)
        # A fault crosses the book once; the next delta repairs it.
        assert await sim.cross_book("BTC/USD") == 1
        (o,) = await recv(ws)
        apply_book(books["BTC/USD"], o)
        assert crossed(books["BTC/USD"])
        sim.set_rate(2000)
        for o in [item for item in await data_items(ws, 100)]:
            apply_book(books[o["S"]], o)
        sim.set_rate(0)
        assert not crossed(books["BTC/USD"])
        await ws.close()


async def test_orderbooks_resnapshot_after_unsubscribe_and_with_trades() -> None:
    async with feeds_sim(batch_size=4) as sim:
        ws = await session(sim, CRYPTO_PATH)
        await subscribe(ws, orderbooks=["BTC/USD"], trades=["BTC/USD"])
        assert [o["r"] for o in await recv(ws)] == [True]
        sim.set_rate(2000)
        kinds = Counter(item["T"] for item in await data_items(ws, 300))
        sim.set_rate(0)
        assert kinds["t"] > kinds["o"] > 30  # orderbook_ratio 0.3 of the items beside the trades
        await subscribe(ws, action="unsubscribe", orderbooks=["BTC/USD"])
        await drain_until_quiet(ws, 0.1)
        await subscribe(ws, orderbooks=["BTC/USD"])
        assert [o["r"] for o in await recv(ws)] == [True]
        await ws.close()


async def test_crypto_streams_on_a_weekend_while_options_and_stocks_wait() -> None:
    market = Market(SYMBOLS + CRYPTO + OPTIONS, seed=2, clock=lambda: SATURDAY_NOON_UTC)
    async with feeds_sim(market=market, follow_sessions=True, bar_period=3600) as sim:
        crypto = await session(sim, CRYPTO_PATH, key="A")
        options = await session(sim, OPRA_PATH, mp=True, key="B")
        stocks = await session(sim, "/v2/iex", key="C")
        await subscribe(crypto, trades=CRYPTO, dailyBars=CRYPTO)
        await subscribe(options, True, trades=OPTIONS, quotes=OPTIONS)
        await subscribe(stocks, trades=SYMBOLS, dailyBars=SYMBOLS)
        sim.set_rate(1000)
        items = await data_items(crypto, 100)
        sim.set_rate(0)
        assert {item["S"] for item in items} <= set(CRYPTO)
        assert datetime_of(items[0]["t"]).weekday() == 5  # stamped on the Saturday
        by_feed = {s.feed: s.data_sent for s in sim.sessions}
        assert by_feed["crypto"] >= 100
        assert by_feed["opra"] == by_feed["iex"] == 0
        for ws in (crypto, options, stocks):
            await ws.close()


async def test_options_stream_during_the_equity_session() -> None:
    market = Market(OPTIONS, seed=2, clock=lambda: TUESDAY_1500_UTC)
    async with feeds_sim(market=market, follow_sessions=True) as sim:
        ws = await session(sim, OPRA_PATH, mp=True)
        await subscribe(ws, True, trades=OPTIONS)
        sim.set_rate(1000)
        assert len(await data_items(ws, 50)) >= 50
        sim.set_rate(0)
        await ws.close()


def datetime_of(rfc: str) -> Any:
    import datetime as dt

    return dt.datetime.fromisoformat(rfc.replace("Z", "+00:00"))


async def test_star_on_crypto_streams_only_crypto_pairs() -> None:
    async with feeds_sim(batch_size=8) as sim:
        ws = await session(sim, CRYPTO_PATH)
        await subscribe(ws, trades=["*"])
        sim.set_rate(2000)
        symbols = {item["S"] for item in await data_items(ws, 200)}
        sim.set_rate(0)
        assert symbols == set(CRYPTO)
        await ws.close()


async def test_injected_trades_take_each_feeds_shape() -> None:
    async with feeds_sim() as sim:
        crypto = await session(sim, CRYPTO_PATH, key="A")
        options = await session(sim, OPRA_PATH, mp=True, key="B")
        await subscribe(crypto, trades=["BTC/USD"])
        await subscribe(options, True, trades=OPTIONS[:1])
        assert await sim.inject_trade("BTC/USD", 0.0, size=0.25) == 1
        assert await sim.inject_trade(OPTIONS[0], 2.5, size=3) == 1
        (trade,) = await recv(crypto)
        assert trade["p"] == 0.0
        assert trade["s"] == 0.25
        assert set(trade) == {"T", "S", "p", "s", "t", "i", "tks"}
        (trade,) = await recv(options)
        assert (trade["p"], trade["s"], trade["c"]) == (2.5, 3, "I")
        assert "z" not in trade
        await crypto.close()
        await options.close()


async def test_a_crypto_feed_of_trades_and_order_books_for_the_benchmark() -> None:
    feed = generate_feed(CRYPTO, 3000, batch=50, encoding="msgpack", seed=3)
    assert feed.messages == 3000
    assert set(feed.counts) == {"t", "o"}
    assert feed.counts["t"] > 1000
    assert feed.counts["o"] > 1000
    async with feeds_sim() as sim:
        ws = await session(sim, CRYPTO_PATH, mp=True)
        await subscribe(ws, True, trades=["*"], orderbooks=CRYPTO)
        await drain_until_quiet(ws, 0.1)  # the subscribe's own snapshots

        async def read_all() -> list[str | bytes]:
            async with asyncio.timeout(5):
                return [await ws.recv() for _ in feed]

        _, received = await asyncio.gather(sim.send_feed(feed), read_all())
        items = [item for frame in received for item in decode(frame)]
        assert Counter(item["T"] for item in items) == feed.counts
        books: dict[str, dict[str, dict[float, float]]] = {}
        for item in items:
            if item["T"] == "t":
                assert set(item) == {"T", "S", "p", "s", "t", "i", "tks"}
                continue
            assert item["r"] is (item["S"] not in books)  # each book's snapshot first, then deltas
            apply_book(books.setdefault(item["S"], {"b": {}, "a": {}}), item)
            assert not crossed(books[item["S"]])
        assert set(books) == set(CRYPTO)
        await ws.close()


def test_a_feed_mixes_no_families() -> None:
    with pytest.raises(ValueError, match="one family"):
        generate_feed(["AAPL", "BTC/USD"], 10)
    with pytest.raises(ValueError, match="one family"):
        generate_feed(OPTIONS, 10)


async def test_feed_url_names_each_feeds_path() -> None:
    async with feeds_sim() as sim:
        assert sim.feed_url("crypto") == sim.url("/v1beta3/crypto/us")
        assert sim.feed_url("opra") == sim.url("/v1beta1/opra")
        ws = await session(sim, "/v1beta1/indicative", mp=True)
        assert sim.sessions[0].feed == "indicative"
        await ws.close()


async def test_options_412_at_header_auth_with_the_knob() -> None:
    async with feeds_sim(options_json_error="auth") as sim:
        headers = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
        ws = await open_ws(sim, OPRA_PATH, headers=headers)
        assert await recv(ws) == error(412, "option messages are only available in MsgPack format")
        assert await closed_code(ws) == 1008
        assert sim.stats.authenticated == 0
