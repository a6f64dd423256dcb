"""Least privilege at the database: the service appends and reads, the projector projects.

Migrations run as the owner (here a superuser); the app connects as
``accrual_service`` and the projection runner as ``accrual_projector``, the
roles migration 0002 creates. What a role may not do, the database refuses at
its privilege check, before any trigger runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from ledger.app.catalog import MetricInput, RateCardInput
from ledger.app.context import RequestContext
from ledger.app.customers import ContractInput
from ledger.app.usage import UsageInput, UsageStatus
from ledger.core.catalog import Product
from ledger.core.rate_specs import RateSpec
from projections.audit_log import AuditQuery
from projections.engine import checkpoint_of
from services.bootstrap import PROJECTIONS, App, running_app
from services.cli.runtime import (
    PROJECTOR_ROLE,
    SERVICE_ROLE,
    DatabaseUrls,
    as_role,
    hand_projections_to_projector,
    role_urls,
)
from services.config import Settings

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
START = datetime(2026, 2, 8, tzinfo=UTC)
USED_AT = NOW - timedelta(days=20)
CTX = RequestContext(actor="test", reason="least privilege")
PROJECTION_TABLES = {
    "projection_checkpoints",
    "projection_registry",
    "usage_rollups_v1",
    "usage_unbilled_v1",
    "usage_rollup_metrics_v1",
    "usage_distinct_v1",
    "audit_entries_v1",
    "late_usage_v1",
    "late_usage_finalized_until_v1",
    "balance_grants_v1",
    "balance_entries_v1",
    "entitlement_contracts_v1",
    "entitlement_plans_v1",
    "entitlement_cards_v1",
    "entitlement_grants_v1",
    "revenue_invoices_v1",
    "revenue_lines_v1",
    "product_costs_v1",
}


def run_as_roles(
    database_url: str, body: Callable[[App], Awaitable[None]], *, run_projector: bool = False
) -> None:
    """Run ``body`` against the app wired as `accrual serve` wires it: one pool per role."""
    settings = dataclasses.replace(Settings.from_env({}), run_projector=run_projector)

    async def main() -> None:
        async with running_app(
            settings,
            as_role(database_url, SERVICE_ROLE),
            clock=lambda: NOW,
            projector_url=as_role(database_url, PROJECTOR_ROLE),
        ) as app:
            await body(app)

    asyncio.run(main())


async def sell_tokens(app: App) -> None:
    """The README's world: tokens at 0.0000015 USD each, Acme on a contract."""
    await app.catalog.create_metric(
        MetricInput("tokens", "LLM tokens", "completion", "SUM", "tokens"), CTX
    )
    await app.catalog.create_product(Product("llm", "LLM tokens", "tokens"), CTX)
    rates = [RateSpec("llm", "per_unit", "0.0000015")]
    card = RateCardInput("list", "List prices", "USD", None, START, rates)
    draft, _ = await app.catalog.draft_rate_card(card, CTX)
    approver = dataclasses.replace(CTX, actor="approver")
    await app.catalog.approve_draft("list", draft.draft, approver)
    await app.catalog.publish_draft("list", draft.draft, approver)
    await app.customers.create_customer("acme", "Acme Corp", CTX)
    await app.customers.create_contract(
        ContractInput("acme-2026", "acme", "list", None, START, None, None), CTX
    )


def connect(database_url: str, role: str | None = None) -> psycopg.Connection[tuple[object, ...]]:
    url = database_url if role is None else as_role(database_url, role)
    return psycopg.connect(url, autocommit=True)


