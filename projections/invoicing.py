"""Invoices: live drafts from rollups plus the raw tail, and finalization.

A draft is computed through the ledger head at the time of the call: hourly
rollups up to the rollup projection's checkpoint, raw events for the partial
hours at segment edges, and raw events beyond the checkpoint. All of it is read
in one REPEATABLE READ snapshot, so a draft reflects every event recorded
before the call, and its cost does not grow with the number of events.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Final

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from ledger.app.billing import (
    InvoicePlan,
    LateUsageSource,
    customer_ids_at,
    customer_of_invoice,
    late_usage_times,
    load_customer,
    plan_invoice,
    replay_invoice,
    sequenced,
    settle_invoice,
)
from ledger.app.catalog import CatalogCommands, RateCardInput
from ledger.app.commands import Command, Write, run_command
from ledger.app.context import RequestContext
from ledger.app.paging import page_of
from ledger.app.streams import customer_stream, usage_stream
from ledger.app.usage import UsageInput
from ledger.core.billing import (
    CustomerState,
    InvoiceRef,
    begun_periods,
    contract_at,
    contract_period,
    current_invoice_id,
    parse_invoice_ref,
    period_number_at,
)
from ledger.core.catalog import BillableMetric, RateCardVersion
from ledger.core.errors import DomainError, FieldViolation, Rule, Violations, invalid
from ledger.core.events import InvoiceFinalized, InvoiceVoided, UsageRecorded
from ledger.core.invoice import Invoice, content_sha256
from ledger.core.lifecycle import check_earlier_periods_final, finalization_events, void_events
from ledger.core.metering import Tally, UsageKey, fold_usage, merge_tallies
from ledger.store.event_store import (
    Pool,
    PostgresEventStore,
    iter_stream_between,
    iter_stream_recorded_after,
    read_head,
    read_stream_between,
    snapshot,
)
from ledger.store.records import StoredEvent
from projections.engine import checkpoint_of
from projections.late_usage import LateUsage
from projections.registry import live_version
from projections.usage_rollups import BUCKET, UsageRollups, bucket_start

Conn = AsyncConnection[TupleRow]
Span = tuple[datetime, datetime]


class InvoiceStatus(Enum):
    DRAFT = "DRAFT"
    FINALIZED = "FINALIZED"
    VOIDED = "VOIDED"  # finalized, then voided; its replacement bills the period
    PREVIEW = "PREVIEW"  # a simulation: priced as asked, never stored


@dataclass(frozen=True)
class PreviewRequest:
    """Which invoice to simulate, under which prices, on which usage.

    Prices: a published version (``rate_card_id`` and ``rate_card_version``), a
    card given inline (validated, never published), or else the contract's own.
    ``usage`` None bills the recorded history; a list bills those hypothetical
    events instead (a quote).
    """

    invoice_id: str = ""
    customer_id: str = ""
    at: datetime | None = None
    rate_card_id: str = ""
    rate_card_version: int = 0
    inline_rate_card: RateCardInput | None = None
    usage: Sequence[UsageInput] | None = None


@dataclass(frozen=True)
class InvoiceView:
    invoice: Invoice
    status: InvoiceStatus
    content_sha256: str
    written_seq: int = 0  # where the call that returned it wrote (finalize), else 0


@dataclass(frozen=True)
class ReplayCheck:
    """A finalized invoice recomputed from raw events, compared with what was recorded."""

    recorded_sha256: str
    replayed_sha256: str
    replayed: Invoice

    @property
    def matches(self) -> bool:
        return self.recorded_sha256 == self.replayed_sha256


LIST_PAGE_DEFAULT: Final = 12
# Each draft is priced (rollups, tail, settlement): a report or forecast over many
# customers is refused past this many rather than holding a snapshot for minutes.
DRAFTS_PER_CALL_MAX: Final = 500
# Raw events a draft folds at a time: its memory, however long the tail.
TAIL_BATCH: Final = 5_000
LIST_PAGE_MAX: Final = 100


class Invoicing:
    """Read drafts and finalized invoices; finalize periods that have ended."""

    def __init__(
        self,
        pool: Pool,
        *,
        store: PostgresEventStore,
        rollups: Callable[[int], UsageRollups],
        late_usage: Callable[[int], LateUsage] = LateUsage,
        clock: Callable[[], datetime],
        finalize_grace: timedelta,
        catalog: CatalogCommands,
    ) -> None:
        self._catalog = catalog
        self._pool = pool
        self._store = store
        self._rollups = rollups
        self._late_usage = late_usage
        self._clock = clock
        self._grace = finalize_grace

    async def get(
        self, *, invoice_id: str = "", customer_id: str = "", at: datetime | None = None
    ) -> InvoiceView:
        """An invoice by id, or the one covering ``at`` for a customer."""
        async with self._snapshot() as conn:
            head = (await read_head(conn)).seq
            _, view = await self.view_in(conn, head, invoice_id, customer_id, at)
            return view

    async def view_in(
        self,
        conn: Conn,
        head: int,
        invoice_id: str = "",
        customer_id: str = "",
        at: datetime | None = None,
    ) -> tuple[CustomerState, InvoiceView]:
        """What :meth:`get` answers, read in the caller's snapshot at ``head``, and
        the customer as of ``head``."""
        customer, ref = await _locate(conn, invoice_id, customer_id, at, head)
        return customer, await self._view(conn, customer, ref, head)

    async def list(
        self, customer_id: str, page_size: int, page_token: str
    ) -> tuple[list[InvoiceView], str]:
        """A customer's invoices, newest period first (a voided one right after the
        invoice that replaced it), a page at a time; each open period's draft is
        priced, so pages are small."""
        if not customer_id:
            raise invalid("customer_id", "is required")
        async with self._snapshot() as conn:
            head = (await read_head(conn)).seq
            customer = await load_customer(conn, customer_id, head)
            refs = [
                InvoiceRef(contract_id, number, revision)
                for contract_id, number in begun_periods(customer, self._clock())
                for revision in range(customer.current_revision(contract_id, number), -1, -1)
            ]
            page, token = page_of(
                refs, page_size, page_token, default=LIST_PAGE_DEFAULT, most=LIST_PAGE_MAX
            )
            views = [await self._view(conn, customer, ref, head) for ref in page]
            return views, token

    async def drafts_in(
        self, periods: Span, customer_ids: Sequence[str]
    ) -> tuple[tuple[Invoice, ...], int]:
        """The live drafts of every begun, unfinalized period starting in ``[start,
        end)`` (of the given customers, or all), and the ledger head they are at.

        Each draft is priced from rollups plus the tail, as GetInvoice prices it.
        """
        async with self._snapshot() as conn:
            head = (await read_head(conn)).seq
            ids = list(customer_ids) or await customer_ids_at(conn, head)
            open_periods = []
            for customer_id in ids:
                customer = await load_customer(conn, customer_id, head)
                for contract_id, number in begun_periods(customer, self._clock()):
                    period = contract_period(customer.contracts[contract_id], number)
                    assert period is not None
                    current = current_invoice_id(customer, contract_id, number)
                    if (
                        periods[0] <= period.start < periods[1]
                        and current not in customer.finalized
                    ):
                        open_periods.append((customer, contract_id, number))
            check_draft_count(len(open_periods))
            drafts = []
            for customer, contract_id, number in open_periods:
                view = await self.current(conn, customer, contract_id, number, head)
                if view.status is InvoiceStatus.DRAFT:
                    drafts.append(view.invoice)
            return tuple(drafts), head

    async def preview(self, request: PreviewRequest) -> InvoiceView:
        """The invoice a customer would get under other prices or usage; writes nothing."""
        pricing = await self._preview_pricing(request)
        hypothetical = None if request.usage is None else _hypothetical(request.usage)
        async with self._snapshot() as conn:
            head = (await read_head(conn)).seq
            located = await _locate(conn, request.invoice_id, request.customer_id, request.at, head)
            customer, ref = located
            plan = await plan_invoice(
                conn, customer, ref.contract_id, ref.number, head, pricing=pricing
            )
            if hypothetical is None:
                invoice = await settle_invoice(
                    conn, plan, plan.price(await self.usage(conn, plan, head))
                )
            else:
                # A quote: the hypothetical usage alone, priced; no balances or history.
                metrics = plan.catalog.metrics.values()
                usage = fold_usage(hypothetical, metrics, plan.segment_starts, plan.period.end)
                invoice = plan.price(usage)
        return InvoiceView(invoice, InvoiceStatus.PREVIEW, content_sha256(invoice))

    async def _preview_pricing(self, request: PreviewRequest) -> RateCardVersion | None:
        if request.inline_rate_card is not None:
            try:
                return await self._catalog.validate_rate_card(request.inline_rate_card)
            except DomainError as error:
                # Name fields from the request's root, where the card sits in rate_card.
                raise error.within("rate_card") from error
        if request.rate_card_id:
            return await self._catalog.get_rate_card(
                request.rate_card_id, request.rate_card_version
            )
        return None

    async def finalize(self, invoice_id: str, ctx: RequestContext) -> InvoiceView:
        """Freeze an ended period's invoice; finalized invoices never change.

        The invoice's drawdowns, and the expiry (and rollover) of balances that
        lapse by the period's end, are entered in the same append.
        """
        if not invoice_id:
            raise invalid("invoice_id", "is required")

        async def decide() -> list[Write]:
            async with self._snapshot() as conn:
                head = (await read_head(conn)).seq
                customer, ref = await _locate(conn, invoice_id, "", None, head)
                view = await self._view(conn, customer, ref, head)
            if view.status is InvoiceStatus.FINALIZED:
                raise DomainError(Rule.INVOICE_ALREADY_FINALIZED, f"{invoice_id} is already final")
            if view.status is InvoiceStatus.VOIDED:
                raise DomainError(Rule.INVOICE_VOIDED, f"{invoice_id} was voided")
            self._check_period_ended(view.invoice)
            check_earlier_periods_final(customer, ref)
            events = finalization_events(view.invoice, view.content_sha256, customer, self._clock())
            stream = customer_stream(customer.customer_id)
            return [
                Write(stream, event, customer.version if i == 0 else None)
                for i, event in enumerate(events)
            ]

        command = Command(
            "FinalizeInvoice", {"invoice_id": invoice_id}, Rule.INVOICE_ALREADY_FINALIZED
        )
        event, seq = await run_command(self._store, ctx, command, decide, self._clock())
        assert isinstance(event, InvoiceFinalized)
        return InvoiceView(event.invoice, InvoiceStatus.FINALIZED, event.content_sha256, seq)

    async def void(self, invoice_id: str, ctx: RequestContext) -> tuple[InvoiceView, str]:
        """Void a finalized invoice, giving back the balance entries it made; the
        period is billed again by a replacement (returned with its id)."""
        if not invoice_id:
            raise invalid("invoice_id", "is required")

        async def decide() -> list[Write]:
            async with self._snapshot() as conn:
                head = (await read_head(conn)).seq
                customer, ref = await _locate(conn, invoice_id, "", None, head)
            events = void_events(customer, ref, self._clock())
            stream = customer_stream(customer.customer_id)
            return [
                Write(stream, event, customer.version if i == 0 else None)
                for i, event in enumerate(events)
            ]

        command = Command("VoidInvoice", {"invoice_id": invoice_id}, Rule.INVOICE_VOIDED)
        event, _ = await run_command(self._store, ctx, command, decide, self._clock())
        assert isinstance(event, InvoiceVoided)
        async with self._snapshot() as conn:
            head = (await read_head(conn)).seq
            customer, ref = await _locate(conn, event.invoice_id, "", None, head)
            return await self._view(conn, customer, ref, head), event.replacement_id

    async def verify_finalized(self, invoice_id: str) -> ReplayCheck:
        """Recompute a finalized invoice from raw events through its recorded position."""
        async with self._snapshot() as conn:
            head = (await read_head(conn)).seq
            customer_id, _, _ = await customer_of_invoice(conn, invoice_id, head)
            customer = await load_customer(conn, customer_id, head)
            finalized = customer.finalized.get(invoice_id)
            if finalized is None:
                raise DomainError(Rule.INVOICE_NOT_FOUND, f"{invoice_id} is not finalized")
            through = finalized.invoice.computed_through_seq
            replayed = await replay_invoice(conn, invoice_id, through)
        return ReplayCheck(finalized.content_sha256, content_sha256(replayed), replayed)

    def _check_period_ended(self, invoice: Invoice) -> None:
        closes_at = invoice.period_end + self._grace
        if self._clock() < closes_at:
            raise DomainError(
                Rule.PERIOD_NOT_ENDED,
                f"the period ends at {invoice.period_end.isoformat()}; invoices can be"
                f" finalized from {closes_at.isoformat()}",
            )

    async def _view(
        self, conn: Conn, customer: CustomerState, ref: InvoiceRef, head: int
    ) -> InvoiceView:
        """The invoice ``ref`` names: a voided revision, or the period's current one."""
        current = customer.current_revision(ref.contract_id, ref.number)
        if ref.revision > current:
            raise DomainError(Rule.INVOICE_NOT_FOUND, f"no invoice {ref.invoice_id!r}")
        if ref.revision < current:
            voided = customer.finalized[ref.invoice_id]
            return InvoiceView(voided.invoice, InvoiceStatus.VOIDED, voided.content_sha256)
        return await self.current(conn, customer, ref.contract_id, ref.number, head)

    async def current(
        self, conn: Conn, customer: CustomerState, contract_id: str, number: int, head: int
    ) -> InvoiceView:
        plan = await plan_invoice(conn, customer, contract_id, number, head)
        finalized = customer.finalized.get(plan.invoice_id)
        if finalized is not None:
            return InvoiceView(finalized.invoice, InvoiceStatus.FINALIZED, finalized.content_sha256)
        usage = await self.usage(conn, plan, head)
        invoice = await settle_invoice(conn, plan, plan.price(usage), self.late_source(conn))
        return InvoiceView(invoice, InvoiceStatus.DRAFT, content_sha256(invoice))

    def late_source(self, conn: Conn) -> LateUsageSource:
        """Late usage from its projection, and from the ledger beyond its checkpoint."""

        async def late(plan: InvoicePlan, after_seq: int) -> list[datetime]:
            projection = self._late_usage(await live_version(conn, LateUsage.name))
            checkpoint = await checkpoint_of(conn, projection.name, projection.version)
            split = min(max(after_seq, checkpoint), plan.through_seq)
            customer_id = plan.customer.customer_id
            found = await projection.late_since(
                conn, customer_id, plan.period.start, (after_seq, split)
            )
            return found + await late_usage_times(conn, plan, (split, plan.through_seq))

        return late

    async def usage(
        self,
        conn: Conn,
        plan: InvoicePlan,
        head: int,
        until: datetime | None = None,
        since: datetime | None = None,
    ) -> dict[UsageKey, Tally]:
        """The period's tallies (of the usage in ``[since, until)``, if given):
        rollups where they exist, raw events everywhere else."""
        # The live version, read in this snapshot: a swap is atomic for this call.
        rollups = self._rollups(await live_version(conn, UsageRollups.name))
        checkpoint = min(await checkpoint_of(conn, rollups.name, rollups.version), head)
        stream = usage_stream(plan.customer.customer_id)
        known = await rollups.known_metrics(conn)
        rolled = [m for m in plan.catalog.metrics.values() if m.metric_id in known]
        # A metric created after the checkpoint has no rollups yet: fold its raw events.
        fresh = [m for m in plan.catalog.metrics.values() if m.metric_id not in known]
        end = plan.period.end if until is None else min(plan.period.end, until)
        period = (plan.period.start if since is None else max(plan.period.start, since), end)
        parts, edge_events = await _rolled(conn, rollups, plan, rolled, (period, checkpoint))
        parts.append(self._fold(plan, edge_events, rolled))
        # Folded batch by batch and merged, as rollups merge: a projector far behind
        # leaves a long tail, which must not all be held in memory at once.
        if fresh:
            async for rows in iter_stream_between(
                conn, stream, period, (0, checkpoint), TAIL_BATCH
            ):
                parts.append(self._fold(plan, rows, fresh))
        # Found by seq, not by business time: the period may hold millions of events
        # and the tail beyond the checkpoint only a few, so a draft's cost stays flat.
        metrics = list(plan.catalog.metrics.values())
        async for rows in iter_stream_recorded_after(
            conn, stream, period, (checkpoint, head), TAIL_BATCH
        ):
            parts.append(self._fold(plan, rows, metrics))
        return merge_tallies(*parts)

    @staticmethod
    def _fold(
        plan: InvoicePlan, rows: Sequence[StoredEvent], metrics: Iterable[BillableMetric]
    ) -> dict[UsageKey, Tally]:
        return fold_usage(sequenced(rows), metrics, plan.segment_starts, plan.period.end)

    def _snapshot(self) -> contextlib.AbstractAsyncContextManager[Conn]:
        return snapshot(self._pool)


