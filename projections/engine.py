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
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol

import psycopg
import structlog
from opentelemetry import metrics, trace
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import TupleRow
from psycopg_pool import PoolTimeout

from ledger.core.errors import DomainError, Rule, invalid
from ledger.store.event_store import (
    NOTIFY_CHANNEL,
    Pool,
    read_head,
    read_projected_after,
    read_projected_types_at,
    sent_ahead,
    settle,
)
from ledger.store.records import ProjectedEvent, RecordedEvent
from projections.registry import (
    REGISTRY_DDL,
    State,
    make_live,
    register,
    state_of,
    versions_in,
)

BATCH_EVENTS_MAX: Final = 2_000
# A rebuild has no caller waiting on each batch: bigger batches mean fewer
# commits and fewer upserts of the same row (usage rollups rebuilt 1.2x faster
# with 20,000 than with 2,000, and 1.1x faster again with 50,000). Batches are
# also kept to about REBUILD_BATCH_BYTES of payload, sized by the last batch's
# events: large events (up to ~60 KB each) must not make a batch gigabytes.
REBUILD_BATCH_EVENTS: Final = 50_000
REBUILD_BATCH_BYTES: Final = 32 * 2**20


def rebuild_batch_events(events: int, payload_bytes: int) -> int:
    """The next rebuild batch's size, from the last batch's events and payload."""
    fitting = REBUILD_BATCH_BYTES * events // max(payload_bytes, 1)
    return max(BATCH_EVENTS_MAX, min(REBUILD_BATCH_EVENTS, fitting))


POLL_INTERVAL_S: Final = 1.0
# After a wake-up, how long appends may gather before they are applied together:
# the most a projection trails a stream of appends by, beyond applying them. Each
# round costs a transaction per projection, on the server's own event loop when it
# projects. Under 64 single-event callers, 0.2 s rather than 0.05 s took the
# server from 3,107-3,514 to 3,609-3,773 calls/s (three alternating pairs).
COALESCE_S: Final = 0.2
RETRY_DELAY_S: Final = 2.0

_log = structlog.get_logger("accrual.projections")

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

    @property
    def event_types(self) -> frozenset[str] | None:
        """The event types it reads, or None for all. A projection of a few kinds
        of event other than usage is given only those, read through the index
        that leaves usage out, however much usage the ledger holds; its
        checkpoint still moves over every event."""

    def ddl(self) -> Sequence[str]:
        """Statements that create the projection's tables if they are missing."""

    def tables(self) -> Sequence[str]:
        """The tables its ``ddl`` creates: what dropping a version drops, and what
        the projector's database role must own."""

    async def apply(
        self,
        cur: AsyncCursor[TupleRow],
        events: Sequence[RecordedEvent],
        *,
        replaying: bool = False,
    ) -> None:
        """Apply events (in ledger order) inside the runner's transaction.

        ``replaying`` is true while a version is rebuilt from history: rows
        are written as usual, but side effects (alerts, notifications) are
        not acted on again; the live version already did.
        """


ProjectionFactory = Callable[[int], Projection]


class BatchRun(NamedTuple):
    """What one batch did: events moved over, payload bytes read, and how far the
    head (read after applying, in the batch's transaction) was still ahead."""

    moved: int
    payload_bytes: int
    behind: int
    ahead: ReadAhead | None = None  # the next batch's rows, being read
    read: ReadAhead | None = None  # the rows it applied, if it read every event


class ReadAhead(NamedTuple):
    """Rows after ``after_seq``, being read on a connection of their own."""

    after_seq: int
    rows: asyncio.Future[list[ProjectedEvent]]

    @classmethod
    async def start(
        cls, reader: AsyncConnection[TupleRow], after_seq: int, limit: int
    ) -> ReadAhead:
        return cls(after_seq, await sent_ahead(read_projected_after(reader, after_seq, limit)))

    @classmethod
    def done(cls, after_seq: int, rows: list[ProjectedEvent]) -> ReadAhead:
        """Rows already read, for another projection at the same checkpoint."""
        read = asyncio.get_running_loop().create_future()
        read.set_result(rows)
        return cls(after_seq, read)

    async def settle(self) -> None:
        """Wait for the read, whatever its outcome: the reader is then idle."""
        await settle(self.rows)


