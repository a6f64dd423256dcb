"""GrantCredit and the balances projection on real PostgreSQL.

A grant is refused with the rule it breaks and nothing written; a granted
balance is read back from the projection with every entry against it, and
the projection agrees with the core's fold of the customer stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from decimal import Decimal

import psycopg
import pytest

from ledger.app.customers import ContractInput
from ledger.core.credits import EntryKind, GrantKind
from ledger.core.errors import DomainError, Rule
from projections import balances as balances_module
from projections.balances import BalanceQuery, GrantView
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
    grant_input,
    reversed_,
    run_app,
    sell,
)


async def views(app: App, customer_id: str = "acme", **fields: object) -> list[GrantView]:
    await app.runner.catch_up()
    found, _ = await app.balances.balances(BalanceQuery(customer_id, **fields))  # type: ignore[arg-type]
    return found


def test_a_grant_is_a_balance_with_its_grant_entry(database_url: str) -> None:
    async def body(app: App) -> None:
        await sell(app)
        await customer(app, "acme")
        expires = NOW + timedelta(days=60)
        granted, seq = await grant(
            app,
            "acme",
            "g1",
            "100",
            kind="prepaid_commit",
            product_ids=["llm"],
            priority=2,
            hard_limit=True,
            expires_at=expires,
            rollover_fraction="0.5",
        )
        # Written with the currency's places.
        assert str(granted.amount) == "100.00"
        assert (granted.kind, granted.products, granted.expires_at) == (
            GrantKind.PREPAID_COMMIT,
            ("llm",),
            expires,
        )
        [view] = await views(app)
        assert view.grant == granted
        assert view.remaining == Decimal("100.00")
        assert [(e.seq, e.kind, e.amount, e.at, e.invoice_id) for e in view.entries] == [
            (seq, EntryKind.GRANTED, Decimal("100.00"), START, "")
        ]

    run_app(database_url, body)


def test_remaining_is_the_grant_less_drawdowns_and_expiries_plus_reversals(
    database_url: str,
) -> None:
    async def body(app: App) -> None:
        await sell(app)
        await customer(app, "acme")
        await grant(app, "acme", "g1", "100.00")
        await grant(app, "acme", "g2", "50.00", product_ids=["support"])
        await append(
            app,
            "acme",
            drawn("g1", "30.00"),
            drawn("g2", "50.00"),
            expired("g1", "20.00", "in-acme-c1-2"),
            reversed_("g2", "50.00", "in-acme-c1-1"),
        )
        found = {view.grant.grant_id: view for view in await views(app)}
        assert found["g1"].remaining == Decimal("50.00")
        assert found["g2"].remaining == Decimal("50.00")
        assert [(e.kind, e.amount) for e in found["g1"].entries] == [
            (EntryKind.GRANTED, Decimal("100.00")),
            (EntryKind.DRAWN_DOWN, Decimal("-30.00")),
            (EntryKind.EXPIRED, Decimal("-20.00")),
        ]
        book = (await app.customers.customer("acme")).balances
        for grant_id, view in found.items():
            assert view.remaining == book.remaining(grant_id) == sum(e.amount for e in view.entries)
            assert [(e.kind, e.amount, e.at, e.invoice_id) for e in view.entries] == [
                (b.kind, b.amount, b.at, b.invoice_id) for b in book.entries_of(grant_id)
            ]

    run_app(database_url, body)


async def refused(app: App, rule: Rule, fields: list[str], call: object) -> DomainError:
    """``call`` (an awaitable) fails with ``rule`` and those field violations; nothing written."""
    head = (await app.store.head()).seq
    with pytest.raises(DomainError) as raised:
        await call  # type: ignore[misc]
    assert raised.value.rule is rule, raised.value
    assert [v.field for v in raised.value.violations] == fields
    assert (await app.store.head()).seq == head
    return raised.value


INVALID_GRANTS: list[tuple[dict[str, object], list[str]]] = [
    ({"grant_id": ""}, ["grant_id"]),
    ({"grant_id": "bad id"}, ["grant_id"]),
    ({"kind": "gift"}, ["kind"]),
    ({"amount": "0"}, ["amount"]),
    ({"amount": "-5"}, ["amount"]),
    ({"amount": "1e3"}, ["amount"]),
    ({"amount": "NaN"}, ["amount"]),
    ({"currency": ""}, ["currency"]),
    ({"starts_at": None}, ["starts_at"]),
    ({"expires_at": START}, ["expires_at"]),
    ({"kind": "postpaid_commit"}, ["expires_at"]),
    ({"product_ids": ["llm", "llm"]}, ["product_ids"]),
    ({"product_ids": ["a b"]}, ["product_ids[0]"]),
    ({"product_ids": [f"p{i}" for i in range(201)]}, ["product_ids"]),
    ({"priority": 2**31}, ["priority"]),
    ({"rollover_fraction": "1.5"}, ["rollover_fraction"]),
    ({"rollover_fraction": "-0.1"}, ["rollover_fraction"]),
    (
        {
            "kind": "postpaid_commit",
            "expires_at": NOW,
            "rollover_fraction": "0.5",
            "hard_limit": True,
        },
        ["rollover_fraction", "hard_limit"],
    ),
    # Every violation at once.
    ({"grant_id": "", "kind": "x", "amount": "x"}, ["grant_id", "kind", "amount"]),
]


def test_malformed_grants_are_refused_field_by_field(database_url: str) -> None:
    async def body(app: App) -> None:
        await sell(app)
        await customer(app, "acme")
        for fields, violations in INVALID_GRANTS:
            command = dataclasses.replace(grant_input("acme", "g1"), **fields)  # type: ignore[arg-type]
            call = app.grants.grant_credit(command, CTX)
            await refused(app, Rule.REQUEST_INVALID, violations, call)

    run_app(database_url, body)


def test_grants_are_refused_by_the_rule_they_break(database_url: str) -> None:
    async def body(app: App) -> None:
        await sell(app)
        await customer(app, "acme")
        await app.customers.create_customer("free", "Free", CTX)
        await grant(app, "acme", "g1")

        def attempt(customer_id: str = "acme", grant_id: str = "g2", **fields: object) -> object:
            return app.grants.grant_credit(grant_input(customer_id, grant_id, **fields), CTX)

        await refused(app, Rule.CUSTOMER_NOT_FOUND, [], attempt("ghost"))
        await refused(app, Rule.GRANT_EXISTS, [], attempt(grant_id="g1"))
        message = (await refused(app, Rule.CONTRACT_REQUIRED, [], attempt("free"))).message
        assert "create a contract first" in message
        wrong = await refused(app, Rule.REQUEST_INVALID, ["currency"], attempt(currency="EUR"))
        assert "bill in USD" in wrong.violations[0].description
        await refused(app, Rule.REQUEST_INVALID, ["amount"], attempt(amount="1.001"))
        await refused(
            app, Rule.REQUEST_INVALID, ["product_ids[1]"], attempt(product_ids=["llm", "ghost"])
        )

    run_app(database_url, body)


def test_a_retried_grant_returns_the_first_result(database_url: str) -> None:
    async def body(app: App) -> None:
        await sell(app)
        await customer(app, "acme")
        ctx = dataclasses.replace(CTX, request_id="grant-once")
        first = await app.grants.grant_credit(grant_input("acme", "g1"), ctx)
        # The grant id is taken now, but a retry is answered before any rule is checked.
        assert await app.grants.grant_credit(grant_input("acme", "g1"), ctx) == first
        other = app.grants.grant_credit(grant_input("acme", "g2"), ctx)
        await refused(app, Rule.IDEMPOTENCY_KEY_REUSED, [], other)

    run_app(database_url, body)


def test_concurrent_grants_of_one_id_write_one(database_url: str) -> None:
    async def body(app: App) -> None:
        await sell(app)
        await customer(app, "acme")
        outcomes = await asyncio.gather(
            *(grant(app, "acme", "g1", f"{n}.00") for n in range(1, 6)), return_exceptions=True
        )
        written = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(written) == 1
        for failure in outcomes:
            if isinstance(failure, DomainError):
                assert failure.rule in (Rule.GRANT_EXISTS, Rule.STREAM_VERSION_CONFLICT)
        [view] = await views(app)
        assert view.remaining == written[0][0].amount

    run_app(database_url, body)


def test_a_custom_pricing_unit_has_the_places_its_card_declares(database_url: str) -> None:
    async def body(app: App) -> None:
        await sell(app, "tokens-card", currency="CREDITS", decimals=4)
        await customer(app, "unitco", "tokens-card")
        granted, _ = await grant(app, "unitco", "g1", "1.5", currency="CREDITS")
        assert str(granted.amount) == "1.5000"
        too_fine = grant_input("unitco", "g2", "1.23456", currency="CREDITS")
        await refused(app, Rule.REQUEST_INVALID, ["amount"], app.grants.grant_credit(too_fine, CTX))

    run_app(database_url, body)


def test_balances_by_currency_a_page_at_a_time(database_url: str) -> None:
    async def body(app: App) -> None:
        await sell(app)
        await sell(app, "euro", currency="EUR")
        await customer(app, "acme", ends_at=NOW)
        euro = ContractInput("acme-c2", "acme", "euro", None, NOW, None, None)
        await app.customers.create_contract(euro, CTX)
        for n, currency in enumerate(("USD", "EUR", "USD", "USD")):
            await grant(app, "acme", f"g{n}", currency=currency)
        assert [v.grant.grant_id for v in await views(app, currency="EUR")] == ["g1"]
        await app.runner.catch_up()
        page, token = await app.balances.balances(BalanceQuery("acme", "USD", page_size=2))
        assert [v.grant.grant_id for v in page] == ["g0", "g2"]
        rest, end = await app.balances.balances(
            BalanceQuery("acme", "USD", page_size=2, after_seq=int(token))
        )
        assert ([v.grant.grant_id for v in rest], end) == (["g3"], "")

    run_app(database_url, body)


def test_a_consistency_token_reads_its_own_grant(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(balances_module, "CONSISTENCY_WAIT_S", 0.2)

    async def body(app: App) -> None:
        await sell(app)
        await customer(app, "acme")
        _, seq = await grant(app, "acme", "g1")
        waiting = BalanceQuery("acme", consistency_token=seq)
        with pytest.raises(DomainError) as behind:  # nobody projects: it gives up
            await app.balances.balances(waiting)
        assert behind.value.rule is Rule.NOT_CAUGHT_UP
        (found, _), _ = await asyncio.gather(app.balances.balances(waiting), app.runner.catch_up())
        assert [v.grant.grant_id for v in found] == ["g1"]
        with pytest.raises(DomainError) as beyond:
            await app.balances.balances(BalanceQuery("acme", consistency_token=seq + 1))
        assert [v.field for v in beyond.value.violations] == ["consistency_token"]

    run_app(database_url, body)


def test_balances_of_unknown_or_malformed_customers_are_refused(database_url: str) -> None:
    async def body(app: App) -> None:
        with pytest.raises(DomainError) as unknown:
            await app.balances.balances(BalanceQuery("ghost"))
        assert unknown.value.rule is Rule.CUSTOMER_NOT_FOUND
        with pytest.raises(DomainError) as malformed:
            await app.balances.balances(BalanceQuery("bad id", page_size=-1))
        assert [v.field for v in malformed.value.violations] == ["customer_id", "page_size"]

    run_app(database_url, body)


def test_rebuilt_balance_and_entitlement_tables_equal_the_live_ones(database_url: str) -> None:
    async def body(app: App) -> None:
        await sell(app)
        await customer(app, "acme")
        await grant(app, "acme", "g1", hard_limit=True, product_ids=["llm", "support"])
        await grant(app, "acme", "g2")
        await append(app, "acme", drawn("g1", "10.00"), reversed_("g1", "5.00"), drawn("g2", "1"))
        await app.runner.catch_up()
        for name in ("balances", "entitlements"):
            rebuilt = await app.runner.start_rebuild(name, 2)
            async for _ in app.runner.build(rebuilt):
                pass

    run_app(database_url, body)
    tables = (
        "balance_grants_v{}",
        "balance_entries_v{}",
        "entitlement_contracts_v{}",
        "entitlement_plans_v{}",
        "entitlement_cards_v{}",
        "entitlement_grants_v{}",
    )
    with psycopg.connect(database_url) as conn:
        for pattern in tables:
            live, rebuilt = pattern.format(1), pattern.format(2)
            count = conn.execute(f"SELECT count(*) FROM {live}").fetchone()
            assert count is not None and count[0] > 0, live
            for x, y in ((live, rebuilt), (rebuilt, live)):
                diff = conn.execute(
                    f"SELECT count(*) FROM (SELECT * FROM {x} EXCEPT ALL SELECT * FROM {y}) d"
                ).fetchone()
                assert diff == (0,), (x, y)
