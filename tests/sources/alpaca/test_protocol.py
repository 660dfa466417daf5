"""Protocol (sans-I/O): URLs, outgoing messages, the error table, ack checks, backoff and retry policy."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator

import msgspec
import pytest

from exporter.core.events import ALPACA_ERROR_TYPES
from exporter.sources.alpaca import protocol
from exporter.sources.alpaca.codec import SubscriptionAck
from exporter.sources.alpaca.protocol import (
    Policy,
    ReconnectPolicy,
    RetrySettings,
    check_ack,
    classify_error,
    classify_http_status,
    stream_url,
    subscription_plan,
)


@pytest.mark.parametrize(
    ("feed", "path"),
    [
        ("iex", "/v2/iex"),
        ("sip", "/v2/sip"),
        ("delayed_sip", "/v2/delayed_sip"),
        ("boats", "/v1beta1/boats"),
        ("overnight", "/v1beta1/overnight"),
        ("test", "/v2/test"),
    ],
)
def test_stream_url_per_feed(feed: str, path: str) -> None:
    assert stream_url(feed) == "wss://stream.data.alpaca.markets" + path
    assert stream_url(feed, "ws://127.0.0.1:8765/") == "ws://127.0.0.1:8765" + path


def test_unknown_feed_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown Alpaca feed"):
        stream_url("otc")


def test_content_type_header_selects_msgpack() -> None:
    assert protocol.content_type_headers("msgpack") == {"Content-Type": "application/msgpack"}
    assert protocol.content_type_headers("json") == {}


def test_auth_message_in_both_encodings() -> None:
    text = protocol.auth_message("PKID", "s3cr3t", "json")
    assert isinstance(text, str)  # a text frame
    assert json.loads(text) == {"action": "auth", "key": "PKID", "secret": "s3cr3t"}
    binary = protocol.auth_message("PKID", "s3cr3t", "msgpack")
    assert isinstance(binary, bytes)  # a binary frame
    assert msgspec.msgpack.decode(binary) == {"action": "auth", "key": "PKID", "secret": "s3cr3t"}


def test_subscribe_message_carries_the_whole_plan() -> None:
    plan = subscription_plan(["trades", "quotes"], ["MSFT", "AAPL", "AAPL"])
    assert plan == {"trades": {"AAPL", "MSFT"}, "quotes": {"AAPL", "MSFT"}}
    expected = {"action": "subscribe", "trades": ["AAPL", "MSFT"], "quotes": ["AAPL", "MSFT"]}
    text = protocol.subscribe_message(plan, "json")
    assert isinstance(text, str)
    assert json.loads(text) == expected
    binary = protocol.subscribe_message(plan, "msgpack")
    assert isinstance(binary, bytes)
    assert msgspec.msgpack.decode(binary) == expected


def test_unknown_channel_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown Alpaca channel"):
        subscription_plan(["trades", "news"], ["AAPL"])


# ------------------------------------------------------------------ errors

EXPECTED_ERRORS = {
    400: ("invalid_syntax", Policy.FATAL, True),
    401: ("not_authenticated", Policy.TRANSIENT, False),
    402: ("auth_failed", Policy.FATAL, False),
    403: ("server_error", Policy.BENIGN, True),
    404: ("auth_timeout", Policy.TRANSIENT, False),
    405: ("symbol_limit_exceeded", Policy.FATAL, True),
    406: ("connection_limit_exceeded", Policy.CONNECTION_LIMIT, False),
    407: ("slow_client", Policy.TRANSIENT, False),
    408: ("server_error", Policy.FATAL, False),
    409: ("insufficient_subscription", Policy.FATAL, False),
    410: ("server_error", Policy.FATAL, True),
    411: ("server_error", Policy.FATAL, False),
    412: ("server_error", Policy.FATAL, False),
    413: ("server_error", Policy.FATAL, True),
    500: ("server_error", Policy.TRANSIENT, False),
    418: ("server_error", Policy.TRANSIENT, False),  # unknown codes
    0: ("server_error", Policy.TRANSIENT, False),
}


@pytest.mark.parametrize(("code", "expected"), EXPECTED_ERRORS.items())
def test_error_code_table(code: int, expected: tuple[str, Policy, bool]) -> None:
    info = classify_error(code)
    assert (info.type, info.policy, info.session_ok) == expected
    assert info.type in ALPACA_ERROR_TYPES
    assert info.code == code


@pytest.mark.parametrize(
    ("status", "policy"),
    [(429, Policy.CONNECTION_LIMIT), (404, Policy.FATAL), (401, Policy.FATAL), (503, Policy.TRANSIENT)],
)
def test_http_status_at_upgrade(status: int, policy: Policy) -> None:
    assert classify_http_status(status) is policy


# ------------------------------------------------------------------ acks


def _ack(**channels: list[str]) -> SubscriptionAck:
    return SubscriptionAck(**channels)  # type: ignore[arg-type]


def test_ack_matching_the_plan() -> None:
    plan = subscription_plan(["trades", "quotes"], ["AAPL", "MSFT"])
    check = check_ack(
        _ack(trades=["AAPL", "MSFT"], quotes=["MSFT", "AAPL"], corrections=["AAPL", "MSFT"], cancelErrors=["AAPL"]),
        plan,
    )
    assert check.ok
    assert check.confirmed == {"AAPL", "MSFT"}


def test_ack_missing_and_extra_symbols() -> None:
    plan = subscription_plan(["trades", "bars"], ["AAPL", "MSFT"])
    check = check_ack(_ack(trades=["AAPL"], bars=["AAPL", "MSFT"], quotes=["TSLA"]), plan)
    assert not check.ok
    assert check.missing == {"trades": {"MSFT"}}
    assert check.extra == {"quotes": {"TSLA"}}
    assert check.confirmed == {"AAPL", "MSFT", "TSLA"}  # what the server confirmed, wanted or not


def test_ack_missing_a_whole_channel() -> None:
    plan = subscription_plan(["trades"], ["AAPL"])
    check = check_ack(_ack(), plan)
    assert check.missing == {"trades": {"AAPL"}}
    assert check.confirmed == frozenset()


def test_ack_wildcard_is_a_symbol_like_any_other() -> None:
    plan = subscription_plan(["bars"], ["*"])
    assert check_ack(_ack(bars=["*"]), plan).ok
    assert not check_ack(_ack(bars=["AAPL"]), plan).ok


# ------------------------------------------------------------------ backoff


def _seq(*values: float) -> Callable[[], float]:
    it: Iterator[float] = itertools.cycle(values)
    return lambda: next(it)


SETTINGS = RetrySettings(
    backoff_base=1.0, backoff_max=60.0, connection_limit_backoff=90.0, fatal_retry=300.0, healthy_reset=60.0
)


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999])
def test_fatal_waits_minutes_every_time(draw: float) -> None:
    policy = ReconnectPolicy(SETTINGS, rng=_seq(draw))
    delays = [policy.delay(Policy.FATAL) for _ in range(20)]
    assert all(300.0 <= d <= 330.0 for d in delays)


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999])
def test_connection_limit_never_below_the_floor(draw: float) -> None:
    policy = ReconnectPolicy(SETTINGS, rng=_seq(draw))
    delays = [policy.delay(Policy.CONNECTION_LIMIT) for _ in range(20)]
    assert all(d >= 90.0 for d in delays)
    assert all(d <= 99.0 for d in delays)  # the cap (60) is below the floor here: floor plus jitter


def test_connection_limit_follows_the_exponential_when_it_is_longer() -> None:
    settings = RetrySettings(backoff_base=1.0, backoff_max=600.0, connection_limit_backoff=5.0)
    policy = ReconnectPolicy(settings, rng=_seq(0.0))
    delays = [policy.delay(Policy.CONNECTION_LIMIT) for _ in range(8)]
    assert delays[:4] == [5.0, 5.0, 5.0, 5.0]
    assert delays[4:] == [8.0, 16.0, 32.0, 64.0]


def test_transient_backs_off_exponentially_to_the_cap() -> None:
    policy = ReconnectPolicy(SETTINGS, rng=_seq(0.0))
    delays = [policy.delay(Policy.TRANSIENT) for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert policy.delay(Policy.BENIGN) == 30.0


def test_backoff_resets_only_after_a_healthy_period() -> None:
    policy = ReconnectPolicy(SETTINGS, rng=_seq(0.0))
    for _ in range(5):
        policy.delay(Policy.TRANSIENT)
    policy.connection_ended(healthy_seconds=59.0)  # flapping: keep backing off
    assert policy.delay(Policy.TRANSIENT) == 16.0
    policy.connection_ended(healthy_seconds=60.0)
    assert policy.delay(Policy.TRANSIENT) == 0.5


def test_chunks_keep_a_symbols_channels_together_within_the_bound() -> None:
    plan = protocol.subscription_plan(("trades", "quotes", "bars"), ("A", "B", "C", "D"))
    chunks = protocol.chunk_plan(plan, max_entries=7)
    # Three entries per symbol: two symbols (6 entries) fit in 7, a third would not.
    assert chunks == [protocol.restrict(plan, ["A", "B"]), protocol.restrict(plan, ["C", "D"])]
    assert protocol.chunk_plan(plan, max_entries=1) == [protocol.restrict(plan, [s]) for s in "ABCD"]
    assert protocol.chunk_plan(plan) == [plan]


def test_halve_and_the_named_limit() -> None:
    plan = protocol.subscription_plan(("trades",), ("A", "B", "C"))
    assert protocol.halve(plan) == ({"trades": frozenset({"A"})}, {"trades": frozenset({"B", "C"})})
    assert protocol.named_limit("symbol limit exceeded") is None
    assert protocol.named_limit("symbol limit exceeded (30)") == 30
