"""RecordUsage remembers customers it has seen: the ledger never forgets one."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

import pytest

from ledger.app.context import RequestContext
from ledger.app.usage import UsageInput, UsageStatus
from services.bootstrap import App
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
