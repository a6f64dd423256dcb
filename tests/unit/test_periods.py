"""Monthly billing periods from an anchor: clamped to short months, never drifting."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core.periods import Period, add_months, period_at, period_containing, period_index

MICROSECOND = timedelta(microseconds=1)

utc_instants = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2199, 12, 31), timezones=st.just(UTC)
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- add_months ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("anchor", "months", "expected"),
    [
        (utc(2025, 1, 31), 1, utc(2025, 2, 28)),
        (utc(2024, 1, 31), 1, utc(2024, 2, 29)),
        (utc(2024, 1, 31), 2, utc(2024, 3, 31)),
        (utc(2025, 1, 31), 3, utc(2025, 4, 30)),
        (utc(2025, 3, 31), -1, utc(2025, 2, 28)),
        (utc(2024, 12, 15), 1, utc(2025, 1, 15)),
        (utc(2025, 1, 15), -1, utc(2024, 12, 15)),
        (utc(2024, 2, 29), 12, utc(2025, 2, 28)),
        (utc(2024, 2, 29), 48, utc(2028, 2, 29)),
        (utc(2025, 1, 31), 0, utc(2025, 1, 31)),
    ],
)
def test_add_months_clamps_the_day_to_the_target_month(
    anchor: datetime, months: int, expected: datetime
) -> None:
    assert add_months(anchor, months) == expected


def test_add_months_keeps_the_time_of_day() -> None:
    assert add_months(utc(2025, 1, 31, 23, 59, 59, 999_999), 1) == utc(
        2025, 2, 28, 23, 59, 59, 999_999
    )


def test_periods_from_a_31st_anchor_do_not_drift() -> None:
    anchor = utc(2025, 1, 31, 9)
    starts = [period_at(anchor, k).start for k in range(4)]
    # February clamps to the 28th, but March goes back to the 31st (not the 28th).
    assert starts == [
        utc(2025, 1, 31, 9),
        utc(2025, 2, 28, 9),
        utc(2025, 3, 31, 9),
        utc(2025, 4, 30, 9),
    ]


@given(anchor=utc_instants, months=st.integers(min_value=-1000, max_value=1000))
def test_period_k_is_computed_from_the_anchor(anchor: datetime, months: int) -> None:
    moved = add_months(anchor, months)
    month_length = calendar.monthrange(moved.year, moved.month)[1]
    assert moved.day == min(anchor.day, month_length)
    assert (moved.year * 12 + moved.month) - (anchor.year * 12 + anchor.month) == months
    assert moved.time() == anchor.time()


# --- period_containing --------------------------------------------------------------------


def test_an_instant_at_the_exact_start_belongs_to_the_period() -> None:
    anchor = utc(2025, 1, 31)
    period = period_containing(anchor, utc(2025, 2, 28))
    assert period == Period(utc(2025, 2, 28), utc(2025, 3, 31))
    assert period_containing(anchor, anchor) == Period(anchor, utc(2025, 2, 28))


def test_an_instant_at_the_exact_end_belongs_to_the_next_period() -> None:
    anchor = utc(2025, 1, 15)
    first = period_containing(anchor, utc(2025, 2, 15) - MICROSECOND)
    second = period_containing(anchor, utc(2025, 2, 15))
    assert first == Period(utc(2025, 1, 15), utc(2025, 2, 15))
    assert not first.contains(utc(2025, 2, 15))
    assert second == Period(utc(2025, 2, 15), utc(2025, 3, 15))


def test_an_instant_before_the_anchor_has_a_negative_index() -> None:
    anchor = utc(2025, 3, 31)
    instant = anchor - MICROSECOND
    assert period_index(anchor, instant) == -1
    assert period_containing(anchor, instant) == Period(utc(2025, 2, 28), anchor)
    assert period_index(anchor, utc(2024, 3, 31)) == -12


def test_an_instant_far_in_the_future_finds_its_period() -> None:
    anchor = utc(2025, 1, 31, 12)
    instant = utc(2999, 2, 28, 11, 59)
    assert period_index(anchor, instant) == (2999 - 2025) * 12
    assert period_containing(anchor, instant) == Period(utc(2999, 1, 31, 12), utc(2999, 2, 28, 12))


def test_period_containing_holds_the_instant_when_the_anchor_has_another_offset() -> None:
    # 2025-01-31T02:00+05:00 is the anchor 2025-01-30T21:00Z: periods are in UTC.
    anchor = datetime(2025, 1, 31, 2, tzinfo=timezone(timedelta(hours=5)))
    instant = utc(2025, 2, 27, 22)
    period = period_containing(anchor, instant)
    assert period.contains(instant)
    assert period == Period(utc(2025, 1, 30, 21), utc(2025, 2, 28, 21))


@given(anchor=utc_instants, instant=utc_instants)
def test_the_period_containing_an_instant_contains_it(anchor: datetime, instant: datetime) -> None:
    period = period_containing(anchor, instant)
    assert period.contains(instant)
    assert period == period_at(anchor, period_index(anchor, instant))


@given(anchor=utc_instants, index=st.integers(min_value=-600, max_value=600))
def test_consecutive_periods_are_contiguous_and_non_empty(anchor: datetime, index: int) -> None:
    period, following = period_at(anchor, index), period_at(anchor, index + 1)
    assert period.start < period.end == following.start < following.end
    assert timedelta(days=28) <= period.end - period.start <= timedelta(days=31)
    assert period_containing(anchor, period.start) == period
    assert period_containing(anchor, period.end - MICROSECOND) == period


# --- Period -------------------------------------------------------------------------------


def test_period_clip_keeps_the_overlap_only() -> None:
    period = Period(utc(2025, 1, 1), utc(2025, 2, 1))
    assert period.clip(utc(2025, 1, 23), None) == Period(utc(2025, 1, 23), utc(2025, 2, 1))
    assert period.clip(utc(2024, 1, 1), utc(2025, 1, 10)) == Period(
        utc(2025, 1, 1), utc(2025, 1, 10)
    )
    assert period.clip(utc(2025, 2, 1), None) is None
    assert period.clip(utc(2024, 1, 1), utc(2025, 1, 1)) is None


def test_an_empty_period_is_refused() -> None:
    with pytest.raises(AssertionError):
        Period(utc(2025, 1, 1), utc(2025, 1, 1))
