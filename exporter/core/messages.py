"""Typed market-data messages of Alpaca's streams (stocks, crypto, options), as the core consumes them.

These are the decode targets of the Alpaca codec (``exporter.sources.alpaca.codec``): field names are the
wire keys, ``T`` is the tag. Timestamps (``t``) are timezone-aware ``datetime`` values, whatever the wire
form was (RFC 3339 string or msgpack ext -1): msgspec decodes both natively, in C, straight into these
structs, so nothing is copied after decoding (docs/performance.md). ``datetime`` holds microseconds:
Alpaca's nanosecond digits are rounded to the nearest microsecond, far below anything the exporter
measures. A timestamp without a zone is a malformed item. Plain data, no behaviour: the core reads them.

Trades and quotes, nearly the whole stream, declare only the fields the exporter reads: msgspec skips
the others (trade id, exchange codes, conditions, tape) without building them, which saved ≈ 80 ns per
message, a twentieth of the pipeline (docs/performance.md). The rarer types keep their whole wire shape.

Crypto and options (alpaca-stream.md section 5) reuse the tags ``t``, ``q`` (and crypto ``b``/``u``/``d``)
with other shapes, so each family has its own union (``STOCK_MESSAGES``, ``CRYPTO_MESSAGES``,
``OPTION_MESSAGES``) and the codec builds one decoder per family. Their trades, quotes and bars subclass
the stock ones: the core validates and routes them on the very same path (``isinstance(m, Trade)``; the
stock classes stay the exact, fastest match). Crypto sizes and volumes are fractional, so those
subclasses widen ``int`` to ``float`` — an override mypy flags, and safe here because the core only
compares sizes with zero. Orderbooks (crypto ``o``) are their own type: they never carry a price to route.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

import msgspec

# What ``t`` is: a datetime that must carry a zone (the age arithmetic needs an absolute time).
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def utc_from_ns(ns: int) -> datetime:
    """Integer nanoseconds since the epoch → an aware UTC datetime (rounded to the microsecond as msgspec does)."""
    return EPOCH + timedelta(microseconds=(ns + 500) // 1000)


class Trade(msgspec.Struct, tag_field="T", tag="t", gc=False):
    S: str
    p: float
    t: Timestamp
    s: int = 0


class Quote(msgspec.Struct, tag_field="T", tag="q", gc=False):
    S: str
    bp: float
    ap: float
    t: Timestamp
    bs: int = 0
    as_: int = msgspec.field(default=0, name="as")


class Bar(msgspec.Struct, tag_field="T", tag="b", gc=False):
    S: str
    o: float
    h: float
    l: float  # noqa: E741 - the wire key
    c: float
    t: Timestamp
    v: int = 0
    vw: float = 0.0
    n: int = 0


class UpdatedBar(Bar, tag="u", gc=False):
    pass


class DailyBar(Bar, tag="d", gc=False):
    pass


class TradingStatus(msgspec.Struct, tag_field="T", tag="s", gc=False):
    S: str
    t: Timestamp
    sc: str = ""
    sm: str = ""
    rc: str = ""
    rm: str = ""
    z: str = ""


class Luld(msgspec.Struct, tag_field="T", tag="l", gc=False):
    S: str
    u: float
    d: float
    t: Timestamp
    i: str = ""
    z: str = ""


class Correction(msgspec.Struct, tag_field="T", tag="c", gc=False):
    S: str
    t: Timestamp
    x: str = ""
    oi: int = 0
    op: float = 0.0
    os: int = 0
    oc: list[str] = []
    ci: int = 0
    cp: float = 0.0
    cs: int = 0
    cc: list[str] = []
    z: str = ""


class CancelError(msgspec.Struct, tag_field="T", tag="x", gc=False):
    S: str
    t: Timestamp
    i: int = 0
    x: str = ""
    p: float = 0.0
    s: int = 0
    a: str = ""
    z: str = ""


class Imbalance(msgspec.Struct, tag_field="T", tag="i", gc=False):
    S: str
    t: Timestamp
    p: float = 0.0
    z: str = ""


# ---- crypto (/v1beta3/crypto/us) -------------------------------------------------------------------


class CryptoTrade(Trade, tag="t", gc=False):
    """A crypto trade: fractional size, a 64-bit id and the taker's side (``B``, ``S``; Go also knows ``-``).

    ``tks`` is kept as sent: a side code we do not know is no reason to drop a trade's price.
    """

    s: float = 0.0  # type: ignore[assignment]  # fractional (see the module docs)
    i: int = 0
    tks: str = ""


class CryptoQuote(Quote, tag="q", gc=False):
    """A crypto quote: fractional sizes, no exchanges, conditions nor tape."""

    bs: float = 0.0  # type: ignore[assignment]  # fractional (see the module docs)
    as_: float = msgspec.field(default=0.0, name="as")  # type: ignore[assignment]


class CryptoBar(Bar, tag="b", gc=False):
    v: float = 0.0  # type: ignore[assignment]  # fractional volume (the docs say int; the stream does not)


class CryptoUpdatedBar(CryptoBar, tag="u", gc=False):
    pass


class CryptoDailyBar(CryptoBar, tag="d", gc=False):
    pass


class BookLevel(msgspec.Struct, gc=False):
    """One price level of an order book; size 0 removes the level."""

    p: float
    s: float


class Orderbook(msgspec.Struct, tag_field="T", tag="o", gc=False):
    """A crypto order book update: ``r`` true is a full snapshot (replaces the book), else deltas."""

    S: str
    t: Timestamp
    b: list[BookLevel] = []
    a: list[BookLevel] = []
    r: bool = False


# ---- options (/v1beta1/{indicative,opra}, msgpack only) ----------------------------------------------


class OptionTrade(Trade, tag="t", gc=False):
    """An option trade (OCC symbol); ``c`` is one condition character, not a list as on stocks."""

    x: str = ""
    c: str = ""


class OptionQuote(Quote, tag="q", gc=False):
    bx: str = ""
    ax: str = ""
    c: str = ""


class Unknown(msgspec.Struct, gc=False):
    """An item whose ``T`` is not a data type of the feed's family: counted as ``unknown``, never routed."""

    T: str
    S: str = ""


class Malformed(msgspec.Struct, gc=False):
    """A data item of a known type that failed to decode (missing or mistyped required field).

    It is counted as received under its type and rejected with the reason ``malformed``; the rest of
    its frame is unaffected.
    """

    T: str
    S: str = ""
    detail: str = ""


StockMessage = Trade | Quote | Bar | UpdatedBar | DailyBar | TradingStatus | Luld | Correction | CancelError | Imbalance
CryptoMessage = CryptoTrade | CryptoQuote | CryptoBar | CryptoUpdatedBar | CryptoDailyBar | Orderbook
OptionMessage = OptionTrade | OptionQuote
DataMessage = StockMessage | CryptoMessage | OptionMessage
Message = DataMessage | Unknown | Malformed

# Each family's union of data types, as the codec decodes it (one decoder per family).
STOCK_MESSAGES: Final[Any] = StockMessage
CRYPTO_MESSAGES: Final[Any] = CryptoMessage
OPTION_MESSAGES: Final[Any] = OptionMessage

# Wire tag -> the `type` label value of alpaca_messages_received_total.
TYPE_LABELS: dict[str, str] = {
    "t": "trade",
    "q": "quote",
    "b": "bar",
    "u": "updated_bar",
    "d": "daily_bar",
    "s": "status",
    "l": "luld",
    "c": "correction",
    "x": "cancel_error",
    "i": "imbalance",
    "o": "orderbook",
}
