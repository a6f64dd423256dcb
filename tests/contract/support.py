"""Helpers for the event store contract tests: a store on a fresh database, events, raw SQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ledger.core.events import CustomerCreated, UsageRecorded
from ledger.store.event_store import PostgresEventStore
from ledger.store.records import NewEvent

BASE_TIME = datetime(2024, 3, 1, 9, 30, tzinfo=UTC)


class TickingClock:
    """An aware UTC clock that moves one millisecond each time it is read."""

    def __init__(self, start: datetime = BASE_TIME) -> None:
        self._now = start

    def __call__(self) -> datetime:
        self._now += timedelta(milliseconds=1)
        return self._now


@asynccontextmanager
async def open_store(database_url: str) -> AsyncIterator[PostgresEventStore]:
    """A store over its own pool on ``database_url``, closed on exit."""
    async with AsyncConnectionPool(database_url, open=False, min_size=1, max_size=8) as pool:
        yield PostgresEventStore(pool, TickingClock())


@asynccontextmanager
async def raw_connection(database_url: str, **kwargs: Any) -> AsyncIterator[AsyncConnection[Any]]:
    """A connection outside the store's pool (the tests' superuser)."""
    conn = await AsyncConnection.connect(database_url, **kwargs)
    try:
        yield conn
    finally:
        await conn.close()


def customer_created(
    customer_id: str,
    name: str | None = None,
    *,
    expected_version: int | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> NewEvent:
    """A ``CustomerCreated`` on stream ``customer-<id>``."""
    return NewEvent(
        stream_id=f"customer-{customer_id}",
        event=CustomerCreated(customer_id=customer_id, name=name or f"Customer {customer_id}"),
        occurred_at=BASE_TIME,
        metadata=metadata or {"actor": "contract-test"},
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        expected_version=expected_version,
    )


def usage_recorded(
    customer_id: str,
    transaction_id: str,
    *,
    minute: int = 0,
    properties: Mapping[str, str] | None = None,
    expected_version: int | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> NewEvent:
    """A ``UsageRecorded`` on stream ``usage-<customer>``."""
    occurred_at = BASE_TIME + timedelta(minutes=minute)
    return NewEvent(
        stream_id=f"usage-{customer_id}",
        event=UsageRecorded(
            customer_id=customer_id,
            transaction_id=transaction_id,
            event_type="api_call",
            occurred_at=occurred_at,
            properties=dict(properties or {"region": "eu", "tokens": "12.50"}),
        ),
        occurred_at=occurred_at,
        metadata=metadata or {"actor": "contract-test", "request_id": transaction_id},
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        expected_version=expected_version,
    )


async def fetch(
    database_url: str, query: str, params: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    """Rows of ``query`` on a fresh connection (sees everything committed)."""
    async with raw_connection(database_url, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


async def event_rows(database_url: str) -> list[tuple[Any, ...]]:
    """Every column of every stored event, in seq order."""
    return await fetch(database_url, "SELECT * FROM events ORDER BY partition, seq")


async def head_row(database_url: str) -> tuple[Any, ...]:
    """``(last_seq, last_hash)`` of the default partition's head row."""
    (row,) = await fetch(
        database_url, "SELECT last_seq, last_hash FROM ledger_heads WHERE partition = 0"
    )
    return (row[0], bytes(row[1]))


async def wait_for_lock_waiters(database_url: str, count: int, timeout: float = 10.0) -> None:
    """Wait until ``count`` other backends of this database wait on a lock."""
    deadline = time.monotonic() + timeout
    waiting = -1
    async with raw_connection(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            row = await cur.fetchone()
            assert row is not None
            waiting = int(row[0])
            if waiting >= count:
                return
            await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} appends blocked on the head row, saw {waiting}")


@asynccontextmanager
async def head_row_locked(database_url: str) -> AsyncIterator[None]:
    """Hold the head row like an append in progress; release (roll back) on exit."""
    async with raw_connection(database_url) as conn, conn.transaction(force_rollback=True):
        await conn.execute("SELECT 1 FROM ledger_heads WHERE partition = 0 FOR UPDATE")
        yield


async def tamper(database_url: str, statement: str, params: tuple[Any, ...] = ()) -> None:
    """Run ``statement`` as superuser with the append-only triggers bypassed."""
    async with raw_connection(database_url, autocommit=True) as conn:
        await conn.execute("SET session_replication_role = replica")
        cur = await conn.execute(statement, params)
        assert cur.rowcount == 1, f"tampering touched {cur.rowcount} rows"
