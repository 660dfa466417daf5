"""Regression corpus: every failing case the fuzzers found, as explicit tests.

1. A frame nested thousands deep (JSON ``[[[[…]]]]`` or msgpack ``0x91 0x91 …``) made msgspec raise
   ``RecursionError`` out of ``decode_frame``; the client took it for a bug of its own and dropped the
   connection. Now a ``FrameDecodeError`` (counted as ``decode_error``; the connection stays).
2. Invalid UTF-8 inside a msgpack string (one flipped bit in a symbol) made msgspec raise
   ``UnicodeDecodeError``, which escaped the same way. Now that item alone is a decode error and the
   rest of its frame is decoded.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from exporter.core.messages import Trade
from exporter.core.router import State
from exporter.sources.alpaca.codec import BadControl, FrameDecodeError, decode_frame
from tests.support.fuzz import check_core, check_decoded, healthy_core

# Found by test_decoder_only_raises_frame_decode_error: a trade whose symbol is b"\x80APL".
BAD_UTF8_TRADE = (
    b"\x91\x88\xa1T\xa1t\xa1S\xa4\x80APL\xa1t\xd6\xffi\xb0*p\xa1p\xcb?\xf0\x00\x00\x00\x00\x00\x00"
    b"\xa1s\x00\xa1i\x00\xa1x\xa0\xa1c\x90"
)
GOOD_TRADE = msgspec.msgpack.encode(
    [{"T": "t", "S": "AAPL", "p": 1.0, "t": msgspec.msgpack.Ext(-1, (5).to_bytes(4, "big")), "s": 1}]
)
DEEP: dict[str, str | bytes] = {
    "json": "[" * 5000 + "]" * 5000,
    "msgpack": b"\x91" * 5000 + b"\x90",
    "json_in_item": '[{"T":"t","S":"AAPL","p":1,"t":"2026-03-10T14:30:00Z","x":' + "[" * 5000 + "]" * 5000 + "}]",
}


@pytest.mark.parametrize("family", ["stocks", "crypto", "options"])
@pytest.mark.parametrize("case", sorted(DEEP))
def test_deeply_nested_frame_is_a_decode_error(case: str, family: Any) -> None:
    encoding: Any = "msgpack" if case == "msgpack" else "json"
    with pytest.raises(FrameDecodeError, match="nested too deeply"):
        decode_frame(DEEP[case], encoding, family)


def test_invalid_utf8_in_msgpack_string_spoils_only_its_item() -> None:
    alone = decode_frame(BAD_UTF8_TRADE, "msgpack")
    assert alone.messages == []
    assert [type(c) for c in alone.controls] == [BadControl]
    both = b"\x92" + BAD_UTF8_TRADE[1:] + GOOD_TRADE[1:]
    decoded = decode_frame(both, "msgpack")
    assert [type(m) for m in decoded.messages] == [Trade]
    assert len(decoded.controls) == 1
    core = healthy_core()
    check_core(core, check_decoded(both, "msgpack"))


async def test_hostile_frames_keep_the_connection(rstack: Any) -> None:
    """End to end: the corpus frames reach the real client; each is one decode_error and the stream stays
    connected (before the fix each one dropped the connection as an "internal error")."""
    async with rstack() as s:
        await s.healthy_start()
        attempts = s.daemon.alpaca.status.connection_attempts
        await s.alpaca.send_feed([DEEP["msgpack"], BAD_UTF8_TRADE, b"\x92" + BAD_UTF8_TRADE[1:] + GOOD_TRADE[1:]])
        await s.wait_for(lambda: s.core.errors["decode_error"] >= 3, 3.0, "three decode errors")
        await s.metrics()
        assert s.core.state is State.PRIMARY_ACTIVE
        assert s.daemon.alpaca.status.connection_attempts == attempts
        assert s.core.errors["connection_lost"] == 0
        s.assert_accounting(unsent=1)  # the good trade of the mixed frame
