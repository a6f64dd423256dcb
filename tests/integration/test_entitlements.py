"""CheckEntitlement's projection on real PostgreSQL: contracts in force, the plan's card
version at the instant asked, amendments, and hard-limit balances."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from ledger.app.customers import ContractInput
from ledger.core.catalog import PlanChange
from ledger.core.contracts import Amendment
from ledger.core.errors import DomainError, Rule
from ledger.core.events import ContractAmended
from projections.entitlements import Entitlement, Refusal
from services.bootstrap import App
from tests.integration.credit_world import (
    CTX,
    NOW,
    START,
    append,
    customer,
    drawn,
    expired,
    grant,
    reversed_,
    run_app,
    sell,
)

NO_CONTRACT = Entitlement(False, Refusal.NO_CONTRACT)


async def check(app: App, product_id: str, at: datetime = NOW, who: str = "acme") -> Entitlement:
    await app.runner.catch_up()
    return await app.entitlements.check(who, product_id, at)


def allowed(remaining: str | None = None) -> Entitlement:
    return Entitlement(True, None, None if remaining is None else Decimal(remaining), "USD")


def refused(refusal: Refusal, remaining: str | None = None) -> Entitlement:
    return Entitlement(False, refusal, None if remaining is None else Decimal(remaining), "USD")


def test_only_a_contract_in_force_entitles(database_url: str) -> None:
    async def body(app: App) -> None:
        await sell(app)
        await customer(app, "acme", ends_at=NOW)
        await app.customers.create_customer("free", "Free", CTX)
        assert await check(app, "llm", START) == allowed()
        assert await check(app, "llm", NOW - timedelta(microseconds=1)) == allowed()
        assert await check(app, "llm", START - timedelta(microseconds=1)) == NO_CONTRACT
        assert await check(app, "llm", NOW) == NO_CONTRACT  # the term is [start, end)
        assert await check(app, "llm", who="free") == NO_CONTRACT
        assert await check(app, "llm", who="ghost") == NO_CONTRACT

    run_app(database_url, body)


def test_the_card_version_in_force_decides_the_products(database_url: str) -> None:
    later = START + timedelta(days=20)

    async def body(app: App) -> None:
        await sell(app, products=("llm",))
        await sell(app, products=("llm", "vision"), effective_from=later)  # version 2
        await customer(app, "acme")
        await customer(app, "pinned", pinned=1)
        assert await check(app, "vision", later - timedelta(seconds=1)) == refused(
            Refusal.NOT_ON_CARD
        )
        assert await check(app, "vision", later) == allowed()
        assert await check(app, "vision", later, who="pinned") == refused(Refusal.NOT_ON_CARD)
        assert await check(app, "llm", later, who="pinned") == allowed()
        assert await check(app, "never-made") == refused(Refusal.NOT_ON_CARD)

    run_app(database_url, body)


def test_an_amended_plan_changes_the_products_from_its_instant(database_url: str) -> None:
    switch = START + timedelta(days=10)
    term_end = NOW + timedelta(days=30)

    async def body(app: App) -> None:
        await sell(app, products=("llm",))
        await sell(app, "premium", products=("llm", "vision"))
        await customer(app, "acme")
        amendments = [
            Amendment("acme-c1", switch, plan=PlanChange(switch, "premium", 1)),
            Amendment("acme-c1", NOW, change_term=True, ends_at=term_end),
        ]
        await append(app, "acme", *(ContractAmended(a) for a in amendments))
        assert await check(app, "vision", switch - timedelta(seconds=1)) == refused(
            Refusal.NOT_ON_CARD
        )
        assert await check(app, "vision", switch) == allowed()
        assert await check(app, "vision", term_end - timedelta(seconds=1)) == allowed()
        assert await check(app, "vision", term_end) == NO_CONTRACT

    run_app(database_url, body)


def test_a_spent_hard_limit_refuses_until_a_reversal_refills_it(database_url: str) -> None:
    async def body(app: App) -> None:
        await sell(app)
        await customer(app, "acme")
        await grant(app, "acme", "soft", "500.00")  # no hard limit: never refuses
        await grant(app, "acme", "hard", "10.00", product_ids=["llm"], hard_limit=True)
        assert await check(app, "llm") == allowed("10.00")
        assert await check(app, "support") == allowed()  # not covered by the limit
        await append(app, "acme", drawn("hard", "10.00"))
        exhausted = await check(app, "llm")
        assert exhausted == refused(Refusal.HARD_LIMIT_EXHAUSTED, "0.00")
        assert "has any left" in exhausted.explanation
        await append(app, "acme", reversed_("hard", "4.00"))
        assert await check(app, "llm") == allowed("4.00")

    run_app(database_url, body)


def test_only_hard_limit_grants_valid_at_the_instant_count(database_url: str) -> None:
    expiry = NOW + timedelta(days=5)
    future = NOW + timedelta(days=10)

    async def body(app: App) -> None:
        await sell(app)
        await customer(app, "acme")
        # Covers every product, until the expiry.
        await grant(app, "acme", "all", "20.00", hard_limit=True, expires_at=expiry)
        assert await check(app, "support") == allowed("20.00")
        assert await check(app, "support", expiry) == refused(Refusal.HARD_LIMIT_EXHAUSTED, "0")
        # A later grant counts only from its start.
        await grant(app, "acme", "next", "7.50", hard_limit=True, starts_at=future)
        assert await check(app, "llm", expiry) == refused(Refusal.HARD_LIMIT_EXHAUSTED, "0")
        assert await check(app, "llm", future) == allowed("7.50")
        await append(app, "acme", expired("all", "20.00"))
        assert await check(app, "llm") == refused(Refusal.HARD_LIMIT_EXHAUSTED, "0")

    run_app(database_url, body)


def test_a_hard_limit_that_has_not_started_limits_nothing_yet(database_url: str) -> None:
    async def body(app: App) -> None:
        await sell(app)
        await customer(app, "acme")
        await grant(
            app,
            "acme",
            "from-next-week",
            "5.00",
            hard_limit=True,
            starts_at=NOW + timedelta(days=7),
        )
        assert await check(app, "llm") == allowed()
        assert await check(app, "llm", NOW + timedelta(days=7)) == allowed("5.00")

    run_app(database_url, body)


def test_hard_limits_in_another_currency_do_not_apply(database_url: str) -> None:
    async def body(app: App) -> None:
        await sell(app)
        await sell(app, "euro", currency="EUR")
        await customer(app, "acme", ends_at=NOW)  # in USD, then in EUR from NOW
        euro = ContractInput("acme-c2", "acme", "euro", None, NOW, None, None)
        await app.customers.create_contract(euro, CTX)
        await grant(app, "acme", "usd-cap", "5.00", hard_limit=True)
        await append(app, "acme", drawn("usd-cap", "5.00"))
        assert await check(app, "llm", START) == refused(Refusal.HARD_LIMIT_EXHAUSTED, "0.00")
        assert await check(app, "llm", NOW) == Entitlement(True, None, None, "EUR")

    run_app(database_url, body)


def test_malformed_checks_are_refused(database_url: str) -> None:
    async def body(app: App) -> None:
        with pytest.raises(DomainError) as raised:
            await app.entitlements.check("", "bad id")
        assert raised.value.rule is Rule.REQUEST_INVALID
        assert [v.field for v in raised.value.violations] == ["customer_id", "product_id"]

    run_app(database_url, body)
