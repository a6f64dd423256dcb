"""Load what an invoice needs from the ledger, as of a ledger position.

Both paths to an invoice use these loaders: the draft path (rollups plus a raw
tail, in ``projections``) and replay (every raw event, here). Everything is
read through ``through_seq`` in one snapshot, so a replay at a finalized
invoice's position sees exactly what finalization saw.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

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
    InvoiceRef,
    contract_period,
    evolve,
    invoice_id,
    parse_invoice_id,
    parse_invoice_ref,
    period_number_at,
)
from ledger.core.catalog import Contract, RateCardVersion
from ledger.core.errors import DomainError, Rule
from ledger.core.events import (
    BillableMetricCreated,
    ContractRegistered,
    CustomerCreated,
    ProductCreated,
    RateCardPublished,
    UsageRecorded,
    usage_from_bytes,
)
from ledger.core.invoice import Invoice, InvoiceLine
from ledger.core.metering import (
    Sequenced,
    Tally,
    UsageFold,
    UsageKey,
    fold_usage,
    merge_tallies,
)
from ledger.core.periods import Period
from ledger.core.rating import Catalog, Segment, pricing_segments, rate_invoice
from ledger.core.settlement import (
    TrueUp,
    adjustment_lines,
    commit_ends_in,
    eligible_spend,
    settle,
    true_up_lines,
)
from ledger.store.event_store import (
    iter_payloads_between,
    read_stream_recorded_after,
    read_streams,
    read_types_at,
)
from ledger.store.records import StoredEvent

Conn = AsyncConnection[TupleRow]


@dataclass(frozen=True)
class InvoicePlan:
    """Everything but usage: which contract, period, segments, catalog and currency."""

    invoice_id: str
    customer: CustomerState
    contract: Contract
    period: Period
    segments: tuple[Segment, ...]
    catalog: Catalog
    currency: tuple[str, int]
    through_seq: int

    def price(self, usage: Mapping[UsageKey, Tally]) -> Invoice:
        """Rate the usage tallies under this plan."""
        return rate_invoice(
            invoice_id=self.invoice_id,
            contract=self.contract,
            contract_version=self.customer.contract_versions[self.contract.contract_id],
            period=self.period,
            segments=self.segments,
            usage=usage,
            catalog=self.catalog,
            rate_card_currency=self.currency,
            computed_through_seq=self.through_seq,
        )

    @property
    def segment_starts(self) -> list[datetime]:
        return [segment.period.start for segment in self.segments]

    @property
    def ref(self) -> InvoiceRef:
        parsed = parse_invoice_ref(self.invoice_id)
        assert parsed is not None
        return parsed


async def load_customer(conn: Conn, customer_id: str, through_seq: int) -> CustomerState:
    """Fold the customer stream through ``through_seq``."""
    state = CustomerState(customer_id)
    for stored in await read_streams(conn, [customer_stream(customer_id)], through_seq):
        state = evolve(state, stored.domain_event(), stored.stream_version)
    if not state.exists:
        raise DomainError(Rule.CUSTOMER_NOT_FOUND, f"no customer {customer_id!r}")
    return state


async def customer_ids_at(conn: Conn, through_seq: int) -> list[str]:
    """Every customer created through ``through_seq``, in creation order."""
    created = await read_types_at(conn, [CustomerCreated.EVENT_TYPE], through_seq)
    ids = []
    for stored in created:
        event = stored.domain_event()
        assert isinstance(event, CustomerCreated)
        ids.append(event.customer_id)
    return ids


async def customer_of_invoice(conn: Conn, ref: str, through_seq: int) -> tuple[str, str, int]:
    """``(customer_id, contract_id, period number)`` of the invoice id ``ref``."""
    parsed = parse_invoice_id(ref)
    if parsed is None:
        raise DomainError(Rule.INVOICE_NOT_FOUND, f"{ref!r} is not an invoice id")
    contract_id, number = parsed
    events = await read_streams(conn, [contract_stream(contract_id)], through_seq)
    if not events:
        raise DomainError(Rule.INVOICE_NOT_FOUND, f"no invoice {ref!r}")
    registered = events[0].domain_event()
    assert isinstance(registered, ContractRegistered)
    return registered.customer_id, contract_id, number


async def load_rate_card_versions(
    conn: Conn, rate_card_id: str, through_seq: int
) -> list[RateCardVersion]:
    return rate_card_versions(
        await read_streams(conn, [rate_card_stream(rate_card_id)], through_seq)
    )


def rate_card_versions(stored: Iterable[StoredEvent]) -> list[RateCardVersion]:
    """The versions a rate card stream holds, oldest first."""
    versions = []
    for event in stored:
        published = event.domain_event()
        assert isinstance(published, RateCardPublished)
        versions.append(published.rate_card)
    return versions


async def load_catalog(
    conn: Conn, versions: list[RateCardVersion], through_seq: int | None
) -> Catalog:
    """The products on any of the versions, and their metrics."""
    product_ids = {pid for version in versions for pid in version.product_ids}
    products = {}
    for stored in await read_streams(conn, [product_stream(p) for p in product_ids], through_seq):
        event = stored.domain_event()
        assert isinstance(event, ProductCreated)
        products[event.product.product_id] = event.product
    metric_ids = {product.metric_id for product in products.values()}
    metrics = {}
    for stored in await read_streams(conn, [metric_stream(m) for m in metric_ids], through_seq):
        event = stored.domain_event()
        assert isinstance(event, BillableMetricCreated)
        metrics[event.metric.metric_id] = event.metric
    return Catalog(metrics=metrics, products=products)


async def plan_invoice(
    conn: Conn,
    customer: CustomerState,
    contract_id: str,
    number: int,
    through_seq: int,
    *,
    pricing: RateCardVersion | None = None,
) -> InvoicePlan:
    """Resolve an invoice's contract period, pricing segments and catalog.

    ``pricing`` replaces the contract's rate card for the whole period: a
    simulation of another version, or of a card that was never published.
    """
    contract = customer.contracts.get(contract_id)
    period = contract_period(contract, number) if contract is not None else None
    if contract is None or period is None:
        raise DomainError(Rule.INVOICE_NOT_FOUND, f"no invoice {invoice_id(contract_id, number)!r}")
    if pricing is None:
        plans = contract.plans_over(period.start, period.end)
        card_ids = sorted({plan.rate_card_id for _, plan in plans})
        versions = {c: await load_rate_card_versions(conn, c, through_seq) for c in card_ids}
    else:
        versions = {pricing.rate_card_id: [pricing]}
        # The simulated card prices the whole period, whatever plans were amended in.
        contract = replace(
            contract,
            rate_card_id=pricing.rate_card_id,
            pinned_version=pricing.version,
            plan_changes=(),
        )
    assert all(versions.values()), "a contract's cards exist when it is created or amended"
    every_version = [version for card in versions.values() for version in card]
    # All of a contract's cards bill in its currency (checked when created or amended).
    unit = every_version[-1]
    return InvoicePlan(
        invoice_id=invoice_id(contract_id, number, customer.current_revision(contract_id, number)),
        customer=customer,
        contract=contract,
        period=period,
        segments=pricing_segments(contract, period, versions),
        # A simulated card may name products created after ``through_seq``.
        catalog=await load_catalog(conn, every_version, through_seq if pricing is None else None),
        currency=(unit.currency, unit.currency_decimals),
        through_seq=through_seq,
    )


async def replay_invoice(
    conn: Conn, ref: str, through_seq: int, *, pricing: RateCardVersion | None = None
) -> Invoice:
    """Recompute the invoice ``ref`` from raw events only, as of ``through_seq``.

    With ``pricing``, the period is priced under that version instead: a
    simulation on real history. Usage is folded in batches, in flat memory.
    """
    customer_id, contract_id, number = await customer_of_invoice(conn, ref, through_seq)
    customer = await load_customer(conn, customer_id, through_seq)
    plan = await plan_invoice(conn, customer, contract_id, number, through_seq, pricing=pricing)
    return await settle_invoice(
        conn, plan, plan.price(await fold_period(conn, plan, (0, through_seq)))
    )


async def fold_period(
    conn: Conn, plan: InvoicePlan, seqs: tuple[int, int], until: datetime | None = None
) -> dict[UsageKey, Tally]:
    """Tallies of the plan's period (up to ``until``, if given) from raw usage
    events with seq in ``(lo, hi]``."""
    stream = usage_stream(plan.customer.customer_id)
    fold = UsageFold(plan.catalog.metrics.values(), plan.segment_starts, plan.period.end)
    end = plan.period.end if until is None else min(until, plan.period.end)
    period = (plan.period.start, end)
    async for batch in iter_payloads_between(conn, stream, period, seqs):
        for seq, schema_version, payload in batch:
            event = usage_from_bytes(schema_version, payload)
            assert isinstance(event, UsageRecorded)
            fold.add(seq, event)
    return fold.tallies()


def sequenced(rows: Iterable[StoredEvent]) -> Iterator[Sequenced]:
    """Usage rows as events with their ledger positions, ready to fold."""
    for row in rows:
        event = row.domain_event()
        assert isinstance(event, UsageRecorded)
        yield Sequenced(row.seq, event)


# Where a draft finds the business times of usage recorded after a ledger position
# (the last finalization) for periods before its own: the ledger by default.
LateUsageSource = Callable[["InvoicePlan", int], Awaitable[list[datetime]]]


async def settle_invoice(
    conn: Conn, plan: InvoicePlan, priced: Invoice, late: LateUsageSource | None = None
) -> Invoice:
    """A priced period made into a bill: late-usage adjustments, commit true-ups,
    then credits drawn down (ledger/core/settlement.py has the rules)."""
    _, decimals = plan.currency
    extra = await late_adjustments(conn, plan, late or _late_in_ledger(conn))
    with_adjustments = replace(priced, lines=(*priced.lines, *extra))
    extra += true_up_lines(with_adjustments, _commits_ending(plan), decimals)
    invoice = settle(priced, extra, plan.customer.balances, decimals)
    if plan.ref.revision:
        replaced = invoice_id(plan.ref.contract_id, plan.ref.number, plan.ref.revision - 1)
        invoice = replace(invoice, replaces_invoice_id=replaced)
    return invoice


async def late_adjustments(
    conn: Conn, plan: InvoicePlan, late: LateUsageSource
) -> list[InvoiceLine]:
    """Adjustment lines for usage recorded after earlier periods were finalized.

    Only the contract's next open invoice (the period after its last finalized
    one) carries them. Every earlier period was billed through the last
    finalization's ledger position (finalizing is in period order, and each
    finalization billed the adjustments before it), so each period with later
    usage is re-rated now and its lines compared with its lines at that position.
    """
    last = plan.customer.last_finalized(plan.contract.contract_id)
    if last is None or last[0] + 1 != plan.ref.number:
        return []
    billed_through = last[1].invoice.computed_through_seq
    times = await late(plan, billed_through)
    numbers = sorted({n for t in times if (n := period_number_at(plan.contract, t)) is not None})
    adjustments: list[InvoiceLine] = []
    for number in numbers:
        # Priced as the period was when last billed: a version published since (even
        # one dated back into it) does not re-price what was already billed.
        earlier = await plan_invoice(
            conn, plan.customer, plan.contract.contract_id, number, billed_through
        )
        billed_usage = await fold_period(conn, earlier, (0, billed_through))
        late_usage = await _fold_recorded_after(conn, earlier, (billed_through, plan.through_seq))
        billed = earlier.price(billed_usage)
        now = earlier.price(merge_tallies(billed_usage, late_usage))
        adjustments += adjustment_lines(billed, now, plan.currency[1])
    return adjustments


async def _fold_recorded_after(
    conn: Conn, plan: InvoicePlan, seqs: tuple[int, int]
) -> dict[UsageKey, Tally]:
    """Tallies of the plan's period from the usage recorded with seq in ``seqs``."""
    stream = usage_stream(plan.customer.customer_id)
    occurred = (plan.period.start, plan.period.end)
    rows = await read_stream_recorded_after(conn, stream, occurred, seqs)
    metrics = plan.catalog.metrics.values()
    return fold_usage(sequenced(rows), metrics, plan.segment_starts, plan.period.end)


