"""Alpaca's market-data feeds, one row each: the one place that knows what differs between them.

Settings validate against it, the Alpaca client builds its URL and codec from it, the Yahoo poller maps
symbols and picks its session from it, and the simulator serves the same paths (CONTRACT sections 3 and
12; ../shared/spec/alpaca-stream.md sections 1, 5 and 6). Three families share one protocol and differ in
their message shapes:

- ``stocks``: ``/v2/{iex,sip,delayed_sip,test}``, ``/v1beta1/{boats,overnight}``;
- ``crypto``: ``/v1beta3/crypto/us``, 24/7, fractional sizes, order books;
- ``options``: ``/v1beta1/{indicative,opra}``, msgpack only (JSON gets 412), OCC symbols, no bars (410).

Pure data and pure functions: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

Family = Literal["stocks", "crypto", "options"]
Feed = Literal["iex", "sip", "delayed_sip", "boats", "overnight", "test", "crypto", "indicative", "opra"]
# The calendar a feed's data follows (EXPORTER_MARKET_HOURS=auto): see exporter.core.market_hours.
Session = Literal["regular", "overnight", "always"]

STOCK_CHANNELS: Final = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds", "imbalances")
CRYPTO_CHANNELS: Final = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "orderbooks")
OPTION_CHANNELS: Final = ("trades", "quotes")

# OCC: root (1-6), expiry YYMMDD, C or P, strike in thousandths (8 digits), e.g. AAPL250117C00150000.
_OCC = r"[A-Z0-9]{1,6}\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])[CP]\d{8}"
_OCC_SYMBOL: Final = re.compile(rf"^{_OCC}$")
# Stock tickers as Alpaca and Yahoo spell them (BRK.B, BRK-B, ^GSPC, EURUSD=X): no slash (that is a
# crypto pair) and no OCC contract (that is an option), so a symbol of another family is refused.
_STOCK_SYMBOL: Final = re.compile(rf"^(?!{_OCC}$)[A-Z0-9][A-Z0-9.\-=^]{{0,20}}$")
# BASE/QUOTE, e.g. BTC/USD, ETH/BTC, USDT/USD.
_CRYPTO_SYMBOL: Final = re.compile(r"^[A-Z0-9]{1,10}/[A-Z0-9]{1,10}$")


@dataclass(frozen=True, slots=True)
class FeedSpec:
    name: Feed
    family: Family
    path: str
    channels: tuple[str, ...]
    encodings: tuple[str, ...]
    session: Session
    symbol_pattern: re.Pattern[str]
    symbol_example: str
    # How late the feed's data is by design: 15 minutes for delayed_sip, and for indicative options, whose
    # trades Alpaca delays by 15 minutes (and whose quotes it modifies). The session as the data sees it,
    # the lag allowed and the default EXPORTER_MAX_MESSAGE_AGE_SECONDS (60 s + the delay) follow it.
    delay_s: float = 0.0

    def accepts_symbol(self, symbol: str) -> bool:
        return bool(self.symbol_pattern.match(symbol))


def _stocks(
    name: Feed,
    path: str,
    session: Session = "regular",
    channels: tuple[str, ...] = STOCK_CHANNELS,
    delay_s: float = 0.0,
) -> FeedSpec:
    return FeedSpec(name, "stocks", path, channels, ("msgpack", "json"), session, _STOCK_SYMBOL, "AAPL", delay_s)


FEEDS: Final[dict[str, FeedSpec]] = {
    spec.name: spec
    for spec in (
        _stocks("iex", "/v2/iex"),
        _stocks("sip", "/v2/sip"),
        _stocks("delayed_sip", "/v2/delayed_sip", delay_s=900.0),
        _stocks("boats", "/v1beta1/boats", "overnight"),
        _stocks("overnight", "/v1beta1/overnight", "overnight"),
        # The test stream runs 24/7 and carries trades, quotes and bars of FAKEPACA only.
        _stocks("test", "/v2/test", "always", ("trades", "quotes", "bars")),
        FeedSpec(
            "crypto",
            "crypto",
            "/v1beta3/crypto/us",
            CRYPTO_CHANNELS,
            ("msgpack", "json"),
            "always",
            _CRYPTO_SYMBOL,
            "BTC/USD",
        ),
        FeedSpec(
            "indicative",
            "options",
            "/v1beta1/indicative",
            OPTION_CHANNELS,
            ("msgpack",),
            "regular",
            _OCC_SYMBOL,
            "AAPL250117C00150000",
            delay_s=900.0,
        ),
        FeedSpec(
            "opra",
            "options",
            "/v1beta1/opra",
            OPTION_CHANNELS,
            ("msgpack",),
            "regular",
            _OCC_SYMBOL,
            "AAPL250117C00150000",
        ),
    )
}
FEED_BY_PATH: Final[dict[str, FeedSpec]] = {spec.path: spec for spec in FEEDS.values()}
# Every channel any feed offers, in a stable order (the client's subscription state covers them all).
ALL_CHANNELS: Final = tuple(dict.fromkeys(STOCK_CHANNELS + CRYPTO_CHANNELS + OPTION_CHANNELS))


def yahoo_symbol(symbol: str, family: Family) -> str:
    """Yahoo's spelling of an Alpaca symbol: crypto ``BTC/USD`` → ``BTC-USD``; stocks and OCC unchanged."""
    if family == "crypto":
        return symbol.replace("/", "-")
    return symbol
