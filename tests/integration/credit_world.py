"""A small billable world for the balance and entitlement tests, built through the commands.

Drawdowns, expiries and reversals are invoicing's to write; tests append those
events directly, as finalization and voiding would.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal

from ledger.app.balances import GrantInput
from ledger.app.catalog import MetricInput, RateCardInput
from ledger.app.context import RequestContext
from ledger.app.customers import ContractInput
from ledger.app.streams import customer_stream
from ledger.core.catalog import Product
from ledger.core.credits import Grant
from ledger.core.events import CreditDrawnDown, CreditExpired, CreditReversed, DomainEvent
from ledger.core.rate_specs import RateSpec
from ledger.store.records import NewEvent
from services.bootstrap import App, running_app
from services.config import Settings
from tests.integration.pricing import publish_approved

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
START = datetime(2026, 2, 1, tzinfo=UTC)
CTX = RequestContext(actor="balances-test", reason="balances test")


def run_app(database_url: str, body: Callable[[App], Awaitable[None]]) -> None:
    """``body`` against the wired app, the projector not running (tests catch up)."""
    settings = dataclasses.replace(Settings.from_env({}), run_projector=False)

    async def main() -> None:
        async with running_app(settings, database_url, clock=lambda: NOW) as app:
            await body(app)

    asyncio.run(main())


async def sell(
    app: App,
    card: str = "list",
    *,
    currency: str = "USD",
    decimals: int | None = None,
    products: Sequence[str] = ("llm", "support"),
    effective_from: datetime = START,
) -> None:
    """A card selling ``products`` (metric ``tokens`` made once, products on demand)."""
    if not await app.store.stream_versions(["metric-tokens"]):
        await app.catalog.create_metric(
            MetricInput("tokens", "Tokens", "completion", "SUM", "tokens"), CTX
        )
    for product_id in products:
        if not await app.store.stream_versions([f"product-{product_id}"]):
            await app.catalog.create_product(Product(product_id, product_id, "tokens"), CTX)
    rates = [RateSpec(p, "per_unit", "0.002") for p in products]
    input_ = RateCardInput(card, card, currency, decimals, effective_from, rates)
    await publish_approved(app.catalog, input_, CTX)


async def customer(
    app: App,
    customer_id: str,
    card: str = "list",
    *,
    starts_at: datetime = START,
    ends_at: datetime | None = None,
    pinned: int | None = None,
) -> None:
    """A customer with one contract on ``card``."""
    await app.customers.create_customer(customer_id, customer_id.title(), CTX)
    await app.customers.create_contract(
        ContractInput(f"{customer_id}-c1", customer_id, card, pinned, starts_at, ends_at, None),
        CTX,
    )


def grant_input(
    customer_id: str, grant_id: str, amount: str = "100.00", **fields: object
) -> GrantInput:
    values: dict[str, object] = {
        "grant_id": grant_id,
        "customer_id": customer_id,
        "kind": "credit",
        "amount": amount,
        "currency": "USD",
        "starts_at": START,
    }
    values.update(fields)
    return GrantInput(**values)  # type: ignore[arg-type]


async def grant(
    app: App, customer_id: str, grant_id: str, amount: str = "100.00", **fields: object
) -> tuple[Grant, int]:
    return await app.grants.grant_credit(grant_input(customer_id, grant_id, amount, **fields), CTX)


async def append(app: App, customer_id: str, *events: DomainEvent) -> int:
    """Append events to the customer stream, as invoicing does; the last seq."""
    outcomes = await app.store.append(
        [NewEvent(customer_stream(customer_id), event, NOW) for event in events]
    )
    return max(outcome.seq for outcome in outcomes)


def drawn(grant_id: str, amount: str, invoice_id: str = "in-acme-c1-1") -> CreditDrawnDown:
    return CreditDrawnDown(grant_id, invoice_id, Decimal(amount), NOW)


def expired(grant_id: str, amount: str, invoice_id: str = "in-acme-c1-1") -> CreditExpired:
    return CreditExpired(grant_id, invoice_id, Decimal(amount), NOW)


def reversed_(grant_id: str, amount: str, invoice_id: str = "in-acme-c1-1") -> CreditReversed:
    return CreditReversed(grant_id, invoice_id, Decimal(amount), NOW)
