"""The Yahoo simulator: envelope, headers, trading periods (DST), bars at every granularity on the exchange's
sessions, errors and every scripted fault."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from exporter.core.market_hours import is_trading_day, nyse_early_closes
from exporter.sim.market import Market
from exporter.sim.yahoo_server import (
    CHART_CACHE_CONTROL,
    CHART_CONTENT_TYPE,
    YahooSimulator,
)

# Virtual loop time (``looptime``): real sockets, the simulator's timers and the tests' sleeps cost no
# wall time; durations are measured on the loop's clock, which the simulator's faults and buckets read.
pytestmark = pytest.mark.looptime

CHART = "/v8/finance/chart/"
PARAMS = {"interval": "1m", "range": "1d"}
# 2026-03-10 14:34:27 UTC = 10:34:27 EDT, a Tuesday: the regular session is open (yahoo.md §2's example).
T_EDT = 1773153267
# 2026-03-06 15:00 UTC = 10:00 EST, a Friday before the 2026-03-08 DST switch.
T_EST = int(datetime(2026, 3, 6, 15, 0, tzinfo=UTC).timestamp())
NEW_YORK = ZoneInfo("America/New_York")


def ny(hour: int, minute: int = 0, *, day: date = date(2026, 3, 10)) -> int:
    """Unix seconds of ``day`` ``hour:minute`` in New York."""
    return int(datetime(day.year, day.month, day.day, hour, minute, tzinfo=NEW_YORK).timestamp())


def now() -> float:
    return asyncio.get_running_loop().time()


def local(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, NEW_YORK)


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
    sim.rate_limit_bucket(rate=2.0, burst=3, trip_seconds=1.0, retry_after=2)
    statuses = [(await chart(client)).status_code for _ in range(4)]  # within the 0.5 s a token takes
    assert statuses == [200, 200, 200, 429]
    # The refill (2/s) would allow a request again after 0.5 s, but a tripped bucket stays tripped.
    await asyncio.sleep(0.6)
    r = await chart(client)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2"
    await asyncio.sleep(0.5)
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
        started = now()
        with pytest.raises(httpx.ReadTimeout):
            await chart(c)
        assert now() - started < 0.8
        assert (await chart(c)).status_code == 200
    assert [r.status for r in sim.requests] == [0, 200]


async def test_slow_answer_still_answers(client: httpx.AsyncClient, sim: YahooSimulator) -> None:
    sim.slow(0.2, requests=1)
    started = now()
    r = await chart(client)
    assert r.status_code == 200
    assert now() - started >= 0.2


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
        started = now()
        await sim.stop()
        assert now() - started < 2.0
        with pytest.raises(httpx.HTTPError):
            await request


# ------------------------------------------------------------------ bars at every granularity


def result_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["chart"]["result"][0]
    return result


async def test_a_year_of_daily_bars(client: httpx.AsyncClient) -> None:
    """``range=1y&interval=1d``: one bar per trading day (no weekends, no NYSE holidays), stamped at the
    session open; the last one is today's and closes at the live price."""
    result = result_of(await chart(client, interval="1d", range="1y"))
    timestamps = result["timestamp"]
    days = [local(ts).date() for ts in timestamps]
    assert len(timestamps) == 251  # 2025-03-11 .. 2026-03-10: 261 weekdays less 10 holidays
    assert days == sorted(set(days))
    assert all(is_trading_day(d) for d in days)
    assert date(2025, 12, 25) not in days
    assert days[0] == date(2025, 3, 11)
    assert days[-1] == date(2026, 3, 10)
    assert all((local(ts).hour, local(ts).minute) == (9, 30) for ts in timestamps)
    quote = result["indicators"]["quote"][0]
    assert None not in quote["close"]
    assert quote["close"][-1] == result["meta"]["regularMarketPrice"]
    assert result["indicators"]["adjclose"] == [{"adjclose": quote["close"]}]
    assert "tradingPeriods" not in result["meta"]
    assert result["meta"]["dataGranularity"] == "1d"
    assert result["meta"]["range"] == "1y"
    # The same bars from one request to the next (a deterministic history), the last one live.
    again = result_of(await chart(client, interval="1d", range="1y"))["indicators"]["quote"][0]
    assert again["close"][:-1] == quote["close"][:-1]


