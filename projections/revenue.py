"""Revenue: every finalized invoice's lines, whether it still stands, and product costs.

Reports sum these rows, so a report's total for a range of periods is the sum
of those periods' invoices to the cent. An invoice's rows are written once, at
its finalization; a void only marks it, because its replacement is a new
invoice with rows of its own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import TupleRow

from ledger.core.canonical import canonical_json
from ledger.core.events import InvoiceFinalized, InvoiceVoided, ProductCostSet
from ledger.core.invoice import Invoice, LineKind, minor_unit_places
from ledger.core.reporting import ProductCost, RevenueLine
from ledger.store.records import RecordedEvent

REVENUE_EVENTS: Final = frozenset(
    cls.EVENT_TYPE for cls in (InvoiceFinalized, InvoiceVoided, ProductCostSet)
)

_LINE_COLUMNS: Final = (
    "invoice_id, line_no, product_id, product_name, metric_id, group_values, rate_card_id,"
    " rate_card_version, kind, segment_start, quantity, amount"
)


@dataclass(frozen=True)
class InvoiceTotals:
    """The sums of the standing invoices of one currency in a range of periods."""

    currency: str
    invoice_count: int
    subtotal: Decimal
    credits_applied: Decimal
    total: Decimal


class RevenueProjection:
    """Projection ``revenue``: finalized invoices and their lines, and product costs."""

    name = "revenue"
    event_types: Final = REVENUE_EVENTS

    def __init__(self, version: int = 1) -> None:
        self.version = version
        self.invoices = f"revenue_invoices_v{version}"
        self.lines = f"revenue_lines_v{version}"
        self.costs = f"product_costs_v{version}"

    def ddl(self) -> Sequence[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {self.invoices} (
                invoice_id      text        PRIMARY KEY,
                customer_id     text        NOT NULL,
                contract_id     text        NOT NULL,
                currency        text        NOT NULL,
                places          integer     NOT NULL,
                period_start    timestamptz NOT NULL,
                period_end      timestamptz NOT NULL,
                subtotal        numeric     NOT NULL,
                credits_applied numeric     NOT NULL,
                total           numeric     NOT NULL,
                finalized_seq   bigint      NOT NULL,
                voided_seq      bigint)""",
            f"""CREATE INDEX IF NOT EXISTS {self.invoices}_period
                ON {self.invoices} (period_start, customer_id)""",
            f"""CREATE TABLE IF NOT EXISTS {self.lines} (
                invoice_id        text        NOT NULL,
                line_no           integer     NOT NULL,
                product_id        text        NOT NULL,
                product_name      text        NOT NULL,
                metric_id         text        NOT NULL,
                group_values      text        NOT NULL,
                rate_card_id      text        NOT NULL,
                rate_card_version integer     NOT NULL,
                kind              text        NOT NULL,
                segment_start     timestamptz NOT NULL,
                quantity          numeric     NOT NULL,
                amount            numeric     NOT NULL,
                PRIMARY KEY (invoice_id, line_no))""",
            f"""CREATE TABLE IF NOT EXISTS {self.costs} (
                seq            bigint      PRIMARY KEY,
                product_id     text        NOT NULL,
                currency       text        NOT NULL,
                unit_cost      numeric     NOT NULL,
                effective_from timestamptz NOT NULL)""",
        ]

    def tables(self) -> Sequence[str]:
        return [self.lines, self.invoices, self.costs]

    async def apply(
        self,
        cur: AsyncCursor[TupleRow],
        events: Sequence[RecordedEvent],
        *,
        replaying: bool = False,  # no side effects to suppress
    ) -> None:
        for stored in events:
            if stored.event_type not in REVENUE_EVENTS:
                continue
            event = stored.domain_event()
            if isinstance(event, InvoiceFinalized):
                await self._finalized(cur, event.invoice, stored.seq)
            elif isinstance(event, InvoiceVoided):
                await cur.execute(
                    f"UPDATE {self.invoices} SET voided_seq = %s"
                    " WHERE invoice_id = %s AND voided_seq IS NULL",
                    (stored.seq, event.invoice_id),
                )
            elif isinstance(event, ProductCostSet):
                await cur.execute(
                    f"INSERT INTO {self.costs} (seq, product_id, currency, unit_cost,"
                    " effective_from) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (
                        stored.seq,
                        event.product_id,
                        event.currency,
                        event.unit_cost,
                        event.effective_from,
                    ),
                )

    async def _finalized(self, cur: AsyncCursor[TupleRow], invoice: Invoice, seq: int) -> None:
        await cur.execute(
            f"INSERT INTO {self.invoices} (invoice_id, customer_id, contract_id, currency,"
            " places, period_start, period_end, subtotal, credits_applied, total,"
            " finalized_seq) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (invoice_id) DO NOTHING RETURNING invoice_id",
            (
                invoice.invoice_id,
                invoice.customer_id,
                invoice.contract_id,
                invoice.currency,
                minor_unit_places(invoice),
                invoice.period_start,
                invoice.period_end,
                invoice.subtotal,
                invoice.credits_applied,
                invoice.total,
                seq,
            ),
        )
        if await cur.fetchone() is None or not invoice.lines:
            return  # already applied
        rows = [
            (
                invoice.invoice_id,
                index,
                line.product_id,
                line.product_name,
                line.metric_id,
                canonical_json(dict(line.group_values)).decode(),
                line.rate_card_id,
                line.rate_card_version,
                line.kind.value,
                line.segment_start,
                line.quantity,
                line.amount,
            )
            for index, line in enumerate(invoice.lines)
        ]
        await cur.execute(
            f"INSERT INTO {self.lines} ({_LINE_COLUMNS})"
            " SELECT * FROM unnest(%s::text[], %s::int[], %s::text[], %s::text[], %s::text[],"
            " %s::text[], %s::text[], %s::int[], %s::text[], %s::timestamptz[], %s::numeric[],"
            " %s::numeric[])",
            tuple(list(column) for column in zip(*rows, strict=True)),
        )

    async def lines_in(
        self,
        conn: AsyncConnection[TupleRow],
        periods: tuple[datetime, datetime],
        customer_ids: Sequence[str],
    ) -> list[RevenueLine]:
        """Lines of the standing invoices whose periods start in ``[start, end)``."""
        cur = await conn.execute(
            "SELECT i.customer_id, i.currency, i.places, i.period_start,"
            " l.invoice_id, l.product_id, l.product_name, l.metric_id, l.group_values,"
            " l.rate_card_id, l.rate_card_version, l.kind, l.segment_start, l.quantity, l.amount"
            f" FROM {self.invoices} i JOIN {self.lines} l USING (invoice_id)"
            f" WHERE {_STANDING_IN_RANGE} ORDER BY i.period_start, l.invoice_id, l.line_no",
            (*periods, list(customer_ids), list(customer_ids)),
        )
        return [_line(row) for row in await cur.fetchall()]

    async def totals_in(
        self,
        conn: AsyncConnection[TupleRow],
        periods: tuple[datetime, datetime],
        customer_ids: Sequence[str],
    ) -> list[InvoiceTotals]:
        """Per currency, the standing invoices' own sums (to check reports against)."""
        cur = await conn.execute(
            "SELECT currency, count(*), sum(subtotal), sum(credits_applied), sum(total)"
            f" FROM {self.invoices} i WHERE {_STANDING_IN_RANGE}"
            " GROUP BY currency ORDER BY currency",
            (*periods, list(customer_ids), list(customer_ids)),
        )
        return [InvoiceTotals(str(c), int(n), s, a, t) for c, n, s, a, t in await cur.fetchall()]

    async def costs_known(self, conn: AsyncConnection[TupleRow]) -> list[ProductCost]:
        cur = await conn.execute(
            f"SELECT product_id, currency, unit_cost, effective_from FROM {self.costs} ORDER BY seq"
        )
        return [
            ProductCost(str(product), str(currency), cost, at.astimezone(UTC))
            for product, currency, cost, at in await cur.fetchall()
        ]


# Standing: finalized and not voided (a voided invoice's replacement bills the period).
_STANDING_IN_RANGE: Final = (
    "i.voided_seq IS NULL AND i.period_start >= %s AND i.period_start < %s"
    " AND (cardinality(%s::text[]) = 0 OR i.customer_id = ANY(%s::text[]))"
)


def _line(row: Sequence[Any]) -> RevenueLine:
    customer_id, currency, places, period_start, invoice_id, *rest = row
    product_id, product_name, metric_id, groups, card, version, kind, segment, qty, amount = rest
    return RevenueLine(
        invoice_id=invoice_id,
        customer_id=customer_id,
        currency=currency,
        period_start=period_start.astimezone(UTC),
        product_id=product_id,
        product_name=product_name,
        metric_id=metric_id,
        group_values=json.loads(groups),
        rate_card_id=card,
        rate_card_version=int(version),
        kind=LineKind(kind),
        segment_start=segment.astimezone(UTC),
        quantity=qty,
        amount=amount,
        places=int(places),
    )
