"""The projection runner applies every event exactly once, whatever happens."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from psycopg import AsyncCursor
from psycopg.rows import TupleRow

from ledger.app.catalog import MetricInput
from ledger.app.context import RequestContext
from ledger.app.usage import UsageInput
from ledger.store.records import StoredEvent
from projections import engine
from projections.engine import ProjectionRunner
from projections.late_usage import LateUsage
from projections.usage_rollups import UsageRollups
from services.bootstrap import App, open_pool, running_app
from services.config import Settings
from tests.contract.support import tamper

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
CTX = RequestContext(actor="test", reason="integration test")
EVENTS = 600


async def seed(app: App) -> None:
    await app.catalog.create_metric(
        MetricInput("tokens", "Tokens", "completion", "SUM", "tokens"), CTX
    )
    await app.customers.create_customer("acme", "Acme", CTX)
    for offset in range(0, EVENTS, 200):
        batch = [
            UsageInput(f"t{n}", "acme", "completion", NOW - timedelta(minutes=n), {"tokens": "2"})
            for n in range(offset, offset + 200)
        ]
        await app.record_usage(batch, CTX)


async def rolled_up(app: App) -> tuple[int, int]:
    async with app.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT coalesce(sum(event_count), 0), coalesce(sum(total), 0) FROM usage_rollups_v1"
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def run_app(database_url: str, body: object) -> None:
    settings = dataclasses.replace(Settings.from_env({}), run_projector=False)

    async def main() -> None:
        async with running_app(settings, database_url, clock=lambda: NOW) as app:
            await body(app)  # type: ignore[operator]

    asyncio.run(main())


def test_two_runners_at_once_apply_each_event_once(database_url: str) -> None:
    async def body(app: App) -> None:
        await seed(app)
        async with open_pool(database_url, 4) as other_pool:
            other = ProjectionRunner(other_pool, {"usage_rollups": UsageRollups})
            small_batches = [
                app.runner.run_batch(app.runner.projection("usage_rollups", 1), limit=50),
                other.run_batch(other.projection("usage_rollups", 1), limit=50),
            ] * 10
            await asyncio.gather(*small_batches)
            await asyncio.gather(app.runner.catch_up(), other.catch_up())
        assert await rolled_up(app) == (EVENTS, 2 * EVENTS)

    run_app(database_url, body)


class FailingRollups(UsageRollups):
    """Writes its rows, then fails before the batch commits, like a crash."""

    async def apply(
        self,
        cur: AsyncCursor[TupleRow],
        events: Sequence[StoredEvent],
        *,
        replaying: bool = False,
    ) -> None:
        await super().apply(cur, events, replaying=replaying)
        raise RuntimeError("crash after writing rows, before the checkpoint commits")


def test_a_batch_that_fails_leaves_neither_rows_nor_checkpoint(database_url: str) -> None:
    async def body(app: App) -> None:
        await seed(app)
        await app.runner.run_batch(app.runner.projection("usage_rollups", 1), limit=100)
        before = await rolled_up(app)
        failing = ProjectionRunner(app.pool, {"usage_rollups": FailingRollups})
        with pytest.raises(RuntimeError, match="crash"):
            await failing.run_batch(failing.projection("usage_rollups", 1), limit=100)
        assert await rolled_up(app) == before
        await app.runner.catch_up()
        assert await rolled_up(app) == (EVENTS, 2 * EVENTS)

    run_app(database_url, body)


def test_a_failing_projection_does_not_hold_the_others_back(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch by batch, a catch-up takes every projection to the head but the one
    that fails, then raises its error: the runner retries it, alone, later."""

    async def body(app: App) -> None:
        await seed(app)
        monkeypatch.setattr(engine, "BATCH_EVENTS_MAX", 50)  # many rounds of batches
        failing = ProjectionRunner(
            app.pool, {"usage_rollups": FailingRollups, "late_usage": LateUsage}
        )
        await failing.setup()
        with pytest.raises(RuntimeError, match="crash"):
            await failing.catch_up()
        head = (await app.store.head()).seq
        async with app.pool.connection() as conn:
            cur = await conn.execute("SELECT name, seq FROM projection_checkpoints")
            checkpoints = dict(await cur.fetchall())
        assert checkpoints["late_usage"] == head  # caught up in spite of the failure
        assert checkpoints["usage_rollups"] == 0
        assert await rolled_up(app) == (0, 0)

    run_app(database_url, body)


