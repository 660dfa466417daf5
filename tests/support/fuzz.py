"""Hypothesis strategies for Alpaca frames (valid and broken) and settings values, and the checks every
fuzzed frame must pass (decoder, then the core's accounting)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from hypothesis import strategies as st

from exporter.core.clock import FakeClock
from exporter.core.events import FallbackPoll, PrimaryAuthenticated, PrimaryConnection, PrimaryData, PrimarySubscribed
from exporter.core.messages import (
    Bar,
    CancelError,
    Correction,
    Imbalance,
    Luld,
    Malformed,
    Orderbook,
    Quote,
    Trade,
    TradingStatus,
    Unknown,
)
from exporter.core.router import Core, CoreConfig
from exporter.settings import Settings
from exporter.sim.alpaca_codec import encode
from exporter.sources.alpaca.codec import (
    BadControl,
    ErrorMessage,
    FrameDecodeError,
    SubscriptionAck,
    Success,
    decode_frame,
)

SYMBOLS = ("AAPL", "MSFT", "SPY")
NOW_NS = 1_773_153_000_000_000_000

# JSON-able leaves of every type a field might wrongly hold.
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
any_value = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)

symbol = st.sampled_from(SYMBOLS) | st.text(min_size=0, max_size=8)
price = st.one_of(
    st.floats(min_value=0.01, max_value=10_000),
    st.sampled_from([0.0, -1.0, 1e308]),
    st.integers(min_value=-5, max_value=10_000),
)
size = st.integers(min_value=-10, max_value=2**31)
# Timestamps around "now": some stale, some in the future, some absurd.
t_ns = st.one_of(
    st.integers(min_value=NOW_NS - 120 * 10**9, max_value=NOW_NS + 30 * 10**9),
    st.integers(min_value=0, max_value=2**62),
)


book_side = st.lists(st.fixed_dictionaries({"p": price, "s": price | size}), max_size=4)
families = st.sampled_from(["stocks", "crypto", "options"])


def _item(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    base: dict[str, st.SearchStrategy[Any]] = {"T": st.just(kind), "S": symbol, "t": t_ns}
    fields: dict[str, dict[str, st.SearchStrategy[Any]]] = {
        "t": {
            "p": price,
            "s": size,
            "i": st.integers(0, 2**40),
            "x": st.text(max_size=2),
            "c": st.lists(st.text(max_size=2), max_size=3) | st.text(max_size=2),  # stocks | options
            "tks": st.sampled_from(["B", "S", "-", ""]),  # crypto
        },
        "q": {"bp": price, "ap": price, "bs": size, "as": size, "bx": st.text(max_size=2), "ax": st.text(max_size=2)},
        "b": {"o": price, "h": price, "l": price, "c": price, "v": size},
        "u": {"o": price, "h": price, "l": price, "c": price, "v": size},
        "d": {"o": price, "h": price, "l": price, "c": price, "v": size},
        "s": {"sc": st.text(max_size=2), "sm": st.text(max_size=10)},
        "l": {"u": price, "d": price, "i": st.text(max_size=2)},
        "c": {
            "x": st.text(max_size=2),
            "oi": st.integers(0, 2**40),
            "op": price,
            "ci": st.integers(0, 2**40),
            "cp": price,
            "cs": size,
        },
        "x": {"i": st.integers(0, 2**40), "p": price, "s": size, "a": st.text(max_size=2)},
        "i": {"p": price},
        "o": {"b": book_side, "a": book_side, "r": st.booleans()},
    }
    return st.fixed_dictionaries({**base, **fields[kind]})


valid_item = st.one_of(*(_item(k) for k in "tqbudslcxio"))
control_item = st.one_of(
    st.fixed_dictionaries({"T": st.just("success"), "msg": st.sampled_from(["connected", "authenticated"])}),
    st.fixed_dictionaries({"T": st.just("error"), "code": st.integers(100, 999), "msg": st.text(max_size=20)}),
    st.fixed_dictionaries({"T": st.just("subscription"), "trades": st.lists(symbol, max_size=3)}),
)


@st.composite
def broken_item(draw: st.DrawFn) -> dict[str, Any]:
    """A valid item with one field wrong: dropped, retyped, or joined by unknown (possibly nested) keys."""
    item = dict(draw(valid_item | control_item))
    how = draw(st.sampled_from(["drop", "retype", "unknown", "tag", "nested"]))
    keys = sorted(item)
    if how == "drop":
        item.pop(draw(st.sampled_from(keys)))
    elif how == "retype":
        item[draw(st.sampled_from(keys))] = draw(any_value)
    elif how == "unknown":
        item[draw(st.text(min_size=1, max_size=6))] = draw(any_value)
    elif how == "tag":
        item["T"] = draw(any_value | st.text(max_size=3))
    else:
        depth = draw(st.integers(1, 200))
        nested: Any = 1
        for _ in range(depth):
            nested = [nested]
        item["deep"] = nested
    return item


items = st.lists(valid_item | control_item | broken_item(), min_size=0, max_size=12)


@st.composite
def frames(draw: st.DrawFn) -> tuple[str | bytes, str]:
    """(frame, encoding): encoded item lists, possibly truncated or corrupted, or raw garbage."""
    encoding = draw(st.sampled_from(["json", "msgpack"]))
    kind = draw(st.sampled_from(["items", "items", "truncated", "flipped", "garbage", "other_shape", "deep"]))
    if kind == "garbage":
        return draw(st.binary(max_size=200)) if encoding == "msgpack" else draw(st.text(max_size=200)), encoding
    if kind == "other_shape":
        value = draw(any_value)
        return (msgspec.json.encode(value).decode() if encoding == "json" else msgspec.msgpack.encode(value)), encoding
    if kind == "deep":
        depth = draw(st.integers(100, 5000))
        if encoding == "json":
            return "[" * depth + "]" * depth, encoding
        return b"\x91" * depth + b"\x90", encoding
    chosen = draw(items)
    try:
        frame: str | bytes = encode(chosen, encoding)  # type: ignore[arg-type]
    except (ValueError, OverflowError, OSError):  # a retyped "t" the simulator cannot format as a time
        frame = msgspec.json.encode(chosen).decode() if encoding == "json" else msgspec.msgpack.encode(chosen)
    if kind == "truncated" and len(frame) > 1:
        frame = frame[: draw(st.integers(0, len(frame) - 1))]
    elif kind == "flipped" and len(frame) > 0:
        at = draw(st.integers(0, len(frame) - 1))
        if isinstance(frame, bytes):
            frame = frame[:at] + bytes([draw(st.integers(0, 255))]) + frame[at + 1 :]
        else:
            frame = frame[:at] + draw(st.characters()) + frame[at + 1 :]
    return frame, encoding


# ---- settings values --------------------------------------------------------------------------------
SECRETISH = "SECRET-ECHO-CANARY-9f8e7d"

setting_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["", " ", "0", "-1", "1e309", "nan", "inf", "-inf", "1_000", "0x10", "true", "yes", "None", "null"]
    ),
    st.from_regex(r"-?[0-9]{1,12}(\.[0-9]{0,6})?", fullmatch=True),
    st.just(SECRETISH),
    st.text(max_size=10).map(lambda t: SECRETISH + t),
)
# Every variable but the credentials (the fuzz values go through them in tests of their own).
SETTING_FIELDS = tuple(field for field in Settings.model_fields if not field.startswith("apca_"))
settings_values = st.dictionaries(st.sampled_from(SETTING_FIELDS), setting_text, min_size=1, max_size=6)


TIMED = (Trade, Quote, Bar, TradingStatus, Luld, Correction, CancelError, Imbalance, Orderbook)


def check_decoded(frame: str | bytes, encoding: Any, family: Any = "stocks") -> list[Any]:
    """Decode as the family's feed; the only exception allowed is FrameDecodeError. Returns the data messages."""
    try:
        decoded = decode_frame(frame, encoding, family)
    except FrameDecodeError as exc:
        detail = str(exc)
        assert len(detail) < 1000  # a bounded message for the log line
        return []
    for message in decoded.messages:
        assert isinstance(message, (*TIMED, Unknown, Malformed))
        if isinstance(message, TIMED):
            assert type(message.t) is datetime
            assert message.t.utcoffset() is not None  # aware: an age is absolute
            assert isinstance(message.S, str)
        else:
            assert isinstance(message.S, str)
            assert isinstance(message.T, str)
    for control in decoded.controls:
        assert isinstance(control, Success | ErrorMessage | SubscriptionAck | BadControl)
    return list(decoded.messages)


def healthy_core(max_series: int = 500) -> Core:
    clock = FakeClock(wall_s=NOW_NS / 1e9)
    core = Core(
        CoreConfig(symbols=SYMBOLS, stale_after_s=0, market_hours="always", max_symbol_series=max_series), clock
    )
    core.handle(PrimaryConnection("Connected", "subscribed"))
    core.handle(PrimaryAuthenticated(True))
    core.handle(PrimarySubscribed(frozenset(SYMBOLS)))
    core.handle(FallbackPoll(True, 5.0))
    return core


def check_core(core: Core, messages: list[Any]) -> None:
    before = core.received["alpaca"]
    core.handle(PrimaryData(messages, core.clock.monotonic(), 0.0))
    assert core.received["alpaca"] == before + len(messages)
    acc = core.accounting()["alpaca"]
    assert acc["received"] == acc["routed"] + acc["standby"] + acc["rejected"]
    counts = core.message_counts()
    assert sum(n for kind, n in counts.items() if kind != "control") == core.received["alpaca"]
    assert len(core.series) <= core.config.max_symbol_series