def refused(conn: psycopg.Connection[tuple[object, ...]], statement: str, table: str) -> None:
    """``statement`` fails at the privilege check on ``table`` (not in a trigger)."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as raised:
        conn.execute(statement)  # type: ignore[arg-type]
    assert f"permission denied for table {table}" in str(raised.value), statement


def ledger_state(database_url: str) -> tuple[object, ...]:
    with connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*), max(seq), (SELECT last_hash FROM ledger_heads),"
            " (SELECT sum(version) FROM streams) FROM events"
        ).fetchone()
    assert row is not None
    return row


def test_the_app_appends_and_projects_as_its_roles(database_url: str) -> None:
    async def body(app: App) -> None:
        async with app.pool.connection() as conn:
            cur = await conn.execute("SELECT current_user")
            assert await cur.fetchone() == (SERVICE_ROLE,)
        await sell_tokens(app)
        usage = UsageInput("tx-1", "acme", "completion", USED_AT, {"tokens": "123456789"})
        first = await app.record_usage([usage], CTX)
        again = await app.record_usage([usage], CTX)
        assert [r.status for r in first + again] == [UsageStatus.ACCEPTED, UsageStatus.DUPLICATE]
        assert again[0].seq == first[0].seq

        # The projector (LISTEN, leases, batches) catches up with the head.
        head = (await app.store.head()).seq
        assert head == first[0].seq
        for _ in range(200):
            async with app.pool.connection() as conn:
                rollups = await checkpoint_of(conn, "usage_rollups", 1)
                audit = await checkpoint_of(conn, "audit_log", 1)
            if rollups == audit == head:
                break
            await asyncio.sleep(0.05)
        assert (rollups, audit) == (head, head)
        async with app.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT customer_id, metric_id, event_count, total FROM usage_rollups_v1"
            )
            assert await cur.fetchall() == [("acme", "tokens", 1, Decimal(123456789))]

        # Reads that need the projection tables, as the service.
        draft = await app.invoicing.get(customer_id="acme", at=USED_AT)
        assert draft.invoice.computed_through_seq == head
        assert draft.invoice.total == Decimal("185.19")
        assert draft.invoice.currency == "USD"
        [line] = draft.invoice.lines
        assert (line.product_id, line.quantity, line.amount) == (
            "llm",
            Decimal(123456789),
            Decimal("185.19"),
        )
        entries, _ = await app.auditing.entries(AuditQuery(), consistency_token=head)
        kinds = [e.kind for e in entries]
        for kind in ("BillableMetricCreated", "RateCardPublished", "ContractCreated"):
            assert kind in kinds
        assert "UsageRecorded" not in kinds

    run_as_roles(database_url, body, run_projector=True)

    with connect(database_url) as conn:
        owners = dict(
            conn.execute("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'")
        )
        usage = conn.execute("SELECT count(*) FROM events WHERE event_type = 'UsageRecorded'")
        recorded = usage.fetchone()
    assert {t for t, owner in owners.items() if owner == PROJECTOR_ROLE} == PROJECTION_TABLES
    assert SERVICE_ROLE not in owners.values()
    assert recorded == (1,)


def test_the_service_role_cannot_update_delete_or_truncate_ledger_rows(database_url: str) -> None:
    async def body(app: App) -> None:
        await app.customers.create_customer("acme", "Acme Corp", CTX)
        await app.runner.catch_up()

    run_as_roles(database_url, body)
    before = ledger_state(database_url)
    assert before[:2] == (1, 1)

    with connect(database_url, SERVICE_ROLE) as conn:
        refused(conn, "UPDATE events SET payload = payload WHERE seq = 1", "events")
        refused(conn, "UPDATE events SET stream_id = 'customer-evil'", "events")
        refused(conn, "DELETE FROM events WHERE seq = 1", "events")
        refused(conn, "DELETE FROM events", "events")
        refused(conn, "TRUNCATE events", "events")
        # The head and stream versions move only as an append moves them.
        refused(conn, "UPDATE ledger_heads SET partition = 1", "ledger_heads")
        refused(conn, "DELETE FROM ledger_heads", "ledger_heads")
        refused(conn, "DELETE FROM streams", "streams")
        refused(conn, "UPDATE streams SET stream_id = 'customer-evil'", "streams")
        refused(conn, "TRUNCATE streams", "streams")
        # Projections are the projector's: the service reads them and writes none.
        refused(
            conn,
            "INSERT INTO usage_rollups_v1 VALUES ('acme', 'tokens', '[]', now(), 1, 1,"
            " NULL, NULL, NULL, NULL)",
            "usage_rollups_v1",
        )
        refused(conn, "UPDATE projection_checkpoints SET seq = 0", "projection_checkpoints")
        refused(conn, "DELETE FROM audit_entries_v1", "audit_entries_v1")
        assert conn.execute("SELECT count(*) FROM audit_entries_v1").fetchone() == (1,)
        registered = conn.execute("SELECT count(*) FROM projection_registry").fetchone()
        assert registered == (len(PROJECTIONS),)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="schema public"):
            conn.execute("CREATE TABLE mine (x int)")

    assert ledger_state(database_url) == before
    # Below the privileges, the trigger refuses even the owner.
    with (
        connect(database_url) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as raised,
    ):
        conn.execute("DELETE FROM events")
    assert "the ledger is append-only: DELETE" in str(raised.value)


def test_the_projector_role_reads_the_ledger_and_writes_none_of_it(database_url: str) -> None:
    async def body(app: App) -> None:
        await app.customers.create_customer("acme", "Acme Corp", CTX)

    run_as_roles(database_url, body)
    before = ledger_state(database_url)

    with connect(database_url, PROJECTOR_ROLE) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
        assert conn.execute("SELECT last_seq FROM ledger_heads").fetchone() == (1,)
        refused(
            conn,
            "INSERT INTO events SELECT seq + 1, partition, stream_id, stream_version + 1,"
            " event_type, schema_version, payload, metadata, occurred_at, recorded_at, NULL,"
            " NULL, hash, hash FROM events",
            "events",
        )
        refused(conn, "UPDATE events SET payload = payload", "events")
        refused(conn, "DELETE FROM events", "events")
        refused(conn, "UPDATE ledger_heads SET last_seq = last_seq + 1", "ledger_heads")
        refused(conn, "INSERT INTO ledger_heads VALUES (1, 0, '\\x00')", "ledger_heads")
        refused(conn, "INSERT INTO streams VALUES ('customer-evil', 1)", "streams")
        refused(conn, "SELECT version_num FROM alembic_version", "alembic_version")

    assert ledger_state(database_url) == before


def test_role_urls_are_derived_on_the_embedded_server_and_fall_back_to_the_owner() -> None:
    owner = "postgresql://postgres@127.0.0.1:54329/postgres"
    embedded = role_urls(Settings.from_env({}), owner, embedded=True)
    assert psycopg.conninfo.conninfo_to_dict(embedded.service) == {
        "user": "accrual_service",
        "host": "127.0.0.1",
        "port": "54329",
        "dbname": "postgres",
    }
    assert psycopg.conninfo.conninfo_to_dict(embedded.projector)["user"] == "accrual_projector"
    assert embedded.owner_login == ()

    external = "postgresql://accrual:secret@db.example:5432/accrual"
    fallen_back = role_urls(
        Settings.from_env({"ACCRUAL_DATABASE_URL": external}), external, embedded=False
    )
    assert (fallen_back.service, fallen_back.projector) == (external, external)
    assert fallen_back.owner_login == (
        "ACCRUAL_SERVICE_DATABASE_URL",
        "ACCRUAL_PROJECTOR_DATABASE_URL",
    )

    service = "postgresql://accrual_service:s@db.example:5432/accrual"
    projector = "postgresql://accrual_projector:p@db.example:5432/accrual"
    given = Settings.from_env(
        {
            "ACCRUAL_DATABASE_URL": external,
            "ACCRUAL_SERVICE_DATABASE_URL": service,
            "ACCRUAL_PROJECTOR_DATABASE_URL": projector,
        }
    )
    both = role_urls(given, external, embedded=False)
    assert (both.service, both.projector, both.owner_login) == (service, projector, ())
    # Only one of them is refused at start (Settings), with both names in the message.


def test_projection_tables_made_on_the_owner_s_url_are_handed_to_the_projector(
    database_url: str,
) -> None:
    """Serving on the owner's URL alone, then on the roles' URLs, keeps working."""
    settings = dataclasses.replace(Settings.from_env({}), run_projector=False)

    async def as_owner() -> None:
        async with running_app(settings, database_url, clock=lambda: NOW) as app:
            await app.customers.create_customer("acme", "Acme Corp", CTX)
            # One event, applied by each projection.
            assert await app.runner.catch_up() == len(PROJECTIONS)
            await app.runner.start_rebuild("audit_log", 2)

    asyncio.run(as_owner())
    # What `accrual serve` and `accrual migrate` do after migrating.
    hand_projections_to_projector(
        DatabaseUrls(
            owner=database_url,
            service=as_role(database_url, SERVICE_ROLE),
            projector=as_role(database_url, PROJECTOR_ROLE),
        )
    )

    async def body(app: App) -> None:
        await app.customers.create_customer("globex", "Globex", CTX)
        assert await app.runner.catch_up() == len(PROJECTIONS)
        rebuilt = app.runner.projection("audit_log", 2)
        assert [p.checkpoint async for p in app.runner.build(rebuilt)][-1] == 2
        assert await app.runner.swap("audit_log", 2) == 1
        await app.runner.drop("audit_log", 1)
        entries, _ = await app.auditing.entries(AuditQuery())
        assert [e.customer_id for e in entries] == ["acme", "globex"]

    run_as_roles(database_url, body)
    with connect(database_url) as conn:
        owners = dict(
            conn.execute("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'")
        )
    expected = (PROJECTION_TABLES - {"audit_entries_v1"}) | {"audit_entries_v2"}
    assert {t for t, owner in owners.items() if owner == PROJECTOR_ROLE} == expected