def test_a_gap_in_the_ledger_stops_the_runner_loudly(database_url: str) -> None:
    async def body(app: App) -> None:
        await seed(app)
        rollups = app.runner.projection("usage_rollups", 1)
        assert await app.runner.run_batch(rollups, limit=100) == 100
        for seq in (101, 102):  # damage: rows gone, which the triggers otherwise refuse
            await tamper(database_url, "DELETE FROM events WHERE seq = %s", (seq,))
        with pytest.raises(RuntimeError, match="no ledger rows after seq 100 to its head"):
            await app.runner.run_batch(rollups, limit=2)
        assert await app.runner.run_batch(rollups, limit=3) == 3  # a smaller gap is passed

    run_app(database_url, body)


def test_rebuild_batches_hold_about_a_fixed_payload() -> None:
    assert engine.rebuild_batch_events(2_000, 2_000 * 300) == engine.REBUILD_BATCH_EVENTS
    assert engine.rebuild_batch_events(2_000, 2_000 * 60_000) == engine.BATCH_EVENTS_MAX
    fitting = engine.rebuild_batch_events(2_000, 2_000 * 2_048)
    assert fitting == engine.REBUILD_BATCH_BYTES // 2_048
    assert engine.rebuild_batch_events(0, 0) == engine.BATCH_EVENTS_MAX  # no history to size by


