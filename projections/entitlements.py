"""Entitlements: may a customer use a product at an instant? One indexed query answers.

A customer may use a product at ``at`` when a contract of theirs is in force
then, the plan in force (``Contract.plan_at``: a pinned card version, or the
card's latest version in effect at ``at``) has the product on its card, and,
if hard-limit grants in the contract's currency cover the product, one of
them valid at ``at`` still has a balance. Ingest services ask before serving
usage, so the answer is a few index probes in one statement.

The projection keeps what that statement needs: each contract's plans as time
segments (contract state folded with :func:`ledger.core.contracts.amend`), the
products of each card version, and each grant's remaining balance per product
it covers. A balance shrinks when a finalized invoice draws it down, so usage
not yet invoiced has not reduced it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Final

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import TupleRow

from ledger.core.canonical import canonical_json
from ledger.core.catalog import Contract, PlanChange
from ledger.core.codec import decode, encode
from ledger.core.contracts import amend
from ledger.core.credits import Grant
from ledger.core.errors import Violations
from ledger.core.events import (
    ContractAmended,
    ContractCreated,
    CreditGranted,
    RateCardPublished,
)
from ledger.core.validation import check_id
from ledger.store.event_store import Pool, PostgresEventStore
from ledger.store.records import RecordedEvent
from projections.balances import CREDIT_EVENTS, customer_of, entry_of, wait_until_projected
from projections.registry import live_version

_FOREVER: Final = datetime.max.replace(tzinfo=UTC)
EVERY_PRODUCT: Final = ""  # the product id of a grant that names none: it covers all


class Refusal(Enum):
    """Why a customer may not use a product."""

    NO_CONTRACT = "no_contract_in_force"
    NOT_ON_CARD = "product_not_on_rate_card"
    HARD_LIMIT_EXHAUSTED = "hard_limit_exhausted"


_EXPLANATIONS: Final = {
    Refusal.NO_CONTRACT: "no contract of the customer is in force at that instant",
    Refusal.NOT_ON_CARD: "the product is not on the rate card of the plan in force",
    Refusal.HARD_LIMIT_EXHAUSTED: "no hard-limit balance covering the product has any left then",
}


@dataclass(frozen=True)
class Entitlement:
    """The answer; ``hard_limit_remaining`` is None when no hard limit covers the product."""

    allowed: bool
    refusal: Refusal | None = None
    hard_limit_remaining: Decimal | None = None
    currency: str = ""

    @property
    def explanation(self) -> str:
        return "" if self.refusal is None else _EXPLANATIONS[self.refusal]


def decide(
    *, in_force: str | None, on_card: bool, limited: bool, remaining: Decimal | None
) -> Entitlement:
    """The answer from the query's findings; ``in_force`` is the contract's currency."""
    if in_force is None:
        return Entitlement(False, Refusal.NO_CONTRACT)
    if not on_card:
        return Entitlement(False, Refusal.NOT_ON_CARD, currency=in_force)
    if not limited:
        return Entitlement(True, currency=in_force)
    left = remaining if remaining is not None else Decimal(0)
    if left <= 0:
        return Entitlement(False, Refusal.HARD_LIMIT_EXHAUSTED, left, in_force)
    return Entitlement(True, None, left, in_force)


def plan_segments(contract: Contract) -> list[tuple[datetime, datetime | None, PlanChange]]:
    """``[from, until)`` of each plan over the contract's term (until None: open-ended)."""
    pieces = contract.plans_over(contract.starts_at, contract.ends_at or _FOREVER)
    untils = [start for start, _ in pieces[1:]] + [contract.ends_at]
    return [(start, until, plan) for (start, plan), until in zip(pieces, untils, strict=True)]


