"""yfinance, Yahoo's most used client, reads the Yahoo simulator as it reads Yahoo.

yfinance has no base-URL setting (its hosts are constants), so its requests session gets a transport
adapter that sends every request to the simulator on 127.0.0.1, whatever host yfinance names; the
hosts it asked for are recorded, and nothing leaves the machine. yfinance is synchronous: it runs in a
worker thread while the simulator serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd  # type: ignore[import-untyped]
import pytest
import requests
import yfinance as yf  # type: ignore[import-untyped]
from requests.adapters import HTTPAdapter

from exporter.core.market_hours import is_trading_day
from exporter.sim.market import Market
from exporter.sim.yahoo_server import YahooSimulator

NEW_YORK = ZoneInfo("America/New_York")
# Tuesday 2026-03-10 10:34:27 EDT: the session is open.
T_OPEN = 1773153267
# Saturday 2026-03-21 11:00 EDT: the last session is Friday 2026-03-20. (Not the week after the DST
# switch: yfinance would merge that week's bar into the one before, 6 days 23 hours earlier.)
T_SATURDAY = int(datetime(2026, 3, 21, 15, 0, tzinfo=UTC).timestamp())
FRIDAY = date(2026, 3, 20)

# yfinance 1.7 still passes inplace= to pandas 3.1, which warns (pandas' deprecation, not ours to fix).
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning:yfinance")


class Loopback(HTTPAdapter):
    """Send every request to ``base`` (the simulator), keeping its path and query."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.netloc = urllib.parse.urlsplit(base).netloc
        self.asked: list[str] = []  # "host/path" as yfinance asked

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        url = urllib.parse.urlsplit(request.url or "")
        self.asked.append(url.netloc + url.path)
        request.url = urllib.parse.urlunsplit(("http", self.netloc, url.path, url.query, ""))
        return super().send(request, *args, **kwargs)


@pytest.fixture(scope="module")
def yf_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """yfinance's caches (timezones, cookies) in a temporary directory, not in the user's; its errors
    raised instead of logged and turned into an empty frame."""
    path = tmp_path_factory.mktemp("yfinance")
    yf.set_tz_cache_location(str(path))
    hide = yf.config.debug.hide_exceptions
    yf.config.debug.hide_exceptions = False
    yield path
    yf.config.debug.hide_exceptions = hide


@pytest.fixture
async def sim() -> AsyncIterator[YahooSimulator]:
    clock = [float(T_OPEN)]
    market = Market(["AAPL", "MSFT"], seed=11, clock=lambda: clock[0])
    async with YahooSimulator(market) as s:
        yield s


@pytest.fixture
def loopback(sim: YahooSimulator, yf_cache: Path) -> Loopback:
    return Loopback(sim.url)


@pytest.fixture
def session(loopback: Loopback) -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.mount("https://", loopback)
        s.mount("http://", loopback)
        yield s


async def history(t: yf.Ticker, **kwargs: Any) -> pd.DataFrame:
    frame: pd.DataFrame = await asyncio.to_thread(t.history, **kwargs)
    return frame


def sim_bars(sim: YahooSimulator, symbol: str, **params: Any) -> tuple[list[int], dict[str, Any]]:
    """The simulator's bars for the same request; yfinance drops the all-null ones (minutes without a trade)."""
    result = sim.chart_body(symbol, **params)["chart"]["result"][0]
    closes = result["indicators"]["quote"][0]["close"]
    return [ts for ts, close in zip(result["timestamp"], closes, strict=True) if close is not None], result


async def test_a_year_of_daily_bars(sim: YahooSimulator, session: requests.Session, loopback: Loopback) -> None:
    frame = await history(yf.Ticker("AAPL", session=session), period="1y", interval="1d")
    timestamps, result = sim_bars(sim, "AAPL", interval="1d", range_="1y")
    # One row per trading day of the year (weekends and NYSE holidays have none): about 250.
    assert 245 <= len(frame) <= 255
    assert len(frame) == len(timestamps)
    days = [ts.date() for ts in frame.index]
    assert all(is_trading_day(d) for d in days)
    assert days == sorted(set(days))
    assert days[-1] == date(2026, 3, 10)
    assert str(frame.index.tz) == "America/New_York"
    assert frame["Close"].iloc[-1] == pytest.approx(result["meta"]["regularMarketPrice"])
    assert (frame["Low"] <= frame[["Open", "Close"]].min(axis=1)).all()
    assert (frame["High"] >= frame[["Open", "Close"]].max(axis=1)).all()
    assert (frame["Volume"] > 0).all()
    assert "query2.finance.yahoo.com/v8/finance/chart/AAPL" in loopback.asked  # and served on 127.0.0.1
    assert not result["meta"].get("tradingPeriods")


@pytest.mark.parametrize(
    ("period", "interval", "bars"),
    [("1d", "1m", 390), ("5d", "5m", 5 * 78), ("1mo", "1h", 20 * 7), ("1y", "1wk", 53), ("5y", "1mo", 61)],
)
async def test_other_granularities(
    sim: YahooSimulator, session: requests.Session, period: str, interval: str, bars: int
) -> None:
    """After the close every granularity ends in the last session; intraday rows stay inside sessions."""
    sim.clock = lambda: float(T_SATURDAY)
    frame = await history(yf.Ticker("MSFT", session=session), period=period, interval=interval)
    timestamps, result = sim_bars(sim, "MSFT", interval=interval, range_=period)
    assert len(result["timestamp"]) == bars
    if interval[-1] in "mh":
        assert [ts.timestamp() for ts in frame.index] == timestamps
    else:  # yfinance labels daily and longer rows with their date
        assert [ts.date() for ts in frame.index] == [datetime.fromtimestamp(ts, NEW_YORK).date() for ts in timestamps]
    if interval in ("1m", "5m", "1h"):
        assert frame.index[-1].date() == FRIDAY
        for stamp in frame.index:
            minutes = stamp.hour * 60 + stamp.minute
            assert 9 * 60 + 30 <= minutes < 16 * 60, stamp
            assert is_trading_day(stamp.date())


async def test_start_and_end_dates(sim: YahooSimulator, session: requests.Session) -> None:
    """Dates become ``period1``/``period2``: the sessions from the start up to (not including) the end."""
    frame = await history(yf.Ticker("AAPL", session=session), start="2026-01-05", end="2026-01-10", interval="1d")
    assert [ts.date() for ts in frame.index] == [date(2026, 1, d) for d in range(5, 10)]
    frame = await history(yf.Ticker("AAPL", session=session), start="2026-03-02", end="2026-03-04", interval="15m")
    assert len(frame) == 2 * 26
    assert {ts.date() for ts in frame.index} == {date(2026, 3, 2), date(2026, 3, 3)}


async def test_market_time_and_bars_stay_in_the_last_session(sim: YahooSimulator, session: requests.Session) -> None:
    """The issue's observation, through yfinance: on a Saturday regularMarketTime and the last minute
    bar lie inside currentTradingPeriod's regular session (Friday's), not at "now"."""
    sim.clock = lambda: float(T_SATURDAY)
    t = yf.Ticker("AAPL", session=session)
    frame = await history(t, period="1d", interval="1m")
    meta = t.history_metadata
    regular = meta["currentTradingPeriod"]["regular"]
    start, end = regular["start"], regular["end"]
    assert start.date() == FRIDAY
    assert start <= meta["regularMarketTime"] <= end
    assert frame.index[0] == start
    assert frame.index[-1] == end - pd.Timedelta(minutes=1)