@pytest.mark.parametrize(
    ("interval", "range_", "step", "sessions"),
    [("1m", "1d", 60, 1), ("2m", "5d", 120, 5), ("5m", "1mo", 300, 19), ("15m", "5d", 900, 5),
     ("30m", "5d", 1800, 5), ("60m", "3mo", 3600, 60), ("90m", "5d", 5400, 5), ("1h", "1y", 3600, 251)],
)  # fmt: skip
async def test_intraday_bars_run_from_each_session_open(
    client: httpx.AsyncClient, interval: str, range_: str, step: int, sessions: int
) -> None:
    timestamps = result_of(await chart(client, interval=interval, range=range_))["timestamp"]
    days = sorted({local(ts).date() for ts in timestamps})
    assert len(days) == sessions
    assert all(is_trading_day(d) for d in days)
    for day in days:
        stamps = [ts for ts in timestamps if local(ts).date() == day]
        open_ = ny(9, 30, day=day)
        assert stamps[0] == open_
        assert all(b - a == step for a, b in itertools.pairwise(stamps))
        # Up to the close on past days (13:00 on early closes), up to now today (10:34:27).
        end = T_EDT if day == date(2026, 3, 10) else ny(13 if day in nyse_early_closes(day.year) else 16, day=day)
        assert stamps[-1] < end <= stamps[-1] + step


