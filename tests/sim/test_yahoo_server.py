"""The Yahoo simulator: envelope, headers, trading periods (DST), errors and every scripted fault."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from exporter.sim.market import Market
from exporter.sim.yahoo_server import (
    CHART_CACHE_CONTROL,
    CHART_CONTENT_TYPE,
    YahooSimulator,
)

CHART = "/v8/finance/chart/"
PARAMS = {"interval": "1m", "range": "1d"}
# 2026-03-10 14:34:27 UTC = 10:34:27 EDT, a Tuesday: the regular session is open (yahoo.md §2's example).
T_EDT = 1773153267
# 2026-03-06 15:00 UTC = 10:00 EST, a Friday before the 2026-03-08 DST switch.
T_EST = int(datetime(2026, 3, 6, 15, 0, tzinfo=UTC).timestamp())


class FixedClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T_EDT)


@pytest.fixture
def market(clock: FixedClock) -> Market:
    return Market(["AAPL", "MSFT", "^GSPC"], seed=7, clock=clock)


@pytest.fixture
async def sim(market: Market) -> AsyncIterator[YahooSimulator]:
    async with YahooSimulator(market) as s:
        yield s


@pytest.fixture
async def client(sim: YahooSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=2.0) as c:
        yield c


async def chart(client: httpx.AsyncClient, symbol: str = "AAPL", **params: str) -> httpx.Response:
    return await client.get(CHART + symbol, params={**PARAMS, **params})


def meta_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    meta: dict[str, Any] = body["chart"]["result"][0]["meta"]
    return meta


async def test_envelope_shape_types_and_headers(client: httpx.AsyncClient, market: Market) -> None:
    r = await chart(client)
    assert r.status_code == 200
    assert r.headers["content-type"] == CHART_CONTENT_TYPE
    assert r.headers["cache-control"] == CHART_CACHE_CONTROL
    body = r.json()
    assert set(body) == {"chart"}
    assert body["chart"]["error"] is None
    result = body["chart"]["result"][0]
    meta = result["meta"]
    for key in (
        "currency", "symbol", "exchangeName", "fullExchangeName", "instrumentType", "firstTradeDate",
        "regularMarketTime", "hasPrePostMarketData", "gmtoffset", "timezone", "exchangeTimezoneName",
        "regularMarketPrice", "fiftyTwoWeekHigh", "fiftyTwoWeekLow", "regularMarketDayHigh",
        "regularMarketDayLow", "regularMarketVolume", "longName", "shortName", "chartPreviousClose",
        "previousClose", "scale", "priceHint", "currentTradingPeriod", "tradingPeriods",
        "dataGranularity", "range", "validRanges",
    ):  # fmt: skip
        assert key in meta, key
    assert "marketState" not in meta  # chart meta has none (yahoo.md §2)
    assert meta["symbol"] == "AAPL"
    assert meta["currency"] == "USD"
    assert meta["exchangeTimezoneName"] == "America/New_York"
    assert meta["regularMarketTime"] == T_EDT
    assert isinstance(meta["regularMarketTime"], int)
    assert meta["gmtoffset"] == -14400
    assert meta["timezone"] == "EDT"
    assert meta["dataGranularity"] == "1m"
    assert meta["range"] == "1d"
    assert "1d" in meta["validRanges"]
    assert "max" in meta["validRanges"]
    assert meta["regularMarketPrice"] == market.price("AAPL")

    timestamps = result["timestamp"]
    quote = result["indicators"]["quote"][0]
    assert all(isinstance(t, int) and t % 60 == 0 for t in timestamps)
    assert timestamps == sorted(timestamps)
    assert timestamps[-1] <= T_EDT
    for series in ("open", "high", "low", "close", "volume"):
        assert len(quote[series]) == len(timestamps)
    assert None in quote["close"]  # null holes, as Yahoo has
    assert quote["close"][-1] == meta["regularMarketPrice"]
    for o, h, low, c in zip(quote["open"], quote["high"], quote["low"], quote["close"], strict=True):
        if c is not None:
            assert low <= min(o, c) <= max(o, c) <= h


async def test_trading_periods_for_the_exchange_date(client: httpx.AsyncClient) -> None:
    meta = meta_of(await chart(client))
    periods = meta["currentTradingPeriod"]
    # 09:30-16:00 EDT on 2026-03-10 = 13:30-20:00 UTC.
    assert periods["regular"] == {
        "timezone": "EDT",
        "start": int(datetime(2026, 3, 10, 13, 30, tzinfo=UTC).timestamp()),
        "end": int(datetime(2026, 3, 10, 20, 0, tzinfo=UTC).timestamp()),
        "gmtoffset": -14400,
    }
    assert periods["pre"]["end"] == periods["regular"]["start"] == 1773149400  # yahoo.md's example
    assert periods["post"]["start"] == periods["regular"]["end"] == 1773172800
    assert periods["pre"]["start"] == 1773129600
    assert periods["post"]["end"] == 1773187200
    assert meta["tradingPeriods"] == [[periods["regular"]]]


async def test_dst_and_weekend(clock: FixedClock, client: httpx.AsyncClient) -> None:
    clock.t = T_EST
    meta = meta_of(await chart(client))
    regular = meta["currentTradingPeriod"]["regular"]
    assert meta["gmtoffset"] == -18000
    assert meta["timezone"] == "EST"
    assert regular["start"] == int(datetime(2026, 3, 6, 14, 30, tzinfo=UTC).timestamp())
    assert regular["gmtoffset"] == -18000
    # Saturday 2026-03-07: the last session (Friday) is shown.
    clock.t = T_EST + 86_400
    assert meta_of(await chart(client))["currentTradingPeriod"]["regular"] == regular


async def test_trading_periods_only_intraday_and_pre_post_dict(client: httpx.AsyncClient) -> None:
    daily = meta_of(await chart(client, interval="1d", range="5d"))
    assert "tradingPeriods" not in daily
    assert daily["dataGranularity"] == "1d"
    with_pre_post = meta_of(await chart(client, includePrePost="true"))
    assert set(with_pre_post["tradingPeriods"]) == {"pre", "regular", "post"}


async def test_url_encoded_symbol(client: httpx.AsyncClient, sim: YahooSimulator) -> None:
    r = await client.get(CHART + "%5EGSPC", params=PARAMS)
    assert r.status_code == 200
    assert meta_of(r)["symbol"] == "^GSPC"
    assert sim.requests[-1].symbol == "^GSPC"
    assert sim.requests[-1].raw_path.startswith(CHART + "%5EGSPC")


async def test_prices_agree_with_the_shared_market(client: httpx.AsyncClient, market: Market) -> None:
    # What the Alpaca simulator quotes at the same moment brackets Yahoo's price.
    bid, ask, _, _ = market.quote("MSFT")
    price = meta_of(await chart(client, "MSFT"))["regularMarketPrice"]
    assert bid - 0.01 <= price <= ask + 0.01


async def test_unknown_symbol_404(client: httpx.AsyncClient, sim: YahooSimulator) -> None:
    expected = {
        "chart": {
            "result": None,
            "error": {"code": "Not Found", "description": "No data found, symbol may be delisted"},
        }
    }
    r = await chart(client, "NOPE")
    assert r.status_code == 404
    assert r.json() == expected
    sim.add_unknown("AAPL")
    assert (await chart(client)).status_code == 404
    sim.remove_unknown("AAPL")
    assert (await chart(client)).status_code == 200


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"interval": "7m"}, "interval=7m"),
        ({"range": "2d"}, "range=2d"),
        ({"range": "1mo"}, "Only 8 days worth of 1m granularity"),
        ({"interval": "5m", "range": "3mo"}, "last 60 days"),
    ],
)
async def test_bad_interval_or_range_422(client: httpx.AsyncClient, params: dict[str, str], needle: str) -> None:
    r = await chart(client, **params)
    assert r.status_code == 422
    error = r.json()["chart"]["error"]
    assert error["code"] == "Unprocessable Entity"
    assert needle in error["description"]


async def test_rate_limit_for_n_requests(client: httpx.AsyncClient, sim: YahooSimulator) -> None:
    sim.rate_limit(requests=2)
    for _ in range(2):
        r = await chart(client)
        assert r.status_code == 429
        assert r.text == "Edge: Too Many Requests"
        assert r.headers["content-type"].startswith("text/plain")
        assert "retry-after" not in r.headers
    assert (await chart(client)).status_code == 200
    assert [q.status for q in sim.requests] == [429, 429, 200]


async def test_rate_limit_for_seconds_with_retry_after(client: httpx.AsyncClient, sim: YahooSimulator) -> None:
    sim.rate_limit(seconds=0.3, retry_after=7)
    r = await chart(client)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    assert (await chart(client, "MSFT")).status_code == 429
    await asyncio.sleep(0.35)
    assert (await chart(client)).status_code == 200
    sim.rate_limit(requests=1, retry_after="Wed, 21 Oct 2026 07:28:00 GMT")
    assert (await chart(client)).headers["retry-after"] == "Wed, 21 Oct 2026 07:28:00 GMT"


async def test_token_bucket_once_tripped_stays_429(client: httpx.AsyncClient, sim: YahooSimulator) -> None:
    sim.rate_limit_bucket(rate=10.0, burst=3, trip_seconds=0.5, retry_after=2)
    statuses = [(await chart(client)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    # The refill (10/s) would allow requests again after 0.1 s, but a tripped bucket stays tripped.
    await asyncio.sleep(0.2)
    r = await chart(client)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2"
    await asyncio.sleep(0.35)
    assert (await chart(client)).status_code == 200


async def test_server_error_forbidden_html_empty(client: httpx.AsyncClient, sim: YahooSimulator) -> None:
    sim.server_error(502, requests=1, retry_after=3)
    r = await chart(client)
    assert r.status_code == 502
    assert r.headers["retry-after"] == "3"
    sim.forbidden(requests=1)
    r = await chart(client)
    assert r.status_code == 403
    assert "html" in r.headers["content-type"]
    sim.html_outage(requests=1)
    r = await chart(client)
    assert r.status_code == 200
    assert "Will be right back" in r.text
    assert r.headers["content-type"].startswith("text/html")
    sim.empty_body(requests=1)
    r = await chart(client)
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-type"] == CHART_CONTENT_TYPE
    assert (await chart(client)).status_code == 200


async def test_fault_limited_to_symbols(client: httpx.AsyncClient, sim: YahooSimulator) -> None:
    sim.rate_limit(symbols=["MSFT"])
    assert (await chart(client)).status_code == 200
    assert (await chart(client, "MSFT")).status_code == 429
    sim.clear_faults()
    assert (await chart(client, "MSFT")).status_code == 200


async def test_slow_answer_beyond_client_timeout(sim: YahooSimulator) -> None:
    sim.slow(1.0, requests=1)
    async with httpx.AsyncClient(base_url=sim.url, timeout=0.15) as c:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await chart(c)
        assert time.monotonic() - started < 0.8
        assert (await chart(c)).status_code == 200
    assert [r.status for r in sim.requests] == [0, 200]


async def test_slow_answer_still_answers(client: httpx.AsyncClient, sim: YahooSimulator) -> None:
    sim.slow(0.2, requests=1)
    started = time.monotonic()
    r = await chart(client)
    assert r.status_code == 200
    assert time.monotonic() - started >= 0.2


async def test_outage_close_and_503(client: httpx.AsyncClient, sim: YahooSimulator) -> None:
    sim.outage("close", requests=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await chart(client)
    sim.outage("503", requests=1)
    assert (await chart(client)).status_code == 503
    assert (await chart(client)).status_code == 200


@pytest.mark.parametrize(
    ("shape", "check"),
    [
        ("chart_null", lambda b: b == {"chart": None}),
        ("result_null", lambda b: b["chart"]["result"] is None),
        ("result_empty", lambda b: b["chart"]["result"] == []),
        ("null_price", lambda b: b["chart"]["result"][0]["meta"]["regularMarketPrice"] is None),
        ("missing_price", lambda b: "regularMarketPrice" not in b["chart"]["result"][0]["meta"]),
        ("zero_price", lambda b: b["chart"]["result"][0]["meta"]["regularMarketPrice"] == 0),
        ("nan_price", lambda b: math.isnan(b["chart"]["result"][0]["meta"]["regularMarketPrice"])),
        (
            "no_bars",
            lambda b: (
                "timestamp" not in b["chart"]["result"][0]
                and b["chart"]["result"][0]["indicators"]["quote"] == [{}]
                and b["chart"]["result"][0]["meta"]["currency"] is None
            ),
        ),
        ("null_last_bar", lambda b: b["chart"]["result"][0]["indicators"]["quote"][0]["close"][-1] is None),
    ],
)
async def test_shapes(client: httpx.AsyncClient, sim: YahooSimulator, shape: Any, check: Any) -> None:
    sim.set_shape("AAPL", shape)
    r = await chart(client)
    assert r.status_code == 200
    assert check(json.loads(r.content))  # json.loads: the NaN shape writes a bare NaN literal
    assert "regularMarketPrice" in meta_of(await chart(client, "MSFT"))  # other symbols unaffected
    sim.set_shape("AAPL", "normal")
    assert meta_of(await chart(client))["regularMarketPrice"] > 0


async def test_frozen_time_override_and_spike(client: httpx.AsyncClient, sim: YahooSimulator, market: Market) -> None:
    sim.freeze_time("AAPL", T_EDT - 3600)
    assert meta_of(await chart(client))["regularMarketTime"] == T_EDT - 3600
    sim.freeze_time("AAPL", None)
    assert meta_of(await chart(client))["regularMarketTime"] == T_EDT
    sim.set_price("AAPL", 12.34)
    assert meta_of(await chart(client))["regularMarketPrice"] == 12.34
    sim.set_price("AAPL", None)
    sim.spike("AAPL", 100)
    assert meta_of(await chart(client))["regularMarketPrice"] == pytest.approx(market.price("AAPL") * 100)
    sim.spike("AAPL", None)
    assert meta_of(await chart(client))["regularMarketPrice"] == market.price("AAPL")


async def test_request_log(client: httpx.AsyncClient, sim: YahooSimulator) -> None:
    await client.get(CHART + "AAPL", params=PARAMS, headers={"User-Agent": "Mozilla/5.0 test"})
    await chart(client, "NOPE")
    first, second = sim.requests
    assert first.path == CHART + "AAPL"
    assert first.params == PARAMS
    assert first.headers["User-Agent"] == "Mozilla/5.0 test"
    assert first.status == 200
    assert second.status == 404
    assert first.peer
    assert first.peer == second.peer
    assert first.at <= second.at
    assert sim.requests_for("NOPE") == [second]


async def test_lifecycle() -> None:
    sim = YahooSimulator(Market(["AAPL"]))
    with pytest.raises(RuntimeError):
        _ = sim.url
    await sim.start()
    try:
        assert sim.url.startswith("http://127.0.0.1:")
        assert sim.port > 0
        async with httpx.AsyncClient() as c:
            assert (await c.get(sim.url + CHART + "AAPL", params=PARAMS)).status_code == 200
    finally:
        await sim.stop()
    await sim.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = sim.url


async def test_stop_does_not_wait_for_hanging_requests(sim: YahooSimulator) -> None:
    sim.slow(30.0)
    async with httpx.AsyncClient(base_url=sim.url, timeout=5.0) as c:
        request = asyncio.create_task(chart(c))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await sim.stop()
        assert time.monotonic() - started < 2.0
        with pytest.raises(httpx.HTTPError):
            await request
