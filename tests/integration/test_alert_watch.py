"""The alert watch across restarts: crossings made while no watch ran are found when one
starts, and starting again (or twice at once) records nothing twice."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime
from decimal import Decimal

from ledger.app.alerts import AlertInput
from ledger.app.context import RequestContext
from ledger.app.streams import customer_stream
from ledger.core.credits import Grant, GrantKind
from ledger.core.events import CreditDrawnDown, CreditGranted, DomainEvent, SpendAlertTriggered
from ledger.store.records import NewEvent
from services.alerting import AlertFollower
from services.bootstrap import App, running_app
from services.config import Settings

CTX = RequestContext(actor="test")
START = datetime(2020, 1, 1, tzinfo=UTC)


async def append(app: App, *events: DomainEvent) -> None:
    now = datetime.now(UTC)
    await app.store.append(
        [NewEvent(customer_stream("down"), event, occurred_at=now) for event in events]
    )


def credit(grant_id: str, amount: str) -> CreditGranted:
    grant = Grant(grant_id, "down", GrantKind.CREDIT, Decimal(amount), "USD", START, None)
    return CreditGranted(grant)


def drawdown(grant_id: str, amount: str) -> CreditDrawnDown:
    return CreditDrawnDown(grant_id, "in-x-1", Decimal(amount), datetime.now(UTC))


async def crossings(app: App) -> list[tuple[str, Decimal]]:
    [view] = await app.alerts.list_alerts("down")
    return [(c.event.crossing_key, c.event.value) for c in view.crossings]


async def watch_until(app: App, count: int, *, watches: int = 1) -> None:
    """Run ``watches`` fresh alert watches at once until ``count`` crossings are recorded,
    then a little longer."""
    followers = [AlertFollower(app.store, app.alerts, poll_s=0.05) for _ in range(watches)]
    for follower in followers:
        follower.start()
    deadline = time.monotonic() + 20
    while len(await crossings(app)) < count:
        assert time.monotonic() < deadline, await crossings(app)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    for follower in followers:
        await follower.stop()


async def scenario(app: App) -> None:
    await app.customers.create_customer("down", "Down", CTX)
    await append(app, credit("g-1", "300.00"))
    alert = AlertInput("low", "down", "remaining_balance", "100", "USD")
    view, _ = await app.alerts.set_alert(alert, CTX)
    assert view.crossings == ()
    # Two crossings while nothing watches: down to 50, back up to 250, down to 50.
    await append(app, drawdown("g-1", "250.00"))
    await append(app, credit("g-2", "200.00"))
    await append(app, drawdown("g-2", "200.00"))
    await watch_until(app, 2)
    expected = [("1", Decimal("50.00")), ("2", Decimal("50.00"))]
    assert await crossings(app) == expected
    # Restarted, three watches at once: nothing new happened, nothing is recorded.
    await watch_until(app, 2, watches=3)
    assert await crossings(app) == expected
    stored = await app.store.read_types([SpendAlertTriggered.EVENT_TYPE], 0)
    assert len(stored) == 2


def test_a_watch_that_starts_finds_what_crossed_while_none_ran(database_url: str) -> None:
    settings = dataclasses.replace(Settings.from_env({}), run_projector=False)

    async def main() -> None:
        async with running_app(settings, database_url) as app:
            await scenario(app)

    asyncio.run(main())
