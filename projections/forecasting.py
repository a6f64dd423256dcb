"""Run-rate forecasts of open periods, and of past ones as of their midpoints.

An open period is forecast as of now from the usage recorded so far. A past
period is forecast as of its midpoint, from the usage that had happened by then
(as the ledger stood when its invoice was finalized), and shown beside its
actual invoice, so anyone can judge the method on their own history. The
method is :mod:`ledger.core.forecast`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from ledger.app.billing import (
    InvoicePlan,
    customer_ids_at,
    fold_period,
    load_customer,
    plan_invoice,
    settle_invoice,
)
from ledger.core.billing import CustomerState, begun_periods, contract_period
from ledger.core.errors import Violations
from ledger.core.forecast import RunRate, elapsed_share, project, run_rate
from ledger.core.invoice import Invoice
from ledger.core.metering import Tally, UsageKey
from ledger.core.validation import check_ids
from ledger.store.event_store import Pool, read_head, snapshot
from projections.invoicing import InvoiceStatus, InvoiceView, Invoicing, check_draft_count
from projections.registry import live_version
from projections.usage_rollups import UsageRollups

Conn = AsyncConnection[TupleRow]

PAST_PERIODS_MAX: Final = 24
MICROSECOND: Final = timedelta(microseconds=1)
NOTHING_YET: Final = "nothing to project yet: no usage share is known at this point"


@dataclass(frozen=True)
class ForecastQuery:
    customer_ids: Sequence[str] = ()  # none: every customer
    past_periods: int = 0  # ended periods per contract, forecast as of their midpoints


@dataclass(frozen=True)
class Forecast:
    """One period's forecast: what was billed so far, where it is heading, and (for
    a past period) where it ended."""

    invoice_id: str
    customer_id: str
    currency: str
    period_start: datetime
    period_end: datetime
    as_of: datetime
    elapsed: Decimal
    method: str
    so_far: Invoice  # the usage before ``as_of``, priced (not settled)
    forecast: Invoice  # the projected usage, priced and settled
    actual: Invoice | None  # a past period's invoice as it stands
    actual_status: str  # FINALIZED or DRAFT for a past period, "" for an open one


class Forecasting:
    def __init__(
        self,
        pool: Pool,
        *,
        invoicing: Invoicing,
        clock: Callable[[], datetime],
        rollups: Callable[[int], UsageRollups] = UsageRollups,
    ) -> None:
        self._pool = pool
        self._invoicing = invoicing
        self._clock = clock
        self._rollups = rollups

    async def forecasts(self, query: ForecastQuery) -> tuple[list[Forecast], int]:
        """Each open period's forecast, and up to ``past_periods`` ended ones per
        contract as of their midpoints; with the ledger head they were read at."""
        _check(query)
        now = self._clock()
        found: list[Forecast] = []
        async with snapshot(self._pool) as conn:
            head = (await read_head(conn)).seq
            ids = list(query.customer_ids) or await customer_ids_at(conn, head)
            customers = [await load_customer(conn, customer_id, head) for customer_id in ids]
            work = [
                (customer, *period)
                for customer in customers
                for period in _periods_to_forecast(customer, query.past_periods, now)
            ]
            check_draft_count(len(work))
            for customer, contract_id, number, is_open in work:
                if is_open:
                    plan = await plan_invoice(conn, customer, contract_id, number, head)
                    so_far = await self._invoicing.usage(conn, plan, head, until=now)
                    found.append(await self._forecast(conn, plan, now, so_far, None))
                else:
                    found.append(await self._past(conn, customer, contract_id, number, head))
        return sorted(found, key=lambda f: (f.customer_id, f.period_start, f.invoice_id)), head

    async def _past(
        self, conn: Conn, customer: CustomerState, contract_id: str, number: int, head: int
    ) -> Forecast:
        """As of the period's midpoint, on the ledger its invoice was computed from."""
        actual = await self._invoicing.current(conn, customer, contract_id, number, head)
        finalized = actual.status is InvoiceStatus.FINALIZED
        through = actual.invoice.computed_through_seq if finalized else head
        then = await load_customer(conn, customer.customer_id, through)
        plan = await plan_invoice(conn, then, contract_id, number, through)
        midpoint = plan.period.start + (plan.period.end - plan.period.start) / 2
        so_far = await fold_period(conn, plan, (0, through), until=midpoint)
        return await self._forecast(conn, plan, midpoint, so_far, actual)

    async def _forecast(
        self,
        conn: Conn,
        plan: InvoicePlan,
        as_of: datetime,
        usage: dict[UsageKey, Tally],
        actual: InvoiceView | None,
    ) -> Forecast:
        elapsed = elapsed_share(plan.period.start, plan.period.end, as_of)
        rate = run_rate(elapsed, await self._previous_shape(conn, plan, elapsed))
        so_far = plan.price(usage)
        segments = [(s.period.start, s.period.end) for s in plan.segments]
        projected = so_far if rate is None else plan.price(project(usage, rate, segments, as_of))
        late = self._invoicing.late_source(conn)
        return Forecast(
            invoice_id=plan.invoice_id,
            customer_id=plan.customer.customer_id,
            currency=so_far.currency,
            period_start=plan.period.start,
            period_end=plan.period.end,
            as_of=as_of,
            elapsed=elapsed,
            method=_method(rate),
            so_far=so_far,
            forecast=await settle_invoice(conn, plan, projected, late),
            actual=actual.invoice if actual is not None else None,
            actual_status=actual.status.value if actual is not None else "",
        )

    async def _previous_shape(
        self, conn: Conn, plan: InvoicePlan, elapsed: Decimal
    ) -> tuple[int, int] | None:
        """The previous period's events by the same point of it, and in all."""
        previous = contract_period(plan.contract, plan.ref.number - 1)
        if previous is None:
            return None
        length = (previous.end - previous.start) // MICROSECOND
        cut = previous.start + MICROSECOND * int(length * elapsed)
        rollups = self._rollups(await live_version(conn, UsageRollups.name))
        span = (previous.start, previous.end)
        return await rollups.events_before(conn, plan.customer.customer_id, span, cut)


def _periods_to_forecast(
    customer: CustomerState, past: int, now: datetime
) -> list[tuple[str, int, bool]]:
    """``(contract_id, number, is_open)`` of each open period of the customer, and
    of the latest ``past`` ended periods of each contract."""
    chosen = []
    backtested: dict[str, int] = {}
    for contract_id, number in begun_periods(customer, now):  # newest first
        period = contract_period(customer.contracts[contract_id], number)
        assert period is not None
        if period.end > now:
            chosen.append((contract_id, number, True))
        elif backtested.get(contract_id, 0) < past:
            backtested[contract_id] = backtested.get(contract_id, 0) + 1
            chosen.append((contract_id, number, False))
    return chosen


def _method(rate: RunRate | None) -> str:
    return rate.describe() if rate is not None else NOTHING_YET


def _check(query: ForecastQuery) -> None:
    violations = Violations()
    if not 0 <= query.past_periods <= PAST_PERIODS_MAX:
        violations.add("past_periods", f"must be within 0..{PAST_PERIODS_MAX}")
    check_ids(violations, "customer_ids", query.customer_ids)
    violations.raise_if_any()
