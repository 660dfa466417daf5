"""Codec: every stocks message type in both encodings, timestamps, tolerance, isolation of bad items."""

from __future__ import annotations

import json
import time
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec.msgpack import Ext

from exporter.core import messages as m
from exporter.sources.alpaca import codec
from exporter.sources.alpaca.codec import (
    BadControl,
    DecodedFrame,
    ErrorMessage,
    FrameDecodeError,
    SubscriptionAck,
    Success,
    decode_frame,
    decode_json,
    decode_msgpack,
)

T_NS = 1_741_100_462_123_456_789  # 2025-03-04T15:01:02.123456789Z
T_STR = "2025-03-04T15:01:02.123456789Z"
T_DT = m.utc_from_ns(T_NS)  # what both wire forms decode to: microseconds, rounded


def _json(items: list[dict[str, Any]]) -> str:
    return json.dumps(items)


def _msgpack(items: list[dict[str, Any]]) -> bytes:
    """Items with integer ``t`` encoded as msgpack timestamps (ext -1), as Alpaca sends them."""
    out = []
    for item in items:
        item = dict(item)
        if isinstance(item.get("t"), int):
            item["t"] = msgpack.Timestamp.from_unix_nano(item["t"])
        out.append(item)
    packed: bytes = msgpack.packb(out)
    return packed


def _json_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**item, "t": T_STR} if item.get("t") == T_NS else item for item in items]


