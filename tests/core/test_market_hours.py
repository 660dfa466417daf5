"""The US equity session calendar: when silence counts as staleness."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from exporter.core.market_hours import (
    eastern,
    is_trading_day,
    market_open,
    nyse_early_closes,
    nyse_holidays,
    overnight_session_open,
    regular_session_open,
    session_opened_at,
)

NY = ZoneInfo("America/New_York")


def ny(y: int, mo: int, d: int, hh: int, mm: int = 0, ss: int = 0) -> float:
    """Unix seconds of a New York wall time (zoneinfo is the independent reference for DST)."""
    return datetime(y, mo, d, hh, mm, ss, tzinfo=NY).timestamp()


# ---- the regular session -------------------------------------------------------------------------


def test_regular_session_boundaries_on_a_normal_day() -> None:
    # Tuesday 2026-03-10.
    assert not regular_session_open(ny(2026, 3, 10, 9, 29, 59))
    assert regular_session_open(ny(2026, 3, 10, 9, 30))
    assert regular_session_open(ny(2026, 3, 10, 12, 0))
    assert regular_session_open(ny(2026, 3, 10, 15, 59, 59))
    assert not regular_session_open(ny(2026, 3, 10, 16, 0))
    assert not regular_session_open(ny(2026, 3, 10, 3, 0))
    assert not regular_session_open(ny(2026, 3, 10, 22, 0))


@pytest.mark.parametrize("day", [date(2026, 3, 14), date(2026, 3, 15)])
def test_weekends_are_closed(day: date) -> None:
    for hour in (0, 9, 10, 12, 15, 23):
        assert not regular_session_open(ny(day.year, day.month, day.day, hour, 45))
    assert not is_trading_day(day)


@pytest.mark.parametrize(
    "holiday",
    [
        date(2026, 1, 1),  # New Year's Day
        date(2026, 1, 19),  # Martin Luther King Jr. Day
        date(2026, 2, 16),  # Washington's Birthday
        date(2026, 4, 3),  # Good Friday
        date(2026, 5, 25),  # Memorial Day
        date(2026, 6, 19),  # Juneteenth
        date(2026, 7, 3),  # Independence Day (Saturday 4th) observed Friday
        date(2026, 9, 7),  # Labor Day
        date(2026, 11, 26),  # Thanksgiving
        date(2026, 12, 25),  # Christmas
        date(2025, 4, 18),  # Good Friday 2025
        date(2027, 6, 18),  # Juneteenth (Saturday 19th) observed Friday
        date(2027, 12, 24),  # Christmas (Saturday 25th) observed Friday
        date(2028, 1, 17),  # MLK 2028
    ],
)
def test_nyse_holidays_are_closed(holiday: date) -> None:
    assert holiday in nyse_holidays(holiday.year)
    assert not is_trading_day(holiday)
    assert not regular_session_open(ny(holiday.year, holiday.month, holiday.day, 11, 0))


def test_new_year_on_a_saturday_is_not_observed_the_friday_before() -> None:
    # 2022-01-01 was a Saturday; NYSE stayed open on Friday 2021-12-31.
    assert is_trading_day(date(2021, 12, 31))
    assert regular_session_open(ny(2021, 12, 31, 11, 0))


def test_the_2026_holiday_list_is_complete() -> None:
    assert nyse_holidays(2026) == {
        date(2026, 1, 1),
        date(2026, 1, 19),
        date(2026, 2, 16),
        date(2026, 4, 3),
        date(2026, 5, 25),
        date(2026, 6, 19),
        date(2026, 7, 3),
        date(2026, 9, 7),
        date(2026, 11, 26),
        date(2026, 12, 25),
    }


def test_days_around_holidays_are_open() -> None:
    assert regular_session_open(ny(2026, 4, 2, 11, 0))  # Thursday before Good Friday
    assert regular_session_open(ny(2026, 4, 6, 11, 0))  # Easter Monday: NYSE is open
    assert regular_session_open(ny(2026, 7, 2, 15, 30))  # the day before the observed 4th: full day


def test_early_close_the_day_after_thanksgiving() -> None:
    assert date(2026, 11, 27) in nyse_early_closes(2026)
    assert regular_session_open(ny(2026, 11, 27, 12, 59, 59))
    assert not regular_session_open(ny(2026, 11, 27, 13, 0))
    assert not regular_session_open(ny(2026, 11, 27, 15, 0))


def test_early_closes_of_2026_and_2025() -> None:
    # 2026: July 3 is the observed holiday, so only the day after Thanksgiving and Christmas Eve.
    assert nyse_early_closes(2026) == {date(2026, 11, 27), date(2026, 12, 24)}
    assert nyse_early_closes(2025) == {date(2025, 7, 3), date(2025, 11, 28), date(2025, 12, 24)}
    assert regular_session_open(ny(2025, 7, 3, 12, 30))
    assert not regular_session_open(ny(2025, 7, 3, 13, 30))


# ---- daylight saving time ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "day",
    [
        date(2026, 3, 6),  # Friday before DST starts (EST)
        date(2026, 3, 9),  # Monday after DST starts (EDT)
        date(2026, 10, 30),  # Friday before DST ends (EDT)
        date(2026, 11, 2),  # Monday after DST ends (EST)
        date(2025, 3, 10),
        date(2025, 11, 3),
    ],
)
def test_open_and_close_follow_dst(day: date) -> None:
    open_ts = datetime.combine(day, time(9, 30), NY).timestamp()
    close_ts = datetime.combine(day, time(16, 0), NY).timestamp()
    assert not regular_session_open(open_ts - 1)
    assert regular_session_open(open_ts)
    assert regular_session_open(close_ts - 1)
    assert not regular_session_open(close_ts)


def test_utc_times_of_the_open_shift_with_dst() -> None:
    # 14:30 UTC is 09:30 EST on 2026-03-06 but 10:30 EDT on 2026-03-09.
    assert regular_session_open(datetime(2026, 3, 6, 14, 30, tzinfo=UTC).timestamp())
    assert not regular_session_open(datetime(2026, 3, 6, 14, 29, tzinfo=UTC).timestamp())
    assert regular_session_open(datetime(2026, 3, 9, 13, 30, tzinfo=UTC).timestamp())
    assert not regular_session_open(datetime(2026, 3, 9, 13, 29, tzinfo=UTC).timestamp())
    # And back in November: 13:30 UTC is 08:30 EST on Monday 2026-11-02.
    assert not regular_session_open(datetime(2026, 11, 2, 13, 30, tzinfo=UTC).timestamp())
    assert regular_session_open(datetime(2026, 11, 2, 14, 30, tzinfo=UTC).timestamp())


def test_eastern_agrees_with_zoneinfo_hour_by_hour_through_a_year() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(366 * 24):
        local = t.astimezone(NY)
        day, secs = eastern(t.timestamp())
        assert day == local.date(), t
        assert secs == local.hour * 3600 + local.minute * 60 + local.second, t
        t += timedelta(hours=1)


def test_eastern_at_the_dst_switch_instants() -> None:
    # 2026-03-08 07:00 UTC: 02:00 EST becomes 03:00 EDT.
    switch = datetime(2026, 3, 8, 7, tzinfo=UTC).timestamp()
    assert eastern(switch - 1)[1] == 1 * 3600 + 59 * 60 + 59
    assert eastern(switch)[1] == 3 * 3600
    # 2026-11-01 06:00 UTC: 02:00 EDT becomes 01:00 EST.
    switch = datetime(2026, 11, 1, 6, tzinfo=UTC).timestamp()
    assert eastern(switch - 1)[1] == 1 * 3600 + 59 * 60 + 59
    assert eastern(switch)[1] == 1 * 3600


# ---- modes ---------------------------------------------------------------------------------------


def test_always_and_never() -> None:
    saturday = ny(2026, 3, 14, 3, 0)
    tuesday = ny(2026, 3, 10, 11, 0)
    for t in (saturday, tuesday):
        assert market_open("always", t)
        assert not market_open("never", t)
    assert market_open("regular", tuesday)
    assert not market_open("regular", saturday)


def test_overnight_session() -> None:
    # Sunday 2026-03-08 20:00 New York -> Monday 04:00: open.
    assert not overnight_session_open(ny(2026, 3, 8, 19, 59))
    assert overnight_session_open(ny(2026, 3, 8, 20, 0))
    assert overnight_session_open(ny(2026, 3, 9, 3, 59))
    assert not overnight_session_open(ny(2026, 3, 9, 4, 0))
    assert not overnight_session_open(ny(2026, 3, 9, 12, 0))  # the regular day is not overnight
    assert overnight_session_open(ny(2026, 3, 12, 23, 0))  # Thursday night
    assert overnight_session_open(ny(2026, 3, 13, 2, 0))  # Friday early morning (Thursday night session)
    assert not overnight_session_open(ny(2026, 3, 13, 21, 0))  # Friday night: none
    assert not overnight_session_open(ny(2026, 3, 14, 2, 0))
    assert not overnight_session_open(ny(2026, 3, 14, 21, 0))  # Saturday night: none
    assert market_open("overnight", ny(2026, 3, 10, 22, 0))
    assert not market_open("overnight", ny(2026, 3, 10, 11, 0))


def test_no_overnight_session_into_a_holiday() -> None:
    # Thursday 2026-04-02 night leads into Good Friday: no session.
    assert not overnight_session_open(ny(2026, 4, 2, 21, 0))
    assert not overnight_session_open(ny(2026, 4, 3, 2, 0))


def test_delayed_feed_shifts_the_session() -> None:
    delay = 900.0
    # At 09:40 New York the 15-minute-delayed data is from 09:25: not open yet.
    assert not market_open("regular", ny(2026, 3, 10, 9, 40), delay_seconds=delay)
    assert market_open("regular", ny(2026, 3, 10, 9, 45), delay_seconds=delay)
    # At 16:10 the delayed data is from 15:55: still open; at 16:15 it is closed.
    assert market_open("regular", ny(2026, 3, 10, 16, 10), delay_seconds=delay)
    assert not market_open("regular", ny(2026, 3, 10, 16, 15), delay_seconds=delay)
    # always/never ignore the delay.
    assert market_open("always", 0.0, delay_seconds=delay)


def test_overnight_session_opened_the_evening_before_after_midnight() -> None:
    # Tuesday night's session opened at 20:00 New York, both before and after midnight.
    assert session_opened_at("overnight", ny(2026, 3, 10, 22, 0)) == ny(2026, 3, 10, 20, 0)
    assert session_opened_at("overnight", ny(2026, 3, 11, 1, 30)) == ny(2026, 3, 10, 20, 0)
    assert session_opened_at("overnight", ny(2026, 3, 11, 12, 0)) is None
