"""The projection runner: exactly-once application of ledger events to read models.

Each projection has a name, a version and its own tables. The runner reads
``seq > checkpoint`` in batches and commits the read-model rows together with
the new checkpoint in one transaction, so a crash at any point neither loses
nor double-applies an event. The checkpoint row is locked for the batch, so two
runners never apply the same batch. Because the ledger's seq is gapless in
commit order, reading by position never skips an event that commits late.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Final, Protocol

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import TupleRow

from ledger.store.event_store import NOTIFY_CHANNEL, Pool, read_after
from ledger.store.records import StoredEvent

BATCH_EVENTS_MAX: Final = 2_000
POLL_INTERVAL_S: Final = 1.0

CHECKPOINTS_DDL: Final = """
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name       text    NOT NULL,
    version    integer NOT NULL,
    seq        bigint  NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
)
"""


class Projection(Protocol):
    """A deterministic function from ledger events to rows of its own tables."""

    name: str
    version: int

    def ddl(self) -> Sequence[str]:
        """Statements that create the projection's tables if they are missing."""

    async def apply(self, cur: AsyncCursor[TupleRow], events: Sequence[StoredEvent]) -> None:
        """Apply events (in ledger order) inside the runner's transaction."""


class ProjectionRunner:
    """Keeps a set of projections caught up with the ledger."""

    def __init__(self, pool: Pool, projections: Sequence[Projection]) -> None:
        self._pool = pool
        self._projections = projections
        self._wake = asyncio.Event()

    async def setup(self) -> None:
        """Create checkpoint and projection tables (idempotent)."""
        async with self._pool.connection() as conn, conn.transaction():
            # One creator at a time: concurrent CREATE IF NOT EXISTS can still collide.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('accrual.projections'))")
            await conn.execute(CHECKPOINTS_DDL)
            for projection in self._projections:
                for statement in projection.ddl():
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO projection_checkpoints (name, version) VALUES (%s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (projection.name, projection.version),
                )

    async def run_batch(self, projection: Projection, limit: int = BATCH_EVENTS_MAX) -> int:
        """Apply one batch of at most ``limit`` events; return how many it held."""
        async with self._pool.connection() as conn, conn.transaction():
            checkpoint = await _lock_checkpoint(conn, projection)
            events = await read_after(conn, checkpoint, limit)
            if not events:
                return 0
            async with conn.cursor() as cur:
                await projection.apply(cur, events)
                await cur.execute(
                    "UPDATE projection_checkpoints SET seq = %s, updated_at = now()"
                    " WHERE name = %s AND version = %s",
                    (events[-1].seq, projection.name, projection.version),
                )
            return len(events)

    async def catch_up(self) -> int:
        """Apply batches until every projection has reached the head."""
        applied = 0
        for projection in self._projections:
            while (count := await self.run_batch(projection)) > 0:
                applied += count
        return applied

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Catch up whenever the ledger notifies an append, or every poll interval."""
        listener = asyncio.create_task(self._listen(stop))
        try:
            while not stop.is_set():
                await self.catch_up()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL_S)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _listen(self, stop: asyncio.Event) -> None:
        # A lost notification only delays work until the next poll, never loses it.
        while not stop.is_set():
            try:
                async with self._pool.connection() as conn:
                    await conn.set_autocommit(True)
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    async for _ in conn.notifies():
                        self._wake.set()
            except OSError:
                await asyncio.sleep(POLL_INTERVAL_S)


async def checkpoint_of(conn: AsyncConnection[TupleRow], name: str, version: int) -> int:
    """The projection's checkpoint as seen by ``conn``'s snapshot."""
    cur = await conn.execute(
        "SELECT seq FROM projection_checkpoints WHERE name = %s AND version = %s", (name, version)
    )
    row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


async def _lock_checkpoint(conn: AsyncConnection[TupleRow], projection: Projection) -> int:
    cur = await conn.execute(
        "SELECT seq FROM projection_checkpoints WHERE name = %s AND version = %s FOR UPDATE",
        (projection.name, projection.version),
    )
    row = await cur.fetchone()
    assert row is not None, "setup() registers every projection"
    return int(row[0])