async def _rolled(
    conn: Conn,
    rollups: UsageRollups,
    plan: InvoicePlan,
    metrics: Sequence[BillableMetric],
    window: tuple[Span, int],
) -> tuple[list[dict[UsageKey, Tally]], list[StoredEvent]]:
    """Each segment's whole hours inside the window from rollups, and the raw
    events (through the checkpoint) of the partial hours at its edges."""
    (begin, end), checkpoint = window
    stream = usage_stream(plan.customer.customer_id)
    parts: list[dict[UsageKey, Tally]] = []
    edge_events: list[StoredEvent] = []
    for segment in plan.segments:
        first, last = max(segment.period.start, begin), min(segment.period.end, end)
        if first >= last:
            continue
        full, edges = _split_hours(first, last)
        if full is not None:
            ids = [m.metric_id for m in metrics]
            found = await rollups.tallies(conn, plan.customer.customer_id, ids, full)
            start = segment.period.start
            parts.append({(start, m, g): t for (m, g), t in found.items()})
        for edge in edges:
            edge_events += await read_stream_between(conn, stream, edge, (0, checkpoint))
    return parts, edge_events


def check_draft_count(count: int) -> None:
    """Refuse a read that would price more drafts than one call may."""
    if count > DRAFTS_PER_CALL_MAX:
        raise DomainError(
            Rule.REPORT_TOO_LARGE,
            f"this would price {count} open periods; at most {DRAFTS_PER_CALL_MAX} a call:"
            " name fewer customers or narrow the range",
        )


