"""Typed market-data messages of Alpaca's stocks stream, as the core consumes them.

These are the decode targets of the Alpaca codec (``exporter.sources.alpaca.codec``): field names are the
wire keys, ``T`` is the tag. Timestamps (``t``) are timezone-aware ``datetime`` values, whatever the wire
form was (RFC 3339 string or msgpack ext -1): msgspec decodes both natively, in C, straight into these
structs, so nothing is copied after decoding (docs/performance.md). ``datetime`` holds microseconds:
Alpaca's nanosecond digits are rounded to the nearest microsecond, far below anything the exporter
measures. A timestamp without a zone is a malformed item. Plain data, no behaviour: the core reads them.

Trades and quotes, nearly the whole stream, declare only the fields the exporter reads: msgspec skips
the others (trade id, exchange codes, conditions, tape) without building them, which saved ≈ 80 ns per
message, a twentieth of the pipeline (docs/performance.md). The rarer types keep their whole wire shape.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Final

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


class Unknown(msgspec.Struct, gc=False):
    """An item whose ``T`` is not a stocks data type: counted as ``unknown``, never routed."""

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


DataMessage = Trade | Quote | Bar | UpdatedBar | DailyBar | TradingStatus | Luld | Correction | CancelError | Imbalance
Message = DataMessage | Unknown | Malformed

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
}
