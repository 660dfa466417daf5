"""Alpaca stream frames → typed messages (``exporter.core.messages``) and control messages.

Every server frame is an array. JSON frames (text) carry RFC 3339 timestamps, msgpack frames (binary)
carry MessagePack timestamps (ext type -1, 32/64/96-bit); both become integer nanoseconds in ``t``.

How it decodes (measured; see ``tests/sources/alpaca/test_codec.py::test_decode_cost``):

- The shared message structs declare ``t: int``, which neither wire form is, so msgspec cannot decode
  into them directly. Instead msgspec decodes the whole frame in C into *wire* structs — generated from
  the shared structs, identical except for ``t`` (``str`` for JSON, ``Ext | str`` for msgpack) — and one
  small Python function per type builds the shared struct with ``t`` converted. Decoding first into
  untyped dicts and then ``msgspec.convert`` was ~40 % slower.
- Fast path: the whole frame as one typed list. If that fails (an unknown ``T``, one malformed item),
  the slow path splits the frame into raw items and decodes each alone, so one bad item becomes a
  ``Malformed`` (known type) or ``Unknown`` (unknown type) and the rest of the frame is unaffected.
- A frame that is not an array of maps at all raises ``FrameDecodeError`` (the client counts it as
  ``decode_error``).

Integers are accepted where floats are expected (msgspec does this natively); unknown keys are
ignored. Fields are otherwise strict: a float where an int is expected, or ``null`` in a typed field,
makes that item ``Malformed``.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec
from msgspec.msgpack import Ext

from exporter.core import messages as m

Encoding = Literal["json", "msgpack"]

_NS: Final = 1_000_000_000


class FrameDecodeError(ValueError):
    """The frame is not decodable at all (not JSON/msgpack, not an array): nothing in it is usable."""


# --------------------------------------------------------------------------------------------------
# Control messages (our own small types; decoded directly, they carry no timestamps)


class Success(msgspec.Struct, tag_field="T", tag="success", gc=False):
    """``{"T":"success","msg":"connected"|"authenticated"}``."""

    msg: str = ""


class ErrorMessage(msgspec.Struct, tag_field="T", tag="error", gc=False):
    """``{"T":"error","code":402,"msg":"auth failed"}``."""

    code: int = 0
    msg: str = ""


class SubscriptionAck(msgspec.Struct, tag_field="T", tag="subscription", gc=False):
    """The server's full current subscription state (never a delta). Unknown channel keys are ignored."""

    trades: list[str] = []
    quotes: list[str] = []
    bars: list[str] = []
    updatedBars: list[str] = []
    dailyBars: list[str] = []
    statuses: list[str] = []
    lulds: list[str] = []
    corrections: list[str] = []
    cancelErrors: list[str] = []
    imbalances: list[str] = []

    def channels(self) -> dict[str, frozenset[str]]:
        """Channel name → confirmed symbols, for every channel key of the ack."""
        return {name: frozenset(getattr(self, name)) for name in self.__struct_fields__}


@dataclass(frozen=True, slots=True)
class BadControl:
    """A control item (or an item without a usable ``T``) that did not decode: a decode error."""

    T: str
    detail: str


Control = Success | ErrorMessage | SubscriptionAck | BadControl


@dataclass(slots=True)
class DecodedFrame:
    """One frame's content, split: data messages (for the core) and control messages (for the client)."""

    messages: list[m.Message]
    controls: list[Control]


# --------------------------------------------------------------------------------------------------
# Timestamps


def _pow10_by_len() -> tuple[int, ...]:
    # Index = length of "YYYY-MM-DDTHH:MM:SS.<d digits>Z" = 21 + d → multiplier 10**(9-d).
    table = [0] * 31
    for digits in range(1, 10):
        table[21 + digits] = 10 ** (9 - digits)
    return tuple(table)


