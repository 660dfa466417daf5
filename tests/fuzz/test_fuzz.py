"""Fuzzing the edges where untrusted input enters: Alpaca frames (decoder, then the core) and settings.

No exception escapes except the documented ones (``FrameDecodeError``, ``ConfigError``), and no state
is corrupted: every decoded message is a typed message with an integer timestamp, and the core's
accounting identity (received = routed + standby + rejected) holds after any frame. Example counts are
bounded so the suite stays fast; failing cases found are kept in ``test_corpus.py``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from exporter.metrics import build_registry
from exporter.settings import ConfigError, env_name, load_settings
from tests.support.fuzz import (
    NOW_NS,
    SECRETISH,
    check_core,
    check_decoded,
    families,
    frames,
    healthy_core,
    settings_values,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@FUZZ
@given(frames(), families)
def test_decoder_only_raises_frame_decode_error(frame: tuple[str | bytes, str], family: str) -> None:
    check_decoded(*frame, family)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.lists(frames(), min_size=1, max_size=5), families)
def test_core_accounting_survives_any_decoded_frames(sequence: list[tuple[str | bytes, str]], family: str) -> None:
    core = healthy_core(max_series=8)  # a small label cap, so random symbols hit it
    for frame, encoding in sequence:
        check_core(core, check_decoded(frame, encoding, family))
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
            fields: dict[str, Any] = dict(values)  # str values, keyword by keyword (not for_run)
            load_settings(env_file=None, **fields)
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
