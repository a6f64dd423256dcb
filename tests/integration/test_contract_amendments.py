"""Contract amendments against the real ledger: invoices split at amendment instants,
drafts equal to replays, finalized periods closed, nothing partial ever written."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from ledger.app.billing import replay_invoice
from ledger.app.catalog import MetricInput, RateCardInput
from ledger.app.context import RequestContext
from ledger.app.customers import AmendmentInput, ContractInput, OverrideSpec
from ledger.app.usage import UsageInput, UsageStatus
from ledger.core.catalog import PlanChange, Product
from ledger.core.errors import DomainError, Rule
from ledger.core.invoice import Invoice, canonical_invoice
from ledger.core.rate_specs import RateSpec
from services.bootstrap import App, running_app
from services.config import Settings
from tests.integration.pricing import publish_approved

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)  # the contract's start and billing anchor
MARCH = datetime(2026, 3, 1, tzinfo=UTC)  # 31 days
MARCH_11 = datetime(2026, 3, 11, tzinfo=UTC)  # 10 days into March, 21 left
APRIL = datetime(2026, 4, 1, tzinfo=UTC)
CTX = RequestContext(actor="ops", reason="integration test")


def run(database_url: str, body: Callable[[App], Awaitable[None]]) -> None:
    """``body`` on a catalog of two USD plans and a EUR one, and a contract on basic."""
    settings = dataclasses.replace(
        Settings.from_env({}), run_projector=False, finalize_grace=timedelta(0)
    )

    async def main() -> None:
        async with running_app(settings, database_url, clock=lambda: NOW) as app:
            await catalog(app)
            await app.customers.create_customer("acme", "Acme", CTX)
            await app.customers.create_contract(
                ContractInput("acme-1", "acme", "basic", None, FEB, None, None), CTX
            )
            await body(app)

    asyncio.run(main())


async def catalog(app: App) -> None:
    await app.catalog.create_metric(
        MetricInput("tokens", "Tokens", "completion", "SUM", "tokens"), CTX
    )
    await app.catalog.create_product(Product("llm", "LLM", "tokens"), CTX)
    await app.catalog.create_product(Product("platform", "Platform"), CTX)
    for card_id, currency, token_price, fee in (
        ("basic", "USD", "0.002", "10.00"),
        ("pro", "USD", "0.001", "31.00"),
        ("euro", "EUR", "0.002", "10.00"),
    ):
        rates = [
            RateSpec("llm", "per_unit", token_price),
            RateSpec("platform", "flat", flat_amount=fee),
        ]
        card = RateCardInput(card_id, card_id, currency, None, FEB - timedelta(days=1), rates)
        await publish_approved(app.catalog, card, CTX)


def tokens(transaction_id: str, at: datetime, quantity: int) -> UsageInput:
    return UsageInput(transaction_id, "acme", "completion", at, {"tokens": str(quantity)})


def amendment(effective_at: datetime | None = MARCH_11, **fields: object) -> AmendmentInput:
    return AmendmentInput("acme-1", "acme", effective_at, **fields)  # type: ignore[arg-type]


def lines(invoice: Invoice) -> list[tuple[str, str, datetime, str]]:
    return [
        (li.product_id, li.rate_card_id, li.segment_start, str(li.amount)) for li in invoice.lines
    ]


async def replayed(app: App, draft: Invoice) -> Invoice:
    async with app.pool.connection() as conn:
        return await replay_invoice(conn, draft.invoice_id, draft.computed_through_seq)


async def head(app: App) -> int:
    return (await app.store.head()).seq


def test_a_plan_change_splits_the_period_and_drafts_equal_replays(database_url: str) -> None:
    async def body(app: App) -> None:
        results = await app.record_usage(
            [tokens("t1", MARCH + timedelta(days=4), 1000), tokens("t2", NOW, 3000)], CTX
        )
        assert all(r.status is UsageStatus.ACCEPTED for r in results)
        contract, seq = await app.customers.amend_contract(amendment(rate_card_id="pro"), CTX)
        assert contract.plan_changes == (PlanChange(MARCH_11, "pro", None),)
        assert seq == await head(app)

        draft = (await app.invoicing.get(customer_id="acme", at=NOW)).invoice
        assert lines(draft) == [
            ("llm", "basic", MARCH, "2.00"),  # 1000 × 0.002
            ("llm", "pro", MARCH_11, "3.00"),  # 3000 × 0.001
            ("platform", "basic", MARCH, "3.23"),  # 10.00 × 10/31 = 3.2258…
            ("platform", "pro", MARCH_11, "21.00"),  # 31.00 × 21/31
        ]
        assert str(draft.total) == "29.23"
        assert (draft.rate_card_id, draft.contract_version) == ("pro", 3)
        assert canonical_invoice(draft) == canonical_invoice(await replayed(app, draft))
        await app.runner.catch_up()  # the draft now reads rollups: still the same bill
        rolled = (await app.invoicing.get(customer_id="acme", at=NOW)).invoice
        assert canonical_invoice(rolled) == canonical_invoice(draft)
        february = (await app.invoicing.get(customer_id="acme", at=FEB)).invoice
        assert lines(february) == [
            ("llm", "basic", FEB, "0.00"),
            ("platform", "basic", FEB, "10.00"),
        ]

    run(database_url, body)


def test_a_finalized_period_is_closed_to_amendments(database_url: str) -> None:
    async def body(app: App) -> None:
        await app.invoicing.finalize("in-acme-1-1", CTX)
        before = await head(app)
        for late in (
            amendment(FEB + timedelta(days=20), rate_card_id="pro"),
            amendment(MARCH_11, ends_at=FEB + timedelta(days=20)),
        ):
            with pytest.raises(DomainError) as refused:
                await app.customers.amend_contract(late, CTX)
            assert refused.value.rule is Rule.AMENDMENT_INTO_FINALIZED_PERIOD
        with pytest.raises(DomainError) as ending:
            await app.customers.end_contract("acme", "acme-1", FEB + timedelta(days=3), CTX)
        assert ending.value.rule is Rule.AMENDMENT_INTO_FINALIZED_PERIOD
        assert await head(app) == before
        # From the end of the finalized period on, the contract may change.
        contract, _ = await app.customers.amend_contract(amendment(MARCH, rate_card_id="pro"), CTX)
        assert contract.plan_at(MARCH).rate_card_id == "pro"
        check = await app.invoicing.verify_finalized("in-acme-1-1")
        assert check.matches

    run(database_url, body)


def test_a_bad_amendment_reports_every_problem_and_writes_nothing(database_url: str) -> None:
    async def body(app: App) -> None:
        before = await head(app)
        bad = amendment(
            rate_card_id="euro",
            add_overrides=[
                OverrideSpec("half", "llm", "multiplier", starts_at=MARCH, multiplier="0.5"),
                OverrideSpec("odd", "no-such-product", "discount"),
            ],
            end_override_ids=["never-added"],
        )
        with pytest.raises(DomainError) as refused:
            await app.customers.amend_contract(bad, CTX)
        assert refused.value.rule is Rule.REQUEST_INVALID
        assert [v.field for v in refused.value.violations] == [
            "rate_card_id",
            "add_overrides[0].starts_at",
            "add_overrides[1].product_id",
            "add_overrides[1].kind",
            "end_override_ids[0]",
        ]
        assert await head(app) == before
        state = await app.customers.customer("acme")
        assert state.contracts["acme-1"].plan_changes == ()

    run(database_url, body)


def test_amendments_are_idempotent_by_request_id(database_url: str) -> None:
    async def body(app: App) -> None:
        keyed = dataclasses.replace(CTX, request_id="amend-1")
        half = OverrideSpec("half", "llm", "multiplier", multiplier="0.5")
        first = await app.customers.amend_contract(amendment(add_overrides=[half]), keyed)
        # Later changes do not alter what the retry answers.
        await app.customers.amend_contract(
            amendment(MARCH_11 + timedelta(days=2), ends_at=APRIL), CTX
        )
        again = await app.customers.amend_contract(amendment(add_overrides=[half]), keyed)
        assert again == first
        assert again[0].ends_at is None
        assert [(o.override_id, o.starts_at) for o in again[0].overrides] == [("half", MARCH_11)]
        with pytest.raises(DomainError) as reused:
            await app.customers.amend_contract(amendment(rate_card_id="pro"), keyed)
        assert reused.value.rule is Rule.IDEMPOTENCY_KEY_REUSED

    run(database_url, body)


def test_ending_a_contract_clips_its_last_period_and_closes_it(database_url: str) -> None:
    async def body(app: App) -> None:
        ends_at = MARCH + timedelta(days=15)  # before NOW: the contract has ended
        contract, _ = await app.customers.end_contract("acme", "acme-1", ends_at, CTX)
        assert contract.ends_at == ends_at
        march = (await app.invoicing.get(customer_id="acme", at=MARCH)).invoice
        assert (march.period_start, march.period_end) == (MARCH, ends_at)
        assert lines(march)[-1] == ("platform", "basic", MARCH, "4.84")  # 10.00 × 15/31
        before = await head(app)
        with pytest.raises(DomainError) as refused:
            await app.customers.amend_contract(
                amendment(MARCH + timedelta(days=1), ends_at=APRIL), CTX
            )
        assert refused.value.rule is Rule.CONTRACT_ENDED
        assert await head(app) == before

    run(database_url, body)
