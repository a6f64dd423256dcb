"""Balances: every grant of every customer, what is left of it, and each entry against it.

A grant row's ``remaining`` is kept equal to the sum of its entries (the grant,
less drawdowns and expiries, plus reversals): an entry and the change it makes
to ``remaining`` are written together, and an entry already there (its ledger
seq) changes nothing. Entries are made by the core's own fold, so the signs here
are the ones invoicing drew with.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import TupleRow

from ledger.app.streams import customer_stream
from ledger.core.billing import CustomerState, evolve
from ledger.core.credits import BalanceEntry, EntryKind, Grant, GrantKind
from ledger.core.errors import DomainError, Rule, Violations, invalid
from ledger.core.events import (
    CreditDrawnDown,
    CreditExpired,
    CreditGranted,
    CreditReversed,
    DomainEvent,
)
from ledger.core.validation import check_id
from ledger.store.event_store import Pool, PostgresEventStore, snapshot
from ledger.store.records import RecordedEvent
from projections.engine import checkpoint_of
from projections.registry import live_version

CREDIT_EVENTS: Final = frozenset(
    cls.EVENT_TYPE for cls in (CreditGranted, CreditDrawnDown, CreditExpired, CreditReversed)
)
CUSTOMER_STREAM_PREFIX: Final = customer_stream("")
PAGE_SIZE_DEFAULT: Final = 100
PAGE_SIZE_MAX: Final = 500
CONSISTENCY_POLL_S: Final = 0.02
CONSISTENCY_WAIT_S: Final = 5.0


def customer_of(stored: RecordedEvent) -> str:
    """The customer whose stream holds a credit event (drawdowns do not name it)."""
    assert stored.stream_id.startswith(CUSTOMER_STREAM_PREFIX), stored.stream_id
    return stored.stream_id.removeprefix(CUSTOMER_STREAM_PREFIX)


def entry_of(event: DomainEvent) -> BalanceEntry:
    """The balance entry the core's fold makes of a credit event: one place for the signs."""
    entries = evolve(CustomerState(""), event, 0).balances.entries
    assert len(entries) == 1, event
    return entries[0]


@dataclass(frozen=True)
class EntryView:
    seq: int
    kind: EntryKind
    amount: Decimal  # signed: drawdowns and expiries negative
    at: datetime
    invoice_id: str


@dataclass(frozen=True)
class GrantView:
    """A grant, what is left of it, and its entries in ledger order."""

    grant: Grant
    remaining: Decimal
    granted_seq: int
    entries: tuple[EntryView, ...]


_GRANT_COLUMNS: Final = (
    "customer_id, grant_id, kind, currency, amount, products, priority, starts_at, expires_at,"
    " hard_limit, rollover_fraction, rolled_over_from, remaining, granted_seq"
)
_GRANT_NAMES: Final = tuple(name.strip() for name in _GRANT_COLUMNS.split(","))


