"""Message validation: a message in, ``None`` or one reason value of the catalogue out.

Pure functions over the decoded structs; the core calls the one that fits the message's type.
A message's age is ``wall - m.t`` in seconds, against the wall clock (an aware ``datetime``) the core
reads once per frame; limits are in seconds.
"""

from __future__ import annotations

import math
from datetime import datetime

from exporter.core.messages import (
    Bar,
    CancelError,
    Correction,
    Imbalance,
    Luld,
    Orderbook,
    Quote,
    Trade,
    TradingStatus,
)

_INF = math.inf


def bad_price(p: float) -> bool:
    # NaN fails both comparisons, so it is caught by `not p > 0`.
    return not (0.0 < p < _INF)


def check_time(age_s: float, max_age_s: float, skew_s: float, *, check_age: bool) -> str | None:
    if age_s < -skew_s:
        return "future_timestamp"
    if check_age and age_s > max_age_s:
        return "stale_timestamp"
    return None


def check_trade(m: Trade, wall: datetime, max_age_s: float, skew_s: float) -> str | None:
    if bad_price(m.p):
        return "invalid_price"
    if m.s < 0:
        return "invalid_size"
    return check_time((wall - m.t).total_seconds(), max_age_s, skew_s, check_age=True)


def check_quote(m: Quote, wall: datetime, max_age_s: float, skew_s: float) -> str | None:
    bp, ap = m.bp, m.ap
    # One side may be empty (0) in thin markets; both empty, a negative or a non-finite side is invalid.
    if not (0.0 <= bp < _INF and 0.0 <= ap < _INF) or (bp == 0.0 and ap == 0.0):
        return "invalid_price"
    if m.bs < 0 or m.as_ < 0:
        return "invalid_size"
    if bp > ap > 0.0:
        return "crossed_quote"
    return check_time((wall - m.t).total_seconds(), max_age_s, skew_s, check_age=True)


def check_bar(m: Bar, wall: datetime, skew_s: float) -> str | None:
    if bad_price(m.o) or bad_price(m.h) or bad_price(m.l) or bad_price(m.c):
        return "invalid_price"
    if m.v < 0 or m.n < 0:
        return "invalid_size"
    # Bars carry the start of their interval, so they are exempt from the age check.
    return check_time((wall - m.t).total_seconds(), 0.0, skew_s, check_age=False)


def check_other(
    m: TradingStatus | Luld | Correction | CancelError | Imbalance, wall: datetime, skew_s: float
) -> str | None:
    """Statuses, LULD bands, corrections, cancels and imbalances: prices where they carry one."""
    if isinstance(m, Luld) and (bad_price(m.u) or bad_price(m.d)):
        return "invalid_price"
    if isinstance(m, Correction) and (bad_price(m.cp) or m.cs < 0):
        return "invalid_price" if bad_price(m.cp) else "invalid_size"
    if isinstance(m, CancelError) and (bad_price(m.p) or m.s < 0):
        return "invalid_price" if bad_price(m.p) else "invalid_size"
    if isinstance(m, Imbalance) and not (0.0 <= m.p < _INF):
        return "invalid_price"
    return check_time((wall - m.t).total_seconds(), 0.0, skew_s, check_age=False)


def check_orderbook(m: Orderbook, wall: datetime, skew_s: float) -> str | None:
    """Every level must be applicable: a positive finite price, a finite size >= 0 (0 removes the level).
    Only a future timestamp is judged: a snapshot carries the time of the book's last change, which may
    be long ago on a quiet pair. Whether the book is crossed is judged after applying it (orderbook.py)."""
    for side in (m.b, m.a):
        for level in side:  # bad_price and the size check inline: deltas are most of a crypto stream
            if not (0.0 < level.p < _INF):
                return "invalid_price"
            if not (0.0 <= level.s < _INF):
                return "invalid_size"
    return check_time((wall - m.t).total_seconds(), 0.0, skew_s, check_age=False)


def check_fallback(price: float, ts_ns: int, wall_ns: int, skew_s: float) -> str | None:
    if bad_price(price):
        return "invalid_price"
    # Freshness of Yahoo prices is judged by the poller against the session; here only the future.
    return check_time((wall_ns - ts_ns) / 1e9, 0.0, skew_s, check_age=False)
