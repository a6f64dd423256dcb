"""Four-eyes publishing against the real ledger: what is re-checked when a draft goes live."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from ledger.app.catalog import MetricInput, RateCardInput
from ledger.app.context import RequestContext
from ledger.core.catalog import Product
from ledger.core.errors import DomainError, Rule
from ledger.core.rate_specs import RateSpec
from services.bootstrap import App, running_app
from services.config import Settings

AUTHOR = RequestContext(actor="pat", reason="pricing change")
APPROVER = RequestContext(actor="quinn", reason="reviewed")
DRAFTED_AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = DRAFTED_AT

    def __call__(self) -> datetime:
        return self.now


def run(database_url: str, clock: Clock, body: Callable[[App], Awaitable[None]]) -> None:
    settings = dataclasses.replace(Settings.from_env({}), run_projector=False)

    async def main() -> None:
        async with running_app(settings, database_url, clock=clock) as app:
            await app.catalog.create_metric(
                MetricInput("tokens", "Tokens", "completion", "SUM", "tokens"), AUTHOR
            )
            await app.catalog.create_product(Product("llm", "LLM", "tokens"), AUTHOR)
            await body(app)

    asyncio.run(main())


def card(decimals: int | None, effective_from: datetime | None = None) -> RateCardInput:
    rates = [RateSpec("llm", "per_unit", "0.5")]
    return RateCardInput("credits-card", "Credits", "CREDITS", decimals, effective_from, rates)


async def approved_draft(app: App, cmd: RateCardInput) -> int:
    draft, _ = await app.catalog.draft_rate_card(cmd, AUTHOR)
    await app.catalog.approve_draft(cmd.rate_card_id, draft.draft, APPROVER)
    return draft.draft


def test_a_draft_whose_unit_no_longer_matches_the_published_card_is_refused(
    database_url: str,
) -> None:
    async def body(app: App) -> None:
        two_places = await approved_draft(app, card(2, DRAFTED_AT))
        four_places = await approved_draft(app, card(4, DRAFTED_AT))  # valid when drafted
        published, _ = await app.catalog.publish_draft("credits-card", two_places, AUTHOR)
        assert (published.version, published.currency_decimals) == (1, 2)
        with pytest.raises(DomainError) as refused:
            await app.catalog.publish_draft("credits-card", four_places, AUTHOR)
        assert refused.value.rule is Rule.DRAFT_STALE
        assert "CREDITS with 2 places" in refused.value.message

    run(database_url, Clock(), body)


def test_an_undated_draft_takes_effect_when_published(database_url: str) -> None:
    clock = Clock()

    async def body(app: App) -> None:
        number = await approved_draft(app, card(2))
        clock.now = DRAFTED_AT + timedelta(days=4)  # approved and published days later
        published, _ = await app.catalog.publish_draft("credits-card", number, AUTHOR)
        assert published.effective_from == clock.now
        stored = await app.catalog.get_rate_card("credits-card", 1)
        assert stored.effective_from == clock.now

    run(database_url, clock, body)
