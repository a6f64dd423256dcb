"""Group commit on real PostgreSQL: concurrent appends share transactions, nothing lost."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from ledger.app.context import RequestContext
from ledger.app.usage import UsageInput, UsageStatus
from ledger.core.errors import DomainError, Rule
from ledger.core.events import CustomerCreated
from ledger.store.event_store import PostgresEventStore
from ledger.store.group_commit import GroupCommitter
from ledger.store.records import Appended, ConditionFailedError, Duplicate, NewEvent, NoneAfter
from services.bootstrap import App
from tests.integration.test_projection_ops import run_app

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
CTX = RequestContext(actor="test", reason="group commit test")


def customer(n: int, key: str | None = None) -> NewEvent:
    return NewEvent(
        f"customer-g{n}", CustomerCreated(f"g{n}", "G"), NOW, idempotency_key=key, request_hash="h"
    )


def test_concurrent_record_usage_calls_share_transactions(database_url: str) -> None:
    async def body(app: App) -> None:
        await app.customers.create_customer("acme", "Acme", CTX)
        calls = [
            app.record_usage(
                [
                    UsageInput(f"t{n}-{i}", "acme", "api_call", NOW - timedelta(minutes=n), {})
                    for i in range(5)
                ],
                CTX,
            )
            for n in range(60)
        ]
        before = app.committer.transactions
        results = await asyncio.gather(*calls)
        assert all(r.status is UsageStatus.ACCEPTED for batch in results for r in batch)
        seqs = sorted(r.seq for batch in results for r in batch)
        assert len(set(seqs)) == 300
        assert app.committer.transactions - before < 60, "calls were coalesced"
        async with app.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM events WHERE event_type = 'UsageRecorded'"
            )
            assert await cur.fetchone() == (300,)

    run_app(database_url, body)


def test_a_duplicate_across_callers_in_one_group_is_answered_as_such(database_url: str) -> None:
    async def body(app: App) -> None:
        store = PostgresEventStore(app.pool, lambda: NOW)
        committer = GroupCommitter(store, batch_wait_s=0.05)
        writer = asyncio.create_task(committer.run())
        first, second = await asyncio.gather(
            committer.append([customer(1, key="same")]), committer.append([customer(1, key="same")])
        )
        await committer.close()
        await writer
        assert isinstance(first[0], Appended)
        assert second == [Duplicate(first[0].seq)]
        assert committer.transactions == 1

    run_app(database_url, body)


def test_a_full_queue_refuses_at_once_and_queued_appends_still_commit(database_url: str) -> None:
    async def body(app: App) -> None:
        store = PostgresEventStore(app.pool, lambda: NOW)
        committer = GroupCommitter(store, queue_events_max=3, batch_wait_s=0)
        writer = asyncio.create_task(committer.run())
        # Hold the head row so the writer blocks mid-append and the queue fills up.
        with psycopg.connect(database_url) as blocker:
            blocker.execute("SELECT 1 FROM ledger_heads WHERE partition = 0 FOR UPDATE")
            # Three go to the writer (blocked in its transaction), three wait in the queue.
            in_flight = [asyncio.create_task(committer.append([customer(n)])) for n in range(3)]
            await asyncio.sleep(0.3)
            waiting = [asyncio.create_task(committer.append([customer(n)])) for n in range(3, 6)]
            await asyncio.sleep(0.05)
            with pytest.raises(DomainError) as refused:
                await asyncio.wait_for(committer.append([customer(9)]), timeout=5)
            assert refused.value.rule is Rule.INGEST_QUEUE_FULL
            blocker.rollback()
        outcomes = await asyncio.wait_for(asyncio.gather(*in_flight, *waiting), timeout=30)
        await committer.close()
        await writer
        assert all(isinstance(o[0], Appended) for o in outcomes)
        with pytest.raises(DomainError) as closed:
            await committer.append([customer(10)])
        assert closed.value.rule is Rule.SHUTTING_DOWN

    run_app(database_url, body)


def test_a_failed_condition_fails_only_the_requests_whose_own_condition_failed(
    database_url: str,
) -> None:
    """The group is appended under its requests' conditions, merged; when that
    fails, the requests whose own condition failed hear it, and the others (with
    none, or one that still holds) are written."""

    async def body(app: App) -> None:
        store = PostgresEventStore(app.pool, lambda: NOW)
        committer = GroupCommitter(store)
        writer = asyncio.create_task(committer.run())
        (first,) = await committer.append([customer(1)])  # a CustomerCreated
        # The three calls below all queue before the writer runs again: one group.
        assert isinstance(first, Appended)
        stale = NoneAfter(("CustomerCreated",), first.seq - 1)
        current = NoneAfter(("CustomerCreated",), first.seq)
        outcomes = await asyncio.gather(
            committer.append([customer(2)], [stale]),
            committer.append([customer(3)], [current]),
            committer.append([customer(4)]),
            return_exceptions=True,
        )
        await committer.close()
        await writer
        refused, written, unconditional = outcomes
        assert isinstance(refused, ConditionFailedError)
        assert (refused.condition, refused.newest) == (stale, first.seq)
        assert isinstance(written, list) and isinstance(written[0], Appended)
        assert isinstance(unconditional, list) and isinstance(unconditional[0], Appended)
        async with app.pool.connection() as conn:
            cur = await conn.execute("SELECT stream_id FROM events ORDER BY seq")
            streams = [row[0] for row in await cur.fetchall()]
        assert streams == ["customer-g1", "customer-g3", "customer-g4"]

    run_app(database_url, body)


def test_a_caller_alone_is_not_kept_waiting(database_url: str) -> None:
    """The wait for a group is for concurrent callers: a call after a lone one, or
    after a quiet spell, is written at once, however long the wait is set."""

    async def body(app: App) -> None:
        store = PostgresEventStore(app.pool, lambda: NOW)
        committer = GroupCommitter(store, batch_wait_s=1.0)
        writer = asyncio.create_task(committer.run())
        loop = asyncio.get_running_loop()
        started = loop.time()
        await committer.append([customer(1)])
        await committer.append([customer(2)])
        assert loop.time() - started < 0.5, "lone calls waited for company"

        await asyncio.gather(*(committer.append([customer(n)]) for n in range(3, 19)))
        await asyncio.sleep(1.1)  # quiet for longer than the wait: those callers are gone
        started = loop.time()
        await committer.append([customer(19)])
        assert loop.time() - started < 0.5, "a call after a quiet spell waited"
        await committer.close()
        await writer

    run_app(database_url, body)


async def waiting_for_a_lock(app: App, within_s: float = 10) -> None:
    """Return once a session of this test's database waits for a lock."""
    deadline = asyncio.get_running_loop().time() + within_s
    async with app.pool.connection() as conn:
        while asyncio.get_running_loop().time() < deadline:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = await cur.fetchone()
            await conn.commit()
            if row is not None and row[0] > 0:
                return
            await asyncio.sleep(0.02)
    raise AssertionError("no session came to wait for a lock")