_FRACTION_SCALE: Final = _pow10_by_len()
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
_SECOND_CACHE: dict[str, int] = {}
_SECOND_CACHE_MAX: Final = 8192


def _fields_to_ns(match: re.Match[str]) -> int:
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
        raise ValueError("date out of range")
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError("time out of range")
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) * _NS


def parse_rfc3339_ns(text: str) -> int:
    """RFC 3339 (UTC ``Z`` or a numeric offset, 0-9 fractional digits) → integer ns since the epoch.

    Alpaca's form ``YYYY-MM-DDTHH:MM:SS[.fffffffff]Z`` takes a fast path: the date-time part (19
    characters, shared by every message of the same second) is looked up in a cache of parts already
    validated by the full pattern, and only the fraction is parsed. Anything else, and the first
    timestamp of each second, goes through the full pattern. Raises ``ValueError`` on anything that is
    not such a timestamp.
    """
    ns = _SECOND_CACHE.get(text[:19])
    if ns is not None:
        n = len(text)
        if n == 20:
            if text[19] == "Z":
                return ns
        elif 21 < n <= 30 and text[19] == "." and text[-1] == "Z":
            fraction = text[20:-1]
            # isdigit() alone accepts non-ASCII digits, which int() would then read.
            if fraction.isdigit() and fraction.isascii():
                return ns + int(fraction) * _FRACTION_SCALE[n]
    return _parse_rfc3339_slow(text)


def _parse_rfc3339_slow(text: str) -> int:
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text[:40]!r}")
    ns = _fields_to_ns(match)
    # The 19-character date-time part is now validated; its seconds serve the fast path.
    if len(_SECOND_CACHE) >= _SECOND_CACHE_MAX:
        _SECOND_CACHE.clear()
    _SECOND_CACHE[text[:19]] = ns
    fraction = match.group(7)
    if fraction:
        ns += int(fraction) * 10 ** (9 - len(fraction))
    if match.group(9):
        offset = (int(match.group(10)) * 3600 + int(match.group(11)) * 60) * _NS
        ns += -offset if match.group(9) == "+" else offset
    return ns


def msgpack_timestamp_ns(ext: Ext) -> int:
    """A MessagePack timestamp extension (type -1; 32, 64 or 96-bit form) → integer ns since the epoch."""
    if ext.code != -1:
        raise ValueError(f"msgpack ext type {ext.code} is not a timestamp")
    data: Any = ext.data  # bytes when msgspec decodes (typed as a generic buffer)
    size = len(data)
    if size == 8:  # 30-bit nanoseconds | 34-bit unsigned seconds
        value = int.from_bytes(data, "big")
        nanos = value >> 34
        seconds = value & 0x3_FFFF_FFFF
    elif size == 4:  # 32-bit unsigned seconds
        return int.from_bytes(data, "big") * _NS
    elif size == 12:  # 32-bit unsigned nanoseconds + 64-bit signed seconds
        nanos = int.from_bytes(data[:4], "big")
        seconds = int.from_bytes(data[4:], "big", signed=True)
    else:
        raise ValueError(f"msgpack timestamp of {size} bytes")
    if nanos >= _NS:
        raise ValueError("msgpack timestamp nanoseconds out of range")
    return seconds * _NS + nanos


def _msgpack_t(value: Ext | str) -> int:
    # Alpaca sends ext -1, nearly always in the 64-bit form: inline that case (it is the hot path).
    if type(value) is Ext:
        if value.code == -1:
            data: Any = value.data
            if len(data) == 8:
                packed = int.from_bytes(data, "big")
                nanos = packed >> 34
                if nanos < _NS:
                    return (packed & 0x3_FFFF_FFFF) * _NS + nanos
        return msgpack_timestamp_ns(value)
    if isinstance(value, str):  # tolerated: the same meaning as in JSON
        return parse_rfc3339_ns(value)
    raise ValueError("timestamp is neither a msgpack timestamp nor a string")