@pytest.mark.parametrize(
    ("interval", "range_", "period_of"),
    [
        ("1wk", "1y", lambda d: d.isocalendar()[:2]),
        ("1mo", "2y", lambda d: (d.year, d.month)),
        ("3mo", "5y", lambda d: (d.year, (d.month - 1) // 3)),
    ],
    ids=["1wk", "1mo", "3mo"],
)
async def test_longer_bars_open_with_their_first_session(
    client: httpx.AsyncClient, interval: str, range_: str, period_of: Any
) -> None:
    timestamps = result_of(await chart(client, interval=interval, range=range_))["timestamp"]
    daily = [local(ts).date() for ts in result_of(await chart(client, interval="1d", range=range_))["timestamp"]]
    firsts: dict[Any, date] = {}
    for day in daily:
        firsts.setdefault(period_of(day), day)
    assert [local(ts) for ts in timestamps] == [local(ny(9, 30, day=d)) for d in firsts.values()]


async def test_five_day_bars_group_sessions_back_from_the_last(client: httpx.AsyncClient) -> None:
    daily = result_of(await chart(client, interval="1d", range="1mo"))["timestamp"]
    five = result_of(await chart(client, interval="5d", range="1mo"))["timestamp"]
    # Counted back from the last session in fives, each bar stamped at its oldest session's open.
    back = list(reversed(daily))
    assert five == [back[min(g + 4, len(back) - 1)] for g in range(0, len(back), 5)][::-1]


@pytest.mark.parametrize(
    ("when", "last_session", "note"),
    [
        (ny(16, 0), date(2026, 3, 10), "at the close"),
        (ny(19, 30), date(2026, 3, 10), "after hours"),
        (ny(8, 0, day=date(2026, 3, 11)), date(2026, 3, 10), "pre-market the next day"),
        (ny(11, 0, day=date(2026, 3, 14)), date(2026, 3, 13), "a Saturday"),
        (ny(12, 0, day=date(2026, 4, 3)), date(2026, 4, 2), "Good Friday, a holiday"),
    ],
    ids=["close", "after-hours", "pre-market", "saturday", "holiday"],
)
async def test_outside_the_session_time_and_bars_stay_in_the_last_session(
    clock: FixedClock, client: httpx.AsyncClient, when: int, last_session: date, note: str
) -> None:
    clock.t = when
    result = result_of(await chart(client))
    meta = result["meta"]
    close = ny(16, day=last_session)
    assert meta["regularMarketTime"] == close, note
    assert result["timestamp"][-1] == close - 60
    assert result["timestamp"][0] == ny(9, 30, day=last_session)
    assert len(result["timestamp"]) == 390
    assert result["indicators"]["quote"][0]["close"][-1] == meta["regularMarketPrice"]
    regular = meta["currentTradingPeriod"]["regular"]
    if note != "pre-market the next day":  # currentTradingPeriod already shows the new day
        assert regular["start"] <= meta["regularMarketTime"] <= regular["end"]
    assert local(regular["start"]).date() == (date(2026, 3, 11) if note.startswith("pre") else last_session)


async def test_during_the_session_time_and_last_bar_are_now(clock: FixedClock, client: httpx.AsyncClient) -> None:
    for when in (ny(9, 30), T_EDT, ny(15, 59, day=date(2026, 3, 11)) + 59):
        clock.t = when
        result = result_of(await chart(client))
        assert result["meta"]["regularMarketTime"] == when
        assert result["timestamp"][-1] == when - when % 60


async def test_early_close(clock: FixedClock, client: httpx.AsyncClient) -> None:
    """The day after Thanksgiving the session ends at 13:00 (and so do its bars and its market time)."""
    day = date(2026, 11, 27)
    clock.t = ny(15, 0, day=day)
    result = result_of(await chart(client))
    assert result["meta"]["currentTradingPeriod"]["regular"]["end"] == ny(13, day=day)
    assert result["meta"]["regularMarketTime"] == ny(13, day=day)
    assert len(result["timestamp"]) == 210


async def test_period1_period2_window(client: httpx.AsyncClient) -> None:
    window = {"period1": str(ny(0, day=date(2026, 1, 5))), "period2": str(ny(0, day=date(2026, 1, 10)))}
    result = result_of(await client.get(CHART + "AAPL", params={"interval": "1d", **window}))
    assert [local(ts).date() for ts in result["timestamp"]] == [date(2026, 1, d) for d in range(5, 10)]
    # The same sessions' bars as in a year's range: a window in the past does not end at the live price.
    year = result_of(await chart(client, interval="1d", range="1y"))
    index = year["timestamp"].index(result["timestamp"][0])
    assert year["indicators"]["quote"][0]["close"][index : index + 5] == result["indicators"]["quote"][0]["close"]
    hourly = result_of(await client.get(CHART + "AAPL", params={"interval": "1h", **window}))["timestamp"]
    assert len(hourly) == 5 * 7
    # A window with no session in it: no bars, as Yahoo answers (no timestamp key).
    weekend = {"period1": str(ny(0, day=date(2026, 1, 10))), "period2": str(ny(0, day=date(2026, 1, 12)))}
    empty = result_of(await client.get(CHART + "AAPL", params={"interval": "1d", **weekend}))
    assert "timestamp" not in empty
    assert empty["indicators"] == {"quote": [{}]}


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"interval": "1m", "period1": str(T_EDT - 10 * 86_400), "period2": str(T_EDT)}, "Only 8 days"),
        ({"interval": "5m", "period1": str(T_EDT - 90 * 86_400), "period2": str(T_EDT - 80 * 86_400)}, "60 days"),
        ({"interval": "1d", "period1": str(T_EDT), "period2": str(T_EDT - 86_400)}, "start date cannot be after"),
        ({"interval": "1d", "period1": "yesterday"}, "must be integers"),
    ],
)
async def test_bad_window_422(client: httpx.AsyncClient, params: dict[str, str], needle: str) -> None:
    r = await client.get(CHART + "AAPL", params=params)
    assert r.status_code == 422
    assert needle in r.json()["chart"]["error"]["description"]


# ---------------------------------------------------------------- crypto (24/7) and options

OCC = "AAPL250117C00150000"


