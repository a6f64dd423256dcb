"""Projection operations on real PostgreSQL: crashes, replicas, rebuilds."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import AsyncCursor
from psycopg.rows import TupleRow

from ledger.app.catalog import MetricInput
from ledger.app.context import RequestContext
from ledger.app.usage import UsageInput, UsageStatus
from ledger.store.records import StoredEvent
from projections import engine, usage_rollups
from projections.engine import POLL_INTERVAL_S, ProjectionRunner
from services.bootstrap import PROJECTIONS, App, open_pool, running_app
from services.config import Settings

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
CTX = RequestContext(actor="test", reason="projection operations test")
TABLES = {
    "usage_rollups": (
        "usage_rollups_v{}",
        "usage_unbilled_v{}",
        "usage_distinct_v{}",
        "usage_rollup_metrics_v{}",
    ),
    "audit_log": ("audit_entries_v{}",),
}


def run_app(database_url: str, body: Callable[[App], Awaitable[None]]) -> None:
    settings = dataclasses.replace(Settings.from_env({}), run_projector=False)

    async def main() -> None:
        async with running_app(settings, database_url, clock=lambda: NOW) as app:
            await body(app)

    asyncio.run(main())


async def seed(app: App, events: int, *, offset: int = 0) -> None:
    if offset == 0:
        await app.catalog.create_metric(
            MetricInput("tokens", "Tokens", "completion", "SUM", "tokens", group_by=["model"]),
            CTX,
        )
        await app.catalog.create_metric(
            MetricInput("users", "Users", "completion", "UNIQUE", "user"), CTX
        )
        for n in range(3):
            await app.customers.create_customer(f"c{n}", f"Customer {n}", CTX)
    rng = random.Random(offset)
    for start in range(offset, offset + events, 1_000):
        batch = [
            UsageInput(
                f"t{n}",
                f"c{n % 3}",
                "completion",
                NOW - timedelta(minutes=rng.randrange(60 * 24 * 30)),
                properties(rng, n),
            )
            for n in range(start, min(start + 1_000, offset + events))
        ]
        results = await app.record_usage(batch, CTX)
        assert all(r.status is UsageStatus.ACCEPTED for r in results)


def properties(rng: random.Random, n: int) -> dict[str, str]:
    values = {"model": rng.choice("ab"), "tokens": str(rng.randrange(1, 999)), "user": str(n % 7)}
    if n % 50 == 0:
        del values["tokens"]  # unbilled, with a reason
    return values


def subprocess_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCRUAL_")}
    return env | {"ACCRUAL_DATABASE_URL": database_url, "ACCRUAL_LOG_FORMAT": "json"}


def same_rows(database_url: str, name: str, left: int, right: int) -> None:
    with psycopg.connect(database_url) as conn:
        for pattern in TABLES[name]:
            a, b = pattern.format(left), pattern.format(right)
            count = conn.execute(f"SELECT count(*) FROM {a}").fetchone()
            assert count is not None
            assert count[0] > 0, f"{a} has rows to compare"
            for x, y in ((a, b), (b, a)):
                diff = conn.execute(
                    f"SELECT count(*) FROM (SELECT * FROM {x} EXCEPT ALL SELECT * FROM {y}) d"
                )
                assert diff.fetchone() == (0,), f"{x} and {y} differ"


def test_sigkill_at_random_points_never_loses_or_doubles_an_event(
    database_url: str, tmp_path: Path
) -> None:
    run_app(database_url, lambda app: seed(app, 12_000))
    rng = random.Random(7)
    kills = 0
    for _ in range(10):
        # Kill once the slowest projection has moved a random distance: always mid
        # catch-up, however fast the machine, and at a different point each time.
        target = rolled_up_checkpoint(database_url) + rng.randrange(200, 1_200)
        runner = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "project", "--once"],
            env=subprocess_env(database_url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while runner.poll() is None and rolled_up_checkpoint(database_url) < target:
            assert time.monotonic() < deadline, "the runner makes progress"
            time.sleep(0.01)
        if runner.poll() is None:
            runner.send_signal(signal.SIGKILL)
            kills += 1
        runner.wait(timeout=30)
    assert kills >= 5, "most runs were cut off mid catch-up"

    async def finish_and_rebuild(app: App) -> None:
        await app.runner.catch_up()
        for name in TABLES:
            fresh = await app.runner.start_rebuild(name, 2)
            async for _ in app.runner.build(fresh):
                pass

    run_app(database_url, finish_and_rebuild)
    for name in TABLES:
        same_rows(database_url, name, 1, 2)


def test_rollups_folded_in_pipelined_chunks_equal_rollups_folded_whole(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def live_then_rebuilt_in_small_chunks(app: App) -> None:
        await seed(app, 1_500)
        # Created after its usage: the back-fill runs between two chunks.
        await app.catalog.create_metric(
            MetricInput("calls", "Calls", "completion", "COUNT", "", group_by=["model"]), CTX
        )
        await seed(app, 500, offset=1_500)
        await app.runner.catch_up()  # version 1, in whole batches
        monkeypatch.setattr(usage_rollups, "FLUSH_EVENTS", 7)
        monkeypatch.setattr(usage_rollups, "FLUSH_ROWS", 5)  # two metrics: rows first
        fresh = await app.runner.start_rebuild("usage_rollups", 2)
        async for _ in app.runner.build(fresh):
            pass

    run_app(database_url, live_then_rebuilt_in_small_chunks)
    same_rows(database_url, "usage_rollups", 1, 2)


def rolled_up_checkpoint(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT coalesce(min(seq), 0) FROM projection_checkpoints WHERE name = 'usage_rollups'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_two_runners_one_applies_and_the_other_takes_over_when_it_dies(database_url: str) -> None:
    run_app(database_url, lambda app: seed(app, 1_000))
    holder = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "project"],
        env=subprocess_env(database_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: advisory_locks_held_by_others(database_url) == len(PROJECTIONS), 60)

        async def standby(app: App) -> None:
            async with open_pool(database_url, 4) as pool:
                runner = ProjectionRunner(pool, PROJECTIONS)
                stop = asyncio.Event()
                task = asyncio.create_task(runner.run_forever(stop))
                await asyncio.sleep(2 * POLL_INTERVAL_S)
                assert runner.leases_held == set(), "the other runner holds every lease"
                holder.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                while runner.leases_held != set(PROJECTIONS):
                    assert time.monotonic() - killed_at < 10 * POLL_INTERVAL_S, "no takeover"
                    await asyncio.sleep(0.05)
                await seed(app, 500, offset=10_000)
                head = (await app.store.head()).seq
                while await checkpoints_min(pool) < head:
                    assert time.monotonic() - killed_at < 30, "the new holder applies events"
                    await asyncio.sleep(0.05)
                stop.set()
                await task

        run_app(database_url, standby)
    finally:
        holder.kill()
        holder.wait(timeout=30)


async def checkpoints_min(pool: object) -> int:
    async with pool.connection() as conn:  # type: ignore[attr-defined]
        cur = await conn.execute("SELECT min(seq) FROM projection_checkpoints")
        row = await cur.fetchone()
    return int(row[0])


def advisory_locks_held_by_others(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND pid <> pg_backend_pid() AND database = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())"
        ).fetchone()
    assert row is not None
    return int(row[0])


def wait_for(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


class Notifier:
    """A projection with a side effect: it 'sends' a notice per customer created."""

    name = "notifier"
    event_types = frozenset({"CustomerCreated"})  # read through the index, not every event

    def __init__(self, version: int) -> None:
        self.version = version

    def ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS notices_v{self.version} (seq bigint PRIMARY KEY)",
            "CREATE TABLE IF NOT EXISTS notices_sent (seq bigint, version int)",
        ]

    def tables(self) -> list[str]:
        return [f"notices_v{self.version}"]

    async def apply(
        self, cur: AsyncCursor[TupleRow], events: Sequence[StoredEvent], *, replaying: bool = False
    ) -> None:
        for event in events:
            if event.event_type != "CustomerCreated":
                continue
            await cur.execute(f"INSERT INTO notices_v{self.version} VALUES (%s)", (event.seq,))
            if not replaying:
                await cur.execute(
                    "INSERT INTO notices_sent VALUES (%s, %s)", (event.seq, self.version)
                )


def test_a_rebuild_writes_rows_but_repeats_no_side_effect(database_url: str) -> None:
    async def body(app: App) -> None:
        runner = ProjectionRunner(app.pool, {"notifier": Notifier})
        await runner.setup()
        for n in range(3):
            await app.customers.create_customer(f"n{n}", "Notified", CTX)
        await runner.catch_up()
        rebuilt = await runner.start_rebuild("notifier", 2)
        async for _ in runner.build(rebuilt):
            pass
        await app.customers.create_customer("n-late", "Arrives before the swap", CTX)
        await runner.catch_up()  # v1, still live, acts on it
        assert await runner.swap("notifier", 2) == 1
        await app.customers.create_customer("n-after", "Arrives after the swap", CTX)
        await runner.catch_up()
        async with app.pool.connection() as conn:
            cur = await conn.execute("SELECT version, count(*) FROM notices_sent GROUP BY 1")
            sent = dict(await cur.fetchall())
            cur = await conn.execute("SELECT count(*) FROM notices_v2")
            rows = await cur.fetchone()
        # v1 sent for the four customers created while it was live; the rebuild and the
        # swap (which applies n-late to v2) sent nothing again; v2, once live, sends
        # for what arrives after the swap.
        assert sent == {1: 4, 2: 1}
        assert rows == (5,)

    run_app(database_url, body)


def test_a_rebuild_read_ahead_batch_by_batch_equals_the_live_version(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch's successor is read while it is applied: over many small batches
    of two metrics' usage, the rebuilt rows equal the live ones, and every batch
    after the first uses the rows read for it."""
    progress: list[int] = []

    async def live_then_rebuilt_in_small_batches(app: App) -> None:
        await seed(app, 300)
        await app.catalog.create_metric(
            MetricInput("calls", "Calls", "completion", "COUNT", "", group_by=["model"]), CTX
        )
        await seed(app, 200, offset=300)
        await app.runner.catch_up()
        monkeypatch.setattr(engine, "BATCH_EVENTS_MAX", 37)
        monkeypatch.setattr(engine, "REBUILD_BATCH_EVENTS", 37)
        reads = 0
        read = engine.read_projected_after

        async def counted(*args: object) -> object:
            nonlocal reads
            reads += 1
            return await read(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(engine, "read_projected_after", counted)
        fresh = await app.runner.start_rebuild("usage_rollups", 2)
        progress.extend([p.checkpoint async for p in app.runner.build(fresh)])
        head = progress[-1]
        # The first batch's own read, one ahead of each batch (the last one's
        # finds nothing after the head), and the empty batch's own read: had
        # a batch not used the rows read for it, it would have read them again.
        batches = len(progress) - 1  # and a last report after them
        assert reads == 1 + batches + 1, (reads, progress)
        assert head > 500

    run_app(database_url, live_then_rebuilt_in_small_batches)
    batches = progress[:-1]
    assert batches == [*range(37, progress[-1], 37), progress[-1]]
    same_rows(database_url, "usage_rollups", 1, 2)


def test_rows_read_ahead_from_another_checkpoint_are_not_applied(database_url: str) -> None:
    async def body(app: App) -> None:
        await seed(app, 50)
        runner = app.runner
        rollups = runner.projection("usage_rollups", 1)
        async with app.pool.connection() as reader:
            stale = await engine.ReadAhead.start(reader, 10, 40)  # the checkpoint is 0
            batch = await runner._run_batch(rollups, 5, False, stale, None)
        assert batch.moved == 5  # its own read of 5, not the 40 read after seq 10

    run_app(database_url, body)


def test_a_failed_read_ahead_leaves_the_batch_to_read_its_own_rows(database_url: str) -> None:
    async def body(app: App) -> None:
        await seed(app, 50)
        failed: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()
        failed.set_exception(psycopg.OperationalError("the reader's connection was lost"))
        reading = engine.ReadAhead(0, failed)  # type: ignore[arg-type]
        rollups = app.runner.projection("usage_rollups", 1)
        batch = await app.runner._run_batch(rollups, 5, False, reading, None)
        assert batch.moved == 5

    run_app(database_url, body)


def test_a_batch_that_fails_waits_for_its_read_ahead(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader goes back to the pool idle, not with a query in flight."""

    async def body(app: App) -> None:
        await seed(app, 50)
        started: list[engine.ReadAhead] = []
        start = engine.ReadAhead.start

        async def recorded(reader: object, after_seq: int, limit: int) -> engine.ReadAhead:
            started.append(await start(reader, after_seq, limit))  # type: ignore[arg-type]
            return started[-1]

        async def failing(*args: object) -> int:
            raise RuntimeError("the projection failed")

        monkeypatch.setattr(engine.ReadAhead, "start", recorded)
        monkeypatch.setattr(app.runner, "_apply_batch", failing)
        rollups = app.runner.projection("usage_rollups", 1)
        async with app.pool.connection() as reader:
            await reader.set_autocommit(True)
            with pytest.raises(RuntimeError, match="the projection failed"):
                await app.runner._run_batch(rollups, 5, True, None, reader)
            assert len(started) == 1
            assert started[0].rows.done()
            assert started[0].rows.result()[0].seq == 6  # the rows after the batch, read
            await reader.set_autocommit(False)

    run_app(database_url, body)
