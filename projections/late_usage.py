"""Late usage: events recorded for a period whose invoice was already finalized.

Such usage is billed on the contract's next open invoice as adjustment lines,
so every draft of that invoice must find it. Searching the ledger for it costs
as much as the customer's usage since the last finalization; this projection
keeps just the late events, so a draft asks for the few there are.

An event is kept when its business time falls before the customer's
"finalized until" instant (the latest end of a period finalized so far) at the
moment it is applied. Projections apply in ledger order, so any usage recorded
after a finalization is checked against it; usage recorded between the
position an invoice was computed through and its finalization is looked up in
the ledger when the finalization is applied. The rows are a superset of what a
draft needs (a void can reopen a period): the reader filters by time and seq.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import TupleRow

from ledger.app.streams import usage_stream, usage_stream_customer
from ledger.core.events import InvoiceFinalized, UsageRecorded
from ledger.core.invoice import Invoice
from ledger.store.event_store import DEFAULT_PARTITION
from ledger.store.records import RecordedEvent


class LateUsage:
    """Projection ``late_usage``: per customer, the seq and time of each late event."""

    name = "late_usage"
    event_types = None  # usage: every event

    def __init__(self, version: int = 1) -> None:
        self.version = version
        self.late = f"late_usage_v{version}"
        self.finalized_until = f"late_usage_finalized_until_v{version}"

    def ddl(self) -> Sequence[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {self.finalized_until} (
                customer_id text        PRIMARY KEY,
                until       timestamptz NOT NULL)""",
            f"""CREATE TABLE IF NOT EXISTS {self.late} (
                customer_id text        NOT NULL,
                seq         bigint      NOT NULL,
                occurred_at timestamptz NOT NULL,
                PRIMARY KEY (customer_id, seq))""",
        ]

    def tables(self) -> Sequence[str]:
        return [self.late, self.finalized_until]

    async def apply(
        self,
        cur: AsyncCursor[TupleRow],
        events: Sequence[RecordedEvent],
        *,
        replaying: bool = False,  # no side effects to suppress
    ) -> None:
        # Usage is most of the ledger: its customer and time come from the row, not
        # from decoding the payload (a usage event's business time is the row's).
        until = await self._finalized_until(cur, _customers(events))
        late: list[tuple[str, int, datetime]] = []
        for stored in events:
            if stored.event_type == UsageRecorded.EVENT_TYPE:
                customer = usage_stream_customer(stored.stream_id)
                frontier = until.get(customer)
                if frontier is not None and stored.occurred_at < frontier:
                    late.append((customer, stored.seq, stored.occurred_at))
            elif stored.event_type == InvoiceFinalized.EVENT_TYPE:
                invoice = _finalized(stored).invoice
                known = until.get(invoice.customer_id, invoice.period_end)
                until[invoice.customer_id] = max(known, invoice.period_end)
                late += await _recorded_while_finalizing(cur, stored.seq, invoice, until)
        await self._save(cur, until, late)

    async def _finalized_until(
        self, cur: AsyncCursor[TupleRow], customers: list[str]
    ) -> dict[str, datetime]:
        await cur.execute(
            f"SELECT customer_id, until FROM {self.finalized_until} WHERE customer_id = ANY(%s)",
            (customers,),
        )
        return {row[0]: row[1] for row in await cur.fetchall()}

    async def _save(
        self,
        cur: AsyncCursor[TupleRow],
        until: dict[str, datetime],
        late: list[tuple[str, int, datetime]],
    ) -> None:
        if until:
            await cur.executemany(
                f"INSERT INTO {self.finalized_until} (customer_id, until) VALUES (%s, %s)"
                " ON CONFLICT (customer_id) DO UPDATE"
                f" SET until = greatest({self.finalized_until}.until, excluded.until)",
                list(until.items()),
            )
        if late:
            await cur.executemany(
                f"INSERT INTO {self.late} (customer_id, seq, occurred_at) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                late,
            )

    async def late_since(
        self,
        conn: AsyncConnection[TupleRow],
        customer_id: str,
        before: datetime,
        seqs: tuple[int, int],
    ) -> list[datetime]:
        """Business times of the customer's late events before ``before``, seq in
        ``(lo, hi]``."""
        cur = await conn.execute(
            f"SELECT occurred_at FROM {self.late} WHERE customer_id = %s"
            " AND seq > %s AND seq <= %s AND occurred_at < %s",
            (customer_id, *seqs, before),
        )
        return [row[0] for row in await cur.fetchall()]


async def _recorded_while_finalizing(
    cur: AsyncCursor[TupleRow], seq: int, invoice: Invoice, until: dict[str, datetime]
) -> list[tuple[str, int, datetime]]:
    """Usage recorded after the invoice was computed but before it was finalized.

    It was applied before this event moved the frontier, so it was not kept as
    late, yet the invoice did not bill it: it is late all the same.
    """
    customer_id = invoice.customer_id
    await cur.execute(
        "SELECT seq, occurred_at FROM events WHERE partition = %s AND seq > %s AND seq < %s"
        " AND stream_id = %s AND occurred_at < %s",
        (
            DEFAULT_PARTITION,
            invoice.computed_through_seq,
            seq,
            usage_stream(customer_id),
            until[customer_id],
        ),
    )
    return [(customer_id, row[0], row[1]) for row in await cur.fetchall()]


def _customers(events: Sequence[RecordedEvent]) -> list[str]:
    """Customers who sent usage or had an invoice finalized in this batch."""
    customers = set()
    for stored in events:
        if stored.event_type == UsageRecorded.EVENT_TYPE:
            customers.add(usage_stream_customer(stored.stream_id))
        elif stored.event_type == InvoiceFinalized.EVENT_TYPE:
            customers.add(_finalized(stored).invoice.customer_id)
    return sorted(customers)


def _finalized(stored: RecordedEvent) -> InvoiceFinalized:
    event = stored.domain_event()
    assert isinstance(event, InvoiceFinalized)
    return event