@pytest.fixture
async def feeds_client(clock: FixedClock) -> AsyncIterator[tuple[YahooSimulator, httpx.AsyncClient]]:
    market = Market(["AAPL", "BTC/USD", "ETH/USD", OCC], seed=7, clock=clock)
    async with YahooSimulator(market) as sim, httpx.AsyncClient(base_url=sim.url, timeout=2.0) as c:
        yield sim, c


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 3, 14, 3, 17, 5, tzinfo=UTC),  # a Saturday, at night
        datetime(2026, 4, 3, 22, 0, 0, tzinfo=UTC),  # Good Friday, after dark
        datetime(2026, 3, 10, 14, 34, 27, tzinfo=UTC),  # a weekday during the equity session
    ],
    ids=["saturday-night", "holiday-evening", "weekday"],
)
async def test_btc_usd_is_a_24_7_cryptocurrency(
    clock: FixedClock, feeds_client: tuple[YahooSimulator, httpx.AsyncClient], when: datetime
) -> None:
    sim, client = feeds_client
    clock.t = when.timestamp()
    result = result_of(await chart(client, "BTC-USD"))
    meta = result["meta"]
    assert meta["symbol"] == "BTC-USD"
    assert (meta["currency"], meta["exchangeName"], meta["instrumentType"]) == ("USD", "CCC", "CRYPTOCURRENCY")
    assert (meta["exchangeTimezoneName"], meta["timezone"], meta["gmtoffset"]) == ("UTC", "UTC", 0)
    assert meta["regularMarketTime"] == int(clock.t)  # now, whatever the hour or the day
    assert meta["regularMarketPrice"] == sim.market.price("BTC/USD")  # the Alpaca simulator's BTC/USD
    assert 60_000 < meta["regularMarketPrice"] < 130_000
    midnight = int(datetime(when.year, when.month, when.day, tzinfo=UTC).timestamp())
    regular = meta["currentTradingPeriod"]["regular"]
    assert (regular["start"], regular["end"]) == (midnight, midnight + 86_400)
    # 1m bars from the UTC midnight up to now, the last one at the live price.
    assert result["timestamp"][0] == midnight
    assert result["timestamp"][-1] == int(clock.t) - int(clock.t) % 60
    assert result["indicators"]["quote"][0]["close"][-1] == meta["regularMarketPrice"]
    clock.t += 3600  # an hour later the time has moved on, as it does for crypto on Yahoo
    assert meta_of(await chart(client, "BTC-USD"))["regularMarketTime"] == int(clock.t)


async def test_crypto_daily_bars_include_weekends(
    clock: FixedClock, feeds_client: tuple[YahooSimulator, httpx.AsyncClient]
) -> None:
    _, client = feeds_client
    clock.t = datetime(2026, 3, 15, 12, tzinfo=UTC).timestamp()  # a Sunday
    result = result_of(await chart(client, "ETH-USD", interval="1d", range="1mo"))
    days = [datetime.fromtimestamp(t, UTC) for t in result["timestamp"]]
    assert len(days) == 28  # 2026-02-16 .. 2026-03-15: every day
    assert {d.weekday() for d in days} == set(range(7))
    assert all(d.hour == 0 and d.minute == 0 for d in days)


async def test_the_alpaca_spelling_of_a_pair_is_unknown_to_yahoo(
    feeds_client: tuple[YahooSimulator, httpx.AsyncClient],
) -> None:
    _, client = feeds_client
    assert (await chart(client, "BTC-EUR")).status_code == 404
    assert (await client.get(CHART + "BTC%2FUSD", params=PARAMS)).status_code == 404


@pytest.mark.parametrize(
    ("when", "market_time"),
    [
        (T_EDT, T_EDT),  # in session: now
        (ny(11, 0, day=date(2026, 3, 14)), ny(16, day=date(2026, 3, 13))),  # Saturday: Friday's close
    ],
    ids=["session", "saturday"],
)
async def test_occ_symbols_are_options_on_the_equity_session(
    clock: FixedClock, feeds_client: tuple[YahooSimulator, httpx.AsyncClient], when: int, market_time: int
) -> None:
    sim, client = feeds_client
    clock.t = when
    meta = meta_of(await chart(client, OCC))
    assert meta["symbol"] == OCC
    assert (meta["exchangeName"], meta["instrumentType"], meta["currency"]) == ("OPR", "OPTION", "USD")
    assert meta["exchangeTimezoneName"] == "America/New_York"
    assert meta["regularMarketTime"] == market_time
    assert meta["regularMarketPrice"] == sim.market.price(OCC)
    assert 0.1 < meta["regularMarketPrice"] < 20  # a premium of a few dollars
    aapl = meta_of(await chart(client, "AAPL"))
    assert (aapl["instrumentType"], aapl["exchangeName"]) == ("EQUITY", "NMS")
