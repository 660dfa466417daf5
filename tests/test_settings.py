"""Settings and ``check-config`` against CONTRACT sections 2 and 3: every variable, bad values, no secret leaks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest

from exporter.cli import main
from exporter.feeds import Feed
from exporter.settings import CHANNELS, ConfigError, Settings, load_settings

KEY = "PKZQ4TESTKEYID7734XW"
SECRET = "tH1s/Is+The=Secret0fAlpacaKey9876543210zz"
REQUIRED = {"APCA_API_KEY_ID": KEY, "APCA_API_SECRET_KEY": SECRET, "EXPORTER_SYMBOLS": "AAPL,MSFT,SPY"}

# Every variable of CONTRACT section 3 with its default as the contract states it.
CONTRACT_VARIABLES = (
    "APCA_API_KEY_ID",
    "APCA_API_SECRET_KEY",
    "EXPORTER_SYMBOLS",
    "EXPORTER_ALPACA_FEED",
    "EXPORTER_ALPACA_URL",
    "EXPORTER_ALPACA_ENCODING",
    "EXPORTER_ALPACA_CHANNELS",
    "EXPORTER_YAHOO_URL",
    "EXPORTER_YAHOO_ENABLED",
    "EXPORTER_YAHOO_INTERVAL_SECONDS",
    "EXPORTER_YAHOO_STANDBY_INTERVAL_SECONDS",
    "EXPORTER_STALE_AFTER_SECONDS",
    "EXPORTER_MARKET_HOURS",
    "EXPORTER_ALPACA_BACKOFF_MAX_SECONDS",
    "EXPORTER_ALPACA_CONNECTION_LIMIT_BACKOFF_SECONDS",
    "EXPORTER_FAILBACK_AFTER_SECONDS",
    "EXPORTER_MAX_MESSAGE_AGE_SECONDS",
    "EXPORTER_MAX_CLOCK_SKEW_SECONDS",
    "EXPORTER_CIRCUIT_BREAKER_PERCENT",
    "EXPORTER_CIRCUIT_BREAKER_COOLDOWN_SECONDS",
    "EXPORTER_MAX_SYMBOL_SERIES",
    "EXPORTER_HOST",
    "EXPORTER_PORT",
    "EXPORTER_LOG_LEVEL",
    "EXPORTER_LOG_FORMAT",
    "EXPORTER_YAHOO_SYMBOLS",  # section 12
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No inherited EXPORTER_*/APCA_* variables and no stray .env: each test sets exactly what it means."""
    for name in list(os.environ):
        if name.startswith(("EXPORTER_", "APCA_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def setenv(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def problems_for(**env: str) -> list[str]:
    with pytest.MonkeyPatch.context() as mp:
        setenv(mp, env)
        with pytest.raises(ConfigError) as info:
            load_settings(for_run=True, env_file=None)
    return info.value.problems


# ---- defaults and happy paths --------------------------------------------------------------------


def test_defaults_are_the_contracts(monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, REQUIRED)
    s = load_settings(for_run=True, env_file=None)
    assert s.apca_api_key_id is not None
    assert s.apca_api_key_id.get_secret_value() == KEY
    assert s.apca_api_secret_key is not None
    assert s.apca_api_secret_key.get_secret_value() == SECRET
    assert s.symbols == ["AAPL", "MSFT", "SPY"]
    assert s.alpaca_feed == "iex"
    assert s.stream_url == "wss://stream.data.alpaca.markets/v2/iex"
    assert s.alpaca_encoding == "msgpack"
    assert s.alpaca_channels == ["trades"]
    assert s.yahoo_url == "https://query1.finance.yahoo.com"
    assert s.yahoo_enabled is True
    assert s.yahoo_interval_seconds == 5
    assert s.yahoo_standby_interval_seconds == 60
    assert s.stale_after_seconds == 30
    assert s.market_hours == "auto"
    assert s.market_hours_mode == "regular"
    assert s.alpaca_backoff_max_seconds == 60
    assert s.alpaca_connection_limit_backoff_seconds == 90
    assert s.failback_after_seconds == 30
    assert s.message_max_age_seconds == 60
    assert s.max_clock_skew_seconds == 5
    assert s.circuit_breaker_percent == 20
    assert s.circuit_breaker_cooldown_seconds == 60
    assert s.max_symbol_series == 500
    assert s.host == "0.0.0.0"
    assert s.port == 9877
    assert s.log_level == "INFO"
    assert s.log_format == "json"


def secret_value(s: Settings, name: str) -> str:
    value = getattr(s, name)
    return str(value.get_secret_value())


# (variable, raw value, how to read it back, expected)
HAPPY: list[tuple[str, str, str, Any]] = [
    ("APCA_API_KEY_ID", "PKOTHERKEY", "apca_api_key_id", "PKOTHERKEY"),
    ("APCA_API_SECRET_KEY", "other/secret+", "apca_api_secret_key", "other/secret+"),
    ("EXPORTER_SYMBOLS", " aapl, BRK.B ,msft,AAPL,, spy ", "symbols", ["AAPL", "BRK.B", "MSFT", "SPY"]),
    ("EXPORTER_ALPACA_FEED", "SIP", "alpaca_feed", "sip"),
    ("EXPORTER_ALPACA_URL", "ws://127.0.0.1:8765/v2/iex", "stream_url", "ws://127.0.0.1:8765/v2/iex"),
    ("EXPORTER_ALPACA_ENCODING", "json", "alpaca_encoding", "json"),
    (
        "EXPORTER_ALPACA_CHANNELS",
        "trades,quotes,bars,updatedBars,dailyBars,statuses,lulds",
        "alpaca_channels",
        ["trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds"],
    ),
    ("EXPORTER_YAHOO_URL", "http://127.0.0.1:8080/", "yahoo_url", "http://127.0.0.1:8080"),
    ("EXPORTER_YAHOO_ENABLED", "false", "yahoo_enabled", False),
    ("EXPORTER_YAHOO_INTERVAL_SECONDS", "2.5", "yahoo_interval_seconds", 2.5),
    ("EXPORTER_YAHOO_STANDBY_INTERVAL_SECONDS", "120", "yahoo_standby_interval_seconds", 120.0),
    ("EXPORTER_STALE_AFTER_SECONDS", "0", "stale_after_seconds", 0.0),
    ("EXPORTER_MARKET_HOURS", "Always", "market_hours_mode", "always"),
    ("EXPORTER_ALPACA_BACKOFF_MAX_SECONDS", "15", "alpaca_backoff_max_seconds", 15.0),
    ("EXPORTER_ALPACA_CONNECTION_LIMIT_BACKOFF_SECONDS", "120", "alpaca_connection_limit_backoff_seconds", 120.0),
    ("EXPORTER_FAILBACK_AFTER_SECONDS", "10", "failback_after_seconds", 10.0),
    ("EXPORTER_MAX_MESSAGE_AGE_SECONDS", "90", "message_max_age_seconds", 90.0),
    ("EXPORTER_MAX_CLOCK_SKEW_SECONDS", "2", "max_clock_skew_seconds", 2.0),
    ("EXPORTER_CIRCUIT_BREAKER_PERCENT", "7.5", "circuit_breaker_percent", 7.5),
    ("EXPORTER_CIRCUIT_BREAKER_COOLDOWN_SECONDS", "30", "circuit_breaker_cooldown_seconds", 30.0),
    ("EXPORTER_MAX_SYMBOL_SERIES", "50", "max_symbol_series", 50),
    ("EXPORTER_HOST", "127.0.0.1", "host", "127.0.0.1"),
    ("EXPORTER_PORT", "0", "port", 0),
    ("EXPORTER_LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("EXPORTER_LOG_FORMAT", "console", "log_format", "console"),
    (
        "EXPORTER_YAHOO_SYMBOLS",
        " spy = spy.mx ",
        "yahoo_symbol_map",
        {"AAPL": "AAPL", "MSFT": "MSFT", "SPY": "SPY.MX"},
    ),
]


def test_happy_table_covers_every_variable() -> None:
    assert {row[0] for row in HAPPY} == set(CONTRACT_VARIABLES)


@pytest.mark.parametrize(("var", "raw", "attr", "expected"), HAPPY, ids=[row[0] for row in HAPPY])
def test_each_variable_happy_path(
    monkeypatch: pytest.MonkeyPatch, var: str, raw: str, attr: str, expected: Any
) -> None:
    setenv(monkeypatch, {**REQUIRED, var: raw})
    s = load_settings(for_run=True, env_file=None)
    value = secret_value(s, attr) if attr.startswith("apca_") else getattr(s, attr)
    assert value == expected


# (variable, bad raw value)
BAD: list[tuple[str, str]] = [
    ("APCA_API_KEY_ID", ""),
    ("APCA_API_SECRET_KEY", ""),
    ("EXPORTER_SYMBOLS", "AAPL,not a symbol!"),
    ("EXPORTER_ALPACA_FEED", "nasdaq"),
    ("EXPORTER_ALPACA_URL", "http://127.0.0.1:8765/v2/iex"),
    ("EXPORTER_ALPACA_ENCODING", "protobuf"),
    ("EXPORTER_ALPACA_CHANNELS", "trades,orders"),
    ("EXPORTER_YAHOO_URL", "query1.finance.yahoo.com"),
    ("EXPORTER_YAHOO_ENABLED", "perhaps"),
    ("EXPORTER_YAHOO_INTERVAL_SECONDS", "0"),
    ("EXPORTER_YAHOO_STANDBY_INTERVAL_SECONDS", "-1"),
    ("EXPORTER_STALE_AFTER_SECONDS", "-1"),
    ("EXPORTER_MARKET_HOURS", "weekdays"),
    ("EXPORTER_ALPACA_BACKOFF_MAX_SECONDS", "0"),
    ("EXPORTER_ALPACA_CONNECTION_LIMIT_BACKOFF_SECONDS", "soon"),
    ("EXPORTER_FAILBACK_AFTER_SECONDS", "-5"),
    ("EXPORTER_MAX_MESSAGE_AGE_SECONDS", "0"),
    ("EXPORTER_MAX_CLOCK_SKEW_SECONDS", "-1"),
    ("EXPORTER_CIRCUIT_BREAKER_PERCENT", "0"),
    ("EXPORTER_CIRCUIT_BREAKER_COOLDOWN_SECONDS", "-1"),
    ("EXPORTER_MAX_SYMBOL_SERIES", "0"),
    ("EXPORTER_HOST", "not a host"),
    ("EXPORTER_PORT", "70000"),
    ("EXPORTER_LOG_LEVEL", "LOUD"),
    ("EXPORTER_LOG_FORMAT", "xml"),
    ("EXPORTER_YAHOO_SYMBOLS", "AAPL"),
]


def test_bad_table_covers_every_variable() -> None:
    assert {row[0] for row in BAD} == set(CONTRACT_VARIABLES)


@pytest.mark.parametrize(("var", "raw"), BAD, ids=[row[0] for row in BAD])
def test_each_variable_bad_value_names_it(var: str, raw: str) -> None:
    problems = problems_for(**{**REQUIRED, var: raw})
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{var}:"), problems


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("EXPORTER_SYMBOLS", "AAPL;MSFT"),
        ("EXPORTER_PORT", "abc"),
        ("EXPORTER_PORT", "-1"),
        ("EXPORTER_MAX_SYMBOL_SERIES", "1.5"),
        ("EXPORTER_STALE_AFTER_SECONDS", "nan"),
        ("EXPORTER_ALPACA_CHANNELS", ""),
        ("EXPORTER_ALPACA_URL", "ws://"),
        # Each of these passed the checker once, then `run` died with a traceback when connecting.
        ("EXPORTER_ALPACA_URL", "ws://127.0.0.1:99999/v2/iex"),
        ("EXPORTER_ALPACA_URL", "ws://127.0.0.1:notaport/v2/iex"),
        ("EXPORTER_ALPACA_URL", "ws://127.0.0.1:/v2/iex"),
        ("EXPORTER_ALPACA_URL", "ws://[::1/v2/iex"),
        ("EXPORTER_ALPACA_URL", "ws://[zz::1]:8765/v2/iex"),
        ("EXPORTER_ALPACA_URL", "ws://bad_host!/v2/iex"),
        ("EXPORTER_YAHOO_URL", "http://127.0.0.1:99999"),
        ("EXPORTER_YAHOO_URL", "http://127.0.0.1:0"),
        ("EXPORTER_YAHOO_URL", "https://[::1:8080"),
        ("EXPORTER_YAHOO_URL", "http://exa mple.com"),
        ("EXPORTER_MAX_STREAM_LAG_SECONDS", "-1"),
        ("EXPORTER_MAX_STREAM_LAG_SECONDS", "soon"),
    ],
)
def test_more_bad_values(var: str, raw: str) -> None:
    problems = problems_for(**{**REQUIRED, var: raw})
    assert [p.split(":")[0] for p in problems] == [var]


@pytest.mark.parametrize(
    "var",
    [
        "EXPORTER_YAHOO_INTERVAL_SECONDS",
        "EXPORTER_FAILBACK_AFTER_SECONDS",
        "EXPORTER_CIRCUIT_BREAKER_COOLDOWN_SECONDS",
        "EXPORTER_STALE_AFTER_SECONDS",
        "EXPORTER_MAX_MESSAGE_AGE_SECONDS",
        "EXPORTER_MAX_STREAM_LAG_SECONDS",
    ],
)
def test_infinite_durations_are_rejected(var: str) -> None:
    """`inf` parses as a float; as a period or a timeout it would silently disable the mechanism."""
    extra = {"EXPORTER_YAHOO_STANDBY_INTERVAL_SECONDS": "inf"} if var == "EXPORTER_YAHOO_INTERVAL_SECONDS" else {}
    problems = problems_for(**{**REQUIRED, **extra, var: "inf"})
    assert any(p.startswith(f"{var}:") for p in problems), problems


def test_stream_lag_limit_defaults_to_30_s_and_0_disables(monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, REQUIRED)
    assert load_settings(for_run=True, env_file=None).max_stream_lag_seconds == 30.0
    setenv(monkeypatch, {**REQUIRED, "EXPORTER_MAX_STREAM_LAG_SECONDS": "0"})
    assert load_settings(for_run=True, env_file=None).max_stream_lag_seconds == 0.0


def test_missing_required_values_for_run() -> None:
    problems = problems_for()
    assert [p.split(":")[0] for p in problems] == ["APCA_API_KEY_ID", "APCA_API_SECRET_KEY", "EXPORTER_SYMBOLS"]


def test_required_values_are_not_needed_to_load() -> None:
    s = load_settings(env_file=None)
    assert s.symbols == []
    assert s.apca_api_key_id is None


def test_every_problem_is_reported_at_once() -> None:
    """A bad value and a missing required one: both lines, so one run of check-config shows everything."""
    problems = problems_for(EXPORTER_PORT="abc", EXPORTER_LOG_LEVEL="LOUD")
    names = sorted(p.split(":")[0] for p in problems)
    assert names == sorted(
        ["EXPORTER_PORT", "EXPORTER_LOG_LEVEL", "APCA_API_KEY_ID", "APCA_API_SECRET_KEY", "EXPORTER_SYMBOLS"]
    )


def test_standby_interval_must_not_be_shorter_than_active() -> None:
    problems = problems_for(
        **REQUIRED, EXPORTER_YAHOO_INTERVAL_SECONDS="30", EXPORTER_YAHOO_STANDBY_INTERVAL_SECONDS="10"
    )
    assert len(problems) == 1
    assert "EXPORTER_YAHOO_STANDBY_INTERVAL_SECONDS" in problems[0]
    assert "EXPORTER_YAHOO_INTERVAL_SECONDS" in problems[0]


def test_test_feed_streams_only_fakepaca(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = problems_for(**{**REQUIRED, "EXPORTER_ALPACA_FEED": "test"})
    assert len(problems) == 1
    assert "EXPORTER_SYMBOLS" in problems[0]
    setenv(monkeypatch, {**REQUIRED, "EXPORTER_ALPACA_FEED": "test", "EXPORTER_SYMBOLS": "FAKEPACA"})
    s = load_settings(for_run=True, env_file=None)
    assert s.stream_url == "wss://stream.data.alpaca.markets/v2/test"
    assert s.market_hours_mode == "always"


@pytest.mark.parametrize(
    ("feed", "url", "mode", "max_age"),
    [
        ("iex", "wss://stream.data.alpaca.markets/v2/iex", "regular", 60.0),
        ("sip", "wss://stream.data.alpaca.markets/v2/sip", "regular", 60.0),
        ("delayed_sip", "wss://stream.data.alpaca.markets/v2/delayed_sip", "regular", 960.0),
        ("boats", "wss://stream.data.alpaca.markets/v1beta1/boats", "overnight", 60.0),
        ("overnight", "wss://stream.data.alpaca.markets/v1beta1/overnight", "overnight", 60.0),
        # CONTRACT section 12: crypto is always open, options keep the equity session; indicative trades
        # come 15 minutes late (not stale_timestamp rejections).
        ("crypto", "wss://stream.data.alpaca.markets/v1beta3/crypto/us", "always", 60.0),
        ("indicative", "wss://stream.data.alpaca.markets/v1beta1/indicative", "regular", 960.0),
        ("opra", "wss://stream.data.alpaca.markets/v1beta1/opra", "regular", 60.0),
    ],
)
def test_feed_derives_url_calendar_and_age(
    monkeypatch: pytest.MonkeyPatch, feed: str, url: str, mode: str, max_age: float
) -> None:
    setenv(monkeypatch, feed_env(feed))
    s = load_settings(for_run=True, env_file=None)
    assert (s.stream_url, s.market_hours_mode, s.message_max_age_seconds) == (url, mode, max_age)
    monkeypatch.setenv("EXPORTER_MAX_MESSAGE_AGE_SECONDS", "30")
    monkeypatch.setenv("EXPORTER_MARKET_HOURS", "never")
    monkeypatch.setenv("EXPORTER_ALPACA_URL", "wss://example.test/v2/x")
    s = load_settings(for_run=True, env_file=None)
    assert (s.stream_url, s.market_hours_mode, s.message_max_age_seconds) == ("wss://example.test/v2/x", "never", 30.0)
    monkeypatch.setenv("EXPORTER_MARKET_HOURS", "always")  # an explicit calendar wins over the feed's
    assert load_settings(for_run=True, env_file=None).market_hours_mode == "always"


# ---- feeds beyond stocks (CONTRACT section 12) ---------------------------------------------------

# Written from CONTRACT sections 3 and 12 (and alpaca-stream.md section 1 for the test stream), not
# imported from exporter.feeds: feed -> (channels it offers, encodings, a symbol of its family).
STOCK_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds", "imbalances")
FEED_TABLE: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    **{feed: (STOCK_CHANNELS, ("msgpack", "json"), "AAPL") for feed in ("iex", "sip", "delayed_sip", "boats")},
    "overnight": (STOCK_CHANNELS, ("msgpack", "json"), "BRK.B"),
    "test": (("trades", "quotes", "bars"), ("msgpack", "json"), "FAKEPACA"),
    "crypto": (("trades", "quotes", "bars", "updatedBars", "dailyBars", "orderbooks"), ("msgpack", "json"), "BTC/USD"),
    "indicative": (("trades", "quotes"), ("msgpack",), "AAPL250117C00150000"),
    "opra": (("trades", "quotes"), ("msgpack",), "SPY241220P00400000"),
}
EVERY_CHANNEL = tuple(dict.fromkeys(c for channels, _, _ in FEED_TABLE.values() for c in channels))
# A symbol of each family, and of none other.
FAMILY_SYMBOLS = {
    "stocks": ("AAPL", "BRK.B", "EURUSD=X"),
    "crypto": ("BTC/USD", "ETH/BTC"),
    "options": ("AAPL250117C00150000",),
}
FEED_FAMILY = {
    feed: "crypto" if feed == "crypto" else "options" if feed in ("indicative", "opra") else "stocks"
    for feed in FEED_TABLE
}
REFUSED_CHANNELS = [(f, c) for f, (offered, _, _) in FEED_TABLE.items() for c in EVERY_CHANNEL if c not in offered]
REFUSED_ENCODINGS = [
    (f, e) for f, (_, encodings, _) in FEED_TABLE.items() for e in ("msgpack", "json") if e not in encodings
]
REFUSED_SYMBOLS = [
    (f, s)
    for f in FEED_TABLE
    for family, symbols in FAMILY_SYMBOLS.items()
    if family != FEED_FAMILY[f]
    for s in symbols
]


def feed_env(feed: str, **more: str) -> dict[str, str]:
    """A valid environment for ``feed`` (its own symbol, trades), with ``more`` on top."""
    return {**REQUIRED, "EXPORTER_ALPACA_FEED": feed, "EXPORTER_SYMBOLS": FEED_TABLE[feed][2], **more}


def test_feed_table_covers_every_feed_and_channel() -> None:
    assert set(FEED_TABLE) == set(get_args(Feed))
    assert set(EVERY_CHANNEL) == set(CHANNELS)
    assert ("crypto", "statuses") in REFUSED_CHANNELS
    assert ("iex", "orderbooks") in REFUSED_CHANNELS
    assert REFUSED_ENCODINGS == [("indicative", "json"), ("opra", "json")]


@pytest.mark.parametrize(("feed", "channel"), REFUSED_CHANNELS)
def test_a_channel_the_feed_does_not_offer_is_refused(feed: str, channel: str) -> None:
    problems = problems_for(**feed_env(feed, EXPORTER_ALPACA_CHANNELS=f"trades,{channel}"))
    assert len(problems) == 1, problems
    assert problems[0].startswith("EXPORTER_ALPACA_CHANNELS: entry 2 is not a channel of the"), problems
    assert f"{feed} feed" in problems[0]


@pytest.mark.parametrize(("feed", "encoding"), REFUSED_ENCODINGS)
def test_json_is_refused_on_the_options_feeds(feed: str, encoding: str) -> None:
    problems = problems_for(**feed_env(feed, EXPORTER_ALPACA_ENCODING=encoding.upper()))
    assert len(problems) == 1, problems
    assert problems[0].startswith("EXPORTER_ALPACA_ENCODING:"), problems
    assert "msgpack" in problems[0]


@pytest.mark.parametrize(("feed", "symbol"), REFUSED_SYMBOLS)
def test_a_symbol_of_another_family_is_refused(feed: str, symbol: str) -> None:
    own = FEED_TABLE[feed][2]
    problems = problems_for(**feed_env(feed, EXPORTER_SYMBOLS=f"{own},{symbol.lower()}"))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"EXPORTER_SYMBOLS: entry 2 cannot be a symbol of the {feed} feed"), problems
    assert symbol not in problems[0].split(", e.g.")[0]  # positions, never the values