def test_a_cancelled_writer_leaves_no_caller_waiting(database_url: str) -> None:
    """If the writer is cancelled mid-append (a loop shutting down), the callers in
    its group and those queued behind it are told to retry, nothing is written,
    and later appends are refused rather than queued for no one."""

    async def body(app: App) -> None:
        store = PostgresEventStore(app.pool, lambda: NOW)
        committer = GroupCommitter(store, batch_wait_s=0)
        writer = asyncio.create_task(committer.run())
        async with app.pool.connection() as holder:  # the head's lock, held
            await holder.execute("SELECT 1 FROM ledger_heads WHERE partition = 0 FOR UPDATE")
            in_flight = asyncio.ensure_future(committer.append([customer(1)]))
            await waiting_for_a_lock(app)  # the writer is mid-append
            queued = asyncio.ensure_future(committer.append([customer(2)]))
            await asyncio.sleep(0)
            writer.cancel()
            answers = await asyncio.wait_for(
                asyncio.gather(in_flight, queued, return_exceptions=True), 5
            )
            await holder.rollback()
        for answer in answers:
            assert isinstance(answer, DomainError) and answer.rule is Rule.SHUTTING_DOWN
        with pytest.raises(DomainError) as later:
            await committer.append([customer(3)])
        assert later.value.rule is Rule.SHUTTING_DOWN
        assert writer.cancelled()
        async with app.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM events WHERE event_type = %s", ["CustomerCreated"]
            )
            assert await cur.fetchone() == (0,)

    run_app(database_url, body)