# --------------------------------------------------------------------------------------------------
# Wire structs: the shared structs with ``t`` typed as it is on the wire.

_DATA_TYPES: Final[tuple[type[msgspec.Struct], ...]] = (
    m.Trade,
    m.Quote,
    m.Bar,
    m.UpdatedBar,
    m.DailyBar,
    m.TradingStatus,
    m.Luld,
    m.Correction,
    m.CancelError,
    m.Imbalance,
)
DATA_TAGS: Final[frozenset[str]] = frozenset(m.TYPE_LABELS)
CONTROL_TAGS: Final[frozenset[str]] = frozenset({"success", "error", "subscription"})


def _tag(cls: type[msgspec.Struct]) -> str:
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def _wire_struct(cls: type[msgspec.Struct], t_type: Any, suffix: str) -> type[msgspec.Struct]:
    fields: list[tuple[str, Any, Any]] = []
    for info in msgspec.structs.fields(cls):
        annotation = t_type if info.name == "t" else info.type
        if info.default is not msgspec.NODEFAULT:
            spec = msgspec.field(default=info.default, name=info.encode_name)
        elif info.default_factory is not msgspec.NODEFAULT:
            spec = msgspec.field(default_factory=info.default_factory, name=info.encode_name)
        else:
            spec = msgspec.field(name=info.encode_name)
        fields.append((info.name, annotation, spec))
    return msgspec.defstruct(
        f"_Wire{cls.__name__}{suffix}", fields, tag_field="T", tag=_tag(cls), gc=False, module=__name__
    )


_Convert = Callable[[Any, Callable[[Any], int]], m.Message]


def _trade(w: Any, ts: Callable[[Any], int]) -> m.Message:
    return m.Trade(S=w.S, p=w.p, t=ts(w.t), s=w.s, i=w.i, x=w.x, c=w.c, z=w.z)


def _quote(w: Any, ts: Callable[[Any], int]) -> m.Message:
    return m.Quote(S=w.S, bp=w.bp, ap=w.ap, t=ts(w.t), bs=w.bs, as_=w.as_, bx=w.bx, ax=w.ax, c=w.c, z=w.z)


def _bar_of(cls: type[m.Bar]) -> _Convert:
    def convert(w: Any, ts: Callable[[Any], int]) -> m.Message:
        return cls(S=w.S, o=w.o, h=w.h, l=w.l, c=w.c, t=ts(w.t), v=w.v, vw=w.vw, n=w.n)

    return convert


def _status(w: Any, ts: Callable[[Any], int]) -> m.Message:
    return m.TradingStatus(S=w.S, t=ts(w.t), sc=w.sc, sm=w.sm, rc=w.rc, rm=w.rm, z=w.z)


def _luld(w: Any, ts: Callable[[Any], int]) -> m.Message:
    return m.Luld(S=w.S, u=w.u, d=w.d, t=ts(w.t), i=w.i, z=w.z)


def _correction(w: Any, ts: Callable[[Any], int]) -> m.Message:
    return m.Correction(
        S=w.S,
        t=ts(w.t),
        x=w.x,
        oi=w.oi,
        op=w.op,
        os=w.os,
        oc=w.oc,
        ci=w.ci,
        cp=w.cp,
        cs=w.cs,
        cc=w.cc,
        z=w.z,
    )


def _cancel(w: Any, ts: Callable[[Any], int]) -> m.Message:
    return m.CancelError(S=w.S, t=ts(w.t), i=w.i, x=w.x, p=w.p, s=w.s, a=w.a, z=w.z)


def _imbalance(w: Any, ts: Callable[[Any], int]) -> m.Message:
    return m.Imbalance(S=w.S, t=ts(w.t), p=w.p, z=w.z)