@pytest.mark.parametrize("feed", list(FEED_TABLE))
def test_every_feed_accepts_its_own_channels_encodings_and_symbols(monkeypatch: pytest.MonkeyPatch, feed: str) -> None:
    channels, encodings, _ = FEED_TABLE[feed]
    symbols = ["FAKEPACA"] if feed == "test" else FAMILY_SYMBOLS[FEED_FAMILY[feed]]
    for encoding in encodings:
        env = feed_env(feed, EXPORTER_SYMBOLS=",".join(symbols), EXPORTER_ALPACA_CHANNELS=",".join(channels))
        setenv(monkeypatch, {**env, "EXPORTER_ALPACA_ENCODING": encoding})
        s = load_settings(for_run=True, env_file=None)
        assert (s.alpaca_feed, s.alpaca_encoding, s.alpaca_channels, s.symbols) == (
            feed,
            encoding,
            list(channels),
            list(symbols),
        )


def test_several_feed_problems_are_one_line_each() -> None:
    problems = problems_for(
        **feed_env(
            "opra",
            EXPORTER_SYMBOLS="AAPL250117C00150000,BTC/USD",
            EXPORTER_ALPACA_CHANNELS="trades,bars",
            EXPORTER_ALPACA_ENCODING="json",
            EXPORTER_YAHOO_SYMBOLS="MSFT=MSFT",
        )
    )
    assert sorted(p.split(":")[0] for p in problems) == [
        "EXPORTER_ALPACA_CHANNELS",
        "EXPORTER_ALPACA_ENCODING",
        "EXPORTER_SYMBOLS",
    ]  # the Yahoo mapping is checked against the symbols once they are valid


