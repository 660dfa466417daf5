"""The failover table: seven literal rows, no overlaps, and the same 18 entries as before the rows."""

from __future__ import annotations

from itertools import product

from exporter.core.failover import HEALTH, ROWS, TRANSITIONS, State, _matches

P, F, B = State.PRIMARY_ACTIVE, State.FALLBACK_ACTIVE, State.BOTH_UNAVAILABLE

# The table as it was written out entry by entry before the rows: (state, primary ok, fallback ok,
# primary held) -> (next state, reason). The rows must expand to exactly this.
ENTRIES: dict[tuple[State, bool, bool, bool], tuple[State, str]] = {
    (B, True, False, False): (P, "primary healthy"),
    (B, True, False, True): (P, "primary healthy"),
    (B, True, True, False): (P, "primary healthy"),
    (B, True, True, True): (P, "primary healthy"),
    (B, False, True, False): (F, "fallback healthy"),
    (B, False, False, False): (B, ""),
    (P, True, False, False): (P, ""),
    (P, True, False, True): (P, ""),
    (P, True, True, False): (P, ""),
    (P, True, True, True): (P, ""),
    (P, False, True, False): (F, "primary failed"),
    (P, False, False, False): (B, "primary failed, fallback down"),
    (F, True, False, True): (P, "failback: primary healthy"),
    (F, True, True, True): (P, "failback: primary healthy"),
    (F, True, True, False): (F, ""),
    (F, True, False, False): (P, "fallback failed, primary healthy"),
    (F, False, True, False): (F, ""),
    (F, False, False, False): (B, "fallback failed, primary down"),
}


def test_seven_rows_expand_to_the_eighteen_entries() -> None:
    assert len(ROWS) == 7
    assert TRANSITIONS == ENTRIES


def test_reachable_health_is_every_combination_where_held_implies_healthy() -> None:
    assert set(HEALTH) == {(p, f, h) for p, f, h in product((False, True), repeat=3) if p or not h}
    assert len(HEALTH) == 6


def test_rows_never_overlap_and_each_is_reachable() -> None:
    for state, health in product(State, HEALTH):
        assert sum(_matches(row, state, health) for row in ROWS) <= 1, (state, health)
    for row in ROWS:
        assert any(_matches(row, row[0], health) for health in HEALTH), row
        assert row[4] is not row[0], row  # a row is a move: staying is the absence of a row


def test_a_row_matches_only_its_own_state() -> None:
    (row, *_) = ROWS
    assert _matches(row, row[0], (True, False, False))
    assert not any(_matches(row, other, (True, False, False)) for other in State if other is not row[0])
