"""Revenue and usage reports, read from the projections of the one ledger.

Finalized revenue comes from the ``revenue`` projection (every standing
finalized invoice's lines); draft revenue from the live drafts, priced as
GetInvoice prices them; usage series from the hourly rollups. Each report
says which ledger position it reflects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final

from ledger.core.catalog import BillableMetric
from ledger.core.errors import Violations, invalid
from ledger.core.invoice import Invoice
from ledger.core.money import exact_sum
from ledger.core.reporting import CostBook, Dimension, RevenueRow, revenue_lines, summarize
from ledger.core.validation import check_ids
from ledger.store.event_store import Pool, PostgresEventStore, snapshot
from projections.balances import wait_until_projected
from projections.engine import checkpoint_of
from projections.invoicing import Invoicing
from projections.registry import live_version
from projections.revenue import InvoiceTotals, RevenueProjection
from projections.usage_rollups import SeriesQuery, UsageBucket, UsageRollups

# A series has at most this many buckets: a quarter of hours, six years of days.
BUCKETS_MAX: Final = 24 * 93
# ... and at most this many rows (buckets x metrics x groups x customers).
SERIES_ROWS_MAX: Final = 50_000
HOUR: Final = timedelta(hours=1)
DAY: Final = timedelta(days=1)


@dataclass(frozen=True)
class RevenueQuery:
    """Invoices of the periods starting in ``periods``, split ``by`` those dimensions.

    ``drafts`` reports the open (not yet finalized) periods' live drafts instead
    of the finalized invoices; the two are never mixed.
    """

    periods: tuple[datetime | None, datetime | None]
    by: Sequence[Dimension] = ()
    drafts: bool = False
    customer_ids: Sequence[str] = ()
    consistency_token: int = 0


@dataclass(frozen=True)
class RevenueReport:
    rows: list[RevenueRow]
    totals: list[InvoiceTotals]  # the invoices' own sums, per currency
    computed_through_seq: int


@dataclass(frozen=True)
class UsageQuery:
    span: tuple[datetime | None, datetime | None]
    hourly: bool = False
    customer_ids: Sequence[str] = ()
    metric_ids: Sequence[str] = ()
    by_customer: bool = False
    consistency_token: int = 0


@dataclass(frozen=True)
class UsagePoint:
    """One bucket of one metric and group: its quantity as the metric aggregates it."""

    bucket: UsageBucket
    group_values: dict[str, str]
    quantity: Decimal


@dataclass(frozen=True)
class UsageReport:
    points: list[UsagePoint]
    computed_through_seq: int


class Reporting:
    def __init__(
        self,
        pool: Pool,
        *,
        store: PostgresEventStore,
        invoicing: Invoicing,
        revenue: Callable[[int], RevenueProjection] = RevenueProjection,
        rollups: Callable[[int], UsageRollups] = UsageRollups,
    ) -> None:
        self._pool = pool
        self._store = store
        self._invoicing = invoicing
        self._revenue = revenue
        self._rollups = rollups

    async def revenue(self, query: RevenueQuery) -> RevenueReport:
        """Revenue summed along ``query.by``, with the invoices' own totals beside it."""
        periods = _span(query.periods, "period_start", "period_end")
        _check_filter(query.customer_ids, "customer_ids")
        await wait_until_projected(
            self._pool, self._store, RevenueProjection.name, query.consistency_token
        )
        async with snapshot(self._pool) as conn:
            projection = self._revenue(await live_version(conn, RevenueProjection.name))
            costs = CostBook(await projection.costs_known(conn))
            if not query.drafts:
                lines = await projection.lines_in(conn, periods, query.customer_ids)
                totals = await projection.totals_in(conn, periods, query.customer_ids)
                through = await checkpoint_of(conn, projection.name, projection.version)
                return RevenueReport(summarize(lines, query.by, costs), totals, through)
        drafts, head = await self._invoicing.drafts_in(periods, query.customer_ids)
        lines = [line for draft in drafts for line in revenue_lines(draft)]
        return RevenueReport(summarize(lines, query.by, costs), _totals(drafts), head)

    async def usage(self, query: UsageQuery) -> UsageReport:
        """Usage over time per metric and group, at hourly or daily grain."""
        span = _span(query.span, "start", "end")
        _check_filter(query.customer_ids, "customer_ids")
        _check_filter(query.metric_ids, "metric_ids")
        grain = HOUR if query.hourly else DAY
        if (span[1] - span[0]) / grain > BUCKETS_MAX:
            raise invalid("end", f"the range holds more than {BUCKETS_MAX} buckets; narrow it")
        await wait_until_projected(
            self._pool, self._store, UsageRollups.name, query.consistency_token
        )
        series = SeriesQuery(
            span,
            query.hourly,
            query.customer_ids,
            query.metric_ids,
            query.by_customer,
            rows_max=SERIES_ROWS_MAX,
        )
        async with snapshot(self._pool) as conn:
            rollups = self._rollups(await live_version(conn, UsageRollups.name))
            metrics = {m.metric_id: m for m in await rollups.metric_definitions(conn)}
            buckets = await rollups.series(conn, series)
            through = await checkpoint_of(conn, rollups.name, rollups.version)
        points = [_point(bucket, metrics[bucket.metric_id]) for bucket in buckets]
        return UsageReport(points, through)


def _point(bucket: UsageBucket, metric: BillableMetric) -> UsagePoint:
    names = metric.group_by
    return UsagePoint(
        bucket,
        dict(zip(names, bucket.group, strict=True)),
        bucket.quantity(metric.aggregation),
    )


def _totals(drafts: Sequence[Invoice]) -> list[InvoiceTotals]:
    by_currency: dict[str, list[Invoice]] = {}
    for draft in drafts:
        by_currency.setdefault(draft.currency, []).append(draft)
    return [
        InvoiceTotals(
            currency,
            len(found),
            exact_sum(d.subtotal for d in found),
            exact_sum(d.credits_applied for d in found),
            exact_sum(d.total for d in found),
        )
        for currency, found in sorted(by_currency.items())
    ]


def _span(
    span: tuple[datetime | None, datetime | None], first: str, last: str
) -> tuple[datetime, datetime]:
    violations = Violations()
    start, end = span
    if start is None:
        violations.add(first, "is required")
    if end is None:
        violations.add(last, "is required")
    if start is not None and end is not None and end <= start:
        violations.add(last, f"must be after {first}")
    violations.raise_if_any()
    assert start is not None and end is not None
    return start, end


def _check_filter(ids: Sequence[str], field: str) -> None:
    violations = Violations()
    check_ids(violations, field, ids)
    violations.raise_if_any()
