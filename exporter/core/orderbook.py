"""Per-symbol crypto order books, kept only to sanity-check the feed: a crossed book is a broken feed.

Rules it lives by:

- A snapshot (``r`` true) replaces the book; any other message is deltas: a level's new size, size 0
  removes it (a removal of a level we do not hold changes nothing).
- The book is judged after the message is applied, so that it keeps following the server even when a
  message is rejected: a crossed top of book (best bid >= best ask; one venue's book matches at equal
  prices, so even a locked one is wrong) rejects the message that left it so, as ``crossed_quote``.
- A book is judged only once a snapshot was seen. Alpaca sends the snapshot first after subscribing;
  deltas before it are a fragment whose consistency nothing vouches for, and a rejection is a claim
  that the feed is wrong. They are applied (to an empty book) and counted as accepted. After a lost
  connection the book is forgotten (``Ingest.primary_lost``): the next connection's snapshot rebuilds it,
  and deltas of a connection we no longer hear must not be judged against levels of the old one.
- Memory is bounded: past ``MAX_LEVELS`` levels on a side (and ``MAX_LEVELS / 4`` of slack, so the
  trim is amortised), the levels farthest from the top are dropped. Dropped levels can make the held
  top worse than the real one (a lower bid, a higher ask) once the better levels go, never better: a
  trimmed book can miss a crossing, but it never invents one.
- A book never moves a price: a crypto pair's price comes from its trades and quotes. Its updates do
  prove the pair alive (they count like any other message for the silence and staleness rules).

Pure data, no I/O; the best prices are kept incrementally (a full scan only when the best level goes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from exporter.core.messages import BookLevel, Orderbook

MAX_LEVELS: Final = 500  # per side; a top-of-book check needs far fewer, real snapshots may carry more
_TRIM_AT: Final = MAX_LEVELS + MAX_LEVELS // 4


class Book:
    __slots__ = ("asks", "best_ask", "best_bid", "bids", "snapshot_seen")

    def __init__(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.best_bid = -math.inf  # -inf / +inf: an empty side
        self.best_ask = math.inf
        self.snapshot_seen = False

    def apply(self, m: Orderbook) -> bool:
        """Apply one update; True if it leaves a judged book crossed."""
        if m.r:
            self.bids.clear()
            self.asks.clear()
            self.best_bid, self.best_ask = -math.inf, math.inf
            self.snapshot_seen = True
        if m.b:
            self.best_bid = _apply_side(self.bids, m.b, self.best_bid, bids=True)
        if m.a:
            self.best_ask = _apply_side(self.asks, m.a, self.best_ask, bids=False)
        return self.snapshot_seen and self.best_bid >= self.best_ask


def _apply_side(side: dict[float, float], levels: Sequence[BookLevel], best: float, *, bids: bool) -> float:
    """Apply levels to one side; returns the side's new best price."""
    rescan = False
    for level in levels:
        p = level.p
        if level.s > 0.0:
            side[p] = level.s
            if (p > best) if bids else (p < best):
                best = p
        elif side.pop(p, None) is not None and p == best:
            rescan = True
    if len(side) > _TRIM_AT:
        ordered = sorted(side)  # one C sort per MAX_LEVELS / 4 insertions past the cap
        for p in ordered[: len(side) - MAX_LEVELS] if bids else ordered[MAX_LEVELS:]:
            del side[p]
    if rescan:
        best = (max(side) if bids else min(side)) if side else (-math.inf if bids else math.inf)
    return best
