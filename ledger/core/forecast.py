"""Run-rate forecasts: where an open period's bill is heading, from its usage so far.

The method, stated on every forecast:

1. Find the share of the period's usage that should have happened by now. With
   a previous period that had usage, that is the share of the previous
   period's events recorded by the same point of it (its shape: weekday dips,
   month-end peaks). Without one, it is the share of the period elapsed
   (linear in time).
2. Scale what accumulates (event counts and sums) by 1 / share. A maximum, a
   latest value or a count of distinct values does not grow with time in any
   known way, so those stay as they are.
3. Price the projected quantities under the period's own plan, so tiers,
   minimums and flat fees apply as they will on the invoice, and settle them
   (credits, true-ups) like a draft.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Final

from ledger.core.metering import GroupKey, Tally, UsageKey
from ledger.core.money import EXACT, exact_sum

# Shares and projected sums are kept to this many places: plenty for a
# forecast, and short enough to read.
PLACES: Final = Decimal("0.000001")
MICROSECOND: Final = timedelta(microseconds=1)
Span = tuple[datetime, datetime]
MetricGroup = tuple[str, GroupKey]

LINEAR: Final = "linear in elapsed time"
SHAPED: Final = "previous period's shape"


@dataclass(frozen=True)
class RunRate:
    """How far into its usage a period is, and so how much to scale it by."""

    elapsed: Decimal  # share of the period's time gone, in [0, 1]
    share: Decimal  # share of the period's usage expected by now, in (0, 1]
    method: str

    @property
    def factor(self) -> Decimal:
        with localcontext(EXACT):
            return (1 / self.share).quantize(PLACES, rounding=ROUND_HALF_UP)

    def describe(self) -> str:
        basis = (
            "the previous period had recorded that share of its events by the same point"
            if self.method == SHAPED
            else "that share of the period has elapsed"
        )
        return (
            f"{self.method}: usage so far is taken as {_percent(self.share)} of the period's"
            f" ({basis}; {_percent(self.elapsed)} of the period elapsed), so counts and sums"
            f" are scaled by {self.factor}; maximum, latest and distinct counts are kept as"
            " they are; then priced and settled like the draft"
        )


def elapsed_share(start: datetime, end: datetime, as_of: datetime) -> Decimal:
    """The share of ``[start, end)`` before ``as_of``, exact to the microsecond."""
    clipped = min(max(as_of, start), end)
    with localcontext(EXACT):
        gone = Decimal((clipped - start) // MICROSECOND)
        whole = Decimal((end - start) // MICROSECOND)
        return (gone / whole).quantize(PLACES, rounding=ROUND_HALF_UP)


def run_rate(elapsed: Decimal, previous: tuple[int, int] | None) -> RunRate | None:
    """The run rate at ``elapsed`` of a period, shaped by ``previous``: the previous
    period's events by the same point and in all, if it had any.

    Linear in time when the previous period says nothing: it had no usage, or
    none yet by this point (its shape would put all of it still to come). None
    when no time has passed.
    """
    if previous is not None and previous[0] > 0:
        before, total = previous
        with localcontext(EXACT):
            share = (Decimal(before) / Decimal(total)).quantize(PLACES, rounding=ROUND_HALF_UP)
        if share > 0:
            return RunRate(elapsed, share, SHAPED)
    return RunRate(elapsed, elapsed, LINEAR) if elapsed > 0 else None


def project(
    usage: Mapping[UsageKey, Tally],
    rate: RunRate,
    segments: Sequence[Span],
    as_of: datetime,
) -> dict[UsageKey, Tally]:
    """Usage so far scaled to the whole period (step 2 of the method).

    A period may be priced in segments (a price change inside it). Segments that
    ended by ``as_of`` keep their usage as it is; what the run rate adds is spread
    over the rest of the period, each remaining segment taking its share of the
    remaining time, so a finished segment is not inflated and a later price gets
    the usage it will see.
    """
    ahead = [(start, max(start, as_of), end) for start, end in segments if end > as_of]
    lengths = [(end - begin) // MICROSECOND for _, begin, end in ahead]
    projected = dict(usage)
    if not ahead or sum(lengths) == 0:
        return projected
    for (metric_id, group), parts in _by_metric_and_group(usage).items():
        latest = parts[-1]
        extra_count = sum(t.count for t in parts) * (rate.factor - 1)
        extra_total = exact_sum(t.total for t in parts) * (rate.factor - 1)
        shares = _cumulative_shares(lengths)
        added_count, added_total = 0, Decimal(0)
        for (start, _, _), share in zip(ahead, shares, strict=True):
            key = (start, metric_id, group)
            base = usage.get(key) or _carried(latest)
            with localcontext(EXACT):
                count = int((extra_count * share).to_integral_value(ROUND_HALF_UP)) - added_count
                total = (extra_total * share).quantize(PLACES, ROUND_HALF_UP) - added_total
            added_count, added_total = added_count + count, added_total + total
            projected[key] = replace(base, count=base.count + count, total=base.total + total)
    return projected


def _by_metric_and_group(
    usage: Mapping[UsageKey, Tally],
) -> dict[tuple[str, GroupKey], list[Tally]]:
    """Each metric and group's tallies, in segment order."""
    found: dict[tuple[str, GroupKey], list[Tally]] = {}
    for (_, metric_id, group), tally in sorted(usage.items(), key=lambda item: item[0][0]):
        found.setdefault((metric_id, group), []).append(tally)
    return found


def _cumulative_shares(lengths: Sequence[int]) -> list[Decimal]:
    """Running shares of the whole, ending at exactly 1: allocating by them never
    loses or invents a unit to rounding."""
    whole = Decimal(sum(lengths))
    running, shares = 0, []
    with localcontext(EXACT):
        for length in lengths:
            running += length
            shares.append(Decimal(running) / whole)
    return shares


def _carried(latest: Tally) -> Tally:
    """A segment with no usage yet: what does not accumulate (a maximum, a latest
    value, distinct values) is expected to hold as last seen."""
    return Tally(maximum=latest.maximum, latest=latest.latest, distinct=latest.distinct)


def _percent(share: Decimal) -> str:
    return f"{(share * 100).quantize(Decimal('0.01'), rounding=ROUND_HALF_UP)}%"
