"""Monthly billing periods from an anchor, clamped to short months without drift.

Period ``k`` starts at the anchor moved ``k`` months forward, with the anchor's
day clamped to the month's length: 31 Jan → 28/29 Feb → 31 Mar. Periods are
half-open ``[start, end)`` in UTC.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, order=True)
class Period:
    """A half-open interval of time ``[start, end)``."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        assert self.start < self.end, "a period is never empty"

    def contains(self, instant: datetime) -> bool:
        return self.start <= instant < self.end

    def clip(self, start: datetime, end: datetime | None) -> Period | None:
        """The part of this period inside ``[start, end)``, or None if none is."""
        lo = max(self.start, start)
        hi = self.end if end is None else min(self.end, end)
        return Period(lo, hi) if lo < hi else None


def add_months(anchor: datetime, months: int) -> datetime:
    """The anchor moved by whole months, its day clamped to the target month."""
    index = anchor.year * 12 + (anchor.month - 1) + months
    year, month0 = divmod(index, 12)
    day = min(anchor.day, calendar.monthrange(year, month0 + 1)[1])
    return anchor.replace(year=year, month=month0 + 1, day=day)


def period_at(anchor: datetime, index: int) -> Period:
    """The ``index``-th monthly period after the anchor (may be negative).

    Periods are in UTC: the anchor's day is clamped in UTC, whatever its offset.
    """
    anchor = anchor.astimezone(UTC)
    return Period(add_months(anchor, index), add_months(anchor, index + 1))


def period_index(anchor: datetime, instant: datetime) -> int:
    """Index of the monthly period that contains ``instant``."""
    assert anchor.tzinfo is not None and instant.tzinfo is not None
    anchor, instant = anchor.astimezone(UTC), instant.astimezone(UTC)
    index = (instant.year - anchor.year) * 12 + instant.month - anchor.month
    # The month estimate is off by at most one in either direction.
    while add_months(anchor, index) > instant:
        index -= 1
    while add_months(anchor, index + 1) <= instant:
        index += 1
    return index


def period_containing(anchor: datetime, instant: datetime) -> Period:
    """The monthly period from ``anchor`` that contains ``instant``."""
    return period_at(anchor, period_index(anchor, instant))