def test_appends_in_quick_succession_are_applied_together(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each wake-up costs a transaction per projection, so the runner lets a burst of
    small appends gather and applies them in a few batches, not one each."""
    appends = 40

    async def body(app: App) -> None:
        await seed(app)
        await app.runner.catch_up()
        batches: list[tuple[int, int]] = []
        apply_batch = app.runner._apply_batch

        async def counted(
            conn: object, projection: object, events: object, seqs: tuple[int, int], replaying: bool
        ) -> int:
            if getattr(projection, "name", "") == "usage_rollups":
                batches.append(seqs)
            return await apply_batch(conn, projection, events, seqs, replaying)  # type: ignore[arg-type]

        monkeypatch.setattr(app.runner, "_apply_batch", counted)
        # A longer pause than in service, so a slow machine's appends still fall
        # into a few of them; the mechanism is the same.
        assert engine.COALESCE_S > 0  # the service pauses too
        monkeypatch.setattr(engine, "COALESCE_S", 0.5)
        stop = asyncio.Event()
        runner = asyncio.create_task(app.runner.run_forever(stop))
        await asyncio.sleep(0.5)  # leases taken, listening
        for n in range(appends):
            usage = UsageInput(f"burst{n}", "acme", "completion", NOW, {"tokens": "3"})
            await app.record_usage([usage], CTX)
        for _ in range(100):
            if await rolled_up(app) == (EVENTS + appends, 2 * EVENTS + 3 * appends):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await runner
        assert await rolled_up(app) == (EVENTS + appends, 2 * EVENTS + 3 * appends)
        assert sum(last - first for first, last in batches) == appends  # each once
        assert len(batches) <= appends // 4, batches  # gathered, not one batch each

    run_app(database_url, body)


def test_a_caught_up_projection_costs_one_batch_per_catch_up(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that reaches the head ends a catch-up: no second, empty transaction per
    projection to prove there is nothing left (each wake-up of the runner pays it)."""

    async def body(app: App) -> None:
        await seed(app)
        await app.runner.catch_up()
        batches: list[tuple[str, int]] = []
        run_batch = app.runner._run_batch

        async def counted(
            projection: object, limit: int, replaying: bool, **rows: object
        ) -> engine.BatchRun:
            batch = await run_batch(projection, limit, replaying, **rows)  # type: ignore[arg-type]
            batches.append((getattr(projection, "name", ""), batch.moved))
            return batch

        monkeypatch.setattr(app.runner, "_run_batch", counted)
        one = UsageInput("late1", "acme", "completion", NOW, {"tokens": "5"})
        await app.record_usage([one], CTX)
        assert await app.runner.catch_up() == len(app.runner._definitions)
        assert sorted(batches) == sorted((name, 1) for name in app.runner._definitions)
        assert await rolled_up(app) == (EVENTS + 1, 2 * EVENTS + 5)
        # More than a batch behind: batches run until the one that reaches the head.
        batches.clear()
        monkeypatch.setattr(engine, "BATCH_EVENTS_MAX", 2)
        for n in range(5):
            usage = UsageInput(f"more{n}", "acme", "completion", NOW, {"tokens": "1"})
            await app.record_usage([usage], CTX)
        await app.runner.catch_up({"usage_rollups"})
        assert batches == [("usage_rollups", 2), ("usage_rollups", 2), ("usage_rollups", 1)]
        assert await rolled_up(app) == (EVENTS + 6, 2 * EVENTS + 10)

    run_app(database_url, body)


def test_projections_of_every_event_apply_one_read_of_the_ledger(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Usage rollups and late usage both take every event: at one checkpoint, the
    rows the first read are applied by the second, batch by batch."""

    async def body(app: App) -> None:
        await seed(app)
        await app.runner.catch_up()
        every_event = [p.name for p in app.runner._definitions.values() if p.event_types is None]
        assert len(every_event) >= 2, every_event
        reads: list[int] = []
        read = engine.read_projected_after

        async def counted(conn: object, after_seq: int, limit: int) -> list[object]:
            reads.append(after_seq)
            return await read(conn, after_seq, limit)  # type: ignore[arg-type]

        monkeypatch.setattr(engine, "read_projected_after", counted)
        monkeypatch.setattr(engine, "BATCH_EVENTS_MAX", 2)
        head = (await app.store.head()).seq
        for n in range(5):
            usage = UsageInput(f"shared{n}", "acme", "completion", NOW, {"tokens": "1"})
            await app.record_usage([usage], CTX)
        await app.runner.catch_up()
        assert reads == [head, head + 2, head + 4]  # three batches, each read once
        assert await rolled_up(app) == (EVENTS + 5, 2 * EVENTS + 5)
        async with app.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT name, seq FROM projection_checkpoints WHERE name = ANY(%s)",
                (every_event,),
            )
            assert dict(await cur.fetchall()) == dict.fromkeys(every_event, head + 5)

    run_app(database_url, body)


def test_connections_lent_to_the_runner_go_back_to_the_pool_in_transaction_mode(
    database_url: str,
) -> None:
    """The lease, notification and read-ahead connections run in autocommit; the pool
    does not reset that, and a snapshot on such a connection would not be one."""

    async def body(app: App) -> None:
        await seed(app)
        stop = asyncio.Event()
        runner = asyncio.create_task(app.runner.run_forever(stop))
        await asyncio.sleep(0.5)  # leases taken, listening, caught up
        stop.set()
        await runner
        rebuilt = await app.runner.start_rebuild("usage_rollups", 2)
        # The seed: a metric, a customer and its usage.
        assert [p.checkpoint async for p in app.runner.build(rebuilt)][-1] == 2 + EVENTS
        async with contextlib.AsyncExitStack() as stack:
            lent = [
                await stack.enter_async_context(app.pool.connection())
                for _ in range(app.pool.max_size)
            ]
            assert [conn.autocommit for conn in lent] == [False] * len(lent)
            for conn in lent:  # and none still listens for appends
                cur = await conn.execute("SELECT count(*) FROM pg_listening_channels()")
                assert await cur.fetchone() == (0,)
                await conn.rollback()

    run_app(database_url, body)


def test_a_build_reports_every_batch_it_applied(database_url: str) -> None:
    async def body(app: App) -> None:
        await seed(app)
        rebuilt = await app.runner.start_rebuild("usage_rollups", 2)
        reports = [p async for p in app.runner.build(rebuilt)]
        head = 2 + EVENTS  # the seed: a metric, a customer and its usage
        assert [p.checkpoint for p in reports] == [head, head]  # the batch, then the end
        assert all(p.events_per_s > 0 for p in reports)  # the batch's events counted

    run_app(database_url, body)
