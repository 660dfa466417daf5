"""When silence on the stream counts as staleness: the US equity session calendar.

Pure arithmetic on Unix seconds — no tz database lookup (slim containers often lack tzdata), so the
US Eastern DST rule (second Sunday of March to first Sunday of November, 02:00 local) is computed here.
NYSE full holidays and 13:00 early closes follow the exchange's published rules.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

_EST = -5 * 3600
_EDT = -4 * 3600
REGULAR_OPEN = 9 * 3600 + 30 * 60
REGULAR_CLOSE = 16 * 3600
EARLY_CLOSE = 13 * 3600
OVERNIGHT_START = 20 * 3600  # Alpaca's overnight / BOATS session: 20:00 -> 04:00 ET, Sunday to Thursday nights
OVERNIGHT_END = 4 * 3600


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    first = date(year, month, 1)
    offset = (weekday - first.weekday()) % 7
    return first + timedelta(days=offset + 7 * (n - 1))


def _last_weekday(year: int, month: int, weekday: int) -> date:
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    last = nxt - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def _easter(year: int) -> date:
    # Anonymous Gregorian algorithm (Meeus/Jones/Butcher).
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    ell = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * ell) // 451
    month, day = divmod(h + ell - 7 * m + 114, 31)
    return date(year, month, day + 1)


def _observed(day: date, *, saturday_to_friday: bool = True) -> date | None:
    if day.weekday() == 5:
        return day - timedelta(days=1) if saturday_to_friday else None
    if day.weekday() == 6:
        return day + timedelta(days=1)
    return day


@lru_cache(maxsize=64)
def nyse_holidays(year: int) -> frozenset[date]:
    days = [
        # New Year's Day falling on a Saturday is not observed on the Friday before (NYSE rule 7.2).
        _observed(date(year, 1, 1), saturday_to_friday=False),
        _nth_weekday(year, 1, 0, 3),  # Martin Luther King Jr. Day
        _nth_weekday(year, 2, 0, 3),  # Washington's Birthday
        _easter(year) - timedelta(days=2),  # Good Friday
        _last_weekday(year, 5, 0),  # Memorial Day
        _observed(date(year, 6, 19)) if year >= 2022 else None,  # Juneteenth
        _observed(date(year, 7, 4)),
        _nth_weekday(year, 9, 0, 1),  # Labor Day
        _nth_weekday(year, 11, 3, 4),  # Thanksgiving
        _observed(date(year, 12, 25)),
    ]
    return frozenset(d for d in days if d is not None)


@lru_cache(maxsize=64)
def nyse_early_closes(year: int) -> frozenset[date]:
    candidates = [
        date(year, 7, 3),
        _nth_weekday(year, 11, 3, 4) + timedelta(days=1),  # the day after Thanksgiving
        date(year, 12, 24),
    ]
    holidays = nyse_holidays(year)
    return frozenset(d for d in candidates if d.weekday() < 5 and d not in holidays)


def _eastern_offset(utc: datetime) -> int:
    year = utc.year
    # DST starts 02:00 EST (07:00 UTC) on the second Sunday of March, ends 02:00 EDT (06:00 UTC) on the
    # first Sunday of November.
    start = datetime.combine(_nth_weekday(year, 3, 6, 2), datetime.min.time(), UTC) + timedelta(hours=7)
    end = datetime.combine(_nth_weekday(year, 11, 6, 1), datetime.min.time(), UTC) + timedelta(hours=6)
    return _EDT if start <= utc < end else _EST


def eastern(unix_seconds: float) -> tuple[date, int]:
    """(local date, seconds since local midnight) in US Eastern time."""
    utc = datetime.fromtimestamp(unix_seconds, UTC)
    local = utc + timedelta(seconds=_eastern_offset(utc))
    return local.date(), local.hour * 3600 + local.minute * 60 + local.second


def is_trading_day(day: date) -> bool:
    return day.weekday() < 5 and day not in nyse_holidays(day.year)


def regular_session_open(unix_seconds: float) -> bool:
    day, secs = eastern(unix_seconds)
    if not is_trading_day(day):
        return False
    close = EARLY_CLOSE if day in nyse_early_closes(day.year) else REGULAR_CLOSE
    return REGULAR_OPEN <= secs < close


def overnight_session_open(unix_seconds: float) -> bool:
    day, secs = eastern(unix_seconds)
    if secs >= OVERNIGHT_START:
        # Evening part: the next calendar day must be a trading day (Sunday..Thursday nights).
        return is_trading_day(day + timedelta(days=1))
    if secs < OVERNIGHT_END:
        return is_trading_day(day)
    return False


def market_open(mode: str, unix_seconds: float, *, delay_seconds: float = 0.0) -> bool:
    """Whether data is expected now. ``delay_seconds`` shifts the session for delayed feeds."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    t = unix_seconds - delay_seconds
    if mode == "overnight":
        return overnight_session_open(t)
    return regular_session_open(t)


def session_opened_at(mode: str, unix_seconds: float, *, delay_seconds: float = 0.0) -> float | None:
    """Unix time the current session opened (as the data sees it), ``-inf`` for ``always``, None if closed."""
    if mode == "always":
        return float("-inf")
    if not market_open(mode, unix_seconds, delay_seconds=delay_seconds):
        return None
    t = unix_seconds - delay_seconds
    _, secs = eastern(t)
    if mode == "overnight":
        since = secs - OVERNIGHT_START if secs >= OVERNIGHT_START else secs + 24 * 3600 - OVERNIGHT_START
    else:
        since = secs - REGULAR_OPEN
    return unix_seconds - since