# The fast path of _Codec.decode builds these two positionally: fail at import if their fields move.
_Trade: Final = m.Trade
_Quote: Final = m.Quote
_from_bytes: Final = int.from_bytes
if _Trade.__struct_fields__ != ("S", "p", "t", "s", "i", "x", "c", "z") or _Quote.__struct_fields__ != (
    "S",
    "bp",
    "ap",
    "t",
    "bs",
    "as_",
    "bx",
    "ax",
    "c",
    "z",
):
    raise ImportError("Trade/Quote fields changed: update the positional fast path in _Codec.decode")

_CONVERTERS_BY_TAG: Final[dict[str, _Convert]] = {
    "t": _trade,
    "q": _quote,
    "b": _bar_of(m.Bar),
    "u": _bar_of(m.UpdatedBar),
    "d": _bar_of(m.DailyBar),
    "s": _status,
    "l": _luld,
    "c": _correction,
    "x": _cancel,
    "i": _imbalance,
}


class _Probe(msgspec.Struct, gc=False):
    """What we can still read from an item that failed typed decoding."""

    T: Any = None
    S: Any = None


class _Codec:
    """Decoders and converters for one wire encoding."""

    def __init__(self, encoding: Encoding) -> None:
        t_type: Any = str if encoding == "json" else Ext | str
        self.ts: Callable[[Any], int] = parse_rfc3339_ns if encoding == "json" else _msgpack_t
        suffix = encoding.capitalize()
        wires = {_tag(cls): _wire_struct(cls, t_type, suffix) for cls in _DATA_TYPES}
        # Wire type → converter; control types map to None (passed through as they are).
        self.convert: dict[type, _Convert | None] = {wire: _CONVERTERS_BY_TAG[tag] for tag, wire in wires.items()}
        self.convert.update({Success: None, ErrorMessage: None, SubscriptionAck: None})
        item_type: Any = _union(*wires.values(), Success, ErrorMessage, SubscriptionAck)
        self.msgpack = encoding == "msgpack"
        self.wire_trade: type = wires["t"]
        self.wire_quote: type = wires["q"]
        self.frame: Callable[[Any], list[Any]]
        self.item: Callable[[Any], Any]
        self.raw_items: Callable[[Any], list[msgspec.Raw]]
        self.probe: Callable[[Any], _Probe]
        if encoding == "json":
            self.frame = msgspec.json.Decoder(list[item_type]).decode
            self.item = msgspec.json.Decoder(item_type).decode
            self.raw_items = msgspec.json.Decoder(list[msgspec.Raw]).decode
            self.probe = msgspec.json.Decoder(_Probe).decode
        else:
            self.frame = msgspec.msgpack.Decoder(list[item_type]).decode
            self.item = msgspec.msgpack.Decoder(item_type).decode
            self.raw_items = msgspec.msgpack.Decoder(list[msgspec.Raw]).decode
            self.probe = msgspec.msgpack.Decoder(_Probe).decode

    def decode(self, data: bytes | str) -> DecodedFrame:
        try:
            items = self.frame(data)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
            return self._decode_items(data)
        messages: list[m.Message] = []
        controls: list[Control] = []
        append = messages.append
        convert = self.convert
        ts = self.ts
        wire_trade, wire_quote = self.wire_trade, self.wire_quote
        msgpack = self.msgpack
        seconds = _SECOND_CACHE
        try:
            for item in items:
                cls = type(item)
                # Trades and quotes are nearly all of the stream: built here, positionally (the order
                # is checked at import), with the msgpack 64-bit timestamp inline (as in _msgpack_t) —
                # measured ~40 % cheaper per message than the generic converters below.
                if cls is wire_trade or cls is wire_quote:
                    t = item.t
                    if msgpack:
                        ext: Any = t.data if type(t) is Ext and t.code == -1 else b""
                        if len(ext) == 8:
                            packed = _from_bytes(ext, "big")
                            nanos = packed >> 34
                            ns = (packed & 0x3_FFFF_FFFF) * _NS + nanos if nanos < _NS else ts(t)
                        else:
                            ns = ts(t)
                    else:
                        # parse_rfc3339_ns's fast path for Alpaca's nine-digit form, inline.
                        second = seconds.get(t[:19])
                        fraction = t[20:29]
                        if (
                            second is not None
                            and len(t) == 30
                            and t[19] == "."
                            and t[29] == "Z"
                            and fraction.isdigit()
                            and fraction.isascii()
                        ):
                            ns = second + int(fraction)
                        else:
                            ns = ts(t)
                    if cls is wire_trade:
                        append(_Trade(item.S, item.p, ns, item.s, item.i, item.x, item.c, item.z))
                    else:
                        append(
                            _Quote(item.S, item.bp, item.ap, ns, item.bs, item.as_, item.bx, item.ax, item.c, item.z)
                        )
                    continue
                converter = convert[cls]
                if converter is None:
                    controls.append(item)
                else:
                    append(converter(item, ts))
        except Exception:  # a bad timestamp (ValueError), or anything else: redo item by item
            return self._decode_items(data)
        return DecodedFrame(messages, controls)

    def _decode_items(self, data: bytes | str) -> DecodedFrame:
        try:
            raws = self.raw_items(data)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise FrameDecodeError(f"undecodable frame: {exc}") from None
        messages: list[m.Message] = []
        controls: list[Control] = []
        for raw in raws:
            try:
                item = self.item(raw)
                converter = self.convert[type(item)]
                if converter is None:
                    controls.append(item)
                else:
                    messages.append(converter(item, self.ts))
            except Exception as exc:  # ValidationError, a bad timestamp: this item only
                self._classify_bad_item(raw, str(exc) or type(exc).__name__, messages, controls)
        return DecodedFrame(messages, controls)

    def _classify_bad_item(
        self, raw: msgspec.Raw, detail: str, messages: list[m.Message], controls: list[Control]
    ) -> None:
        try:
            probe = self.probe(raw)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
            controls.append(BadControl(T="", detail="item is not a map"))
            return
        tag, symbol = probe.T, probe.S if isinstance(probe.S, str) else ""
        if not isinstance(tag, str):
            controls.append(BadControl(T="", detail="item without a string T"))
        elif tag in DATA_TAGS:
            messages.append(m.Malformed(T=tag, S=symbol, detail=detail))
        elif tag in CONTROL_TAGS:
            controls.append(BadControl(T=tag, detail=detail))
        else:
            messages.append(m.Unknown(T=tag, S=symbol))


