"""A draft read from rollups plus raw edges and tail equals a replay of raw events.

Both paths must give byte-identical invoices whatever the projection's progress:
partial hours at period and price-change edges, events beyond the checkpoint,
several groups, unusable events, and a metric created after its usage arrived.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ledger.app.billing import replay_invoice
from ledger.app.catalog import MetricInput, RateCardInput
from ledger.app.context import RequestContext
from ledger.app.customers import ContractInput
from ledger.app.usage import UsageInput, UsageStatus
from ledger.core.catalog import Product
from ledger.core.invoice import InvoiceLine, LineKind, canonical_invoice
from ledger.core.rate_specs import RateSpec, TierSpec
from projections import invoicing
from services.bootstrap import App, running_app
from services.config import Settings
from tests.integration.pricing import publish_approved

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
START = datetime(2026, 2, 10, 10, 30, tzinfo=UTC)  # anchor off the hour: partial edges
PRICE_CHANGE = datetime(2026, 3, 15, 7, 45, tzinfo=UTC)
CTX = RequestContext(actor="test", reason="integration test")


def run(database_url: str, body: Callable[[App], Awaitable[None]]) -> None:
    settings = dataclasses.replace(Settings.from_env({}), run_projector=False)

    async def main() -> None:
        async with running_app(settings, database_url, clock=lambda: NOW) as app:
            await body(app)

    asyncio.run(main())


async def price_list(app: App, version_rates: list[tuple[datetime, str, str]]) -> None:
    for effective_from, tokens_price, calls_price in version_rates:
        rates = [
            RateSpec("llm", "per_unit", tokens_price),
            RateSpec("llm", "per_unit", "0.000004", group_values={"model": "large"}),
            RateSpec("api", "per_unit", calls_price, minimum="0.50"),
            RateSpec("users", "graduated", tiers=[TierSpec("2", "0"), TierSpec("", "1.5")]),
            RateSpec("level", "volume", tiers=[TierSpec("10", "2", "1"), TierSpec("", "1")]),
        ]
        card = RateCardInput("list", "List", "USD", None, effective_from, rates)
        await publish_approved(app.catalog, card, CTX)


PERIOD_2 = datetime(2026, 3, 10, 10, 30, tzinfo=UTC)
# Minutes around every edge that falls inside an hour, where rollups cannot be used.
EDGE_MINUTES = (-20, -5, -1, 0, 1, 5, 20)


def edge_events(offset: int) -> list[UsageInput]:
    events = []
    for n, minutes in enumerate(EDGE_MINUTES):
        for edge in (PERIOD_2, PRICE_CHANGE):
            at = edge + timedelta(minutes=minutes)
            props = {"model": "small", "tokens": str(1000 + n)}
            events.append(UsageInput(f"e{offset}-{edge:%d}-{n}", "acme", "completion", at, props))
            events.append(UsageInput(f"c{offset}-{edge:%d}-{n}", "acme", "api_call", at, {}))
    return events


def usage_events(rng: random.Random, count: int, offset: int) -> list[UsageInput]:
    earliest = NOW - timedelta(days=33)
    events = edge_events(offset)
    for n in range(offset, offset + count):
        at = earliest + timedelta(seconds=rng.randrange(int(timedelta(days=33).total_seconds())))
        if n % 3 == 0:
            props = {"region": rng.choice(["eu", "us"]), "user": rng.choice("abcdefgh")}
            events.append(UsageInput(f"t{n}", "acme", "api_call", at, props))
            continue
        if n % 5 == 0:
            # Whole minutes, so some gauge readings share a timestamp: ledger order decides.
            level = {"level": str(rng.randrange(0, 40))}
            whole = at.replace(second=0, microsecond=0)
            events.append(UsageInput(f"t{n}", "acme", "gauge", whole, level))
            events.append(UsageInput(f"t{n}b", "acme", "gauge", whole, {"level": "7"}))
            continue
        props = {"model": rng.choice(["small", "large"]), "tokens": str(rng.randrange(1, 10**6))}
        if n % 17 == 0:
            del props["tokens"]  # accepted, reported as unbilled
        events.append(UsageInput(f"t{n}", "acme", "completion", at, props))
    return events


async def assert_drafts_equal_replays(app: App) -> int:
    checked = 0
    for at in (START + timedelta(days=5), NOW - timedelta(hours=1)):
        draft = await app.invoicing.get(customer_id="acme", at=at)
        async with app.pool.connection() as conn:
            replayed = await replay_invoice(
                conn, draft.invoice.invoice_id, draft.invoice.computed_through_seq
            )
        assert canonical_invoice(draft.invoice) == canonical_invoice(replayed)
        billed = {line.product_id for line in draft.invoice.lines if line.quantity > 0}
        assert billed == {"llm", "api", "users", "level"}, "every metric kind is exercised"
        checked += 1
    return checked


async def set_up_world(app: App, rng: random.Random) -> None:
    """Four metrics of every kind, two price versions, a contract and 300 events."""
    await app.catalog.create_metric(
        MetricInput("tokens", "Tokens", "completion", "SUM", "tokens", group_by=["model"]),
        CTX,
    )
    await app.catalog.create_product(Product("llm", "LLM", "tokens"), CTX)
    await app.customers.create_customer("acme", "Acme", CTX)
    first = usage_events(rng, 300, 0)
    results = await app.record_usage(first, CTX)
    assert all(r.status is UsageStatus.ACCEPTED for r in results)

    # The calls metric arrives after usage it measures: rollups must back-fill it.
    await app.catalog.create_metric(
        MetricInput("calls", "Calls", "api_call", "COUNT", "", group_by=["region"]), CTX
    )
    await app.catalog.create_product(Product("api", "API", "calls"), CTX)
    await app.catalog.create_metric(
        MetricInput("users", "Users", "api_call", "UNIQUE", "user", group_by=["region"]), CTX
    )
    await app.catalog.create_product(Product("users", "Active users", "users"), CTX)
    await app.catalog.create_metric(MetricInput("level", "Level", "gauge", "LATEST", "level"), CTX)
    await app.catalog.create_product(Product("level", "Level", "level"), CTX)
    await price_list(app, [(START - timedelta(days=9), "0.000002", "0.01")])
    await price_list(app, [(PRICE_CHANGE, "0.0000025", "0.012")])
    await app.customers.create_contract(
        ContractInput("acme-1", "acme", "list", None, START, None, None), CTX
    )


def test_drafts_from_rollups_equal_replays_at_every_stage(database_url: str) -> None:
    async def body(app: App) -> None:
        rng = random.Random(20261123)
        await set_up_world(app, rng)
        assert await assert_drafts_equal_replays(app) == 2  # nothing rolled up yet
        await app.runner.run_batch(
            app.runner.projection("usage_rollups", 1), limit=150
        )  # part of the ledger
        assert await assert_drafts_equal_replays(app) == 2
        await app.runner.catch_up()
        assert await assert_drafts_equal_replays(app) == 2  # everything rolled up
        await app.record_usage(usage_events(rng, 200, 300), CTX)
        assert await assert_drafts_equal_replays(app) == 2  # a raw tail again

    run(database_url, body)


def test_drafts_folding_their_raw_events_in_small_batches_equal_replays(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(invoicing, "TAIL_BATCH", 7)  # tails of hundreds: many batches

    async def body(app: App) -> None:
        await set_up_world(app, random.Random(5))
        assert await assert_drafts_equal_replays(app) == 2  # every event in the tail
        await app.runner.run_batch(app.runner.projection("usage_rollups", 1), limit=150)
        assert await assert_drafts_equal_replays(app) == 2  # and fresh metrics' events

    run(database_url, body)


def test_late_usage_adjustments_equal_replays_at_every_stage(database_url: str) -> None:
    """Usage for a finalized period, found through the late-usage projection or the
    ledger beyond its checkpoint, bills the same adjustments as a replay."""

    async def body(app: App) -> None:
        rng = random.Random(20261124)
        await set_up_world(app, rng)
        first = await app.invoicing.get(customer_id="acme", at=START + timedelta(days=5))
        await app.invoicing.finalize(first.invoice.invoice_id, CTX)
        late_at = PERIOD_2 - timedelta(days=3)
        late = [
            UsageInput(f"late{n}", "acme", "completion", late_at, {"tokens": "1000"})
            for n in range(3)
        ]
        assert all(r.status is UsageStatus.ACCEPTED for r in await app.record_usage(late, CTX))

        async def adjustments() -> list[InvoiceLine]:
            draft = await app.invoicing.get(customer_id="acme", at=NOW - timedelta(hours=1))
            async with app.pool.connection() as conn:
                replayed = await replay_invoice(
                    conn, draft.invoice.invoice_id, draft.invoice.computed_through_seq
                )
            assert canonical_invoice(draft.invoice) == canonical_invoice(replayed)
            return [line for line in draft.invoice.lines if line.kind is LineKind.ADJUSTMENT]

        [before] = await adjustments()  # nothing projected yet: all from the ledger
        assert (before.product_id, before.quantity) == ("llm", Decimal(3000))
        assert before.adjusts_invoice_id == first.invoice.invoice_id
        await app.runner.run_batch(app.runner.projection("late_usage", 1), limit=400)
        assert await adjustments() == [before]  # part projected
        await app.runner.catch_up()
        assert await adjustments() == [before]  # all projected
        more = UsageInput("late-more", "acme", "completion", late_at, {"tokens": "500"})
        await app.record_usage([more], CTX)
        [after] = await adjustments()  # the projection and a raw tail
        assert after.quantity == Decimal(3500)

    run(database_url, body)


def test_a_latest_reading_merged_over_several_batches_is_the_latest(database_url: str) -> None:
    """Each event in its own batch, so every one after the first is merged into the
    hour's rollup row on conflict: the later reading wins by timestamp, then seq."""
    hour = NOW - timedelta(hours=5)
    readings = [  # (minutes into the hour, level), in the order they are recorded
        (30, "5"),
        (10, "9"),  # an earlier reading, recorded later: not the latest
        (30, "6"),  # the same instant as the first, later in the ledger: the latest
        (20, "3"),
    ]

    async def body(app: App) -> None:
        await app.catalog.create_metric(
            MetricInput("level", "Level", "gauge", "LATEST", "level"), CTX
        )
        await app.customers.create_customer("acme", "Acme", CTX)
        projection = app.runner.projection("usage_rollups", 1)
        await app.runner.catch_up()
        seqs = []
        for n, (minutes, level) in enumerate(readings):
            at = hour + timedelta(minutes=minutes)
            event = UsageInput(f"g{n}", "acme", "gauge", at, {"level": level})
            (result,) = await app.record_usage([event], CTX)
            assert result.status is UsageStatus.ACCEPTED
            seqs.append((await app.store.head()).seq)
            await app.runner.run_batch(projection, limit=100)
        async with app.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT event_count, latest_at, latest_seq, latest_value"
                f" FROM {projection.rollups} WHERE metric_id = 'level'"
            )
            rows = await cur.fetchall()
        assert rows == [(4, hour + timedelta(minutes=30), seqs[2], Decimal(6))]

    run(database_url, body)
