"""Alpaca stream frames → typed messages (``exporter.core.messages``) and control messages.

Every server frame is an array. JSON frames (text) carry RFC 3339 timestamps, msgpack frames (binary)
carry MessagePack timestamps (ext type -1, 32/64/96-bit); both become aware ``datetime`` values in ``t``.

How it decodes (measured; docs/performance.md):

- msgspec decodes the whole frame, in C, straight into the shared message structs: both timestamp forms
  are native to it, so no Python code touches a message before the core does. (An earlier version kept
  integer-nanosecond timestamps, which neither wire form is, and so decoded into wire structs and copied
  them: 0.72 µs per msgpack message instead of 0.31 µs, 0.99 instead of 0.41 for JSON.)
- Fast path: the whole frame as one typed list. If that fails (an unknown ``T``, one malformed item),
  the slow path splits the frame into raw items and decodes each alone, so one bad item becomes a
  ``Malformed`` (known type) or ``Unknown`` (unknown type) and the rest of the frame is unaffected.
- A frame that is not an array of maps at all raises ``FrameDecodeError`` (the client counts it as
  ``decode_error``).

Integers are accepted where floats are expected (msgspec does this natively); unknown keys are
ignored. Fields are otherwise strict: a float where an int is expected, or ``null`` in a typed field,
makes that item ``Malformed``.

Families: stocks, crypto and options reuse tags with different shapes (crypto's fractional sizes, the
options' single-character conditions; ``c`` is a stock correction, ``o`` a crypto order book), so a
codec is one (family, encoding) pair with its own typed union, built once (``frame_decoder``). A tag of
another family is ``Unknown`` on this one. The stocks decoders are exactly the single-family ones of
before: the family costs nothing per frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from exporter.core import messages as m
from exporter.feeds import Family

Encoding = Literal["json", "msgpack"]


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
    orderbooks: list[str] = []  # crypto

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
# Data types

CONTROL_TAGS: Final[frozenset[str]] = frozenset({"success", "error", "subscription"})
_CONTROL_TYPES: Final[frozenset[type]] = frozenset({Success, ErrorMessage, SubscriptionAck})
FAMILY_MESSAGES: Final[dict[Family, Any]] = {
    "stocks": m.STOCK_MESSAGES,
    "crypto": m.CRYPTO_MESSAGES,
    "options": m.OPTION_MESSAGES,
}


def data_tags(family: Family) -> frozenset[str]:
    """The ``T`` values of the family's data types (an item with another ``T`` is ``Unknown``)."""
    return frozenset(cls.__struct_config__.tag for cls in FAMILY_MESSAGES[family].__args__)


class _Probe(msgspec.Struct, gc=False):
    """What we can still read from an item that failed typed decoding."""

    T: Any = None
    S: Any = None


class _Codec:
    """The decoders of one family's messages in one wire encoding."""

    def __init__(self, encoding: Encoding, family: Family) -> None:
        lib: Any = msgspec.json if encoding == "json" else msgspec.msgpack
        item_type: Any = FAMILY_MESSAGES[family] | Success | ErrorMessage | SubscriptionAck
        self.data_tags = data_tags(family)
        self.frame: Callable[[Any], list[Any]] = lib.Decoder(list[item_type]).decode
        self.item: Callable[[Any], Any] = lib.Decoder(item_type).decode
        self.raw_items: Callable[[Any], list[msgspec.Raw]] = lib.Decoder(list[msgspec.Raw]).decode
        self.probe: Callable[[Any], _Probe] = lib.Decoder(_Probe).decode

    def decode(self, data: bytes | str) -> DecodedFrame:
        try:
            items = self.frame(data)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
            return self._decode_items(data)
        # The common frame is all data: then the decoded list itself is the message list (checked in C).
        if _CONTROL_TYPES.isdisjoint(map(type, items)):
            return DecodedFrame(items, [])
        controls = [item for item in items if type(item) in _CONTROL_TYPES]
        return DecodedFrame([item for item in items if type(item) not in _CONTROL_TYPES], controls)

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
            except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:  # this item only
                self._classify_bad_item(raw, str(exc) or type(exc).__name__, messages, controls)
                continue
            (controls if type(item) in _CONTROL_TYPES else messages).append(item)
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
        elif tag in self.data_tags:
            messages.append(m.Malformed(T=tag, S=symbol, detail=detail))
        elif tag in CONTROL_TAGS:
            controls.append(BadControl(T=tag, detail=detail))
        else:
            messages.append(m.Unknown(T=tag, S=symbol))


_CODECS: Final[dict[tuple[Family, Encoding], _Codec]] = {
    (family, encoding): _Codec(encoding, family) for family in FAMILY_MESSAGES for encoding in ("json", "msgpack")
}


def decode_json(data: bytes | str, family: Family = "stocks") -> DecodedFrame:
    """Decode one JSON (text) frame. Raises ``FrameDecodeError`` if it is not an array of items."""
    return _CODECS[family, "json"].decode(data)


def decode_msgpack(data: bytes, family: Family = "stocks") -> DecodedFrame:
    """Decode one msgpack (binary) frame. Raises ``FrameDecodeError`` if it is not an array of items."""
    return _CODECS[family, "msgpack"].decode(data)


def frame_decoder(family: Family, encoding: Encoding) -> Callable[[bytes | str], DecodedFrame]:
    """The frame decoder of one connection, chosen once: text frames are JSON, binary frames use the
    negotiated encoding. Its calls raise ``FrameDecodeError`` for a frame that is not an array of items."""
    text = _CODECS[family, "json"]
    binary = _CODECS[family, encoding]

    def decode(data: bytes | str) -> DecodedFrame:
        try:
            return (text if isinstance(data, str) else binary).decode(data)
        except RecursionError:
            # msgspec raises this for values nested thousands deep, and UnicodeDecodeError (caught in
            # _Codec) for invalid UTF-8 in a msgpack string (both found by tests/fuzz): a broken frame, not
            # a bug of ours, so it counts as a decode error instead of ending the connection as an
            # internal error.
            raise FrameDecodeError("undecodable frame: nested too deeply") from None

    return decode


_DECODERS: Final = {key: frame_decoder(*key) for key in _CODECS}


def decode_frame(data: bytes | str, encoding: Encoding, family: Family = "stocks") -> DecodedFrame:
    """Decode a frame as received (``frame_decoder``'s rules), for a caller without a decoder of its own."""
    return _DECODERS[family, encoding](data)
