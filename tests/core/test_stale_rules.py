"""The measurement of issue 13 in small: the new MarketDataStale rule, on the core's typical intervals,
against the old fixed 10-minute rule over a simulated session (exporter_tools/stale_rules.py)."""

from __future__ import annotations

from typing import Any

from exporter_tools.stale_rules import simulate


def test_the_new_rule_fires_less_falsely_and_catches_a_silent_liquid_symbol_sooner() -> None:
    result: dict[str, Any] = simulate(symbols=60, silenced=5, seed=3, session_s=3.0 * 3600.0)
    old, new = result["old"], result["new"]
    assert old["false_firings"] > 10  # the illiquid symbols' ordinary silences
    assert new["false_firings"] * 10 <= old["false_firings"]
    assert old["caught"] == new["caught"] == 5
    assert old["detection_s_min"] >= 900.0  # 600 s of silence, then `for: 5m`
    assert new["detection_s_max"] <= 200.0  # the 60 s floor, then `for: 2m`