def _late_in_ledger(conn: Conn) -> LateUsageSource:
    async def late(plan: InvoicePlan, after_seq: int) -> list[datetime]:
        return await late_usage_times(conn, plan, (after_seq, plan.through_seq))

    return late


async def late_usage_times(conn: Conn, plan: InvoicePlan, seqs: tuple[int, int]) -> list[datetime]:
    """Business times of the customer's usage before the plan's period, seq in ``seqs``."""
    stream = usage_stream(plan.customer.customer_id)
    occurred = (plan.contract.starts_at, plan.period.start)
    return [
        row.occurred_at for row in await read_stream_recorded_after(conn, stream, occurred, seqs)
    ]


def _commits_ending(plan: InvoicePlan) -> list[TrueUp]:
    """Postpaid commits whose term ends in this period, with what earlier finalized
    invoices (voided ones excepted) spent towards them."""
    customer = plan.customer
    currency, _ = plan.currency
    ending = [
        grant
        for grant in customer.balances.grants.values()
        if grant.currency == currency and commit_ends_in(grant, plan.period.start, plan.period.end)
    ]
    if not ending:
        return []  # nearly every draft: no need to gather earlier invoices' lines
    earlier_lines = [
        line
        for ref, finalized in customer.finalized.items()
        if ref not in customer.voided
        and finalized.invoice.currency == currency
        and _other_period(ref, plan.ref)
        for line in finalized.invoice.lines
    ]
    return [TrueUp(grant, eligible_spend(grant, earlier_lines)) for grant in ending]


def _other_period(ref: str, this: InvoiceRef) -> bool:
    parsed = parse_invoice_ref(ref)
    assert parsed is not None
    return (parsed.contract_id, parsed.number) != (this.contract_id, this.number)
