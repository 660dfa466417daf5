"""Fuzzing the edges where untrusted input enters: Alpaca frames (decoder, then the core) and settings.

No exception escapes except the documented ones (``FrameDecodeError``, ``ConfigError``), and no state
is corrupted: every decoded message is a typed message with an integer timestamp, and the core's
accounting identity (received = routed + standby + rejected) holds after any frame. Example counts are
bounded so the suite stays fast; failing cases found are kept in ``test_corpus.py``.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from exporter.core.clock import FakeClock
from exporter.core.events import FallbackPoll, PrimaryAuthenticated, PrimaryConnection, PrimaryData, PrimarySubscribed
from exporter.core.messages import (
    Bar,
    CancelError,
    Correction,
    Imbalance,
    Luld,
    Malformed,
    Quote,
    Trade,
    TradingStatus,
    Unknown,
)
from exporter.core.router import Core, CoreConfig
from exporter.metrics import build_registry
from exporter.settings import ConfigError, env_name, load_settings
from exporter.sources.alpaca.codec import (
    BadControl,
    ErrorMessage,
    FrameDecodeError,
    SubscriptionAck,
    Success,
    decode_frame,
)
from tests.fuzz.strategies import NOW_NS, SECRETISH, SYMBOLS, frames, settings_values

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
TIMED = (Trade, Quote, Bar, TradingStatus, Luld, Correction, CancelError, Imbalance)


def check_decoded(frame: str | bytes, encoding: Any) -> list[Any]:
    """Decode; the only exception allowed is FrameDecodeError. Returns the data messages."""
    try:
        decoded = decode_frame(frame, encoding)
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


@FUZZ
@given(frames())
def test_decoder_only_raises_frame_decode_error(frame: tuple[str | bytes, str]) -> None:
    check_decoded(*frame)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.lists(frames(), min_size=1, max_size=5))
def test_core_accounting_survives_any_decoded_frames(sequence: list[tuple[str | bytes, str]]) -> None:
    core = healthy_core(max_series=8)  # a small label cap, so random symbols hit it
    for frame, encoding in sequence:
        check_core(core, check_decoded(frame, encoding))
    # The exposition still renders whatever went through.
    text = generate_latest(build_registry(core, lambda: (0, 0))).decode()
    assert "alpaca_messages_received_total" in text


def _config_problems(values: dict[str, str], *, via_env: bool) -> list[str] | None:
    """The ConfigError's lines (None when the values are valid); any other exception escapes."""
    saved: dict[str, str | None] = {}
    try:
        if via_env:
            for field, value in values.items():
                name = env_name(field)
                saved[name] = os.environ.get(name)
                os.environ[name] = value
            load_settings(env_file=None)
        else:
            load_settings(env_file=None, **values)
    except ConfigError as exc:
        return [*exc.problems, str(exc)]
    finally:
        for name, previous in saved.items():
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous
    return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(settings_values, st.booleans())
def test_settings_only_raise_config_error_and_never_echo_values(values: dict[str, str], via_env: bool) -> None:
    assume(not via_env or not any("\x00" in v for v in values.values()))  # no environment can hold a NUL
    problems = _config_problems(values, via_env=via_env)
    if problems is None:
        return
    assert len(problems) >= 2
    assert all(SECRETISH not in line for line in problems)  # a secret pasted into the wrong variable
    for line in problems[:-1]:  # each problem names its variable
        assert "EXPORTER_" in line or "APCA_" in line


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_huge_frame_decodes_within_bounds(encoding: Any) -> None:
    """A 10 MB frame (under the client's 16 MiB max_size) decodes item by item without blowing up."""
    from exporter.sim.alpaca_codec import encode

    item = {"T": "t", "S": "AAPL", "p": 1.5, "s": 1, "t": NOW_NS, "pad": "x" * 1000}
    frame = encode([item] * 10_000, encoding)
    assert len(frame) > 10_000_000
    messages = check_decoded(frame, encoding)
    assert len(messages) == 10_000
    core = healthy_core()
    check_core(core, messages)