class EntitlementProjection:
    """Projection ``entitlements``: plans in force, card products, hard-limit balances."""

    name = "entitlements"
    event_types: Final = CREDIT_EVENTS | {
        ContractCreated.EVENT_TYPE,
        ContractAmended.EVENT_TYPE,
        RateCardPublished.EVENT_TYPE,
    }

    def __init__(self, version: int = 1) -> None:
        self.version = version
        self.contracts = f"entitlement_contracts_v{version}"
        self.plans = f"entitlement_plans_v{version}"
        self.cards = f"entitlement_cards_v{version}"
        self.grants = f"entitlement_grants_v{version}"

    def ddl(self) -> Sequence[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {self.contracts} (
                contract_id text PRIMARY KEY,
                customer_id text NOT NULL,
                definition  text NOT NULL)""",
            f"""CREATE TABLE IF NOT EXISTS {self.plans} (
                customer_id    text        NOT NULL,
                valid_from     timestamptz NOT NULL,
                contract_id    text        NOT NULL,
                valid_until    timestamptz,
                rate_card_id   text        NOT NULL,
                pinned_version integer,
                currency       text        NOT NULL,
                PRIMARY KEY (customer_id, valid_from, contract_id))""",
            f"""CREATE TABLE IF NOT EXISTS {self.cards} (
                rate_card_id   text        NOT NULL,
                version        integer     NOT NULL,
                effective_from timestamptz NOT NULL,
                product_ids    text[]      NOT NULL,
                PRIMARY KEY (rate_card_id, version))""",
            # One row per product a grant covers ('' for a grant covering all).
            f"""CREATE TABLE IF NOT EXISTS {self.grants} (
                customer_id text        NOT NULL,
                grant_id    text        NOT NULL,
                product_id  text        NOT NULL,
                currency    text        NOT NULL,
                hard_limit  boolean     NOT NULL,
                starts_at   timestamptz NOT NULL,
                expires_at  timestamptz,
                remaining   numeric     NOT NULL,
                PRIMARY KEY (customer_id, grant_id, product_id))""",
            f"""CREATE INDEX IF NOT EXISTS {self.grants}_hard_limits
                ON {self.grants} (customer_id, product_id) WHERE hard_limit""",
        ]

    def tables(self) -> Sequence[str]:
        return [self.contracts, self.plans, self.cards, self.grants]

    async def apply(
        self,
        cur: AsyncCursor[TupleRow],
        events: Sequence[RecordedEvent],
        *,
        replaying: bool = False,  # no side effects to suppress
    ) -> None:
        for stored in events:
            kind = stored.event_type
            if kind in (ContractCreated.EVENT_TYPE, ContractAmended.EVENT_TYPE):
                await self._contract(cur, stored)
            elif kind == RateCardPublished.EVENT_TYPE:
                await self._card(cur, stored)
            elif kind == CreditGranted.EVENT_TYPE:
                await self._grant(cur, stored)
            elif kind in CREDIT_EVENTS:
                await self._balance_entry(cur, stored)

    async def _contract(self, cur: AsyncCursor[TupleRow], stored: RecordedEvent) -> None:
        event = stored.domain_event()
        if isinstance(event, ContractCreated):
            contract = event.contract
        else:
            assert isinstance(event, ContractAmended)
            contract = amend(await self._contract_now(cur, event), event.amendment)
        await cur.execute(
            f"INSERT INTO {self.contracts} (contract_id, customer_id, definition)"
            " VALUES (%s, %s, %s) ON CONFLICT (contract_id) DO UPDATE"
            " SET definition = excluded.definition",
            (contract.contract_id, contract.customer_id, canonical_json(encode(contract)).decode()),
        )
        await cur.execute(
            f"DELETE FROM {self.plans} WHERE customer_id = %s AND contract_id = %s",
            (contract.customer_id, contract.contract_id),
        )
        rows = [
            (
                contract.customer_id,
                start,
                contract.contract_id,
                until,
                plan.rate_card_id,
                plan.pinned_version,
                contract.currency,
            )
            for start, until, plan in plan_segments(contract)
        ]
        await cur.executemany(
            f"INSERT INTO {self.plans} (customer_id, valid_from, contract_id, valid_until,"
            " rate_card_id, pinned_version, currency) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            rows,
        )

    async def _contract_now(self, cur: AsyncCursor[TupleRow], event: ContractAmended) -> Contract:
        await cur.execute(
            f"SELECT definition FROM {self.contracts} WHERE contract_id = %s",
            (event.amendment.contract_id,),
        )
        row = await cur.fetchone()
        assert row is not None, f"contract {event.amendment.contract_id} was created first"
        return decode(Contract, json.loads(row[0]))

    async def _card(self, cur: AsyncCursor[TupleRow], stored: RecordedEvent) -> None:
        event = stored.domain_event()
        assert isinstance(event, RateCardPublished)
        card = event.rate_card
        await cur.execute(
            f"INSERT INTO {self.cards} (rate_card_id, version, effective_from, product_ids)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (card.rate_card_id, card.version, card.effective_from, list(card.product_ids)),
        )

    async def _grant(self, cur: AsyncCursor[TupleRow], stored: RecordedEvent) -> None:
        event = stored.domain_event()
        assert isinstance(event, CreditGranted)
        grant, customer_id = event.grant, customer_of(stored)
        # A grant id granted again keeps what was left and adds the new amount, as the
        # core's fold does; its products and terms are the new ones.
        await cur.execute(
            f"DELETE FROM {self.grants} WHERE customer_id = %s AND grant_id = %s"
            " RETURNING remaining",
            (customer_id, grant.grant_id),
        )
        earlier = await cur.fetchone()
        remaining = grant.amount + (earlier[0] if earlier is not None else Decimal(0))
        await cur.executemany(
            f"INSERT INTO {self.grants} (customer_id, grant_id, product_id, currency,"
            " hard_limit, starts_at, expires_at, remaining)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [_grant_row(customer_id, grant, product, remaining) for product in _covered(grant)],
        )

    async def _balance_entry(self, cur: AsyncCursor[TupleRow], stored: RecordedEvent) -> None:
        entry = entry_of(stored.domain_event())
        await cur.execute(
            f"UPDATE {self.grants} SET remaining = remaining + %s"
            " WHERE customer_id = %s AND grant_id = %s",
            (entry.amount, customer_of(stored), entry.grant_id),
        )

    def check_sql(self) -> str:
        """The one statement that answers a check (named parameters customer, product, at).

        Each part is an index probe: the latest plan segment starting by ``at``
        (contracts never overlap, so only it can contain ``at``), the card
        version in force (pinned, else the newest effective by ``at``), and the
        hard-limit grants of the product or of every product.
        """
        return f"""
            WITH plan AS (
                SELECT rate_card_id, pinned_version, currency FROM (
                    SELECT rate_card_id, pinned_version, currency, valid_until FROM {self.plans}
                    WHERE customer_id = %(customer)s AND valid_from <= %(at)s
                    ORDER BY valid_from DESC LIMIT 1
                ) latest
                WHERE valid_until IS NULL OR %(at)s < valid_until
            ), card AS (
                SELECT v.product_ids FROM plan p CROSS JOIN LATERAL (
                    SELECT product_ids FROM {self.cards}
                    WHERE rate_card_id = p.rate_card_id
                        AND version <= coalesce(p.pinned_version, 2147483647)
                        AND (p.pinned_version IS NOT NULL OR effective_from <= %(at)s)
                    ORDER BY version DESC LIMIT 1
                ) v
            ), limits AS (
                -- A hard limit not started yet limits nothing; one that lapsed still
                -- does (its balance is gone), until a grant in force refills it.
                SELECT g.remaining, g.expires_at IS NULL OR %(at)s < g.expires_at AS valid
                FROM {self.grants} g JOIN plan p ON g.currency = p.currency
                WHERE g.customer_id = %(customer)s AND g.hard_limit
                    AND g.product_id IN (%(product)s, '') AND g.starts_at <= %(at)s
            )
            SELECT (SELECT currency FROM plan),
                coalesce((SELECT %(product)s = ANY(product_ids) FROM card), false),
                EXISTS (SELECT FROM limits),
                (SELECT sum(remaining) FROM limits WHERE valid)
        """

    async def check(
        self, conn: AsyncConnection[TupleRow], customer_id: str, product_id: str, at: datetime
    ) -> Entitlement:
        cur = await conn.execute(
            self.check_sql(),
            {"customer": customer_id, "product": product_id, "at": at},
        )
        row = await cur.fetchone()
        assert row is not None
        in_force, on_card, limited, remaining = row
        return decide(in_force=in_force, on_card=on_card, limited=limited, remaining=remaining)


def _covered(grant: Grant) -> tuple[str, ...]:
    return grant.products or (EVERY_PRODUCT,)


def _grant_row(
    customer_id: str, grant: Grant, product_id: str, remaining: Decimal
) -> tuple[object, ...]:
    return (
        customer_id,
        grant.grant_id,
        product_id,
        grant.currency,
        grant.hard_limit,
        grant.starts_at,
        grant.expires_at,
        remaining,
    )


class Entitlements:
    """Answer entitlement checks from the live ``entitlements`` projection."""

    def __init__(
        self,
        pool: Pool,
        *,
        store: PostgresEventStore,
        clock: Callable[[], datetime],
        projection: Callable[[int], EntitlementProjection],
    ) -> None:
        self._pool = pool
        self._store = store
        self._clock = clock
        self._projection = projection

    async def check(
        self,
        customer_id: str,
        product_id: str,
        at: datetime | None = None,
        consistency_token: int = 0,
    ) -> Entitlement:
        """May the customer use the product at ``at`` (None: now)?"""
        violations = Violations()
        check_id(violations, "customer_id", customer_id)
        check_id(violations, "product_id", product_id)
        violations.raise_if_any()
        name = EntitlementProjection.name
        await wait_until_projected(self._pool, self._store, name, consistency_token)
        async with self._pool.connection() as conn:
            projection = self._projection(await live_version(conn, name))
            return await projection.check(conn, customer_id, product_id, at or self._clock())
