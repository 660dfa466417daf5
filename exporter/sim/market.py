"""One shared per-symbol random walk, so the Alpaca and Yahoo simulators agree on prices.

Symbols of every feed family share it: stock tickers, crypto pairs (``BTC/USD`` near 90,000 with
fractional sizes) and OCC option symbols (premiums of a few dollars, sizes in contracts).

Prices follow a geometric random walk advanced lazily to the time asked for: two simulators in one
process that share a ``Market`` see the same price at the same moment, within the spread each adds.
Deterministic for a given seed and sequence of calls; no I/O.
"""

from __future__ import annotations

import math
import random
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from exporter.feeds import FEEDS, Family


@dataclass(slots=True)
class MinuteBar:
    start: int  # Unix seconds of the minute's start
    o: float
    h: float
    l: float  # noqa: E741 - OHLC naming
    c: float
    v: float = 0  # shares or contracts (int), or coins (fractional)
    n: int = 0
    notional: float = 0.0

    @property
    def vw(self) -> float:
        return self.notional / self.v if self.v else self.c

    def add(self, price: float, size: float) -> None:
        """One trade into the bar."""
        self.h = max(self.h, price)
        self.l = min(self.l, price)
        self.c = price
        self.v += size
        self.n += 1
        self.notional += price * size


# Price levels of well-known crypto bases (USD), so BTC/USD looks like BTC/USD.
_CRYPTO_LEVELS: dict[str, float] = {"BTC": 90_000.0, "ETH": 3_000.0, "SOL": 150.0, "LTC": 90.0, "AVAX": 35.0}


def family_of(symbol: str) -> Family:
    """The feed family a symbol's spelling belongs to: an OCC option, a ``BASE/QUOTE`` pair, else a stock."""
    if FEEDS["opra"].accepts_symbol(symbol):
        return "options"
    if FEEDS["crypto"].accepts_symbol(symbol):
        return "crypto"
    return "stocks"


def _start_price(symbol: str, h: int) -> float:
    family = family_of(symbol)
    if family == "options":
        return 0.5 + (h % 800) / 100.0  # a premium of a few dollars
    if family == "crypto":
        base = symbol.partition("/")[0]
        level = _CRYPTO_LEVELS.get(base)
        return level * (0.95 + (h % 1000) / 10_000.0) if level is not None else 1.0 + (h % 50_000) / 100.0
    return 20.0 + (h % 48_000) / 100.0


@dataclass(slots=True)
class _Walk:
    price: float
    at: float
    family: Family = "stocks"
    bar: MinuteBar | None = None
    day_bar: MinuteBar | None = None
    trade_id: int = 0
    closed_bars: list[MinuteBar] = field(default_factory=list)


class Market:
    """Per-symbol geometric random walk.

    ``volatility`` is the standard deviation of the log price per square-root second (0.0005 is roughly
    a liquid stock on a busy day). ``clock`` returns Unix seconds; inject one for deterministic tests.
    """

    def __init__(
        self,
        symbols: Iterable[str],
        *,
        seed: int = 0,
        volatility: float = 0.0005,
        spread_bps: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rng = random.Random(seed)
        self._seed = seed
        self._vol = volatility
        self._spread = spread_bps / 10_000.0
        self._clock = clock
        self._walks: dict[str, _Walk] = {}
        for symbol in symbols:
            self.add_symbol(symbol)

    @property
    def symbols(self) -> list[str]:
        return list(self._walks)

    def now(self) -> float:
        return self._clock()

    def add_symbol(self, symbol: str) -> None:
        if symbol in self._walks:
            return
        # A stable starting price per symbol (same across runs and processes for the same seed).
        h = zlib.crc32(f"{self._seed}:{symbol}".encode())
        start = _start_price(symbol, h)
        self._walks[symbol] = _Walk(price=round(start, 2), at=self._clock(), family=family_of(symbol))

    def _advance(self, symbol: str, now: float) -> _Walk:
        walk = self._walks.get(symbol)
        if walk is None:
            self.add_symbol(symbol)
            walk = self._walks[symbol]
        dt = now - walk.at
        if dt > 0:
            step = self._rng.gauss(0.0, self._vol * math.sqrt(min(dt, 3600.0)))
            walk.price = max(0.01, walk.price * math.exp(step))
            walk.at = now
        return walk

    def price(self, symbol: str, now: float | None = None) -> float:
        """The mid price now, rounded to a cent."""
        return round(self._advance(symbol, self._clock() if now is None else now).price, 2)

    def quote(self, symbol: str, now: float | None = None) -> tuple[float, float, float, float]:
        """(bid, ask, bid size, ask size) around the current price: round lots or contracts (int), or
        coins (fractional, for crypto)."""
        walk = self._advance(symbol, self._clock() if now is None else now)
        mid = walk.price
        half = max(0.005, mid * self._spread / 2)
        bid = round(mid - half, 2)
        ask = round(mid + half, 2)
        if ask <= bid:
            ask = round(bid + 0.01, 2)
        if walk.family == "crypto":
            return bid, ask, self.coins(mid), self.coins(mid)
        return bid, ask, self._rng.randint(1, 20), self._rng.randint(1, 20)

    def coins(self, price: float) -> float:
        """A fractional crypto size worth about a thousand dollars at ``price`` (8 decimals, never 0)."""
        return max(1e-8, round(self._rng.lognormvariate(0.0, 1.0) * 1000.0 / price, 8))

    def trade(self, symbol: str, now: float | None = None) -> tuple[float, float, int]:
        """(price, size, trade id) of a new trade; updates the current minute and daily bars."""
        t = self._clock() if now is None else now
        walk = self._advance(symbol, t)
        price = round(walk.price, 2)
        size: float
        if walk.family == "crypto":
            size = self.coins(walk.price)
        elif walk.family == "options":
            size = self._rng.choice((1, 1, 2, 5, 10, 20, 50))  # contracts
        else:
            size = self._rng.choice((1, 5, 10, 50, 100, 100, 100, 200, 300, 500))
        walk.trade_id += 1
        minute = int(t) - int(t) % 60
        bar = walk.bar
        if bar is None or bar.start != minute:
            if bar is not None:
                walk.closed_bars.append(bar)
                del walk.closed_bars[:-5]
            bar = walk.bar = MinuteBar(minute, price, price, price, price)
        bar.add(price, size)
        day = walk.day_bar
        day_start = int(t) - int(t) % 86_400
        if day is None or day.start != day_start:
            day = walk.day_bar = MinuteBar(day_start, price, price, price, price)
        day.add(price, size)
        return price, size, walk.trade_id

    def pop_closed_bars(self, symbol: str) -> list[MinuteBar]:
        """Minute bars completed since the last call (what a `b` message reports)."""
        walk = self._walks.get(symbol)
        if walk is None:
            return []
        bars, walk.closed_bars = walk.closed_bars, []
        return bars

    def daily_bar(self, symbol: str) -> MinuteBar | None:
        walk = self._walks.get(symbol)
        return None if walk is None else walk.day_bar