async def _locate(
    conn: Conn, invoice_id: str, customer_id: str, at: datetime | None, head: int
) -> tuple[CustomerState, InvoiceRef]:
    if invoice_id:
        customer_id, _, _ = await customer_of_invoice(conn, invoice_id, head)
        ref = parse_invoice_ref(invoice_id)
        assert ref is not None
        return await load_customer(conn, customer_id, head), ref
    if not customer_id or at is None:
        missing = [name for name, value in (("customer_id", customer_id), ("at", at)) if not value]
        raise DomainError(
            Rule.REQUEST_INVALID,
            "give invoice_id, or customer_id and at",
            tuple(FieldViolation(name, "is required without invoice_id") for name in missing),
        )
    customer = await load_customer(conn, customer_id, head)
    contract = contract_at(customer, at)
    found = period_number_at(contract, at) if contract is not None else None
    if contract is None or found is None:
        raise DomainError(Rule.INVOICE_NOT_FOUND, f"{customer_id} has no contract in force at {at}")
    revision = customer.current_revision(contract.contract_id, found)
    return customer, InvoiceRef(contract.contract_id, found, revision)


def _hypothetical(items: Sequence[UsageInput]) -> list[UsageRecorded]:
    """Quote usage as events; only the shape matters, nothing is checked against the ledger."""
    violations = Violations()
    events = []
    for i, item in enumerate(items):
        if item.occurred_at is None:
            violations.add(f"usage[{i}].timestamp", "is required")
            continue
        events.append(
            UsageRecorded(
                item.customer_id,
                item.transaction_id,
                item.event_type,
                item.occurred_at,
                dict(item.properties),
            )
        )
    violations.raise_if_any()
    return events


def _split_hours(start: datetime, end: datetime) -> tuple[Span | None, list[Span]]:
    """Whole hours inside ``[start, end)`` and the partial-hour edges around them."""
    first_full = bucket_start(start)
    if first_full < start:
        first_full += BUCKET
    last_full = bucket_start(end)
    if first_full >= last_full:
        return None, [(start, end)]
    edges = [(a, b) for a, b in ((start, first_full), (last_full, end)) if a < b]
    return (first_full, last_full), edges