# One wire item per type, and the struct it must become.
CASES: list[tuple[dict[str, Any], m.Message]] = [
    (
        {"T": "t", "S": "AAPL", "i": 5123, "x": "V", "p": 191.42, "s": 100, "c": ["@"], "t": T_NS, "z": "C"},
        m.Trade(S="AAPL", p=191.42, t=T_DT, s=100),  # i, x, c, z: not read by the exporter, not decoded
    ),
    (
        {
            "T": "q",
            "S": "AAPL",
            "bx": "V",
            "bp": 191.41,
            "bs": 3,
            "ax": "Q",
            "ap": 191.44,
            "as": 2,
            "c": ["R"],
            "t": T_NS,
            "z": "C",
        },
        m.Quote(S="AAPL", bp=191.41, ap=191.44, t=T_DT, bs=3, as_=2),  # nor bx, ax, c, z
    ),
    (
        {
            "T": "b",
            "S": "SPY",
            "o": 500.0,
            "h": 501.5,
            "l": 499.9,
            "c": 501.0,
            "v": 12034,
            "n": 211,
            "vw": 500.7,
            "t": T_NS,
        },
        m.Bar(S="SPY", o=500.0, h=501.5, l=499.9, c=501.0, t=T_DT, v=12034, vw=500.7, n=211),
    ),
    (
        {"T": "u", "S": "SPY", "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5, "v": 10, "n": 2, "vw": 1.2, "t": T_NS},
        m.UpdatedBar(S="SPY", o=1.0, h=2.0, l=0.5, c=1.5, t=T_DT, v=10, vw=1.2, n=2),
    ),
    (
        {"T": "d", "S": "SPY", "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5, "v": 10, "n": 2, "vw": 1.2, "t": T_NS},
        m.DailyBar(S="SPY", o=1.0, h=2.0, l=0.5, c=1.5, t=T_DT, v=10, vw=1.2, n=2),
    ),
    (
        {"T": "s", "S": "AAPL", "sc": "H", "sm": "Trading Halt", "rc": "T12", "rm": "News", "t": T_NS, "z": "C"},
        m.TradingStatus(S="AAPL", t=T_DT, sc="H", sm="Trading Halt", rc="T12", rm="News", z="C"),
    ),
    (
        {"T": "l", "S": "AAPL", "u": 201.0, "d": 181.0, "i": "B", "t": T_NS, "z": "C"},
        m.Luld(S="AAPL", u=201.0, d=181.0, t=T_DT, i="B", z="C"),
    ),
    (
        {
            "T": "c",
            "S": "AAPL",
            "x": "V",
            "oi": 1,
            "op": 191.0,
            "os": 100,
            "oc": ["@"],
            "ci": 2,
            "cp": 191.1,
            "cs": 90,
            "cc": ["@", "I"],
            "t": T_NS,
            "z": "C",
        },
        m.Correction(
            S="AAPL", t=T_DT, x="V", oi=1, op=191.0, os=100, oc=["@"], ci=2, cp=191.1, cs=90, cc=["@", "I"], z="C"
        ),
    ),
    (
        {"T": "x", "S": "AAPL", "i": 7, "x": "V", "p": 191.0, "s": 5, "a": "C", "t": T_NS, "z": "C"},
        m.CancelError(S="AAPL", t=T_DT, i=7, x="V", p=191.0, s=5, a="C", z="C"),
    ),
    (
        {"T": "i", "S": "AAPL", "p": 190.5, "t": T_NS, "z": "C"},
        m.Imbalance(S="AAPL", t=T_DT, p=190.5, z="C"),
    ),
]


def _ids(case: tuple[dict[str, Any], m.Message]) -> str:
    return str(case[0]["T"])


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_every_type_json(case: tuple[dict[str, Any], m.Message]) -> None:
    item, expected = case
    frame = decode_json(_json(_json_items([item])))
    assert frame.messages == [expected]
    assert type(frame.messages[0]) is type(expected)  # the exact shared class, not a look-alike
    assert frame.controls == []


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_every_type_msgpack(case: tuple[dict[str, Any], m.Message]) -> None:
    item, expected = case
    frame = decode_msgpack(_msgpack([item]))
    assert frame.messages == [expected]
    assert type(frame.messages[0]) is type(expected)


def test_mixed_batch_keeps_order_in_both_encodings() -> None:
    items = [case[0] for case in CASES] * 3
    expected = [case[1] for case in CASES] * 3
    assert decode_json(_json(_json_items(items))).messages == expected
    assert decode_msgpack(_msgpack(items)).messages == expected


def test_json_bytes_and_str_frames_decode_alike() -> None:
    text = _json(_json_items([CASES[0][0]]))
    assert decode_json(text) == decode_json(text.encode())


# ------------------------------------------------------------------ timestamps


def _t_json(text: str) -> m.Message:
    """The message one JSON trade with this ``t`` decodes to."""
    (message,) = decode_json(_json([{"T": "t", "S": "A", "p": 1.0, "t": text}])).messages
    return message


def _t_msgpack(t: Any) -> m.Message:
    (message,) = decode_msgpack(msgspec.msgpack.encode([{"T": "t", "S": "A", "p": 1.0, "t": t}])).messages
    return message


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2025-03-04T15:01:02Z", 1_741_100_462_000_000_000),
        ("2025-03-04T15:01:02.1Z", 1_741_100_462_100_000_000),
        ("2025-03-04T15:01:02.12Z", 1_741_100_462_120_000_000),
        ("2025-03-04T15:01:02.123Z", 1_741_100_462_123_000_000),
        ("2025-03-04T15:01:02.1234Z", 1_741_100_462_123_400_000),
        ("2025-03-04T15:01:02.12345Z", 1_741_100_462_123_450_000),
        ("2025-03-04T15:01:02.123456Z", 1_741_100_462_123_456_000),
        ("2025-03-04T15:01:02.1234564Z", 1_741_100_462_123_456_000),  # rounded down to the microsecond
        ("2025-03-04T15:01:02.1234565Z", 1_741_100_462_123_457_000),  # and half up
        ("2025-03-04T15:01:02.123456789Z", 1_741_100_462_123_457_000),
        ("2025-03-04T15:01:02.1234567891Z", 1_741_100_462_123_457_000),  # more than nine digits: rounded too
        ("1970-01-01T00:00:00Z", 0),
        ("2024-02-29T23:59:59.5Z", 1_709_251_199_500_000_000),  # leap day
        ("2025-03-04T16:01:02.25+01:00", 1_741_100_462_250_000_000),  # numeric offsets are honoured
        ("2025-03-04T10:01:02-05:00", 1_741_100_462_000_000_000),
        ("2025-03-04t15:01:02z", 1_741_100_462_000_000_000),
        ("2025-03-04 15:01:02Z", 1_741_100_462_000_000_000),
    ],
)
def test_rfc3339_forms(text: str, ns: int) -> None:
    assert _t_json(text) == m.Trade(S="A", p=1.0, t=m.utc_from_ns(ns))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2025-03-04",
        "2025-03-04T15:01:02",  # no zone: an age needs an absolute time
        "2025-03-04T15:01:02+",
        "2025-03-04T15:01:02.",
        "2025-03-04T15:01:02.1",  # no zone after the fraction
        "2025-03-04T15:01:02X",
        "2025-03-04T15:01:02.Z",  # empty fraction
        "2025-13-04T15:01:02Z",
        "2025-02-30T15:01:02Z",
        "2025-03-04T24:01:02Z",
        "2025-03-04T15:01:02.1_2Z",
        "2025-03-04T15:01:02. 12Z",
        "2025-03-04T15:01:02.١٢Z",  # non-ASCII digits
        "x025-03-04T15:01:02Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59.9999999Z",  # rounds past the last representable microsecond
    ],
)
def test_rfc3339_rejects_non_timestamps(text: str) -> None:
    message = _t_json(text)
    assert isinstance(message, m.Malformed)
    assert (message.T, message.S) == ("t", "A")
    assert "datetime" in message.detail