def test_model_level_problems_are_one_line_each() -> None:
    problems = problems_for(
        **feed_env(
            "crypto",
            EXPORTER_YAHOO_INTERVAL_SECONDS="30",
            EXPORTER_YAHOO_STANDBY_INTERVAL_SECONDS="10",
            EXPORTER_YAHOO_SYMBOLS="ETH/USD=ETH-USD",
        )
    )
    assert len(problems) == 2, problems
    assert problems[0].startswith("EXPORTER_YAHOO_STANDBY_INTERVAL_SECONDS")
    assert problems[1] == "EXPORTER_YAHOO_SYMBOLS: entry 1 maps a symbol that is not in EXPORTER_SYMBOLS"


@pytest.mark.parametrize(
    ("feed", "symbols", "override", "expected"),
    [
        ("crypto", "BTC/USD,eth/usd", "", {"BTC/USD": "BTC-USD", "ETH/USD": "ETH-USD"}),
        ("crypto", "BTC/USD,USDT/USD", "usdt/usd=usdt-usd ", {"BTC/USD": "BTC-USD", "USDT/USD": "USDT-USD"}),
        ("crypto", "BTC/USD", "BTC/USD=BTC-USDT", {"BTC/USD": "BTC-USDT"}),
        ("opra", "AAPL250117C00150000", "", {"AAPL250117C00150000": "AAPL250117C00150000"}),
        (
            "iex",
            "AAPL,BRK.B,EURUSD",
            "BRK.B=BRK-B,EURUSD=EURUSD=X",
            {"AAPL": "AAPL", "BRK.B": "BRK-B", "EURUSD": "EURUSD=X"},
        ),
        ("iex", "SPX", "SPX=^GSPC", {"SPX": "^GSPC"}),
    ],
)
def test_yahoo_symbols_default_to_the_feeds_mapping_and_can_be_overridden(
    monkeypatch: pytest.MonkeyPatch, feed: str, symbols: str, override: str, expected: dict[str, str]
) -> None:
    setenv(monkeypatch, {**feed_env(feed, EXPORTER_SYMBOLS=symbols), "EXPORTER_YAHOO_SYMBOLS": override})
    s = load_settings(for_run=True, env_file=None)
    assert s.yahoo_symbol_map == expected
    renamed = ",".join(f"{a}={y}" for a, y in expected.items() if a != y)
    assert s.effective()["EXPORTER_YAHOO_SYMBOLS"] == (renamed or "(none: Yahoo spells every symbol alike)")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("BTC/USD", "entry 1 is not an ALPACA=YAHOO pair"),
        ("BTC/USD=BTC-USD,ETH/USD", "entry 2 is not an ALPACA=YAHOO pair"),
        ("=BTC-USD", "entry 1 is not an ALPACA=YAHOO pair"),
        ("BTC/USD=", "entry 1 is not an ALPACA=YAHOO pair"),
        ("BTC/USD=BTC USD", "entry 1 is not an ALPACA=YAHOO pair"),
        ("BTC/USD=BTC-USD,btc/usd=XBT-USD", "entry 2 maps a symbol an earlier entry already maps"),
        ("ETH/USD=ETH-USD", "entry 1 maps a symbol that is not in EXPORTER_SYMBOLS"),
        ("BTC/USD=BTC-USD,SOL/USD=SOL-USD", "entry 2 maps a symbol that is not in EXPORTER_SYMBOLS"),
    ],
)
def test_bad_yahoo_symbols_are_refused_by_entry(raw: str, why: str) -> None:
    problems = problems_for(**feed_env("crypto", EXPORTER_YAHOO_SYMBOLS=raw))
    assert problems == [f"EXPORTER_YAHOO_SYMBOLS: {why}" + (", e.g. BTC/USD=BTC-USD" if "pair" in why else "")]


