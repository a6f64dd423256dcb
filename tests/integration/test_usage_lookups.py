"""RecordUsage remembers customers it has seen: the ledger never forgets one."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Sequence
from datetime import timedelta

import pytest

from ledger.app.context import RequestContext
from ledger.app.usage import UsageInput, UsageStatus
from services.bootstrap import App, running_app
from services.config import Settings
from tests.integration.test_projection_ops import NOW, run_app

CTX = RequestContext(actor="test", reason="usage lookup test")


def test_a_known_customer_is_looked_up_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(app: App) -> None:
        lookups: list[set[str]] = []
        real = app.store.stream_versions

        async def counted(stream_ids: Iterable[str]) -> dict[str, int]:
            lookups.append(set(stream_ids))
            return await real(stream_ids)

        monkeypatch.setattr(app.store, "stream_versions", counted)

        def usage(n: int, customer: str) -> list[UsageInput]:
            return [UsageInput(f"t{n}", customer, "api_call", NOW - timedelta(minutes=n), {})]

        (first,) = await app.record_usage(usage(1, "acme"), CTX)
        assert first.status is UsageStatus.REJECTED  # not a customer yet: not remembered
        await app.customers.create_customer("acme", "Acme", CTX)
        for n in range(2, 5):
            (result,) = await app.record_usage(usage(n, "acme"), CTX)
            assert result.status is UsageStatus.ACCEPTED
        assert lookups == [{"customer-acme"}, {"customer-acme"}]  # then remembered

    run_app(database_url, body)


def test_a_retry_is_answered_from_the_ledger_whatever_the_rules_say_now(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Usage accepted once is DUPLICATE on retry even after the late window has
    closed on it; the same id for another event is still refused as a reuse. New,
    valid events read no idempotency keys before their append."""
    now = [NOW]
    settings = dataclasses.replace(Settings.from_env({}), run_projector=False)
    occurred = NOW - timedelta(days=1)

    def event(tokens: str) -> list[UsageInput]:
        return [UsageInput("t1", "acme", "api_call", occurred, {"tokens": tokens})]

    async def main() -> None:
        async with running_app(settings, database_url, clock=lambda: now[0]) as app:
            await app.customers.create_customer("acme", "Acme", CTX)
            key_reads: list[list[str]] = []
            real = app.store.find_keys

            async def find_keys(keys: Sequence[str]) -> dict[str | None, tuple[int, str | None]]:
                key_reads.append(list(keys))
                return await real(keys)

            monkeypatch.setattr(app.store, "find_keys", find_keys)
            (first,) = await app.record_usage(event("5"), CTX)
            assert first.status is UsageStatus.ACCEPTED
            assert key_reads == []  # a new, valid event: the append checks its key
            now[0] = NOW + timedelta(days=40)  # the late window has closed on it
            (retry,) = await app.record_usage(event("5"), CTX)
            assert (retry.status, retry.seq) == (UsageStatus.DUPLICATE, first.seq)
            (other,) = await app.record_usage(event("6"), CTX)
            assert other.status is UsageStatus.REJECTED
            assert "already used for a different event" in other.reason
            (fresh,) = await app.record_usage(
                [UsageInput("t2", "acme", "api_call", occurred, {})], CTX
            )
            assert fresh.status is UsageStatus.REJECTED  # too late, and never accepted
            assert "already used" not in fresh.reason

    asyncio.run(main())