def _rfc3339(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{base}.{fraction:09d}".rstrip("0").rstrip(".") + "Z"


@given(st.integers(min_value=0, max_value=253_402_300_799_999_999_000))  # up to 9999-12-31
def test_rfc3339_round_trip(ns: int) -> None:
    assert _t_json(_rfc3339(ns)) == m.Trade(S="A", p=1.0, t=m.utc_from_ns(ns))


# datetime's range, 0001-01-01 to 9999-12-31, in ns since the epoch (the last microsecond must not round up).
_DT_MIN_NS = -62_135_596_800 * 1_000_000_000
_DT_MAX_NS = 253_402_300_799_999_999_000


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_msgpack_timestamp_round_trip_all_forms(ns: int) -> None:
    message = _t_msgpack(Ext(-1, msgpack.Timestamp.from_unix_nano(ns).to_bytes()))
    if _DT_MIN_NS <= ns <= _DT_MAX_NS:
        assert message == m.Trade(S="A", p=1.0, t=m.utc_from_ns(ns))
    else:
        assert isinstance(message, m.Malformed)


@pytest.mark.parametrize(
    ("data", "ns"),
    [
        ((1_741_100_462).to_bytes(4, "big"), 1_741_100_462_000_000_000),  # 32-bit: seconds only
        (((123_456_789 << 34) | 1_741_100_462).to_bytes(8, "big"), T_NS),  # 64-bit: 30-bit ns | 34-bit s
        ((123_456_789).to_bytes(4, "big") + (1_741_100_462).to_bytes(8, "big", signed=True), T_NS),  # 96-bit
        ((5).to_bytes(4, "big") + (-1).to_bytes(8, "big", signed=True), -999_999_995),  # 96-bit, before 1970
    ],
    ids=["32bit", "64bit", "96bit", "96bit-negative"],
)
def test_msgpack_timestamp_forms(data: bytes, ns: int) -> None:
    assert _t_msgpack(Ext(-1, data)) == m.Trade(S="A", p=1.0, t=m.utc_from_ns(ns))


@pytest.mark.parametrize(
    "ext",
    [
        Ext(5, b"\x00\x00\x00\x01"),
        Ext(-1, b"\x00\x00\x01"),
        Ext(-1, ((10**9) << 34).to_bytes(8, "big")),
        Ext(-1, (0).to_bytes(4, "big") + (2**40).to_bytes(8, "big")),
    ],
    ids=["wrong-ext-type", "wrong-length", "nanoseconds-out-of-range", "past-year-9999"],
)
def test_msgpack_bad_timestamp_is_malformed(ext: Ext) -> None:
    good = Ext(-1, msgpack.Timestamp.from_unix_nano(T_NS).to_bytes())
    frame = msgspec.msgpack.encode(
        [{"T": "t", "S": "A", "p": 1.0, "t": ext}, {"T": "t", "S": "C", "p": 3.0, "t": good}]
    )
    decoded = decode_msgpack(frame)
    assert [type(x) for x in decoded.messages] == [m.Malformed, m.Trade]
    assert decoded.messages[1] == m.Trade(S="C", p=3.0, t=T_DT)


def test_msgpack_mode_tolerates_string_timestamps() -> None:
    frame = msgpack.packb([{"T": "t", "S": "A", "p": 1.0, "t": T_STR}])
    assert decode_msgpack(frame).messages == [m.Trade(S="A", p=1.0, t=T_DT)]


# ------------------------------------------------------------------ tolerance


@pytest.mark.parametrize("encode", [_json, _msgpack], ids=["json", "msgpack"])
def test_integers_accepted_for_floats(encode: Any) -> None:
    items = [
        {"T": "t", "S": "A", "p": 191, "s": 1, "t": T_NS},
        {"T": "b", "S": "A", "o": 1, "h": 136, "l": 1, "c": 2, "v": 3, "vw": 2, "t": T_NS},
        {"T": "q", "S": "A", "bp": 1, "ap": 2, "t": T_NS},
        {"T": "l", "S": "A", "u": 3, "d": 1, "t": T_NS},
    ]
    messages = decode_frame(
        encode(_json_items(items) if encode is _json else items), "json" if encode is _json else "msgpack"
    ).messages
    assert [type(x) for x in messages] == [m.Trade, m.Bar, m.Quote, m.Luld]
    trade, bar, quote, luld = messages
    assert isinstance(trade, m.Trade)
    assert isinstance(bar, m.Bar)
    assert isinstance(quote, m.Quote)
    assert isinstance(luld, m.Luld)
    assert type(trade.p) is float
    assert type(bar.h) is float
    assert (trade.p, bar.h, quote.bp, quote.ap, luld.u, luld.d) == (191.0, 136.0, 1.0, 2.0, 3.0, 1.0)


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_unknown_keys_ignored_and_unknown_types_kept_as_unknown(encoding: codec.Encoding) -> None:
    items = [
        {"T": "t", "S": "A", "p": 1.5, "t": T_NS, "r": T_NS, "new_key": {"nested": [1, 2]}},
        {"T": "zz", "S": "B", "foo": 1},
        {"T": "o", "S": "BTC/USD", "b": [], "a": [], "t": T_NS},  # a crypto orderbook: not a stock type
        {"T": "q", "S": "C", "bp": 1.0, "ap": 1.1, "t": T_NS, "extra": None},
    ]
    frame = _json(_json_items(items)) if encoding == "json" else _msgpack(items)
    assert decode_frame(frame, encoding).messages == [
        m.Trade(S="A", p=1.5, t=T_DT),
        m.Unknown(T="zz", S="B"),
        m.Unknown(T="o", S="BTC/USD"),
        m.Quote(S="C", bp=1.0, ap=1.1, t=T_DT),
    ]


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_malformed_item_is_isolated_from_its_batch(encoding: codec.Encoding) -> None:
    items: list[dict[str, Any]] = [
        {"T": "t", "S": "A", "p": 1.5, "t": T_NS},
        {"T": "t", "S": "B", "s": 100},  # no price, no timestamp
        {"T": "q", "S": "C", "bp": "1.0", "ap": 1.1, "t": T_NS},  # price as a string
        {"T": "t", "S": "D", "p": 1.5, "s": 1.5, "t": T_NS},  # float size
        {"T": "b", "S": "E", "o": 1, "h": 1, "l": 1, "c": 1, "t": "yesterday"},  # bad timestamp
        {"T": "t", "S": 7, "p": 1.5, "t": T_NS},  # symbol not a string
        {"T": "t", "S": "F", "p": None, "t": T_NS},  # null price
        {"T": "t", "S": "G", "p": 2.5, "t": T_NS},
    ]
    frame = _json(_json_items(items)) if encoding == "json" else _msgpack(items)
    messages = decode_frame(frame, encoding).messages
    assert messages[0] == m.Trade(S="A", p=1.5, t=T_DT)
    assert messages[-1] == m.Trade(S="G", p=2.5, t=T_DT)
    bad = messages[1:-1]
    assert all(isinstance(x, m.Malformed) for x in bad)
    assert [(x.T, x.S) for x in bad if isinstance(x, m.Malformed)] == [
        ("t", "B"),
        ("q", "C"),
        ("t", "D"),
        ("b", "E"),
        ("t", ""),  # an unusable symbol is reported as empty
        ("t", "F"),
    ]
    assert all(isinstance(x, m.Malformed) and x.detail for x in bad)


# ------------------------------------------------------------------ control messages


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_control_messages(encoding: codec.Encoding) -> None:
    items: list[dict[str, Any]] = [
        {"T": "success", "msg": "connected"},
        {"T": "error", "code": 402, "msg": "auth failed"},
        {
            "T": "subscription",
            "trades": ["AAPL"],
            "quotes": ["MSFT", "AMD"],
            "bars": [],
            "dailyBars": ["SPY"],
            "corrections": ["AAPL"],
            "cancelErrors": ["AAPL"],
            "news": [],  # a key we don't know: ignored
        },
    ]
    frame = _json(items) if encoding == "json" else _msgpack(items)
    decoded = decode_frame(frame, encoding)
    assert decoded.messages == []
    success, error, ack = decoded.controls
    assert success == Success("connected")
    assert error == ErrorMessage(code=402, msg="auth failed")
    assert isinstance(ack, SubscriptionAck)
    channels = ack.channels()
    assert channels["trades"] == {"AAPL"}
    assert channels["quotes"] == {"MSFT", "AMD"}
    assert channels["dailyBars"] == {"SPY"}
    assert channels["lulds"] == frozenset()


def test_bad_control_items_are_reported_not_dropped() -> None:
    frame = _json([{"T": "error", "code": "402"}, 5, {"no": "T"}, {"T": "success", "msg": "authenticated"}])
    decoded = decode_json(frame)
    assert decoded.messages == []
    bad = [c for c in decoded.controls if isinstance(c, BadControl)]
    assert [b.T for b in bad] == ["error", "", ""]
    assert decoded.controls[-1] == Success("authenticated")


# ------------------------------------------------------------------ whole-frame failures


@pytest.mark.parametrize(
    ("frame", "encoding"),
    [
        ('[{"T":"t","S":}]@@', "json"),
        ("", "json"),
        ('{"T":"t","S":"AAPL"}', "json"),  # not an array
        ("[1, 2", "json"),  # truncated
        ('[{"T":"t","p":NaN}]', "json"),  # NaN is not JSON
        (b"\xc1\xc1\x93\xa1T", "msgpack"),
        (b"\x81\xa1T\xa1t", "msgpack"),  # a bare map
        (b"\x92\x81\xa1T\xa1t", "msgpack"),  # truncated array
        (b"\x91\x81\xa1T\xa1t", "json"),  # a binary frame on a JSON stream
    ],
)
def test_undecodable_frames_raise(frame: str | bytes, encoding: codec.Encoding) -> None:
    with pytest.raises(FrameDecodeError):
        decode_frame(frame, encoding)


def test_text_frame_on_msgpack_stream_is_read_as_json() -> None:
    assert decode_frame(_json(_json_items([CASES[0][0]])), "msgpack").messages == [CASES[0][1]]


def test_empty_frame_is_empty() -> None:
    assert decode_json("[]") == DecodedFrame([], [])
    assert decode_msgpack(b"\x90") == DecodedFrame([], [])


# ------------------------------------------------------------------ the fast path


def _trades(n: int) -> list[dict[str, Any]]:
    return [
        {
            "T": "t",
            "S": f"S{k % 50}",
            "i": k,
            "x": "V",
            "p": 100.0 + k / 100,
            "s": 100,
            "c": ["@"],
            "t": T_NS + k * 1013,
            "z": "C",
        }
        for k in range(n)
    ]


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_a_frame_of_data_decodes_in_one_piece(encoding: codec.Encoding) -> None:
    # The common frame (all data) is handed over as msgspec's own list: nothing is copied per message.
    items = _trades(100)
    data = _msgpack(items) if encoding == "msgpack" else _json([{**i, "t": _rfc3339(i["t"])} for i in items])
    decoded = decode_frame(data, encoding)
    assert decoded.controls == []
    assert all(type(x) is m.Trade for x in decoded.messages)
    assert [x.t for x in decoded.messages if isinstance(x, m.Trade)] == [m.utc_from_ns(i["t"]) for i in items]


def test_data_and_controls_in_one_frame_are_split_in_order() -> None:
    items = [*_trades(2), {"T": "success", "msg": "authenticated"}, *_trades(1)]
    decoded = decode_msgpack(_msgpack(items))
    assert [x.S for x in decoded.messages if isinstance(x, m.Trade)] == ["S0", "S1", "S0"]
    assert decoded.controls == [Success("authenticated")]