def test_check_config_shows_the_yahoo_mapping(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    setenv(
        monkeypatch, feed_env("crypto", EXPORTER_SYMBOLS="BTC/USD,ETH/USD", EXPORTER_YAHOO_SYMBOLS="ETH/USD=ETH-USDT")
    )
    assert main(["check-config"]) == 0
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["EXPORTER_YAHOO_SYMBOLS"] == "BTC/USD=BTC-USD,ETH/USD=ETH-USDT"
    assert lines["EXPORTER_ALPACA_FEED"] == "crypto"
    assert lines["EXPORTER_ALPACA_URL"] == "wss://stream.data.alpaca.markets/v1beta3/crypto/us (derived from the feed)"


def test_dotenv_file_is_read_and_the_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = tmp_path / "custom.env"
    env_file.write_text(
        f"APCA_API_KEY_ID={KEY}\nAPCA_API_SECRET_KEY={SECRET}\nEXPORTER_SYMBOLS=AAPL\nEXPORTER_PORT=9100\n",
        encoding="utf-8",
    )
    s = load_settings(for_run=True, env_file=env_file)
    assert (s.symbols, s.port) == (["AAPL"], 9100)
    monkeypatch.setenv("EXPORTER_PORT", "9200")
    assert load_settings(for_run=True, env_file=env_file).port == 9200


def test_dotenv_in_the_working_directory_is_the_default(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("EXPORTER_SYMBOLS=SPY\n", encoding="utf-8")
    assert load_settings().symbols == ["SPY"]


def test_undecodable_dotenv_is_a_config_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setenv(monkeypatch, REQUIRED)
    (tmp_path / ".env").write_bytes(b"EXPORTER_PORT=9100\nEXPORTER_LOG_LEVEL=\xff\xfe\n")
    assert main(["check-config"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("config error: ")
    assert ".env" in err
    assert "Traceback" not in err


def test_effective_settings_name_every_variable_and_mask_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, REQUIRED)
    eff = load_settings(for_run=True, env_file=None).effective()
    assert set(CONTRACT_VARIABLES) <= set(eff)
    assert eff["APCA_API_KEY_ID"] == "********"
    assert eff["APCA_API_SECRET_KEY"] == "********"
    assert KEY not in repr(eff)
    assert SECRET not in repr(eff)
    assert eff["EXPORTER_ALPACA_URL"].startswith("wss://stream.data.alpaca.markets/v2/iex")
    assert eff["EXPORTER_SYMBOLS"] == "AAPL,MSFT,SPY"


def test_settings_repr_and_errors_do_not_show_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, REQUIRED)
    s = load_settings(for_run=True, env_file=None)
    assert KEY not in repr(s)
    assert SECRET not in repr(s)
    assert SECRET not in str(s.model_dump())


# ---- check-config --------------------------------------------------------------------------------


def test_check_config_ok_prints_masked_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    setenv(monkeypatch, REQUIRED)
    assert main(["check-config"]) == 0
    out, err = capsys.readouterr()
    lines = dict(line.split("=", 1) for line in out.splitlines())
    assert set(CONTRACT_VARIABLES) <= set(lines)
    assert lines["APCA_API_KEY_ID"] == "********"
    assert lines["APCA_API_SECRET_KEY"] == "********"
    assert lines["EXPORTER_PORT"] == "9877"
    assert KEY not in out + err
    assert SECRET not in out + err
    assert "Traceback" not in err


def test_check_config_missing_everything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines == [
        "config error: APCA_API_KEY_ID: required for run (your Alpaca API key id)",
        "config error: APCA_API_SECRET_KEY: required for run (your Alpaca API secret key)",
        "config error: EXPORTER_SYMBOLS: required for run, e.g. AAPL,MSFT,SPY",
    ]


def test_check_config_one_line_per_bad_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {"EXPORTER_PORT": "70000", "EXPORTER_LOG_FORMAT": "xml", "EXPORTER_ALPACA_FEED": "nasdaq"}
    setenv(monkeypatch, {**REQUIRED, **bad})
    assert main(["check-config"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == len(bad)
    assert all(line.startswith("config error: ") for line in lines)
    assert sorted(line.removeprefix("config error: ").split(":")[0] for line in lines) == sorted(bad)
    assert "Traceback" not in err


def test_run_with_bad_config_exits_2_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 2
    assert main([]) == 2
    _, err = capsys.readouterr()
    assert err.count("config error: APCA_API_KEY_ID") == 2


@pytest.mark.parametrize(
    "where",
    [
        "EXPORTER_PORT",
        "EXPORTER_ALPACA_URL",
        "EXPORTER_YAHOO_URL",
        "EXPORTER_LOG_LEVEL",
        "EXPORTER_ALPACA_FEED",
        "EXPORTER_MAX_SYMBOL_SERIES",
        "EXPORTER_ALPACA_CHANNELS",
        "EXPORTER_SYMBOLS",
        "EXPORTER_YAHOO_SYMBOLS",
    ],
)
def test_a_secret_pasted_into_the_wrong_variable_is_never_echoed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    setenv(monkeypatch, {**REQUIRED, where: SECRET})
    assert main(["check-config"]) == 2
    out, err = capsys.readouterr()
    assert f"config error: {where}:" in err
    for fragment in (SECRET, SECRET[:12], SECRET[-12:], SECRET.upper()[:12], KEY):
        assert fragment not in out + err, (where, err)


def test_secrets_are_not_printed_when_other_values_are_invalid(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    setenv(monkeypatch, {**REQUIRED, "EXPORTER_PORT": "x", "EXPORTER_SYMBOLS": "A B"})
    assert main(["check-config"]) == 2
    out, err = capsys.readouterr()
    assert KEY not in out + err
    assert SECRET not in out + err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("alpaca-exporter ")


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "demo", "simulate", "check-config"):
        assert command in out


def test_python_dash_m_check_config_exits_2_without_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPORTER_", "APCA_"))}
    env.update({"APCA_API_SECRET_KEY": SECRET, "EXPORTER_PORT": "not-a-port", "EXPORTER_SYMBOLS": "AAPL"})
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "config error: EXPORTER_PORT:" in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("EXPORTER_ALPACA_URL", "ws://[::1]:8765/v2/iex"),
        ("EXPORTER_ALPACA_URL", "wss://stream.data.alpaca.markets/v2/sip"),
        ("EXPORTER_ALPACA_URL", "ws://localhost:8765/v1beta1/boats?x=1"),
        ("EXPORTER_YAHOO_URL", "http://[fe80::1%25eth0]:8080"),
        ("EXPORTER_YAHOO_URL", "https://query1.finance.yahoo.com:443/"),
    ],
)
def test_good_urls_pass(monkeypatch: pytest.MonkeyPatch, var: str, raw: str) -> None:
    setenv(monkeypatch, {**REQUIRED, var: raw})
    load_settings(for_run=True, env_file=None)


def test_url_problems_never_repeat_the_value() -> None:
    """A URL can carry credentials: the message names the variable and the problem, not the value."""
    problems = problems_for(**{**REQUIRED, "EXPORTER_ALPACA_URL": "ws://user:hunter2@127.0.0.1:99999/v2/iex"})
    assert len(problems) == 1, problems
    assert problems[0].startswith("EXPORTER_ALPACA_URL:"), problems
    assert "hunter2" not in problems[0]
    assert "99999" not in problems[0]
    assert "port must be a number from 1 to 65535" in problems[0]


@pytest.mark.parametrize(
    ("feed", "delay"), [("iex", 0.0), ("delayed_sip", 900.0), ("indicative", 900.0), ("opra", 0.0)]
)
def test_the_core_sees_the_session_and_lag_as_the_feeds_data_does(
    monkeypatch: pytest.MonkeyPatch, feed: str, delay: float
) -> None:
    from exporter.app import core_config

    setenv(
        monkeypatch, feed_env(feed) if feed in ("indicative", "opra") else {**REQUIRED, "EXPORTER_ALPACA_FEED": feed}
    )
    assert core_config(load_settings(for_run=True, env_file=None)).market_delay_s == delay
