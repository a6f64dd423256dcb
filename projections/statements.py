"""Customer statements: an invoice, its balances, and its period day by day.

The days are priced from the raw usage the invoice was computed from (through
its ``computed_through_seq``): each day's running total is the period's usage
priced on everything up to that day's end, under the invoice's own plan. So
the last day's running total is the invoice's usage charges to the cent, and
the chart cannot disagree with the bill.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from ledger.app.billing import InvoicePlan, load_customer, plan_invoice, sequenced
from ledger.app.streams import usage_stream
from ledger.core.billing import parse_invoice_ref
from ledger.core.invoice import Invoice
from ledger.core.metering import Tally, UsageKey, fold_usage, merge_tallies
from ledger.store.event_store import (
    Pool,
    PostgresEventStore,
    iter_stream_between,
    iter_stream_recorded_after,
    read_head,
    snapshot,
)
from ledger.store.records import StoredEvent
from projections.balances import PAGE_SIZE_MAX, BalanceProjection, wait_until_projected
from projections.invoicing import Invoicing
from projections.registry import live_version
from projections.statement_model import MetricUsage, Statement, StatementDay

Conn = AsyncConnection[TupleRow]
DAY: Final = timedelta(days=1)
DayTallies = dict[UsageKey, Tally]
Span = tuple[datetime, datetime]


class Statements:
    def __init__(
        self,
        pool: Pool,
        *,
        store: PostgresEventStore,
        invoicing: Invoicing,
        clock: Callable[[], datetime],
        balances: Callable[[int], BalanceProjection] = BalanceProjection,
    ) -> None:
        self._pool = pool
        self._store = store
        self._invoicing = invoicing
        self._clock = clock
        self._balances = balances

    async def statement(
        self, *, invoice_id: str = "", customer_id: str = "", at: datetime | None = None
    ) -> Statement:
        """The statement of an invoice by id, or of the one covering ``at``."""
        # Balances as of this call: every drawdown of the invoice read below is in them.
        await wait_until_projected(
            self._pool, self._store, BalanceProjection.name, (await self._store.head()).seq
        )
        async with snapshot(self._pool) as conn:
            head = (await read_head(conn)).seq
            customer, view = await self._invoicing.view_in(conn, head, invoice_id, customer_id, at)
            days = await self._days(conn, view.invoice, head)
            balances = self._balances(await live_version(conn, BalanceProjection.name))
            grants = await balances.grant_views(
                conn, customer.customer_id, currency=view.invoice.currency, limit=PAGE_SIZE_MAX
            )
        return Statement(
            customer_id=customer.customer_id,
            customer_name=customer.name,
            invoice=view.invoice,
            status=view.status.value,
            content_sha256=view.content_sha256,
            balances=tuple(grants),
            days=tuple(days),
            generated_at=self._clock(),
        )

    async def _days(self, conn: Conn, invoice: Invoice, head: int) -> list[StatementDay]:
        """The invoice's days, priced from the usage it was computed from: rollups
        and the tail, read day by day, unless usage for the period was recorded
        after the invoice (late usage, which rollups cannot leave out)."""
        through = invoice.computed_through_seq
        customer = await load_customer(conn, invoice.customer_id, through)
        ref = parse_invoice_ref(invoice.invoice_id)
        assert ref is not None
        plan = await plan_invoice(conn, customer, ref.contract_id, ref.number, through)
        bounds = day_bounds(plan.period.start, plan.period.end)
        stream = usage_stream(invoice.customer_id)
        span = (plan.period.start, plan.period.end)
        if await _any_recorded_after(conn, stream, span, (through, head)):
            per_day = await _raw_days(conn, plan, through, bounds)
        else:
            usage = self._invoicing.usage
            per_day = [await usage(conn, plan, through, until=e, since=s) for s, e in bounds]
        return _priced_days(plan, bounds, per_day)


def day_bounds(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The UTC days of ``[start, end)``, the first and last clipped to it."""
    bounds = []
    day = start
    while day < end:
        next_midnight = day.replace(hour=0, minute=0, second=0, microsecond=0) + DAY
        bounds.append((day, min(next_midnight, end)))
        day = next_midnight
    return bounds


async def _raw_days(
    conn: Conn, plan: InvoicePlan, through: int, bounds: list[Span]
) -> list[DayTallies]:
    """Each day's tallies folded from the raw events with seq up to ``through``."""
    per_day: list[DayTallies] = [{} for _ in bounds]
    stream = usage_stream(plan.customer.customer_id)
    span = (plan.period.start, plan.period.end)
    async for batch in iter_stream_between(conn, stream, span, (0, through)):
        _fold_by_day(plan, batch, bounds, per_day)
    return per_day


def _priced_days(
    plan: InvoicePlan, bounds: list[Span], per_day: list[DayTallies]
) -> list[StatementDay]:
    """Each day's running total: the usage up to its end, priced under the plan."""
    days = []
    running: DayTallies = {}
    before = Decimal(0)
    for (start, end), tallies in zip(bounds, per_day, strict=True):
        running = merge_tallies(running, tallies)
        cumulative = plan.price(running).subtotal  # usage lines only: no settlement
        usage = _usage(plan, tallies)
        days.append(StatementDay(start, end, cumulative - before, cumulative, usage))
        before = cumulative
    return days


def _fold_by_day(
    plan: InvoicePlan,
    batch: list[StoredEvent],
    bounds: list[Span],
    per_day: list[DayTallies],
) -> None:
    first = bounds[0][0]
    by_day: dict[int, list[StoredEvent]] = {}
    for stored in batch:
        # Day 0 may be partial: count whole days from the first day's midnight.
        midnight = first.replace(hour=0, minute=0, second=0, microsecond=0)
        index = (stored.occurred_at - midnight).days
        by_day.setdefault(index, []).append(stored)
    metrics = plan.catalog.metrics.values()
    for index, rows in by_day.items():
        folded = fold_usage(sequenced(rows), metrics, plan.segment_starts, plan.period.end)
        per_day[index] = merge_tallies(per_day[index], folded)


def _usage(plan: InvoicePlan, tallies: DayTallies) -> tuple[MetricUsage, ...]:
    """Each metric's quantity for the day, across its groups and segments."""
    merged: dict[str, Tally] = {}
    for (_, metric_id, _), tally in tallies.items():
        merged[metric_id] = merged[metric_id].merge(tally) if metric_id in merged else tally
    return tuple(
        MetricUsage(metric_id, tally.quantity(plan.catalog.metrics[metric_id].aggregation))
        for metric_id, tally in sorted(merged.items())
    )


async def _any_recorded_after(
    conn: Conn, stream: str, span: tuple[datetime, datetime], seqs: tuple[int, int]
) -> bool:
    """Whether any of the stream's usage in ``span`` was recorded in ``seqs``: at
    most one page read, however much late usage there is."""
    pages = iter_stream_recorded_after(conn, stream, span, seqs)
    try:
        return await anext(pages, None) is not None
    finally:
        await pages.aclose()
