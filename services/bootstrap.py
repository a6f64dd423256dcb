"""One place that wires everything: pool, store, handlers, projections, servicers.

Tests use the same wiring with a test database and, where they need it, a
controlled clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from ledger.app.alerts import SpendAlerts
from ledger.app.balances import BalanceCommands
from ledger.app.catalog import CatalogCommands, MetricRegistry
from ledger.app.costs import ProductCosts
from ledger.app.customers import CustomerCommands
from ledger.app.security import AccessAudit
from ledger.app.usage import RecordUsage
from ledger.core.validation import UsagePolicy
from ledger.store.event_store import Pool, PostgresEventStore
from ledger.store.group_commit import GroupCommitter
from projections.audit_log import AuditLog
from projections.auditing import Auditing
from projections.balances import BalanceProjection, Balances
from projections.engine import ProjectionFactory, ProjectionRunner
from projections.entitlements import EntitlementProjection, Entitlements
from projections.forecasting import Forecasting
from projections.invoicing import Invoicing
from projections.late_usage import LateUsage
from projections.reporting import Reporting
from projections.revenue import RevenueProjection
from projections.statements import Statements
from projections.usage_rollups import UsageRollups
from services.alerting import AlertFollower, current_spend
from services.auth.credentials import CredentialStore
from services.config import DB_WAIT_S_DEFAULT, Settings

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class App:
    """The wired application; servicers take their handlers from here."""

    settings: Settings
    pool: Pool
    store: PostgresEventStore
    record_usage: RecordUsage
    catalog: CatalogCommands
    customers: CustomerCommands
    invoicing: Invoicing
    auditing: Auditing
    runner: ProjectionRunner
    committer: GroupCommitter
    credentials: CredentialStore
    access_audit: AccessAudit
    alerts: SpendAlerts
    alerting: AlertFollower  # started and stopped with the gRPC server
    grants: BalanceCommands
    balances: Balances
    entitlements: Entitlements
    reporting: Reporting
    forecasting: Forecasting
    statements: Statements
    costs: ProductCosts


# The projection runner holds two connections (its leases, its listener) and
# applies batches on a third.
PROJECTOR_POOL_MAX: Final = 4

# Every projection the runner keeps, by name; a class builds any version of it.
PROJECTIONS: Final[dict[str, ProjectionFactory]] = {
    UsageRollups.name: UsageRollups,
    AuditLog.name: AuditLog,
    LateUsage.name: LateUsage,
    BalanceProjection.name: BalanceProjection,
    EntitlementProjection.name: EntitlementProjection,
    RevenueProjection.name: RevenueProjection,
}


def wire(
    settings: Settings, pool: Pool, clock: Clock = utc_now, projector_pool: Pool | None = None
) -> App:
    """Build the application over an open pool.

    The projection runner uses ``projector_pool`` if given (the role that owns
    the projection tables), everything else ``pool``.
    """
    store = PostgresEventStore(pool, clock)
    policy = UsagePolicy(late_window=settings.late_usage, future_tolerance=settings.future_usage)
    catalog = CatalogCommands(store, clock)
    committer = GroupCommitter(store)
    invoicing = Invoicing(
        pool,
        store=store,
        rollups=UsageRollups,
        clock=clock,
        finalize_grace=settings.finalize_grace,
        catalog=catalog,
    )
    alerts = SpendAlerts(pool, store, clock, current_spend(invoicing))
    return App(
        settings=settings,
        pool=pool,
        store=store,
        record_usage=RecordUsage(
            store, MetricRegistry(store), clock, policy, append=committer.append
        ),
        catalog=catalog,
        customers=CustomerCommands(store, clock),
        invoicing=invoicing,
        auditing=Auditing(
            pool, store=store, catalog=catalog, invoicing=invoicing, audit_log=AuditLog
        ),
        runner=ProjectionRunner(projector_pool or pool, PROJECTIONS),
        committer=committer,
        credentials=CredentialStore(pool, cache_s=settings.credential_cache_s),
        access_audit=AccessAudit(store, clock),
        alerts=alerts,
        alerting=AlertFollower(store, alerts),
        grants=BalanceCommands(store, clock),
        balances=Balances(pool, store=store, projection=BalanceProjection),
        entitlements=Entitlements(pool, store=store, clock=clock, projection=EntitlementProjection),
        reporting=Reporting(pool, store=store, invoicing=invoicing),
        forecasting=Forecasting(pool, invoicing=invoicing, clock=clock),
        statements=Statements(pool, store=store, invoicing=invoicing, clock=clock),
        costs=ProductCosts(store, clock),
    )


def open_pool(
    database_url: str, max_size: int, wait_s: int = DB_WAIT_S_DEFAULT, name: str = "accrual"
) -> Pool:
    """A pool that fails fast while the database is away and recovers soon after.

    A call waits at most ``wait_s`` for a connection (then UNAVAILABLE, not a
    hang), and reconnection gives up after a few seconds, so the next call
    starts a fresh attempt instead of waiting out an ever longer back-off.
    """
    return AsyncConnectionPool(
        utc_sessions(database_url),
        min_size=1,
        max_size=max_size,
        open=False,
        name=name,
        timeout=wait_s,
        reconnect_timeout=2 * wait_s,
        kwargs={"connect_timeout": wait_s},
    )


def utc_sessions(database_url: str) -> str:
    """The URL with its sessions in UTC, whatever the server's default zone.

    Instants then arrive as ``datetime.UTC`` rather than a ``ZoneInfo``, which
    psycopg builds in a third of the time (reading a batch's two timestamps went
    from 1.1 to 0.8 us a row), and SQL that truncates instants truncates UTC days.
    """
    params = conninfo_to_dict(database_url)
    # libpq reads PGOPTIONS only when the URL sets no options; these now always
    # do, so the environment's are carried over.
    options = str(params.get("options") or os.environ.get("PGOPTIONS", ""))
    return make_conninfo(database_url, options=f"{options} -c TimeZone=UTC".strip())


@contextlib.asynccontextmanager
async def _pools(
    settings: Settings, database_url: str, projector_url: str | None
) -> AsyncIterator[tuple[Pool, Pool]]:
    """The app's pool and the projection runner's (the same one when the URLs are)."""
    async with open_pool(database_url, settings.db_pool_max, settings.db_wait_s) as pool:
        await pool.wait(timeout=30)
        if projector_url is None or projector_url == database_url:
            yield pool, pool
            return
        async with open_pool(
            projector_url, PROJECTOR_POOL_MAX, settings.db_wait_s, name="accrual-projector"
        ) as projector_pool:
            await projector_pool.wait(timeout=30)
            yield pool, projector_pool


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings,
    database_url: str,
    clock: Clock = utc_now,
    *,
    projector_url: str | None = None,
) -> AsyncIterator[App]:
    """An app with an open pool, projection tables, and (if enabled) the projector running.

    ``database_url`` is what the app connects as (the service role: it appends
    and reads); the projection runner, which creates and writes the projection
    tables, connects as ``projector_url`` if given, else as ``database_url``.
    """
    async with _pools(settings, database_url, projector_url) as (pool, projector_pool):
        app = wire(settings, pool, clock, projector_pool)
        await app.runner.setup()
        writer = asyncio.create_task(app.committer.run())
        stop = asyncio.Event()
        projector = (
            asyncio.create_task(app.runner.run_forever(stop)) if settings.run_projector else None
        )
        try:
            yield app
        finally:
            # After the server has let its calls finish: commit what is queued.
            await app.committer.close()
            await writer
            stop.set()
            if projector is not None:
                projector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await projector
