"""A generated billing history for the reporting tests: many customers, three months.

Prices change once (version 2 from February), one customer has a credit, and
one January invoice is voided and billed again, so reports must tell standing
invoices from voided ones and subtotals from totals.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from ledger.app.balances import GrantInput
from ledger.app.catalog import MetricInput, RateCardInput
from ledger.app.context import RequestContext
from ledger.app.customers import ContractInput
from ledger.app.usage import UsageInput, UsageStatus
from ledger.core.catalog import Product
from ledger.core.invoice import Invoice
from ledger.core.rate_specs import RateSpec, TierSpec
from services.bootstrap import App, running_app
from services.config import Settings
from tests.integration.pricing import publish_approved

START = datetime(2025, 1, 1, tzinfo=UTC)
MONTHS = (START, datetime(2025, 2, 1, tzinfo=UTC), datetime(2025, 3, 1, tzinfo=UTC))
APRIL = datetime(2025, 4, 1, tzinfo=UTC)
CTX = RequestContext(actor="reports-test", reason="reporting test")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def run_world(database_url: str, clock: Clock, body: Callable[[App], Awaitable[None]]) -> None:
    """``body`` against the app on ``clock``, accepting usage from long ago."""
    env = {"ACCRUAL_LATE_USAGE_DAYS": "3650"}
    settings = dataclasses.replace(Settings.from_env(env), run_projector=False)

    async def main() -> None:
        async with running_app(settings, database_url, clock=clock) as app:
            await body(app)

    asyncio.run(main())


async def catalog(app: App) -> None:
    """Tokens by model (per unit, dearer for the large model) and API calls (graduated)."""
    await app.catalog.create_metric(
        MetricInput("tokens", "Tokens", "completion", "SUM", "tokens", group_by=["model"]), CTX
    )
    await app.catalog.create_metric(MetricInput("calls", "Calls", "api_call", "COUNT", ""), CTX)
    await app.catalog.create_product(Product("llm", "LLM tokens", "tokens"), CTX)
    await app.catalog.create_product(Product("api", "API calls", "calls"), CTX)
    versions = ((START, "0.00002", "0.00006"), (MONTHS[1], "0.00003", "0.00007"))
    for effective_from, small, large in versions:
        rates = [
            RateSpec("llm", "per_unit", small),
            RateSpec("llm", "per_unit", large, group_values={"model": "large"}),
            RateSpec("api", "graduated", tiers=[TierSpec("20", "0.05"), TierSpec("", "0.02")]),
        ]
        card = RateCardInput("list", "List", "USD", None, effective_from, rates)
        await publish_approved(app.catalog, card, CTX)


def customer_ids(count: int) -> list[str]:
    return [f"cust{n:03d}" for n in range(count)]


async def customers(app: App, ids: list[str]) -> None:
    for customer_id in ids:
        await app.customers.create_customer(customer_id, customer_id.title(), CTX)
        contract = ContractInput(f"{customer_id}-c", customer_id, "list", None, START, None, None)
        await app.customers.create_contract(contract, CTX)


def usage(rng: random.Random, customer_id: str, month: datetime, count: int) -> list[UsageInput]:
    days = {2: 28, 4: 10}.get(month.month, 31)  # April: only its first ten days have passed
    events = []
    for n in range(count):
        at = month + timedelta(seconds=rng.randrange(days * 86_400))
        key = f"{customer_id}-{month:%m}-{n}"
        if n % 3 == 0:
            events.append(UsageInput(key, customer_id, "api_call", at, {}))
        else:
            props = {"model": rng.choice(["small", "large"]), "tokens": str(rng.randrange(10**5))}
            events.append(UsageInput(key, customer_id, "completion", at, props))
    return events


async def record(app: App, events: list[UsageInput]) -> None:
    for start in range(0, len(events), 500):
        results = await app.record_usage(events[start : start + 500], CTX)
        assert all(r.status is UsageStatus.ACCEPTED for r in results), results[:3]


async def build_history(app: App, clock: Clock, count: int, seed: int = 11) -> list[str]:
    """Three finalized months for ``count`` customers, April open with some usage."""
    rng = random.Random(seed)
    await catalog(app)
    ids = customer_ids(count)
    await customers(app, ids)
    grant = GrantInput("welcome", ids[0], "credit", "5.00", "USD", START)
    await app.grants.grant_credit(grant, CTX)
    clock.now = APRIL + timedelta(days=10)
    for month in (*MONTHS, APRIL):
        for customer_id in ids:
            await record(app, usage(rng, customer_id, month, rng.randrange(5, 40)))
    for number in (1, 2, 3):
        for customer_id in ids:
            await app.invoicing.finalize(f"in-{customer_id}-c-{number}", CTX)
    # The second customer's March is voided (only a customer's latest invoice may be)
    # and billed again: reports must count the replacement, not both.
    await app.invoicing.void(f"in-{ids[1]}-c-3", CTX)
    await app.invoicing.finalize(f"in-{ids[1]}-c-3-r1", CTX)
    return ids


async def standing_invoices(app: App, ids: list[str], numbers: tuple[int, ...]) -> list[Invoice]:
    """The invoices as GetInvoice shows them (the replacement, where one was voided)."""
    found = []
    for customer_id in ids:
        for number in numbers:
            at = MONTHS[number - 1] if number <= 3 else APRIL
            view = await app.invoicing.get(customer_id=customer_id, at=at + timedelta(hours=1))
            found.append(view.invoice)
    return found
