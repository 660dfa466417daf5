"""Per-symbol circuit breaker: closed -> open -> half-open -> closed (or open again).

Closed: a price moving more than ``percent`` against the reference (the last accepted price, from
either source) trips it. Open: every price is rejected until the cooldown has passed. Half-open: a price
is admitted, and becomes the new reference, once it is confirmed — by the other source's latest price,
by the previous half-open price of the same source, or by the old reference; an unconfirmed first price
waits as the candidate, an unconfirmed second one opens the breaker again. A bad print therefore never
gets through, while a genuine gap heals one cooldown later.
"""

from __future__ import annotations

from enum import IntEnum


class BreakerState(IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class Verdict(IntEnum):
    ACCEPT = 0
    REJECT = 1  # rejected as circuit_open
    TRIP = 2  # this price tripped the breaker (also rejected as circuit_open)


def agrees(a: float, b: float, percent: float) -> bool:
    return abs(a - b) * 100.0 <= percent * b


class Breaker:
    __slots__ = ("candidate", "candidate_source", "opened_at", "reference", "state")

    def __init__(self) -> None:
        self.state = BreakerState.CLOSED
        self.reference: float | None = None
        self.opened_at = 0.0
        self.candidate: float | None = None
        self.candidate_source = ""

    def check(
        self,
        price: float,
        source: str,
        now: float,
        *,
        percent: float,
        cooldown: float,
        other_price: float | None = None,
    ) -> Verdict:
        """Judge one validated price. ``other_price``: the other source's price seen since the trip."""
        if self.state is BreakerState.CLOSED:
            ref = self.reference
            if ref is None or agrees(price, ref, percent):
                self.reference = price
                return Verdict.ACCEPT
            self.state = BreakerState.OPEN
            self.opened_at = now
            self.candidate = None
            return Verdict.TRIP
        if self.state is BreakerState.OPEN:
            if now - self.opened_at < cooldown:
                return Verdict.REJECT
            self.state = BreakerState.HALF_OPEN
        # HALF_OPEN
        ref = self.reference
        confirmed = (
            (other_price is not None and agrees(price, other_price, percent))
            or (
                self.candidate is not None
                and self.candidate_source == source
                and agrees(price, self.candidate, percent)
            )
            or (ref is not None and agrees(price, ref, percent))
        )
        if confirmed:
            self.state = BreakerState.CLOSED
            self.reference = price
            self.candidate = None
            return Verdict.ACCEPT
        if self.candidate is None or self.candidate_source != source:
            self.candidate = price
            self.candidate_source = source
            return Verdict.REJECT
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.candidate = price
        return Verdict.REJECT

    def reset(self) -> None:
        """Closed, without a reference: the next price is accepted as the new reference (after a halt)."""
        self.state = BreakerState.CLOSED
        self.reference = None
        self.candidate = None

    def poll(self, now: float, cooldown: float) -> None:
        """Timer: an open breaker whose cooldown passed becomes half-open (visible in /status)."""
        if self.state is BreakerState.OPEN and now - self.opened_at >= cooldown:
            self.state = BreakerState.HALF_OPEN
