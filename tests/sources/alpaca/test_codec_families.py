"""Codec: the crypto (JSON and msgpack) and options (msgpack) message types, real-shaped edge cases, and
each family's own set of tags (alpaca-stream.md sections 5 and 6)."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.core import messages as m
from exporter.feeds import Family
from exporter.sources.alpaca.codec import (
    Encoding,
    FrameDecodeError,
    SubscriptionAck,
    data_tags,
    decode_frame,
    frame_decoder,
)
from tests.sources.alpaca.test_codec import T_DT, T_NS, _json, _json_items, _msgpack

Case = tuple[dict[str, Any], m.Message]


def _encode(items: list[dict[str, Any]], encoding: Encoding) -> str | bytes:
    return _json(_json_items(items)) if encoding == "json" else _msgpack(items)


def _decode(items: list[dict[str, Any]], encoding: Encoding, family: Family) -> list[m.Message]:
    return decode_frame(_encode(items, encoding), encoding, family).messages


ENCODINGS: list[Encoding] = ["json", "msgpack"]

CRYPTO_CASES: list[Case] = [
    (
        {"T": "t", "S": "BTC/USD", "p": 87000.5, "s": 0.0012, "t": T_NS, "i": 9_223_372_036_854_775_807, "tks": "B"},
        m.CryptoTrade(S="BTC/USD", p=87000.5, t=T_DT, s=0.0012, i=9_223_372_036_854_775_807, tks="B"),
    ),
    (
        {"T": "q", "S": "ETH/USD", "bp": 2000.1, "bs": 1.5, "ap": 2000.3, "as": 0.25, "t": T_NS},
        m.CryptoQuote(S="ETH/USD", bp=2000.1, ap=2000.3, t=T_DT, bs=1.5, as_=0.25),
    ),
    (
        {"T": "b", "S": "BTC/USD", "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5, "v": 0.731, "n": 4, "vw": 1.2, "t": T_NS},
        m.CryptoBar(S="BTC/USD", o=1.0, h=2.0, l=0.5, c=1.5, t=T_DT, v=0.731, vw=1.2, n=4),
    ),
    (
        {"T": "u", "S": "BTC/USD", "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5, "v": 0.5, "n": 2, "vw": 1.2, "t": T_NS},
        m.CryptoUpdatedBar(S="BTC/USD", o=1.0, h=2.0, l=0.5, c=1.5, t=T_DT, v=0.5, vw=1.2, n=2),
    ),
    (
        {"T": "d", "S": "BTC/USD", "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5, "v": 12.5, "n": 9, "vw": 1.2, "t": T_NS},
        m.CryptoDailyBar(S="BTC/USD", o=1.0, h=2.0, l=0.5, c=1.5, t=T_DT, v=12.5, vw=1.2, n=9),
    ),
    (
        {
            "T": "o",
            "S": "BTC/USD",
            "t": T_NS,
            "b": [{"p": 87000.5, "s": 0.25}, {"p": 86999.0, "s": 1.5}],
            "a": [{"p": 87001.0, "s": 0.1}],
            "r": True,
        },
        m.Orderbook(
            S="BTC/USD",
            t=T_DT,
            b=[m.BookLevel(p=87000.5, s=0.25), m.BookLevel(p=86999.0, s=1.5)],
            a=[m.BookLevel(p=87001.0, s=0.1)],
            r=True,
        ),
    ),
]

OPTION_CASES: list[Case] = [
    (
        {"T": "t", "S": "AAPL250117C00150000", "t": T_NS, "p": 3.45, "s": 2, "x": "C", "c": "I"},
        m.OptionTrade(S="AAPL250117C00150000", p=3.45, t=T_DT, s=2, x="C", c="I"),
    ),
    (
        {
            "T": "q",
            "S": "SPY250321P00500000",
            "t": T_NS,
            "bx": "N",
            "bp": 1.2,
            "bs": 30,
            "ax": "C",
            "ap": 1.25,
            "as": 12,
            "c": "A",
        },
        m.OptionQuote(S="SPY250321P00500000", bp=1.2, ap=1.25, t=T_DT, bs=30, as_=12, bx="N", ax="C", c="A"),
    ),
]


def _ids(case: Case) -> str:
    return str(case[0]["T"])


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("case", CRYPTO_CASES, ids=_ids)
def test_every_crypto_type(case: Case, encoding: Encoding) -> None:
    item, expected = case
    (message,) = _decode([item], encoding, "crypto")
    assert message == expected
    assert type(message) is type(expected)


@pytest.mark.parametrize("case", OPTION_CASES, ids=_ids)
def test_every_option_type_msgpack(case: Case) -> None:
    item, expected = case
    (message,) = _decode([item], "msgpack", "options")
    assert message == expected
    assert type(message) is type(expected)


def test_a_mixed_crypto_frame_keeps_its_order() -> None:
    items = [case[0] for case in CRYPTO_CASES] * 3
    expected = [case[1] for case in CRYPTO_CASES] * 3
    for encoding in ENCODINGS:
        assert _decode(items, encoding, "crypto") == expected


# ---- real-shaped edge cases ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_crypto_integers_accepted_for_floats(encoding: Encoding) -> None:
    items = [
        {"T": "t", "S": "BTC/USD", "p": 87000, "s": 1, "t": T_NS, "i": 1, "tks": "S"},
        {"T": "q", "S": "BTC/USD", "bp": 1, "bs": 2, "ap": 3, "as": 4, "t": T_NS},
        {"T": "b", "S": "BTC/USD", "o": 1, "h": 136, "l": 1, "c": 2, "v": 3, "vw": 2, "t": T_NS},
        {"T": "o", "S": "BTC/USD", "t": T_NS, "b": [{"p": 87000, "s": 1}], "a": [{"p": 87001, "s": 0}]},
    ]
    trade, quote, bar, book = _decode(items, encoding, "crypto")
    assert isinstance(trade, m.CryptoTrade)
    assert isinstance(quote, m.CryptoQuote)
    assert isinstance(bar, m.CryptoBar)
    assert isinstance(book, m.Orderbook)
    values = (trade.p, trade.s, quote.bs, quote.as_, bar.v, book.b[0].p, book.b[0].s, book.a[0].s)
    assert values == (87000.0, 1.0, 2.0, 4.0, 3.0, 87000.0, 1.0, 0.0)
    assert all(type(v) is float for v in values)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_option_integer_prices_msgpack_and_json(encoding: Encoding) -> None:
    items = [{"T": "t", "S": "AAPL250117C00150000", "t": T_NS, "p": 3, "s": 1, "x": "C", "c": " "}]
    (trade,) = _decode(items, encoding, "options")
    assert trade == m.OptionTrade(S="AAPL250117C00150000", p=3.0, t=T_DT, s=1, x="C", c=" ")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_empty_and_absent_orderbook_sides(encoding: Encoding) -> None:
    items = [
        {"T": "o", "S": "BTC/USD", "t": T_NS, "b": [], "a": [], "r": False},
        {"T": "o", "S": "BTC/USD", "t": T_NS, "b": [{"p": 1.5, "s": 2}]},  # no asks, no reset flag
        {"T": "o", "S": "BTC/USD", "t": T_NS, "r": True},  # an empty book's snapshot
    ]
    assert _decode(items, encoding, "crypto") == [
        m.Orderbook(S="BTC/USD", t=T_DT),
        m.Orderbook(S="BTC/USD", t=T_DT, b=[m.BookLevel(p=1.5, s=2.0)]),
        m.Orderbook(S="BTC/USD", t=T_DT, r=True),
    ]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_crypto_unknown_keys_ignored(encoding: Encoding) -> None:
    items = [
        {"T": "t", "S": "BTC/USD", "p": 1.5, "s": 0.1, "t": T_NS, "i": 7, "tks": "B", "x": "CBSE", "r": T_NS},
        {"T": "o", "S": "BTC/USD", "t": T_NS, "x": "CBSE", "b": [{"p": 1.0, "s": 1.0, "n": 3}], "extra": {"k": [1]}},
        {"T": "q", "S": "BTC/USD", "bp": 1.0, "ap": 1.1, "t": T_NS, "x": "CBSE"},
    ]
    assert _decode(items, encoding, "crypto") == [
        m.CryptoTrade(S="BTC/USD", p=1.5, t=T_DT, s=0.1, i=7, tks="B"),
        m.Orderbook(S="BTC/USD", t=T_DT, b=[m.BookLevel(p=1.0, s=1.0)]),
        m.CryptoQuote(S="BTC/USD", bp=1.0, ap=1.1, t=T_DT),
    ]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("trade_id", [0, 2**53 + 1, 2**63 - 1, 2**64 - 1])
def test_crypto_trade_ids_are_64_bit(encoding: Encoding, trade_id: int) -> None:
    (trade,) = _decode([{"T": "t", "S": "BTC/USD", "p": 1.0, "s": 0.5, "t": T_NS, "i": trade_id}], encoding, "crypto")
    assert isinstance(trade, m.CryptoTrade)
    assert trade.i == trade_id  # exact: not through a float


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("side", ["B", "S", "-", "", "X"])
def test_taker_side_kept_as_sent(encoding: Encoding, side: str) -> None:
    (trade,) = _decode([{"T": "t", "S": "BTC/USD", "p": 1.0, "s": 0.5, "t": T_NS, "tks": side}], encoding, "crypto")
    assert trade == m.CryptoTrade(S="BTC/USD", p=1.0, t=T_DT, s=0.5, tks=side)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_fractional_size_is_malformed_on_stocks_not_on_crypto(encoding: Encoding) -> None:
    item = {"T": "t", "S": "A", "p": 1.0, "s": 0.5, "t": T_NS}
    (stock,) = _decode([item], encoding, "stocks")
    assert isinstance(stock, m.Malformed)
    assert _decode([item], encoding, "crypto") == [m.CryptoTrade(S="A", p=1.0, t=T_DT, s=0.5)]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_malformed_crypto_items_are_isolated(encoding: Encoding) -> None:
    items: list[dict[str, Any]] = [
        {"T": "t", "S": "BTC/USD", "p": 1.0, "s": 0.5, "t": T_NS},
        {"T": "o", "S": "BTC/USD", "t": T_NS, "b": [{"p": 1.0}]},  # a level without a size
        {"T": "o", "S": "ETH/USD", "t": T_NS, "a": [{"p": "1.0", "s": 1}]},  # a price as a string
        {"T": "o", "S": "SOL/USD", "t": T_NS, "b": {"p": 1.0, "s": 1.0}},  # a side that is not a list
        {"T": "o", "S": "LTC/USD", "t": T_NS, "r": "yes"},  # reset not a bool
        {"T": "t", "S": "BTC/USD", "p": 1.0, "s": 0.5, "t": T_NS, "i": 1.5},  # a fractional id
        {"T": "t", "S": "BTC/USD", "p": 1.0, "s": 0.5, "t": T_NS, "tks": 1},  # a side that is not a string
        {"T": "q", "S": "ETH/USD", "bp": 2.0, "ap": 3.0, "t": T_NS},
    ]
    messages = _decode(items, encoding, "crypto")
    assert messages[0] == m.CryptoTrade(S="BTC/USD", p=1.0, t=T_DT, s=0.5)
    assert messages[-1] == m.CryptoQuote(S="ETH/USD", bp=2.0, ap=3.0, t=T_DT)
    bad = messages[1:-1]
    assert [(x.T, x.S) for x in bad if isinstance(x, m.Malformed)] == [
        ("o", "BTC/USD"),
        ("o", "ETH/USD"),
        ("o", "SOL/USD"),
        ("o", "LTC/USD"),
        ("t", "BTC/USD"),
        ("t", "BTC/USD"),
    ]


def test_option_conditions_are_one_string_not_a_list() -> None:
    items = [
        {"T": "t", "S": "AAPL250117C00150000", "t": T_NS, "p": 3.45, "s": 2, "x": "C", "c": ["I"]},
        {"T": "t", "S": "AAPL250117C00150000", "t": T_NS, "p": 3.45, "s": 2.5},  # option sizes are contracts
        {"T": "q", "S": "AAPL250117C00150000", "t": T_NS, "bp": 1.0, "ap": 1.1, "c": "A", "extra": 1},
    ]
    trade, fractional, quote = _decode(items, "msgpack", "options")
    assert isinstance(trade, m.Malformed)
    assert (trade.T, trade.S) == ("t", "AAPL250117C00150000")
    assert isinstance(fractional, m.Malformed)
    assert quote == m.OptionQuote(S="AAPL250117C00150000", bp=1.0, ap=1.1, t=T_DT, c="A")


# ---- each family's tags -------------------------------------------------------------------------------


def test_each_family_knows_its_own_tags() -> None:
    assert data_tags("stocks") == frozenset("tqbudslcxi")
    assert data_tags("crypto") == frozenset("tqbudo")
    assert data_tags("options") == frozenset("tq")


@pytest.mark.parametrize(
    ("family", "item"),
    [
        ("crypto", {"T": "c", "S": "BTC/USD", "t": T_NS}),  # `c` is a stock correction
        ("crypto", {"T": "s", "S": "BTC/USD", "t": T_NS, "sc": "H"}),
        ("options", {"T": "b", "S": "AAPL250117C00150000", "o": 1, "h": 1, "l": 1, "c": 1, "t": T_NS}),  # 410
        ("options", {"T": "o", "S": "AAPL250117C00150000", "t": T_NS}),
        ("stocks", {"T": "o", "S": "AAPL", "t": T_NS}),
    ],
)
def test_another_familys_tag_is_unknown(family: Family, item: dict[str, Any]) -> None:
    assert _decode([item], "msgpack", family) == [m.Unknown(T=item["T"], S=item["S"])]


def test_malformed_item_of_another_familys_tag_is_unknown_not_malformed() -> None:
    # {"T": "o"} with a bad side is Malformed on crypto (counted as an orderbook), Unknown on stocks.
    item = {"T": "o", "S": "X", "t": T_NS, "b": 5}
    assert isinstance(_decode([item], "msgpack", "crypto")[0], m.Malformed)
    assert _decode([item], "msgpack", "stocks") == [m.Unknown(T="o", S="X")]


# ---- the subscription ack and the decoder of a connection --------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_subscription_ack_with_orderbooks(encoding: Encoding) -> None:
    ack_item = {"T": "subscription", "trades": ["BTC/USD"], "quotes": [], "orderbooks": ["BTC/USD", "ETH/USD"]}
    decoded = decode_frame(_encode([ack_item], encoding), encoding, "crypto")
    (ack,) = decoded.controls
    assert isinstance(ack, SubscriptionAck)
    assert ack.channels()["orderbooks"] == {"BTC/USD", "ETH/USD"}
    assert ack.channels()["trades"] == {"BTC/USD"}


@pytest.mark.parametrize("family", ["stocks", "crypto", "options"])
def test_frame_decoder_reads_text_as_json_and_binary_in_its_encoding(family: Family) -> None:
    item = {"T": "t", "S": "X", "p": 1.0, "s": 1, "t": T_NS}
    decode = frame_decoder(family, "msgpack")
    assert decode(_msgpack([item])) == decode(_json(_json_items([item])))
    assert decode(_msgpack([item])) == decode_frame(_msgpack([item]), "msgpack", family)
    with pytest.raises(FrameDecodeError):
        decode(b"\xc1")