def _union(*types: Any) -> Any:
    union: Any = types[0]
    for t in types[1:]:
        union = union | t
    return union


_CODECS: Final[dict[str, _Codec]] = {"json": _Codec("json"), "msgpack": _Codec("msgpack")}


def decode_json(data: bytes | str) -> DecodedFrame:
    """Decode one JSON (text) frame. Raises ``FrameDecodeError`` if it is not an array of items."""
    return _CODECS["json"].decode(data)


def decode_msgpack(data: bytes) -> DecodedFrame:
    """Decode one msgpack (binary) frame. Raises ``FrameDecodeError`` if it is not an array of items."""
    return _CODECS["msgpack"].decode(data)


def decode_frame(data: bytes | str, encoding: Encoding) -> DecodedFrame:
    """Decode a frame as received: text frames are JSON; binary frames use the negotiated encoding."""
    codec = _CODECS["json"] if isinstance(data, str) or encoding == "json" else _CODECS["msgpack"]
    try:
        return codec.decode(data)
    except RecursionError:
        # msgspec raises this for values nested thousands deep, and UnicodeDecodeError (caught above) for
        # invalid UTF-8 in a msgpack string (both found by tests/fuzz): a broken frame, not a bug of ours,
        # so it counts as a decode error instead of ending the connection as an internal error.
        raise FrameDecodeError("undecodable frame: nested too deeply") from None