class BalanceProjection:
    """Projection ``balances``: grants with their remaining balance, and their entries."""

    name = "balances"
    event_types: Final = CREDIT_EVENTS

    def __init__(self, version: int = 1) -> None:
        self.version = version
        self.grants = f"balance_grants_v{version}"
        self.entries = f"balance_entries_v{version}"

    def ddl(self) -> Sequence[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {self.grants} (
                customer_id       text        NOT NULL,
                grant_id          text        NOT NULL,
                kind              text        NOT NULL,
                currency          text        NOT NULL,
                amount            numeric     NOT NULL,
                products          text[]      NOT NULL,
                priority          integer     NOT NULL,
                starts_at         timestamptz NOT NULL,
                expires_at        timestamptz,
                hard_limit        boolean     NOT NULL,
                rollover_fraction numeric     NOT NULL,
                rolled_over_from  text        NOT NULL,
                remaining         numeric     NOT NULL,
                granted_seq       bigint      NOT NULL,
                PRIMARY KEY (customer_id, grant_id))""",
            f"""CREATE INDEX IF NOT EXISTS {self.grants}_order
                ON {self.grants} (customer_id, granted_seq)""",
            f"""CREATE TABLE IF NOT EXISTS {self.entries} (
                seq         bigint      PRIMARY KEY,
                customer_id text        NOT NULL,
                grant_id    text        NOT NULL,
                kind        text        NOT NULL,
                amount      numeric     NOT NULL,
                at          timestamptz NOT NULL,
                invoice_id  text        NOT NULL)""",
            f"""CREATE INDEX IF NOT EXISTS {self.entries}_grant
                ON {self.entries} (customer_id, grant_id, seq)""",
        ]

    def tables(self) -> Sequence[str]:
        return [self.entries, self.grants]

    async def apply(
        self,
        cur: AsyncCursor[TupleRow],
        events: Sequence[RecordedEvent],
        *,
        replaying: bool = False,  # no side effects to suppress
    ) -> None:
        for stored in events:
            if stored.event_type in CREDIT_EVENTS:
                await self._apply_one(cur, stored)

    async def _apply_one(self, cur: AsyncCursor[TupleRow], stored: RecordedEvent) -> None:
        event = stored.domain_event()
        customer_id = customer_of(stored)
        entry = entry_of(event)
        await cur.execute(
            f"INSERT INTO {self.entries} (seq, customer_id, grant_id, kind, amount, at, invoice_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (seq) DO NOTHING RETURNING seq",
            (
                stored.seq,
                customer_id,
                entry.grant_id,
                entry.kind.value,
                entry.amount,
                entry.at,
                entry.invoice_id,
            ),
        )
        if await cur.fetchone() is None:
            return  # applied before: its change to remaining is already there
        if isinstance(event, CreditGranted):
            await self._grant(cur, event.grant, customer_id, stored.seq)
        else:
            await cur.execute(
                f"UPDATE {self.grants} SET remaining = remaining + %s"
                " WHERE customer_id = %s AND grant_id = %s",
                (entry.amount, customer_id, entry.grant_id),
            )

    async def _grant(
        self, cur: AsyncCursor[TupleRow], grant: Grant, customer_id: str, seq: int
    ) -> None:
        # A grant id granted again (the fold allows it) takes the new terms and adds
        # its amount, keeping its place in grant order, as BalanceBook.grant does.
        await cur.execute(
            f"INSERT INTO {self.grants} AS g ({_GRANT_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (customer_id, grant_id) DO UPDATE SET"
            " kind = excluded.kind, currency = excluded.currency, amount = excluded.amount,"
            " products = excluded.products, priority = excluded.priority,"
            " starts_at = excluded.starts_at, expires_at = excluded.expires_at,"
            " hard_limit = excluded.hard_limit, rollover_fraction = excluded.rollover_fraction,"
            " rolled_over_from = excluded.rolled_over_from,"
            " remaining = g.remaining + excluded.amount",
            (
                customer_id,
                grant.grant_id,
                grant.kind.value,
                grant.currency,
                grant.amount,
                list(grant.products),
                grant.priority,
                grant.starts_at,
                grant.expires_at,
                grant.hard_limit,
                grant.rollover_fraction,
                grant.rolled_over_from,
                grant.amount,
                seq,
            ),
        )

    async def grant_views(
        self,
        conn: AsyncConnection[TupleRow],
        customer_id: str,
        *,
        currency: str = "",
        after_seq: int = 0,
        limit: int = PAGE_SIZE_DEFAULT,
    ) -> list[GrantView]:
        """A customer's grants in grant order (of one currency, if given), with entries."""
        cur = await conn.execute(
            f"SELECT {_GRANT_COLUMNS} FROM {self.grants}"
            " WHERE customer_id = %s AND granted_seq > %s AND (%s = '' OR currency = %s)"
            " ORDER BY granted_seq LIMIT %s",
            (customer_id, after_seq, currency, currency, limit),
        )
        grants = [_grant_row(row) for row in await cur.fetchall()]
        cur = await conn.execute(
            f"SELECT grant_id, seq, kind, amount, at, invoice_id FROM {self.entries}"
            " WHERE customer_id = %s AND grant_id = ANY(%s) ORDER BY grant_id, seq",
            (customer_id, [grant.grant_id for grant, _, _ in grants]),
        )
        entries: dict[str, list[EntryView]] = {}
        for grant_id, seq, kind, amount, at, invoice_id in await cur.fetchall():
            view = EntryView(seq, EntryKind(kind), amount, at.astimezone(UTC), invoice_id)
            entries.setdefault(grant_id, []).append(view)
        return [
            GrantView(grant, remaining, seq, tuple(entries.get(grant.grant_id, ())))
            for grant, remaining, seq in grants
        ]


def _grant_row(row: Sequence[Any]) -> tuple[Grant, Decimal, int]:
    values = dict(zip(_GRANT_NAMES, row, strict=True))
    expires_at = values["expires_at"]
    grant = Grant(
        grant_id=values["grant_id"],
        customer_id=values["customer_id"],
        kind=GrantKind(values["kind"]),
        amount=values["amount"],
        currency=values["currency"],
        starts_at=values["starts_at"].astimezone(UTC),
        expires_at=expires_at.astimezone(UTC) if expires_at is not None else None,
        products=tuple(values["products"]),
        priority=values["priority"],
        rollover_fraction=values["rollover_fraction"],
        hard_limit=values["hard_limit"],
        rolled_over_from=values["rolled_over_from"],
    )
    return grant, values["remaining"], int(values["granted_seq"])


async def wait_until_projected(
    pool: Pool, store: PostgresEventStore, name: str, consistency_token: int
) -> None:
    """Wait (bounded) until projection ``name`` has applied the ledger through the token.

    A token is a ledger seq a write returned; one beyond the ledger's head was
    never issued and is refused.
    """
    if consistency_token <= 0:
        return
    if consistency_token > (await store.head()).seq:
        raise invalid("consistency_token", "is beyond the ledger's head")
    deadline = time.monotonic() + CONSISTENCY_WAIT_S
    while True:
        async with pool.connection() as conn:
            version = await live_version(conn, name)
            if await checkpoint_of(conn, name, version) >= consistency_token:
                return
        if time.monotonic() > deadline:
            message = f"the {name} read model has not caught up with the consistency token yet"
            raise DomainError(Rule.NOT_CAUGHT_UP, message)
        await asyncio.sleep(CONSISTENCY_POLL_S)


@dataclass(frozen=True)
class BalanceQuery:
    customer_id: str
    currency: str = ""
    page_size: int = 0
    after_seq: int = 0  # the page token: the grant order of the previous page's last grant
    consistency_token: int = 0


class Balances:
    """Read a customer's balances from the live ``balances`` projection."""

    def __init__(
        self,
        pool: Pool,
        *,
        store: PostgresEventStore,
        projection: Callable[[int], BalanceProjection],
    ) -> None:
        self._pool = pool
        self._store = store
        self._projection = projection

    async def balances(self, query: BalanceQuery) -> tuple[list[GrantView], str]:
        """A page of the customer's grants and the next page's token ('' at the end)."""
        violations = Violations()
        check_id(violations, "customer_id", query.customer_id)
        if query.currency:  # a filter; "" is every currency
            check_id(violations, "currency", query.currency)
        if query.page_size < 0:
            violations.add("page_size", "must not be negative")
        violations.raise_if_any()
        await wait_until_projected(
            self._pool, self._store, BalanceProjection.name, query.consistency_token
        )
        if not await self._store.stream_versions([customer_stream(query.customer_id)]):
            raise DomainError(Rule.CUSTOMER_NOT_FOUND, f"no customer {query.customer_id!r}")
        size = min(query.page_size or PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)
        # One snapshot: each grant's remaining and its entries are from the same batch.
        async with snapshot(self._pool) as conn:
            projection = self._projection(await live_version(conn, BalanceProjection.name))
            views = await projection.grant_views(
                conn,
                query.customer_id,
                currency=query.currency,
                after_seq=query.after_seq,
                limit=size,
            )
        token = str(views[-1].granted_seq) if len(views) == size else ""
        return views, token
