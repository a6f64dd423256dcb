"""What an auditor needs: a customer's history with its bills recomputed, and simulations.

Everything here reads raw ledger events in one REPEATABLE READ snapshot and
recomputes with the pure core; nothing trusts a projection. Output is
deterministic: the same history gives the same items in the same order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from ledger.app.billing import (
    Conn,
    load_catalog,
    load_customer,
    load_rate_card_versions,
    replay_invoice,
)
from ledger.app.streams import (
    contract_stream,
    customer_stream,
    metric_stream,
    product_stream,
    rate_card_stream,
    usage_stream,
)
from ledger.core.billing import (
    CustomerState,
    contract_period,
    current_invoice_id,
    period_number_at,
)
from ledger.core.catalog import Contract, RateCardVersion
from ledger.core.errors import DomainError, FieldViolation, Rule
from ledger.core.events import ContractCreated
from ledger.core.invoice import Invoice, content_sha256
from ledger.store.event_store import Pool, iter_streams, read_head, read_types_at, snapshot
from ledger.store.records import StoredEvent

# Each simulated invoice is recomputed from raw events: bound the work per call.
SIMULATION_INVOICES_MAX = 500


class ReplayStatus:
    FINALIZED = "FINALIZED"  # recomputed at its recorded position, compared with its hash
    DRAFT = "DRAFT"  # an open period, as of the replay position
    SIMULATED = "SIMULATED"  # priced under a chosen version instead of the recorded ones


@dataclass(frozen=True)
class ReplayedInvoice:
    invoice: Invoice
    status: str
    sha256: str
    recorded_sha256: str = ""

    @property
    def matches(self) -> bool | None:
        return self.sha256 == self.recorded_sha256 if self.recorded_sha256 else None


ReplayItem = StoredEvent | ReplayedInvoice


async def replay_customer(
    pool: Pool,
    customer_id: str,
    *,
    up_to_seq: int | None = None,
    up_to_time: datetime | None = None,
    pricing: RateCardVersion | None = None,
) -> AsyncIterator[ReplayItem]:
    """The customer's events in ledger order, then every invoice recomputed from them."""
    async with snapshot(pool) as conn:
        through = await _position(conn, up_to_seq, up_to_time)
        customer = await load_customer(conn, customer_id, through)
        streams = await _streams_of(conn, customer, through)
        async for event in iter_streams(conn, streams, through):
            yield event
        as_of = await _recorded_at(conn, through)
        for contract in sorted(customer.contracts.values(), key=lambda c: c.contract_id):
            for number in _period_numbers(contract, as_of):
                yield await _replayed(
                    conn,
                    customer,
                    contract=contract,
                    number=number,
                    through=through,
                    pricing=pricing,
                )


@dataclass(frozen=True)
class SimulationRow:
    customer_id: str
    invoice_id: str
    period_start: datetime
    period_end: datetime
    currency: str
    status: str
    current_total: Decimal
    simulated_total: Decimal

    @property
    def delta(self) -> Decimal:
        return self.simulated_total - self.current_total


async def simulate_pricing(
    pool: Pool, pricing: RateCardVersion, start: datetime, end: datetime
) -> list[SimulationRow]:
    """Every started invoice of every contract on the card over ``[start, end)``, under
    ``pricing``; periods that begin after the ledger's last event are not simulated.

    Current totals are the finalized ones (at their recorded positions) or the
    drafts as of now; simulated totals price the same usage under ``pricing``.
    """
    rows: list[SimulationRow] = []
    async with snapshot(pool) as conn:
        head = (await read_head(conn)).seq
        as_of = await _recorded_at(conn, head)
        end = min(end, as_of) if as_of is not None else start
        contracts = await _contracts_on(conn, pricing.rate_card_id, head)
        work = [(c, _numbers_overlapping(c, start, end)) for c in contracts]
        invoices = sum(len(numbers) for _, numbers in work)
        if invoices > SIMULATION_INVOICES_MAX:
            message = (
                f"the range covers {invoices} invoices; a simulation recomputes at most"
                f" {SIMULATION_INVOICES_MAX}: narrow start and end"
            )
            raise DomainError(Rule.REQUEST_INVALID, message, (FieldViolation("end", message),))
        for contract, numbers in work:
            customer = await load_customer(conn, contract.customer_id, head)
            rows += [
                await _simulated_row(
                    conn, customer, contract=contract, number=number, head=head, pricing=pricing
                )
                for number in numbers
            ]
    return rows


