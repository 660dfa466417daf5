"""Wire encoding of the Alpaca streams (stocks, crypto, options), as the simulator's server side writes it.

Items are plain dicts built with ``T`` as the first key (Go's decoder requires it). Timestamps are kept
as integer nanoseconds until encoding: JSON frames carry RFC 3339 UTC strings with the fractional
digits trimmed of trailing zeros (``...:02.1234Z``, bars ``...:00Z``); msgpack frames carry the
timestamp extension type -1 in its 32/64/96-bit forms, nanosecond-exact.
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Iterable
from typing import Any, Literal

import msgspec

Encoding = Literal["json", "msgpack"]
Item = dict[str, Any]

# Keys whose integer value is a timestamp in nanoseconds (stocks items, the undocumented receive time
# `r` the Go SDK decodes, news and perps). Booleans are not timestamps (orderbook `r` is a flag).
TIMESTAMP_KEYS = frozenset({"t", "r", "created_at", "updated_at", "ft"})


def _is_ts(key: str, value: object) -> bool:
    return key in TIMESTAMP_KEYS and isinstance(value, int) and not isinstance(value, bool)


_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder = msgspec.msgpack.Decoder()


def msgpack_timestamp(ns: int) -> msgspec.msgpack.Ext:
    """The MessagePack timestamp extension (type -1) for integer nanoseconds, in its shortest form."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    if seconds >> 34 == 0:
        if nanos == 0 and seconds >> 32 == 0:
            return msgspec.msgpack.Ext(-1, struct.pack(">I", seconds))
        return msgspec.msgpack.Ext(-1, struct.pack(">Q", (nanos << 34) | seconds))
    return msgspec.msgpack.Ext(-1, struct.pack(">Iq", nanos, seconds))


class _SecondCache:
    """``time.strftime`` is the slow part of RFC 3339 formatting: remember the last second's prefix."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""


_cache = _SecondCache()


def rfc3339(ns: int) -> str:
    """Integer nanoseconds since the epoch -> ``YYYY-MM-DDTHH:MM:SS[.fraction]Z`` (trailing zeros trimmed)."""
    second, frac = divmod(ns, 1_000_000_000)
    if second != _cache.second:
        _cache.second = second
        _cache.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    if frac:
        return f"{_cache.prefix}.{frac:09d}".rstrip("0") + "Z"
    return _cache.prefix + "Z"


def t_first(item: Item) -> Item:
    """The same item with ``T`` as its first key (a no-op for items built that way)."""
    if "T" not in item or next(iter(item)) == "T":
        return item
    out: Item = {"T": item["T"]}
    out.update((k, v) for k, v in item.items() if k != "T")
    return out


def _has_non_finite(items: Iterable[Item]) -> bool:
    for item in items:
        for value in item.values():
            if isinstance(value, float) and not math.isfinite(value):
                return True
    return False


def encode_json(items: list[Item]) -> str:
    """A JSON text frame. Non-finite floats are written as ``NaN``/``Infinity`` tokens, which are not
    JSON: that is how an invalid price looks on a JSON stream (strict parsers reject the frame)."""
    out = [_json_item(item) for item in items]
    if _has_non_finite(out):
        return json.dumps(out, separators=(",", ":"), allow_nan=True)
    return _json_encoder.encode(out).decode()


def _json_item(item: Item) -> Item:
    item = t_first(item)
    if any(_is_ts(k, item.get(k)) for k in TIMESTAMP_KEYS):
        item = {k: rfc3339(v) if _is_ts(k, v) else v for k, v in item.items()}
    return item


def _msgpack_item(item: Item) -> Item:
    item = t_first(item)
    if any(_is_ts(k, item.get(k)) for k in TIMESTAMP_KEYS):
        item = {k: msgpack_timestamp(v) if _is_ts(k, v) else v for k, v in item.items()}
    return item


def encode_msgpack(items: list[Item]) -> bytes:
    """A msgpack binary frame: an array of maps, timestamps as ext type -1."""
    return _msgpack_encoder.encode([_msgpack_item(item) for item in items])


def encode(items: list[Item], encoding: Encoding) -> str | bytes:
    return encode_msgpack(items) if encoding == "msgpack" else encode_json(items)


def decode_frame(frame: str | bytes) -> Any:
    """Decode one client frame: text is JSON, binary is msgpack (client messages carry no timestamps)."""
    if isinstance(frame, str):
        return json.loads(frame)
    return _msgpack_decoder.decode(frame)
