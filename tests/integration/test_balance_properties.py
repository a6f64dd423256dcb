"""Property: whatever grants, drawdowns, expiries and reversals reach the ledger, every
projected balance is the core's fold of them, never negative.

Each example is a fresh customer on one shared ledger. Grants go through GrantCredit;
drawdowns, expiries and reversals are appended as invoicing appends them, and only as
invoicing may: a drawdown never takes more than is left (``draw_down`` guarantees it),
an expiry takes what is left, a reversal gives back one earlier drawdown or expiry.
After every step the projections are caught up and compared with the fold.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.core.credits import BalanceBook, EntryKind
from ledger.core.events import CreditDrawnDown, CreditExpired, CreditReversed, DomainEvent
from projections.balances import BalanceQuery, GrantView
from services.bootstrap import App, running_app
from services.config import Settings
from tests.integration.credit_world import NOW, START, append, customer, grant, sell

CENT = Decimal("0.01")
_customers = itertools.count(1)


@dataclass
class Model:
    """What invoicing could still do: each grant's balance, the entries it could reverse."""

    customer_id: str
    remaining: dict[str, Decimal] = field(default_factory=dict)
    reversible: list[tuple[str, str, Decimal]] = field(default_factory=list)  # grant, invoice
    invoices: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def invoice_id(self) -> str:
        return f"in-{self.customer_id}-c1-{next(self.invoices)}"


@pytest.fixture
def ledger(database_url: str) -> Iterator[tuple[asyncio.AbstractEventLoop, App]]:
    """One app on one loop for every example (a fresh customer each)."""
    loop = asyncio.new_event_loop()
    settings_ = dataclasses.replace(Settings.from_env({}), run_projector=False)
    running = running_app(settings_, database_url, clock=lambda: NOW)
    app = loop.run_until_complete(running.__aenter__())
    try:
        loop.run_until_complete(sell(app))
        yield loop, app
    finally:
        loop.run_until_complete(running.__aexit__(None, None, None))
        loop.close()


def cents(draw: st.DrawFn, most: Decimal) -> Decimal:
    """An amount from one cent to ``most``."""
    return draw(st.integers(1, int(most / CENT))) * CENT


async def grant_step(app: App, model: Model, draw: st.DrawFn) -> None:
    grant_id = f"g{len(model.remaining) + 1}"
    amount = cents(draw, Decimal(1000))
    products = draw(st.sampled_from(([], ["llm"], ["support"], ["llm", "support"])))
    hard_limit = draw(st.booleans())
    granted, _ = await grant(
        app,
        model.customer_id,
        grant_id,
        str(amount),
        product_ids=products,
        hard_limit=hard_limit,
        priority=draw(st.integers(-3, 3)),
    )
    model.remaining[grant_id] = granted.amount


def invoicing_step(model: Model, draw: st.DrawFn) -> DomainEvent | None:
    """A drawdown, expiry or reversal invoicing could write now (None: none can be)."""
    spendable = sorted(g for g, left in model.remaining.items() if left > 0)
    choices = [k for k, ok in (("draw", spendable), ("expire", spendable)) if ok]
    if model.reversible:
        choices.append("reverse")
    if not choices:
        return None
    kind = draw(st.sampled_from(choices))
    if kind == "reverse":
        grant_id, invoice_id, amount = model.reversible.pop(
            draw(st.integers(0, len(model.reversible) - 1))
        )
        model.remaining[grant_id] += amount
        return CreditReversed(grant_id, invoice_id, amount, NOW)
    grant_id = draw(st.sampled_from(spendable))
    left = model.remaining[grant_id]
    amount = cents(draw, left) if kind == "draw" else left
    invoice_id = model.invoice_id()
    model.remaining[grant_id] = left - amount
    model.reversible.append((grant_id, invoice_id, amount))
    if kind == "draw":
        return CreditDrawnDown(grant_id, invoice_id, amount, NOW)
    return CreditExpired(grant_id, invoice_id, amount, NOW)


def by_definition(view: GrantView) -> Decimal:
    """Grant − drawdowns − expiries + reversals, from the entries' kinds."""
    total = {kind: Decimal(0) for kind in EntryKind}
    for entry in view.entries:
        total[entry.kind] += abs(entry.amount)
    return (
        total[EntryKind.GRANTED]
        - total[EntryKind.DRAWN_DOWN]
        - total[EntryKind.EXPIRED]
        + total[EntryKind.REVERSED]
    )


async def assert_projections_are_the_fold(app: App, model: Model) -> None:
    await app.runner.catch_up()
    book = (await app.customers.customer(model.customer_id)).balances
    views, _ = await app.balances.balances(BalanceQuery(model.customer_id, page_size=500))
    assert [v.grant.grant_id for v in views] == sorted(book.grants, key=book.order.__getitem__)
    for view in views:
        grant_id = view.grant.grant_id
        assert view.grant == book.grants[grant_id]
        assert view.remaining >= 0
        assert view.remaining == by_definition(view) == book.remaining(grant_id)
        assert view.remaining == model.remaining[grant_id]
        assert [(e.kind, e.amount, e.at, e.invoice_id) for e in view.entries] == [
            (e.kind, e.amount, e.at, e.invoice_id) for e in book.entries_of(grant_id)
        ]
    await assert_hard_limit_is_the_fold(app, model.customer_id, book)


async def assert_hard_limit_is_the_fold(app: App, customer_id: str, book: BalanceBook) -> None:
    """The entitlements projection keeps the same balances for its hard limits."""
    limits = [g for g in book.grants.values() if g.hard_limit and g.covers("llm")]
    expected = sum((book.remaining(g.grant_id) for g in limits), Decimal(0)) if limits else None
    entitlement = await app.entitlements.check(customer_id, "llm", NOW)
    assert entitlement.hard_limit_remaining == expected
    assert entitlement.allowed == (expected is None or expected > 0)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_projected_balances_are_the_fold_and_never_negative(
    ledger: tuple[asyncio.AbstractEventLoop, App], data: st.DataObject
) -> None:
    loop, app = ledger
    model = Model(f"p{next(_customers)}")
    loop.run_until_complete(customer(app, model.customer_id, starts_at=START))
    for _ in range(data.draw(st.integers(1, 12), label="steps")):
        if not model.remaining or data.draw(st.integers(0, 3), label="grant?") == 0:
            loop.run_until_complete(grant_step(app, model, data.draw))
        elif (event := invoicing_step(model, data.draw)) is not None:
            loop.run_until_complete(append(app, model.customer_id, event))
        loop.run_until_complete(assert_projections_are_the_fold(app, model))
