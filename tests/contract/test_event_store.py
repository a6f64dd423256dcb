"""Contract tests of the PostgreSQL event store against a real server.

Each test gets a fresh migrated database (``database_url``). Store calls are
async; each test runs its async body with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import psycopg
import pytest
from psycopg import errors

from ledger.app.usage import usage_to_append
from ledger.core.canonical import canonical_json
from ledger.core.errors import DomainError, Rule
from ledger.core.events import UsageRecorded, to_payload
from ledger.store.chain import GENESIS_HASH
from ledger.store.event_store import (
    PostgresEventStore,
    iter_payloads_between,
    iter_stream_between,
    iter_streams,
    read_after,
    read_projected_after,
    read_projected_types_at,
    read_types_at,
)
from ledger.store.records import (
    Appended,
    ConditionFailedError,
    Duplicate,
    KeyReused,
    NewEvent,
    NoneAfter,
    StoredEvent,
)
from ledger.store.verify import recompute_hash, verify_ledger
from tests.contract.support import (
    BASE_TIME,
    customer_created,
    event_rows,
    fetch,
    head_row,
    head_row_locked,
    open_store,
    tamper,
    usage_recorded,
    wait_for_lock_waiters,
)


def run_with_store(
    database_url: str, body: Callable[[PostgresEventStore], Awaitable[None]]
) -> None:
    async def main() -> None:
        async with open_store(database_url) as store:
            await body(store)

    asyncio.run(main())


def seqs(events: list[StoredEvent]) -> list[int]:
    return [event.seq for event in events]


# 1. Optimistic concurrency -------------------------------------------------------------------


@pytest.mark.parametrize("prior_events", [0, 2])
def test_concurrent_appends_with_same_expected_version_let_exactly_one_win(
    database_url: str, prior_events: int
) -> None:
    async def body(store: PostgresEventStore) -> None:
        for index in range(prior_events):
            await store.append([usage_recorded("c1", f"t{index}")])
        contenders = [
            usage_recorded("c1", "left", expected_version=prior_events),
            usage_recorded("c1", "right", expected_version=prior_events),
        ]
        # Both appends start while the head row is held, so both are in flight at once.
        async with head_row_locked(database_url):
            tasks = [asyncio.create_task(store.append([event])) for event in contenders]
            await wait_for_lock_waiters(database_url, 2)
        results = await asyncio.gather(*tasks, return_exceptions=True)

        winners = [result for result in results if isinstance(result, list)]
        losers = [result for result in results if isinstance(result, BaseException)]
        assert len(winners) == 1 and len(losers) == 1, results
        assert winners[0] == [Appended(prior_events + 1, prior_events + 1)]
        assert isinstance(losers[0], DomainError), repr(losers[0])
        assert losers[0].rule is Rule.STREAM_VERSION_CONFLICT

        stored = await store.read_streams(["usage-c1"])
        assert [e.stream_version for e in stored] == list(range(1, prior_events + 2))
        assert seqs(stored) == list(range(1, prior_events + 2))
        assert (await store.head()).seq == prior_events + 1
        assert await store.stream_versions(["usage-c1"]) == {"usage-c1": prior_events + 1}

    run_with_store(database_url, body)


# 2. Idempotency ------------------------------------------------------------------------------


def test_same_key_and_request_returns_original_seq_and_writes_nothing(database_url: str) -> None:
    async def body(store: PostgresEventStore) -> None:
        original = usage_recorded("c1", "t1", idempotency_key="k1", request_hash="h1")
        await store.append([customer_created("c1")])
        assert await store.append([original]) == [Appended(2, 1)]
        before_rows, before_head = await event_rows(database_url), await head_row(database_url)

        # A retry of the very same request, even one that expected a new stream.
        retry = usage_recorded(
            "c1", "t1", idempotency_key="k1", request_hash="h1", expected_version=0
        )
        assert await store.append([original]) == [Duplicate(2)]
        assert await store.append([retry]) == [Duplicate(2)]

        assert await event_rows(database_url) == before_rows
        assert await head_row(database_url) == before_head
        assert await store.stream_versions(["usage-c1"]) == {"usage-c1": 1}

    run_with_store(database_url, body)


def test_same_key_with_different_request_is_refused_and_writes_nothing(database_url: str) -> None:
    async def body(store: PostgresEventStore) -> None:
        original = usage_recorded("c1", "t1", idempotency_key="k1", request_hash="h1")
        assert await store.append([original]) == [Appended(1, 1)]
        before_rows, before_head = await event_rows(database_url), await head_row(database_url)

        other_request = usage_recorded(
            "c1", "t2", minute=5, idempotency_key="k1", request_hash="h2"
        )
        assert await store.append([other_request]) == [KeyReused(1)]

        assert await event_rows(database_url) == before_rows
        assert await head_row(database_url) == before_head
        (stored,) = await store.read_all(0, 10)
        assert stored.domain_event() == original.event

    run_with_store(database_url, body)


def test_duplicate_keys_inside_one_batch_behave_like_earlier_appends(database_url: str) -> None:
    async def body(store: PostgresEventStore) -> None:
        batch = [
            usage_recorded("c1", "t1", idempotency_key="k1", request_hash="h1"),
            usage_recorded("c1", "t1", idempotency_key="k1", request_hash="h1"),
            usage_recorded("c2", "t2", idempotency_key="k2", request_hash="h2"),
            usage_recorded("c1", "t9", idempotency_key="k1", request_hash="other"),
            usage_recorded("c2", "t3", idempotency_key="k3", request_hash="h3"),
        ]
        outcomes = await store.append(batch)

        assert outcomes == [
            Appended(1, 1),
            Duplicate(1),
            Appended(2, 1),
            KeyReused(1),
            Appended(3, 2),
        ]
        stored = await store.read_all(0, 100)
        assert seqs(stored) == [1, 2, 3]
        assert [e.idempotency_key for e in stored] == ["k1", "k2", "k3"]
        assert [e.domain_event() for e in stored] == [
            batch[0].event,
            batch[2].event,
            batch[4].event,
        ]
        assert await store.stream_versions(["usage-c1", "usage-c2"]) == {
            "usage-c1": 1,
            "usage-c2": 2,
        }
        assert (await store.head()).seq == 3

    run_with_store(database_url, body)


def test_batch_with_earlier_keys_still_appends_its_other_events(database_url: str) -> None:
    async def body(store: PostgresEventStore) -> None:
        await store.append(
            [
                usage_recorded("c1", "t1", idempotency_key="k1", request_hash="h1"),
                usage_recorded("c1", "t2", idempotency_key="k2", request_hash="h2"),
            ]
        )
        batch = [
            usage_recorded("c1", "t3", idempotency_key="k3", request_hash="h3"),
            usage_recorded("c1", "t1", idempotency_key="k1", request_hash="h1"),
            usage_recorded("c1", "t2", idempotency_key="k2", request_hash="changed"),
            usage_recorded("c1", "t4"),
        ]
        outcomes = await store.append(batch)

        assert outcomes == [Appended(3, 3), Duplicate(1), KeyReused(2), Appended(4, 4)]
        stored = await store.read_all(0, 100)
        assert seqs(stored) == [1, 2, 3, 4]
        assert [e.stream_version for e in stored] == [1, 2, 3, 4]
        assert [e.domain_event() for e in stored[2:]] == [batch[0].event, batch[3].event]
        report = await verify_ledger(store)
        assert report.ok and report.events_checked == 4

    run_with_store(database_url, body)


def test_concurrent_appends_of_one_request_write_it_once(database_url: str) -> None:
    async def body(store: PostgresEventStore) -> None:
        request = usage_recorded("c1", "t1", idempotency_key="k1", request_hash="h1")
        async with head_row_locked(database_url):
            tasks = [asyncio.create_task(store.append([request])) for _ in range(3)]
            await wait_for_lock_waiters(database_url, 3)
        results = await asyncio.gather(*tasks)

        assert sorted(results, key=repr) == [
            [Appended(1, 1)],
            [Duplicate(1)],
            [Duplicate(1)],
        ]
        assert seqs(await store.read_all(0, 100)) == [1]

    run_with_store(database_url, body)


def test_an_append_on_a_condition_writes_only_while_it_holds(database_url: str) -> None:
    """The condition is checked behind the ledger's lock: an event that commits
    while the append waits for the lock is seen, and the append writes nothing."""

    async def body(store: PostgresEventStore) -> None:
        await store.append([customer_created("a")])
        no_new_customer = NoneAfter(("CustomerCreated",), 1)
        written = await store.append([usage_recorded("a", "t1")], [no_new_customer])
        assert written == [Appended(2, 1)]

        async with head_row_locked(database_url):
            new_customer = asyncio.create_task(store.append([customer_created("b")]))
            await wait_for_lock_waiters(database_url, 1)
            usage = asyncio.create_task(
                store.append([usage_recorded("a", "t2")], [no_new_customer])
            )
            await wait_for_lock_waiters(database_url, 2)
        assert await new_customer == [Appended(3, 1)]
        with pytest.raises(ConditionFailedError) as failed:
            await usage
        assert (failed.value.condition, failed.value.newest) == (no_new_customer, 3)
        assert seqs(await store.read_all(0, 100)) == [1, 2, 3]
        # Usage is not among the event types the condition names.
        later = NoneAfter(("CustomerCreated",), 3)
        assert await store.append([usage_recorded("a", "t2")], [later]) == [Appended(4, 2)]

    run_with_store(database_url, body)


# 3. Gapless seq in commit order --------------------------------------------------------------


def test_tailing_reader_sees_every_seq_once_in_order_while_an_append_is_held_open(
    database_url: str,
) -> None:
    prior, slow_batch, writers = 3, 2, 5
    total = prior + slow_batch + writers

    async def body(store: PostgresEventStore) -> None:
        await store.append([customer_created(f"p{i}") for i in range(prior)])
        seen: list[int] = []
        stop = asyncio.Event()

        async def subscriber() -> None:
            # Tails from checkpoint 0 with small pages, as a projection would.
            after = 0
            while after < total and not stop.is_set():
                for event in await store.read_all(after, 2):
                    seen.append(event.seq)
                    after = event.seq
                await asyncio.sleep(0.002)

        tail = asyncio.create_task(subscriber())
        deadline = time.monotonic() + 10
        while len(seen) < prior and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert seen == [1, 2, 3]

        async with store._pool.connection() as slow, slow.transaction():
            held = await store._append_locked(
                slow, [usage_recorded("slow", f"s{i}") for i in range(slow_batch)], commit=False
            )
            assert held == [Appended(4, 1), Appended(5, 2)]
            appends = [
                asyncio.create_task(store.append([usage_recorded(f"w{i}", f"w{i}")]))
                for i in range(writers)
            ]
            await wait_for_lock_waiters(database_url, writers)
            await asyncio.sleep(0.1)  # let the subscriber poll while the writers are blocked
            assert not any(task.done() for task in appends)
            assert seen == [1, 2, 3]
            assert await store.read_all(prior, 100) == []
        # The slow append commits here; the blocked writers follow it.
        outcomes = await asyncio.gather(*appends)
        try:
            await asyncio.wait_for(tail, timeout=10)
        finally:
            stop.set()

        assert sorted(outcome.seq for (outcome,) in outcomes) == list(
            range(prior + slow_batch + 1, total + 1)
        )
        assert seen == list(range(1, total + 1))
        assert seqs(await store.read_all(0, 100)) == list(range(1, total + 1))
        report = await verify_ledger(store)
        assert report.ok and report.events_checked == total

    run_with_store(database_url, body)


# 4. Append-only enforcement ------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET payload = convert_to('{}', 'UTF8') WHERE seq = 2",
        "UPDATE events SET stream_id = 'elsewhere'",
        "DELETE FROM events WHERE seq = 3",
        "DELETE FROM events",
        "TRUNCATE events",
        "TRUNCATE events, streams, ledger_heads",
    ],
)
def test_database_refuses_to_change_or_remove_events_even_for_superuser(
    database_url: str, statement: str
) -> None:
    async def body(store: PostgresEventStore) -> None:
        await store.append([customer_created("c1"), usage_recorded("c1", "t1")])
        await store.append([usage_recorded("c1", "t2")])

    run_with_store(database_url, body)
    with psycopg.connect(database_url) as conn:
        superuser = conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert superuser == (True,)
        before = conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
        assert len(before) == 3
        conn.commit()

        with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)
        conn.rollback()

        assert conn.execute("SELECT * FROM events ORDER BY seq").fetchall() == before


# 5. Tamper detection -------------------------------------------------------------------------


async def append_mixed_ledger(store: PostgresEventStore, count: int) -> None:
    """``count`` events over several customers, in batches of assorted sizes."""
    events: list[NewEvent] = []
    for index in range(count):
        customer = f"c{index % 7}"
        if index < 7:
            events.append(customer_created(customer, f"Name {index} ü"))
        else:
            events.append(usage_recorded(customer, f"t{index}", minute=index))
    position = 0
    for size in [1, 6, 13, 40, *([60] * ((count // 60) + 1))]:
        chunk = events[position : position + size]
        if chunk:
            await store.append(chunk)
        position += size
    assert position >= count


def test_untampered_ledger_verifies(database_url: str) -> None:
    async def body(store: PostgresEventStore) -> None:
        await append_mixed_ledger(store, 300)
        report = await verify_ledger(store)
        head = await store.head()

        assert report.ok and report.breach is None
        assert report.events_checked == 300
        assert report.last_seq == 300 == head.seq
        assert report.last_hash == head.hash

    run_with_store(database_url, body)


def test_rows_appended_with_callers_payload_digests_verify(database_url: str) -> None:
    """RecordUsage hands the store a usage payload's bytes and their digest; the
    rows must hash as verification recomputes them. A digest given without its
    bytes is not trusted."""

    async def body(store: PostgresEventStore) -> None:
        at = datetime(2026, 3, 1, tzinfo=UTC)
        usage = [
            usage_to_append(
                UsageRecorded("c1", f"t{n}", "api_call", at, {"tokens": str(n)}),
                {"actor": "contract-test"},
            )
            for n in range(20)
        ]
        assert all(e.payload is not None and e.payload_sha256 for e in usage)
        lone_digest = customer_created("c1")._replace(payload_sha256="0" * 64)
        await store.append([*usage[:10], lone_digest, *usage[10:]])

        report = await verify_ledger(store)
        assert report.ok and report.events_checked == 21

    run_with_store(database_url, body)


def projected(event: StoredEvent) -> tuple[Any, ...]:
    return (
        *(event.seq, event.stream_id, event.event_type, event.schema_version),
        *(event.payload, event.metadata, event.occurred_at, event.recorded_at),
    )


def test_projection_reads_give_the_stored_rows_columns_and_events(database_url: str) -> None:
    async def body(store: PostgresEventStore) -> None:
        await append_mixed_ledger(store, 150)
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            full, light = await read_after(conn, 0, 500), await read_projected_after(conn, 0, 500)
            assert [projected(event) for event in full] == [tuple(row) for row in light]
            assert [e.domain_event() for e in full] == [e.domain_event() for e in light]
            page = await read_projected_after(conn, 40, 25)
            assert [row.seq for row in page] == list(range(41, 66))
            types = sorted({e.event_type for e in full if e.event_type != "UsageRecorded"})
            assert types, "the ledger holds events other than usage"
            some = await read_types_at(conn, types, 120, 3)
            assert [projected(e) for e in some] == [
                tuple(row) for row in await read_projected_types_at(conn, types, 120, 3)
            ]
            assert some and all(3 < e.seq <= 120 for e in some)

    run_with_store(database_url, body)


def verify_after_tampering(
    database_url: str, statement: str, params: tuple[Any, ...] = (), count: int = 20
) -> Any:
    async def main() -> Any:
        async with open_store(database_url) as store:
            await append_mixed_ledger(store, count)
            assert (await verify_ledger(store)).ok
            await tamper(database_url, statement, params)
            return await verify_ledger(store)

    return asyncio.run(main())


def test_altered_payload_is_reported_at_its_seq(database_url: str) -> None:
    report = verify_after_tampering(
        database_url,
        "UPDATE events SET payload = convert_to("
        "replace(convert_from(payload, 'UTF8'), 'api_call', 'api_cell'), 'UTF8') WHERE seq = %s",
        (12,),
    )

    assert not report.ok
    assert report.breach is not None
    assert report.breach.seq == 12
    assert "hash" in report.breach.reason
    assert report.events_checked == 11
    assert report.last_seq == 11


def test_deleted_middle_event_is_reported_at_its_position(database_url: str) -> None:
    report = verify_after_tampering(database_url, "DELETE FROM events WHERE seq = %s", (9,))

    assert not report.ok
    assert report.breach is not None
    assert "seq gap" in report.breach.reason
    assert report.events_checked == 8
    assert report.last_seq == 8
    # The breach names the position where the ledger is broken: seq 9 is missing.
    assert report.breach.seq == 9


def test_deleted_last_event_is_reported_missing(database_url: str) -> None:
    report = verify_after_tampering(database_url, "DELETE FROM events WHERE seq = %s", (20,))

    assert not report.ok
    assert report.breach is not None
    assert report.breach.seq == 20
    assert "missing" in report.breach.reason
    assert report.events_checked == 19
    assert report.last_seq == 19


def test_tampering_session_does_not_disable_the_guard_for_others(database_url: str) -> None:
    verify_after_tampering(database_url, "DELETE FROM events WHERE seq = %s", (5,), count=10)
    with psycopg.connect(database_url) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute("DELETE FROM events WHERE seq = 6")


# 6. Hash chain and verbatim payloads ---------------------------------------------------------


def test_rows_form_a_hash_chain_from_genesis_to_the_head(database_url: str) -> None:
    appended: list[NewEvent] = [
        customer_created("c1", "Zoë & Co", metadata={"reason": "signup", "actor": "ops"}),
        usage_recorded("c1", "t1", properties={"zeta": "1.50", "alpha": "ü", "mid": "x y"}),
        usage_recorded("c2", "t2", minute=3),
        customer_created("c2"),
        usage_recorded("c1", "t3", minute=7, properties={}),
    ]

    async def body(store: PostgresEventStore) -> None:
        await store.append(appended[:1])
        await store.append(appended[1:4])
        await store.append(appended[4:])

        rows = await fetch(
            database_url, "SELECT seq, payload, metadata, prev_hash, hash FROM events ORDER BY seq"
        )
        assert [row[0] for row in rows] == [1, 2, 3, 4, 5]
        assert bytes(rows[0][3]) == GENESIS_HASH == bytes(32)
        for previous, row in pairwise(rows):
            assert bytes(row[3]) == bytes(previous[4]), f"prev_hash of seq {row[0]}"
        assert len({bytes(row[4]) for row in rows}) == len(rows)
        assert await head_row(database_url) == (5, bytes(rows[-1][4]))

        for row, event in zip(rows, appended, strict=True):
            assert bytes(row[1]) == canonical_json(to_payload(event.event))
            assert bytes(row[2]) == canonical_json(dict(event.metadata))

        stored = await store.read_all(0, 100)
        prev = GENESIS_HASH
        for event in stored:
            assert recompute_hash(event, prev) == event.hash
            prev = event.hash

    run_with_store(database_url, body)

    payload_type = asyncio.run(
        fetch(
            database_url,
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_name = 'events' AND column_name IN ('payload', 'metadata')",
        )
    )
    assert payload_type == [("bytea",), ("bytea",)]


# 7. Stream versions and reads ----------------------------------------------------------------


def test_stream_versions_count_up_and_expected_version_is_enforced(database_url: str) -> None:
    async def body(store: PostgresEventStore) -> None:
        a1 = usage_recorded("a", "t1", expected_version=0)
        a2 = usage_recorded("a", "t2", minute=1)
        b1 = customer_created("b")
        a3 = usage_recorded("a", "t3", minute=2, expected_version=2)
        assert await store.append([a1]) == [Appended(1, 1)]
        assert await store.append([a2]) == [Appended(2, 2)]
        assert await store.append([b1]) == [Appended(3, 1)]
        assert await store.append([a3]) == [Appended(4, 3)]

        before_rows, before_head = await event_rows(database_url), await head_row(database_url)
        with pytest.raises(DomainError) as conflict:
            await store.append([usage_recorded("a", "t4", expected_version=0)])
        assert conflict.value.rule is Rule.STREAM_VERSION_CONFLICT
        # A conflict anywhere in a batch writes none of it.
        with pytest.raises(DomainError) as batch_conflict:
            await store.append(
                [customer_created("c"), usage_recorded("a", "t5", expected_version=2)]
            )
        assert batch_conflict.value.rule is Rule.STREAM_VERSION_CONFLICT
        assert await event_rows(database_url) == before_rows
        assert await head_row(database_url) == before_head

        # Expected versions inside one batch count the batch's earlier events.
        a4 = usage_recorded("a", "t6", minute=3, expected_version=3)
        a5 = usage_recorded("a", "t7", minute=4, expected_version=4)
        assert await store.append([a4, a5]) == [Appended(5, 4), Appended(6, 5)]
        assert await store.stream_versions(["a", "usage-a", "customer-b", "nope"]) == {
            "usage-a": 5,
            "customer-b": 1,
        }

        stream = await store.read_streams(["usage-a"])
        assert seqs(stream) == [1, 2, 4, 5, 6]
        assert [e.stream_version for e in stream] == [1, 2, 3, 4, 5]
        assert [e.domain_event() for e in stream] == [e.event for e in (a1, a2, a3, a4, a5)]
        assert [e.occurred_at for e in stream] == [e.occurred_at for e in (a1, a2, a3, a4, a5)]

        assert seqs(await store.read_streams(["usage-a"], up_to_seq=4)) == [1, 2, 4]
        assert seqs(await store.read_streams(["usage-a"], up_to_seq=3)) == [1, 2]
        assert await store.read_streams(["usage-a"], up_to_seq=0) == []
        both = await store.read_streams(["customer-b", "usage-a"], up_to_seq=5)
        assert seqs(both) == [1, 2, 3, 4, 5]
        assert both[2].domain_event() == b1.event
        assert await store.read_streams(["nope"]) == []

    run_with_store(database_url, body)


# 8. Scanning ---------------------------------------------------------------------------------


def test_scan_pages_through_all_events_in_order_exactly_once(database_url: str) -> None:
    async def body(store: PostgresEventStore) -> None:
        appended = [usage_recorded(f"c{i % 4}", f"t{i}", minute=i) for i in range(50)]
        for start in range(0, 50, 9):
            await store.append(appended[start : start + 9])

        pages: list[tuple[int, int]] = []
        read_all = store.read_all

        async def spy(after_seq: int, limit: int) -> list[StoredEvent]:
            pages.append((after_seq, limit))
            return await read_all(after_seq, limit)

        store.read_all = spy
        scanned = [event async for event in store.scan(batch=7)]

        assert seqs(scanned) == list(range(1, 51))
        assert [e.domain_event() for e in scanned] == [e.event for e in appended]
        assert [after for after, _ in pages] == list(range(0, 50, 7))
        assert {limit for _, limit in pages} == {7}

        assert seqs([e async for e in store.scan(batch=7, up_to_seq=49)]) == list(range(1, 50))
        assert seqs([e async for e in store.scan(10, 30, batch=7)]) == list(range(11, 31))
        assert seqs([e async for e in store.scan(42, batch=7)]) == list(range(43, 51))
        assert [e async for e in store.scan(50, batch=7)] == []

    run_with_store(database_url, body)


def test_streams_touched_after_name_each_stream_of_the_next_events_once(
    database_url: str,
) -> None:
    async def body(store: PostgresEventStore) -> None:
        await store.append([customer_created(f"c{i}") for i in range(3)])  # seq 1-3
        await store.append([usage_recorded(f"c{i % 3}", f"t{i}") for i in range(10)])  # 4-13

        touched = await store.streams_touched_after(0, 5)
        assert touched.last_seq == 5 and touched.events == 5
        assert sorted(touched.stream_ids) == [
            "customer-c0",
            "customer-c1",
            "customer-c2",
            "usage-c0",
            "usage-c1",
        ]

        touched = await store.streams_touched_after(5, 100)
        assert touched.last_seq == 13 and touched.events == 8  # fewer than asked: caught up
        assert sorted(touched.stream_ids) == ["usage-c0", "usage-c1", "usage-c2"]

        assert await store.streams_touched_after(13, 100) == (13, 0, [])

    run_with_store(database_url, body)


def test_paged_stream_reads_give_every_event_once_in_order_and_stop_cleanly(
    database_url: str,
) -> None:
    """Each page is requested before the last is handed out: none is lost or doubled
    (nor reordered, where ledger order is asked for), and a reader that stops early
    leaves the connection usable."""

    async def body(store: PostgresEventStore) -> None:
        appended = [usage_recorded(f"c{i % 2}", f"t{i}", minute=i) for i in range(23)]
        await store.append(appended)
        span = (BASE_TIME, BASE_TIME + timedelta(days=1))
        async with store._pool.connection() as conn, conn.transaction():
            pages = [
                [seq for seq, _, _ in page]
                async for page in iter_payloads_between(conn, "usage-c0", span, (0, 23), batch=4)
            ]
            assert [len(page) for page in pages] == [4, 4, 4]
            # A replay's payloads come in no set order: each exactly once.
            assert sorted(seq for page in pages for seq in page) == list(range(1, 24, 2))
            events = iter_stream_between(conn, "usage-c1", span, (0, 23), batch=3)
            first = await anext(events)
            assert seqs(first) == [2, 4, 6]
            await events.aclose()  # the next page was in flight
            streamed = [e.seq async for e in iter_streams(conn, ["usage-c0", "usage-c1"], 20, 5)]
            assert streamed == list(range(1, 21))
            cur = await conn.execute("SELECT count(*) FROM events")
            assert await cur.fetchone() == (23,)

    run_with_store(database_url, body)
