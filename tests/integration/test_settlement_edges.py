"""Where settlement meets concurrency, several contracts and changing prices.

Each test is a case a review found wrong and now pins down: usage recorded while
an invoice is being finalized, a late-usage adjustment that lowers a bill, a
customer with two contracts sharing one balance, a grant id chosen to look like
a rollover, and a price version dated back into a finalized period.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ledger.app.billing import replay_invoice
from ledger.app.catalog import MetricInput, RateCardInput
from ledger.app.context import RequestContext
from ledger.app.customers import ContractInput
from ledger.app.usage import UsageInput, UsageStatus
from ledger.core.catalog import Product
from ledger.core.errors import DomainError, Rule
from ledger.core.events import InvoiceFinalized
from ledger.core.invoice import Invoice, InvoiceLine, LineKind, canonical_invoice
from ledger.core.rate_specs import RateSpec, TierSpec
from ledger.store.records import NewEvent, NoneAfter
from services.bootstrap import App, running_app
from services.config import Settings
from tests.integration.credit_world import grant
from tests.integration.pricing import publish_approved

CTX = RequestContext(actor="settlement-test", reason="settlement edge cases")
FEB = datetime(2026, 2, 1, tzinfo=UTC)
MAR = datetime(2026, 3, 1, tzinfo=UTC)
PER_TOKEN = [RateSpec("llm", "per_unit", "0.01")]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def run(database_url: str, now: datetime, body: Callable[[App, Clock], Awaitable[None]]) -> None:
    settings = dataclasses.replace(Settings.from_env({}), run_projector=False)
    clock = Clock(now)

    async def main() -> None:
        async with running_app(settings, database_url, clock=clock) as app:
            await body(app, clock)

    asyncio.run(main())


async def world(
    app: App,
    rates: Sequence[RateSpec],
    contracts: Sequence[tuple[str, datetime, datetime | None]] = (("acme-c1", FEB, None),),
) -> None:
    await app.catalog.create_metric(
        MetricInput("tokens", "Tokens", "completion", "SUM", "tokens"), CTX
    )
    await app.catalog.create_product(Product("llm", "LLM", "tokens"), CTX)
    card = RateCardInput("list", "List", "USD", None, FEB - timedelta(days=30), list(rates))
    await publish_approved(app.catalog, card, CTX)
    await app.customers.create_customer("acme", "Acme", CTX)
    for contract_id, starts_at, ends_at in contracts:
        await app.customers.create_contract(
            ContractInput(contract_id, "acme", "list", None, starts_at, ends_at, None), CTX
        )


async def record(app: App, transaction_id: str, at: datetime, tokens: int) -> None:
    usage = UsageInput(transaction_id, "acme", "completion", at, {"tokens": str(tokens)})
    [result] = await app.record_usage([usage], CTX)
    assert result.status is UsageStatus.ACCEPTED, result


async def draft(app: App, at: datetime) -> Invoice:
    return (await app.invoicing.get(customer_id="acme", at=at)).invoice


async def replayed(app: App, invoice: Invoice) -> Invoice:
    async with app.pool.connection() as conn:
        return await replay_invoice(conn, invoice.invoice_id, invoice.computed_through_seq)


def adjustments(invoice: Invoice) -> list[InvoiceLine]:
    return [line for line in invoice.lines if line.kind is LineKind.ADJUSTMENT]


def test_usage_recorded_while_a_period_is_finalized_is_billed_as_late(database_url: str) -> None:
    """Finalizing prices through the head it read, then appends: usage committed in
    between belongs to no invoice unless the next one bills it as an adjustment."""

    async def body(app: App, clock: Clock) -> None:
        await world(app, PER_TOKEN)
        await record(app, "feb", FEB + timedelta(days=20), 100)
        append = app.store.append

        async def usage_sneaks_in(
            events: Sequence[NewEvent], conditions: Sequence[NoneAfter] = ()
        ) -> object:
            if any(isinstance(e.event, InvoiceFinalized) for e in events):
                app.store.append = append  # type: ignore[method-assign]
                await record(app, "feb-racing", FEB + timedelta(days=22), 1000)
            return await append(events, conditions)

        app.store.append = usage_sneaks_in  # type: ignore[method-assign]
        await app.invoicing.finalize("in-acme-c1-1", CTX)
        for stage in ("projection behind", "projection caught up"):
            march = await draft(app, MAR + timedelta(days=1))
            assert canonical_invoice(march) == canonical_invoice(await replayed(app, march)), stage
            assert [(a.quantity, a.amount) for a in adjustments(march)] == [
                (Decimal(1000), Decimal("10.00"))
            ], stage
            await app.runner.catch_up()

    run(database_url, datetime(2026, 3, 20, tzinfo=UTC), body)


def test_a_lowering_adjustment_reduces_what_credit_covers(database_url: str) -> None:
    """Volume tiers: one late unit moves January to a cheaper tier (-49.95). The
    credit pays only what the lines come to, never leaving a negative total."""

    async def body(app: App, clock: Clock) -> None:
        tiers = [TierSpec("1000", "0.10"), TierSpec("", "0.05")]
        await world(app, [RateSpec("llm", "volume", tiers=tiers)])
        await grant(app, "acme", "g1", "500.00")
        await record(app, "feb", FEB + timedelta(days=20), 1000)
        await app.invoicing.finalize("in-acme-c1-1", CTX)
        await record(app, "feb-late", FEB + timedelta(days=22), 1)
        await record(app, "mar", MAR + timedelta(days=3), 1000)
        march = await draft(app, MAR + timedelta(days=5))
        assert [(a.quantity, a.amount) for a in adjustments(march)] == [
            (Decimal(1), Decimal("-49.95"))
        ]
        assert (march.subtotal, march.credits_applied, march.total) == (
            Decimal("50.05"),
            Decimal("50.05"),
            Decimal("0.00"),
        )

    run(database_url, datetime(2026, 3, 20, tzinfo=UTC), body)


TWO_CONTRACTS = (("acme-a", FEB, MAR), ("acme-b", MAR, None))


def test_periods_are_finalized_in_order_across_contracts(database_url: str) -> None:
    """A credit expiring on 1 March pays for February on contract A: contract B's
    March cannot be finalized first (that would expire it unused)."""

    async def body(app: App, clock: Clock) -> None:
        await world(app, PER_TOKEN, TWO_CONTRACTS)
        await grant(app, "acme", "g1", "100.00", expires_at=MAR)
        await record(app, "feb", FEB + timedelta(days=20), 5000)
        clock.now = datetime(2026, 4, 10, tzinfo=UTC)
        with pytest.raises(DomainError) as refused:
            await app.invoicing.finalize("in-acme-b-1", CTX)
        assert refused.value.rule is Rule.EARLIER_PERIOD_OPEN
        february = await app.invoicing.finalize("in-acme-a-1", CTX)
        assert february.invoice.credits_applied == Decimal("50.00")
        await app.invoicing.finalize("in-acme-b-1", CTX)

    run(database_url, datetime(2026, 3, 5, tzinfo=UTC), body)


def test_only_the_customers_latest_finalized_invoice_is_voided(database_url: str) -> None:
    """B's March drew on the rollover A's finalization made: voiding A would take back
    a rollover already spent, so it is refused until B is voided."""

    async def body(app: App, clock: Clock) -> None:
        await world(app, PER_TOKEN, TWO_CONTRACTS)
        await grant(app, "acme", "g1", "100.00", expires_at=MAR, rollover_fraction="0.5")
        await record(app, "mar", MAR + timedelta(days=2), 4000)
        clock.now = datetime(2026, 4, 10, tzinfo=UTC)
        await app.invoicing.finalize("in-acme-a-1", CTX)
        march = await app.invoicing.finalize("in-acme-b-1", CTX)
        assert [(c.grant_id, c.amount) for c in march.invoice.credits] == [
            ("g1~rollover", Decimal("40.00"))
        ]
        with pytest.raises(DomainError) as refused:
            await app.invoicing.void("in-acme-a-1", CTX)
        assert refused.value.rule is Rule.INVOICE_NOT_LATEST
        await app.invoicing.void("in-acme-b-1", CTX)
        await app.invoicing.void("in-acme-a-1", CTX)
        book = (await app.customers.customer("acme")).balances
        assert book.remaining("g1") == Decimal("100.00")
        assert book.remaining("g1~rollover") == Decimal("0.00")

    run(database_url, datetime(2026, 3, 5, tzinfo=UTC), body)


def test_a_grant_named_like_a_rollover_keeps_its_own_balance(database_url: str) -> None:
    async def body(app: App, clock: Clock) -> None:
        await world(app, PER_TOKEN)
        await grant(app, "acme", "g1", "100.00", expires_at=MAR, rollover_fraction="0.5")
        await grant(app, "acme", "g1-rollover", "20.00", priority=7)
        clock.now = datetime(2026, 3, 10, tzinfo=UTC)
        await app.invoicing.finalize("in-acme-c1-1", CTX)
        book = (await app.customers.customer("acme")).balances
        assert book.grants["g1-rollover"].priority == 7
        assert book.remaining("g1-rollover") == Decimal("20.00")
        assert book.remaining("g1~rollover") == Decimal("50.00")

    run(database_url, datetime(2026, 2, 20, tzinfo=UTC), body)


def test_late_usage_is_priced_as_its_period_was_billed(database_url: str) -> None:
    """A version dated back into a finalized period does not re-price it through an
    adjustment: the late tokens cost what January's tokens cost when billed."""

    async def body(app: App, clock: Clock) -> None:
        await world(app, PER_TOKEN)
        await record(app, "feb", FEB + timedelta(days=20), 100)
        await app.invoicing.finalize("in-acme-c1-1", CTX)
        dearer = RateCardInput(
            "list", "List", "USD", None, FEB, [RateSpec("llm", "per_unit", "0.02")]
        )
        await publish_approved(app.catalog, dearer, CTX)
        await record(app, "feb-late", FEB + timedelta(days=22), 1000)
        march = await draft(app, MAR + timedelta(days=5))
        assert [(a.quantity, a.amount) for a in adjustments(march)] == [
            (Decimal(1000), Decimal("10.00"))
        ]
        assert canonical_invoice(march) == canonical_invoice(await replayed(app, march))

    run(database_url, datetime(2026, 3, 20, tzinfo=UTC), body)


def test_a_grant_pays_only_for_usage_inside_its_window(database_url: str) -> None:
    """A credit that starts in March pays for March's usage, not for February's late
    usage billed on March's invoice."""

    async def body(app: App, clock: Clock) -> None:
        await world(app, PER_TOKEN)
        await grant(app, "acme", "march-credit", "100.00", starts_at=MAR)
        await record(app, "feb", FEB + timedelta(days=20), 100)
        await app.invoicing.finalize("in-acme-c1-1", CTX)
        await record(app, "feb-late", FEB + timedelta(days=22), 1000)
        await record(app, "mar", MAR + timedelta(days=3), 500)
        march = await draft(app, MAR + timedelta(days=5))
        assert [(line.kind, line.amount) for line in march.lines] == [
            (LineKind.USAGE, Decimal("5.00")),
            (LineKind.ADJUSTMENT, Decimal("10.00")),
        ]
        assert (march.credits_applied, march.total) == (Decimal("5.00"), Decimal("10.00"))

    run(database_url, datetime(2026, 3, 20, tzinfo=UTC), body)