async def _simulated_row(
    conn: Conn,
    customer: CustomerState,
    *,
    contract: Contract,
    number: int,
    head: int,
    pricing: RateCardVersion,
) -> SimulationRow:
    ref = current_invoice_id(customer, contract.contract_id, number)
    finalized = customer.finalized.get(ref)
    position = finalized.invoice.computed_through_seq if finalized else head
    current = finalized.invoice if finalized else await replay_invoice(conn, ref, head)
    simulated = await replay_invoice(conn, ref, position, pricing=pricing)
    return SimulationRow(
        customer_id=contract.customer_id,
        invoice_id=ref,
        period_start=current.period_start,
        period_end=current.period_end,
        currency=simulated.currency,
        status="FINALIZED" if finalized else "DRAFT",
        current_total=current.total,
        simulated_total=simulated.total,
    )


async def _replayed(
    conn: Conn,
    customer: CustomerState,
    *,
    contract: Contract,
    number: int,
    through: int,
    pricing: RateCardVersion | None,
) -> ReplayedInvoice:
    ref = current_invoice_id(customer, contract.contract_id, number)
    finalized = customer.finalized.get(ref)
    position = finalized.invoice.computed_through_seq if finalized else through
    invoice = await replay_invoice(conn, ref, position, pricing=pricing)
    sha = content_sha256(invoice)
    if pricing is not None:
        return ReplayedInvoice(invoice, ReplayStatus.SIMULATED, sha)
    if finalized is not None:
        return ReplayedInvoice(invoice, ReplayStatus.FINALIZED, sha, finalized.content_sha256)
    return ReplayedInvoice(invoice, ReplayStatus.DRAFT, sha)


async def _position(conn: Conn, up_to_seq: int | None, up_to_time: datetime | None) -> int:
    """The replay position: the head, cut at a seq or at the last event recorded by a time."""
    through = (await read_head(conn)).seq
    if up_to_seq is not None:
        through = min(through, up_to_seq)
    if up_to_time is not None:
        cur = await conn.execute(
            "SELECT coalesce(max(seq), 0) FROM events WHERE recorded_at <= %s AND seq <= %s",
            (up_to_time, through),
        )
        row = await cur.fetchone()
        through = int(row[0]) if row else 0
    return through


async def _recorded_at(conn: Conn, seq: int) -> datetime | None:
    cur = await conn.execute("SELECT recorded_at FROM events WHERE seq = %s", (seq,))
    row = await cur.fetchone()
    return row[0] if row else None


async def _streams_of(conn: Conn, customer: CustomerState, through: int) -> list[str]:
    """The customer's own streams and the catalog its contracts are priced from."""
    # Amendments may have moved a contract to other cards: each priced some period.
    card_ids = sorted(
        {c.rate_card_id for c in customer.contracts.values()}
        | {p.rate_card_id for c in customer.contracts.values() for p in c.plan_changes}
    )
    versions = [v for card in card_ids for v in await load_rate_card_versions(conn, card, through)]
    catalog = await load_catalog(conn, versions, through)
    return [
        customer_stream(customer.customer_id),
        usage_stream(customer.customer_id),
        *[contract_stream(c) for c in sorted(customer.contracts)],
        *[rate_card_stream(card) for card in card_ids],
        *[product_stream(p) for p in sorted(catalog.products)],
        *[metric_stream(m) for m in sorted(catalog.metrics)],
    ]


def _period_numbers(contract: Contract, as_of: datetime | None) -> Iterable[int]:
    """Periods 1.. up to the one in force at ``as_of`` (or the contract's last)."""
    if as_of is None or as_of < contract.starts_at:
        return range(0)
    if contract.ends_at is not None and contract.ends_at <= as_of:
        as_of = contract.ends_at - timedelta(microseconds=1)
    return range(1, (period_number_at(contract, as_of) or 0) + 1)


def _numbers_overlapping(contract: Contract, start: datetime, end: datetime) -> list[int]:
    numbers, number = [], 1
    while (period := contract_period(contract, number)) is not None and period.start < end:
        if period.end > start:
            numbers.append(number)
        number += 1
    return numbers


async def _contracts_on(conn: Conn, rate_card_id: str, through: int) -> list[Contract]:
    contracts = []
    for stored in await read_types_at(conn, [ContractCreated.EVENT_TYPE], through):
        created = stored.domain_event()
        assert isinstance(created, ContractCreated)
        if created.contract.rate_card_id == rate_card_id:
            contracts.append(created.contract)
    return contracts