async def _read_ahead_rows(reading: ReadAhead | None, checkpoint: int) -> list[ProjectedEvent]:
    """The rows read ahead, if they start at ``checkpoint``: the ledger's rows never
    change and commit in seq order, so they begin what a read now would give."""
    if reading is None:
        return []
    try:
        rows = await reading.rows
    except psycopg.Error:  # the reader failed: the batch reads its own rows
        return []
    return rows if reading.after_seq == checkpoint else []


async def _read_after(
    conn: AsyncConnection[TupleRow], checkpoint: int, limit: int
) -> list[ProjectedEvent]:
    events = await read_projected_after(conn, checkpoint, limit)
    if not events and (await read_head(conn)).seq > checkpoint:
        # Either rows committed since the read, or a gap: the read is
        # bounded by seq, so a gap of ``limit`` would stall it silently.
        events = await read_projected_after(conn, checkpoint, limit)
        if not events:  # read after the head: a gap, the ledger damaged
            raise RuntimeError(f"no ledger rows after seq {checkpoint} to its head")
    return events


@dataclass(frozen=True)
class BuildProgress:
    projection: str
    version: int
    checkpoint: int
    head: int
    events_per_s: float  # a rate for people to read, never a money path


class ProjectionRunner:
    """Keeps the live version of each projection caught up with the ledger.

    With several runners (replicas), each projection is applied by the one
    holding its lease, a session advisory lock: when that runner dies its
    connection closes, the lock is released, and another runner takes over
    at its next poll.
    """

    def __init__(self, pool: Pool, definitions: Mapping[str, ProjectionFactory]) -> None:
        self._pool = pool
        self._definitions = definitions
        self._instances: dict[tuple[str, int], Projection] = {}
        self._wake = asyncio.Event()
        self.leases_held: set[str] = set()

    def projection(self, name: str, version: int) -> Projection:
        """The projection object for a name and version (one instance each)."""
        if (name, version) not in self._instances:
            if name not in self._definitions:
                raise invalid("name", f"unknown projection {name!r}")
            self._instances[(name, version)] = self._definitions[name](version)
        return self._instances[(name, version)]

    async def setup(self) -> None:
        """Create registry, checkpoints and live tables; version 1 is live at first."""
        async with self._pool.connection() as conn, conn.transaction():
            # One creator at a time: concurrent CREATE IF NOT EXISTS can still collide.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('accrual.projections'))")
            await conn.execute(CHECKPOINTS_DDL)
            for statement in REGISTRY_DDL:
                await conn.execute(statement)
            live = dict(await versions_in(conn, State.LIVE))
            for name in self._definitions:
                if name not in live:
                    await register(conn, name, 1, State.LIVE)
                    live[name] = 1
                await _create(conn, self.projection(name, live[name]))

    async def live_projections(self) -> list[Projection]:
        async with self._pool.connection() as conn:
            live = await versions_in(conn, State.LIVE)
        return [
            self.projection(name, version) for name, version in live if name in self._definitions
        ]

    async def run_batch(
        self, projection: Projection, limit: int = BATCH_EVENTS_MAX, *, replaying: bool = False
    ) -> int:
        """Apply one batch of at most ``limit`` events; return how many it moved over."""
        return (await self._run_batch(projection, limit, replaying)).moved

    async def _run_batch(
        self,
        projection: Projection,
        limit: int,
        replaying: bool,
        reading: ReadAhead | None = None,
        reader: AsyncConnection[TupleRow] | None = None,
    ) -> BatchRun:
        """:meth:`run_batch`, also saying what it read and what is left.

        A rebuild passes the rows it read ahead (``reading``), used if they start
        at the checkpoint, and a ``reader`` connection on which the next batch's
        rows are read while this one is applied (see :meth:`build`). A catch-up
        passes the rows another projection of every event has just applied.
        """
        ahead: ReadAhead | None = None  # started in the transaction, settled on any failure
        try:
            async with self._pool.connection() as conn, conn.transaction():
                checkpoint = await _lock_checkpoint(conn, projection)
                event_types = projection.event_types  # None: every event
                if event_types is None:
                    events = await _read_ahead_rows(reading, checkpoint)
                    if not events:
                        events = await _read_after(conn, checkpoint, limit)
                    through = events[-1].seq if events else checkpoint
                else:
                    # seq is gapless and the head is read in the same snapshot as the rows.
                    through = min((await read_head(conn)).seq, checkpoint + limit)
                    events = await read_projected_types_at(
                        conn, sorted(event_types), through, checkpoint
                    )
                if through == checkpoint:
                    return BatchRun(0, 0, 0)
                every_event = event_types is None
                read = ReadAhead.done(checkpoint, events) if every_event else None
                payload_bytes = sum([len(event.payload) for event in events])
                if reader is not None and every_event:
                    next_limit = rebuild_batch_events(len(events), payload_bytes)
                    ahead = await ReadAhead.start(reader, through, next_limit)
                seqs = (checkpoint, through)
                head = await self._apply_batch(conn, projection, events, seqs, replaying)
        except BaseException:
            if ahead is not None:  # the reader goes back to the pool idle
                await ahead.settle()
            raise
        return BatchRun(through - checkpoint, payload_bytes, head - through, ahead, read)

    async def _apply_batch(
        self,
        conn: AsyncConnection[TupleRow],
        projection: Projection,
        events: Sequence[RecordedEvent],
        seqs: tuple[int, int],
        replaying: bool,
    ) -> int:
        """Apply a batch in its own span, linked to the calls whose events it applies;
        return the head seq read after it."""
        attributes: dict[str, str | int | bool] = {
            "accrual.projection": projection.name,
            "accrual.projection.version": projection.version,
            "accrual.events": len(events),
            "accrual.seq.first": seqs[0] + 1,
            "accrual.seq.last": seqs[1],
            "accrual.replaying": replaying,
        }
        with _tracer.start_as_current_span(
            f"projection batch {projection.name}", links=_call_links(events), attributes=attributes
        ):
            started = time.monotonic()
            async with conn.cursor() as cur:
                if events:  # a selective projection often has none: no reads to do
                    await projection.apply(cur, events, replaying=replaying)
                await cur.execute(
                    "UPDATE projection_checkpoints SET seq = %s, updated_at = now()"
                    " WHERE name = %s AND version = %s",
                    (seqs[1], projection.name, projection.version),
                )
            head = (await read_head(conn)).seq
            elapsed = time.monotonic() - started
        _METRICS.batch_applied(projection, seqs[1] - seqs[0], elapsed, head - seqs[1])
        return head

    async def catch_up(self, names: set[str] | None = None) -> int:
        """Apply batches until the live projections (or those named) reach the head.

        A projection whose batch fails is left behind while the others go on;
        the first failure is raised once they are done (the runner retries)."""
        pending = [
            projection
            for projection in await self.live_projections()
            if names is None or projection.name in names
        ]
        applied, failures = 0, []
        while pending:
            moved, pending, failed = await self._catch_up_round(pending)
            applied += moved
            failures += failed
        if failures:
            raise failures[0]
        return applied

    async def _catch_up_round(
        self, projections: list[Projection]
    ) -> tuple[int, list[Projection], list[Exception]]:
        """A batch of each projection: events moved over, the projections with
        more to apply, and the failures.

        Projections of every event (usage rollups, late usage) mostly share a
        checkpoint, and the later ones apply the rows the first one read. Ledger
        rows never change, so they are what their own read would give, or a
        prefix of it."""
        moved, unfinished, failed = 0, [], []
        shared: ReadAhead | None = None
        for projection in projections:
            try:
                batch = await self._run_batch(
                    projection, BATCH_EVENTS_MAX, replaying=False, reading=shared
                )
            except Exception as error:
                failed.append(error)
                continue
            moved += batch.moved
            shared = batch.read or shared
            # A batch that ends at the head it read after applying is the
            # projection's last: that read came after this call began, so
            # nothing committed before it is left, and an empty batch to prove
            # it would cost a transaction per projection per wake-up.
            if batch.moved and batch.behind > 0:
                unfinished.append(projection)
        return moved, unfinished, failed

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Hold leases and catch up on every append notification, or every poll interval.

        Errors never stop the runner: a failed batch committed nothing and is
        retried; a lost lease connection (database restart) is replaced, and
        the leases are taken again, or by another runner first.
        """
        listener = asyncio.create_task(self._listen(stop))
        try:
            while not stop.is_set():
                try:
                    await self._hold_leases_and_apply(stop)
                except Exception:
                    self.leases_held.clear()
                    _log.exception("projection runner failed; retrying")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), RETRY_DELAY_S)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _hold_leases_and_apply(self, stop: asyncio.Event) -> None:
        async with _autocommit_connection(self._pool) as lease_conn:
            try:
                while not stop.is_set():
                    await self._take_leases(lease_conn)
                    # Cleared before catching up: an append announced meanwhile
                    # wakes the next round instead of waiting for the poll.
                    self._wake.clear()
                    await self.catch_up(self.leases_held)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL_S)
                    if self._wake.is_set():
                        # Each wake-up costs a transaction per projection: under a
                        # stream of small group commits, let them gather a moment
                        # and apply them in one batch rather than one round each.
                        await asyncio.sleep(COALESCE_S)
            finally:
                # The connection goes back to the pool: release the leases first.
                with contextlib.suppress(psycopg.Error):
                    await lease_conn.execute("SELECT pg_advisory_unlock_all()")
                self.leases_held.clear()

    async def _take_leases(self, conn: AsyncConnection[TupleRow]) -> None:
        for name in self._definitions:
            if name in self.leases_held:
                continue
            cur = await conn.execute(
                "SELECT pg_try_advisory_lock(hashtext(%s))", (f"accrual.projection.{name}",)
            )
            row = await cur.fetchone()
            if row is not None and row[0]:
                self.leases_held.add(name)

    async def _listen(self, stop: asyncio.Event) -> None:
        # A lost notification only delays work until the next poll, never loses it.
        while not stop.is_set():
            try:
                async with _autocommit_connection(self._pool) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    try:
                        async for _ in conn.notifies():
                            self._wake.set()
                    finally:  # the connection goes back to the pool
                        with contextlib.suppress(psycopg.Error):
                            await conn.execute("UNLISTEN *")
            except (OSError, psycopg.Error, PoolTimeout):
                await asyncio.sleep(POLL_INTERVAL_S)

    async def start_rebuild(self, name: str, version: int) -> Projection:
        """Register a new version beside the live one and create its empty tables."""
        projection = self.projection(name, version)
        async with self._pool.connection() as conn, conn.transaction():
            existing = await state_of(conn, name, version)
            if existing is not None and existing is not State.BUILDING:
                message = f"{name} v{version} is already {existing.value}; pick a new version"
                raise DomainError(Rule.PROJECTION_VERSION_EXISTS, message)
            await register(conn, name, version, State.BUILDING)
            await _create(conn, projection)
        return projection

    async def build(self, projection: Projection) -> AsyncIterator[BuildProgress]:
        """Catch a version up from its checkpoint to the head, reporting progress.

        Each batch's successor is read on a second connection while the batch is
        applied, so that PostgreSQL reads as Python folds (a rollup rebuild
        waited about a tenth of its time on reads).
        """
        started, applied, limit = time.monotonic(), 0, BATCH_EVENTS_MAX
        async with _autocommit_connection(self._pool) as reader:
            ahead: ReadAhead | None = None
            try:
                while True:
                    batch = await self._run_batch(projection, limit, True, ahead, reader)
                    ahead = batch.ahead
                    if batch.moved == 0:
                        break
                    applied += batch.moved
                    limit = rebuild_batch_events(batch.moved, batch.payload_bytes)
                    yield await self._progress(projection, applied, started)
            finally:
                if ahead is not None:
                    await ahead.settle()
        yield await self._progress(projection, applied, started)

    async def swap(self, name: str, version: int) -> int | None:
        """Make a caught-up version live in one transaction; return the retired version."""
        projection = self.projection(name, version)
        async with self._pool.connection() as conn, conn.transaction():
            if await state_of(conn, name, version) is not State.BUILDING:
                raise DomainError(
                    Rule.PROJECTION_NOT_BUILDING, f"{name} v{version} is not being built"
                )
            checkpoint = await _lock_checkpoint(conn, projection)
            # The last events since the build caught up, applied in the swap itself.
            while events := await read_projected_after(conn, checkpoint, BATCH_EVENTS_MAX):
                async with conn.cursor() as cur:
                    # The live version already acted on these events.
                    await projection.apply(cur, events, replaying=True)
                checkpoint = events[-1].seq
            await conn.execute(
                "UPDATE projection_checkpoints SET seq = %s, updated_at = now()"
                " WHERE name = %s AND version = %s",
                (checkpoint, name, version),
            )
            return await make_live(conn, name, version)

    async def drop(self, name: str, version: int) -> None:
        """Drop a retired version's tables, on request only."""
        projection = self.projection(name, version)
        async with self._pool.connection() as conn, conn.transaction():
            state = await state_of(conn, name, version)
            if state is State.LIVE or state is None:
                message = f"{name} v{version} is live or unknown; only retired versions are dropped"
                raise DomainError(Rule.PROJECTION_NOT_RETIRED, message)
            for statement in (f"DROP TABLE IF EXISTS {table}" for table in projection.tables()):
                await conn.execute(statement)
            await conn.execute(
                "DELETE FROM projection_checkpoints WHERE name = %s AND version = %s",
                (name, version),
            )
            await conn.execute(
                "DELETE FROM projection_registry WHERE name = %s AND version = %s", (name, version)
            )

    async def _progress(
        self, projection: Projection, applied: int, started: float
    ) -> BuildProgress:
        async with self._pool.connection() as conn:
            checkpoint = await checkpoint_of(conn, projection.name, projection.version)
            head = (await read_head(conn)).seq
        elapsed = max(time.monotonic() - started, 1e-9)
        return BuildProgress(
            projection.name, projection.version, checkpoint, head, applied / elapsed
        )


