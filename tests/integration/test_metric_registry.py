"""The metric registry reads the ledger once; an append catches a metric created
since, behind the ledger's lock, and the call is screened again with it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import pytest

from ledger.app.catalog import MetricInput, MetricRegistry
from ledger.app.context import RequestContext
from ledger.app.usage import UsageInput, UsageStatus
from ledger.core.errors import DomainError, Rule
from ledger.store.records import ConditionFailedError, NewEvent, NoneAfter, StoredEvent
from services.bootstrap import App
from tests.integration.test_projection_ops import NOW, run_app

CTX = RequestContext(actor="test", reason="metric registry test")


def counting_reads(app: App, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the reads of metric events; each is recorded with its ``after_seq``."""
    reads: list[int] = []
    real = app.store.read_types

    async def read_types(
        event_types: Sequence[str], after_seq: int, up_to_seq: int | None = None
    ) -> list[StoredEvent]:
        if "BillableMetricCreated" in event_types:
            reads.append(after_seq)
        return await real(event_types, after_seq, up_to_seq)

    monkeypatch.setattr(app.store, "read_types", read_types)
    return reads


def tokens(n: int, value: str, customer: str = "acme") -> UsageInput:
    return UsageInput(f"t{n}", customer, "llm", NOW - timedelta(minutes=1), {"tokens": value})


def test_calls_share_one_read_of_the_metrics(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(app: App) -> None:
        await app.customers.create_customer("acme", "Acme", CTX)
        await app.catalog.create_metric(MetricInput("calls", "Calls", "call", "COUNT", ""), CTX)
        reads = counting_reads(app, monkeypatch)
        registry = MetricRegistry(app.store)
        answers = await asyncio.gather(*(registry.known() for _ in range(30)))
        assert all(set(answer.metrics) == {"calls"} for answer in answers)
        assert len(reads) == 1, "the callers queued behind the first read took its answer"

        app.record_usage._metrics = registry  # type: ignore[attr-defined]
        results = await asyncio.gather(
            *(app.record_usage([tokens(n, "5")], CTX) for n in range(40))
        )
        assert all(r.status is UsageStatus.ACCEPTED for (r,) in results)
        assert len(reads) == 1, "calls do not read the metrics while none is created"

    run_app(database_url, body)


def test_a_metric_created_after_the_read_is_enforced_by_the_next_write(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry is behind: the append's condition fails, nothing is written,
    and the call is screened again with the new metric, which refuses a quantity
    that is not a number."""

    async def body(app: App) -> None:
        await app.customers.create_customer("acme", "Acme", CTX)
        assert await app.record_usage([tokens(1, "many")], CTX)  # the registry has read
        reads = counting_reads(app, monkeypatch)
        await app.catalog.create_metric(
            MetricInput("tokens", "Tokens", "llm", "SUM", "tokens"), CTX
        )

        first, second = await app.record_usage([tokens(2, "many"), tokens(3, "7")], CTX)

        assert first.status is UsageStatus.REJECTED
        assert "must be a decimal number" in first.reason
        assert second.status is UsageStatus.ACCEPTED
        assert len(reads) == 1, "read again once, after the write found the metric"
        async with app.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT idempotency_key FROM events WHERE event_type = 'UsageRecorded' ORDER BY seq"
            )
            keys = [key for (key,) in await cur.fetchall()]
        assert len(keys) == 2 and "t3" in keys[1], "t2 was never written"

    run_app(database_url, body)


def test_a_failed_read_is_not_taken_for_a_read(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh that fails leaves the registry as it was; the next one reads."""

    async def body(app: App) -> None:
        registry = MetricRegistry(app.store)
        before = await registry.known()
        await app.catalog.create_metric(MetricInput("calls", "Calls", "call", "COUNT", ""), CTX)
        real = app.store.read_types
        failures = [OSError("connection lost")]

        async def failing_once(
            event_types: Sequence[str], after_seq: int, up_to_seq: int | None = None
        ) -> list[StoredEvent]:
            if failures:
                raise failures.pop()
            return await real(event_types, after_seq, up_to_seq)

        monkeypatch.setattr(app.store, "read_types", failing_once)
        with pytest.raises(OSError, match="connection lost"):
            await registry.refresh(before)
        assert await registry.known() is before
        after = await registry.refresh(before)
        assert "calls" in after.metrics and after.seq > before.seq

    run_app(database_url, body)


def test_a_call_refused_on_every_screening_is_aborted_to_retry(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metrics created again and again while a call is written: after three
    screenings it gives up with a retryable conflict, and writes nothing."""

    async def body(app: App) -> None:
        await app.customers.create_customer("acme", "Acme", CTX)
        reads = counting_reads(app, monkeypatch)
        attempts: list[NoneAfter] = []

        async def always_behind(
            events: Sequence[NewEvent], conditions: Sequence[NoneAfter] = ()
        ) -> list[object]:
            (condition,) = conditions
            attempts.append(condition)
            raise ConditionFailedError(condition, condition.seq + 1)

        monkeypatch.setattr(app.record_usage, "_append", always_behind)
        with pytest.raises(DomainError) as aborted:
            await app.record_usage([tokens(1, "5")], CTX)
        assert aborted.value.rule is Rule.METRICS_CHANGING
        assert len(attempts) == 3
        assert len(reads) == 3, "its first read, then one between screenings, none after"

    run_app(database_url, body)
