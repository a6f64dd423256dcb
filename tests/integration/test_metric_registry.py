"""The metric registry shares reads between concurrent callers, never a stale one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from ledger.app import catalog
from ledger.app.catalog import MetricInput, MetricRegistry
from ledger.app.context import RequestContext
from ledger.store.records import StoredEvent
from services.bootstrap import App
from tests.integration.test_projection_ops import run_app

CTX = RequestContext(actor="test", reason="metric registry test")


def counting_reads(app: App, monkeypatch: pytest.MonkeyPatch, pause_s: float = 0.0) -> list[int]:
    """Count the registry's reads of the ledger; each may pause after reading."""
    reads: list[int] = []
    real = app.store.read_types

    async def read_types(
        event_types: Sequence[str], after_seq: int, up_to_seq: int | None = None
    ) -> list[StoredEvent]:
        found = await real(event_types, after_seq, up_to_seq)
        reads.append(after_seq)
        await asyncio.sleep(pause_s)  # as a slow read would, after its snapshot
        return found

    monkeypatch.setattr(app.store, "read_types", read_types)
    return reads


def test_concurrent_callers_share_a_read(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(app: App) -> None:
        await app.catalog.create_metric(MetricInput("calls", "Calls", "call", "COUNT", ""), CTX)
        registry = MetricRegistry(app.store)
        reads = counting_reads(app, monkeypatch, pause_s=0.01)
        answers = await asyncio.gather(*(registry.current() for _ in range(30)))
        assert all(set(answer) == {"calls"} for answer in answers)
        # The first caller reads; those who arrived during its read share the next.
        assert len(reads) == 2

    run_app(database_url, body)


def test_a_metric_created_before_a_call_is_seen_by_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(app: App) -> None:
        registry = MetricRegistry(app.store)
        reads = counting_reads(app, monkeypatch, pause_s=0.2)
        in_flight = asyncio.create_task(registry.current())
        await asyncio.sleep(0.05)  # its read is done and it is still pausing
        assert len(reads) == 1
        await app.catalog.create_metric(MetricInput("calls", "Calls", "call", "COUNT", ""), CTX)
        assert "calls" in await registry.current()  # not the in-flight read's answer
        assert "calls" not in await in_flight  # which began before the metric existed
        assert len(reads) == 2

    run_app(database_url, body)


def test_a_failed_read_is_not_shared(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Callers queued behind a read that fails read again; they never take the
    metrics of an older read as if the failed one had happened."""

    async def body(app: App) -> None:
        registry = MetricRegistry(app.store)
        real = app.store.read_types
        reads: list[int] = []

        async def slow_then_failing(
            event_types: Sequence[str], after_seq: int, up_to_seq: int | None = None
        ) -> list[StoredEvent]:
            reads.append(after_seq)
            if len(reads) == 2:
                raise OSError("connection lost")
            found = await real(event_types, after_seq, up_to_seq)
            if len(reads) == 1:
                await asyncio.sleep(0.1)  # the first read's snapshot is already taken
            return found

        monkeypatch.setattr(app.store, "read_types", slow_then_failing)
        first = asyncio.create_task(registry.current())
        await asyncio.sleep(0.02)
        await app.catalog.create_metric(MetricInput("calls", "Calls", "call", "COUNT", ""), CTX)
        failing = asyncio.create_task(registry.current())  # will read, and fail
        queued = asyncio.create_task(registry.current())  # queued behind it
        assert "calls" not in await first  # it read before the metric existed
        with pytest.raises(OSError, match="connection lost"):
            await failing
        assert "calls" in await queued  # read again, not the first read's answer
        assert len(reads) == 3

    run_app(database_url, body)


def test_callers_arriving_while_a_read_gathers_share_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With callers waiting, a read waits for more while they keep coming; a caller
    alone reads at once. Every caller still sees what was created before it."""
    monkeypatch.setattr(catalog, "GATHER_STEP_S", 0.2)
    monkeypatch.setattr(catalog, "GATHER_MAX_S", 5.0)  # it stops when callers stop coming

    async def body(app: App) -> None:
        registry = MetricRegistry(app.store)
        reads = counting_reads(app, monkeypatch)
        started = asyncio.get_running_loop().time()
        await registry.current()  # alone: no gathering
        assert asyncio.get_running_loop().time() - started < 0.2
        assert len(reads) == 1

        reads.clear()
        first = asyncio.create_task(registry.current())  # reads at once, alone
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(registry.current()) for _ in range(3)]
        await first  # the waiting three share the next read, which gathers
        await asyncio.sleep(0.05)  # during its first step
        await app.catalog.create_metric(MetricInput("calls", "Calls", "call", "COUNT", ""), CTX)
        late = [asyncio.create_task(registry.current()) for _ in range(3)]
        answers = await asyncio.gather(*waiting, *late)
        assert len(reads) == 2, reads  # the late callers joined the gathering read
        assert asyncio.get_running_loop().time() - started < 2.0  # two steps, not 5 s
        assert all("calls" in answer for answer in answers)

    run_app(database_url, body)