@contextlib.asynccontextmanager
async def _autocommit_connection(pool: Pool) -> AsyncIterator[AsyncConnection[TupleRow]]:
    """A pooled connection in autocommit mode, given back in the pool's default mode:
    the pool does not reset it, and a later borrower's snapshot (one transaction,
    its server-side cursors) would otherwise run statement by statement."""
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        try:
            yield conn
        finally:
            try:
                await conn.set_autocommit(False)
            except psycopg.Error:
                await conn.close()  # the pool discards a closed connection


LINKS_MAX: Final = 32
LINKS_SCANNED_MAX: Final = 4 * LINKS_MAX
# Events looked at for links: the batch's first calls. A rebuild's batches hold up
# to 50,000 events (REBUILD_BATCH_EVENTS), often from a few big calls; scanning
# all of them for metadata was 7% of a usage-rollup rebuild.
LINK_EVENTS_SCANNED_MAX: Final = 512
_tracer = trace.get_tracer("accrual.projections")


def _call_links(events: Sequence[RecordedEvent]) -> list[trace.Link]:
    """Links to the traces of the calls that wrote these events (the first few).

    A call's events share their metadata, and a batch of events written without
    tracing has none to find: each distinct metadata is parsed once, and the
    search stops after a bounded number of them, or of events, rather than go
    through a whole batch.
    """
    links: dict[tuple[str, str], trace.Link] = {}
    seen: set[bytes] = set()
    for event in events[:LINK_EVENTS_SCANNED_MAX]:
        if len(links) >= LINKS_MAX or len(seen) >= LINKS_SCANNED_MAX:
            break
        raw = bytes(event.metadata)
        if raw in seen:
            continue
        seen.add(raw)
        metadata = json.loads(raw)
        trace_id, span_id = metadata.get("trace_id"), metadata.get("span_id")
        if trace_id and span_id and (trace_id, span_id) not in links:
            context = trace.SpanContext(
                int(trace_id, 16),
                int(span_id, 16),
                is_remote=True,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            )
            links[(trace_id, span_id)] = trace.Link(context)
    return list(links.values())


class _Metrics:
    """Projection throughput and lag, as OpenTelemetry instruments.

    They cost nothing until a meter provider is installed (observability
    setup); then they are exported with every other metric.
    """

    def __init__(self) -> None:
        meter = metrics.get_meter("accrual.projections")
        self._events = meter.create_counter(
            "accrual.projection.events", unit="{event}", description="Events applied"
        )
        self._duration = meter.create_histogram(
            "accrual.projection.batch.duration", unit="s", description="Time to apply a batch"
        )
        self._lag = meter.create_gauge(
            "accrual.projection.lag", unit="{event}", description="Ledger head minus checkpoint"
        )

    def batch_applied(self, projection: Projection, events: int, seconds: float, lag: int) -> None:
        labels: dict[str, str | int] = {
            "projection": projection.name,
            "version": projection.version,
        }
        self._events.add(events, labels)
        self._duration.record(seconds, labels)
        self._lag.set(lag, labels)


_METRICS = _Metrics()


async def _create(conn: AsyncConnection[TupleRow], projection: Projection) -> None:
    for statement in projection.ddl():
        await conn.execute(statement)
    await conn.execute(
        "INSERT INTO projection_checkpoints (name, version) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (projection.name, projection.version),
    )


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
    assert row is not None, "setup() or start_rebuild() registers every projection"
    return int(row[0])
