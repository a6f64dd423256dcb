"""Statements: the days of a period add up to its invoice, whatever the prices did."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from ledger.app.usage import UsageInput
from ledger.core.invoice import LineKind
from services.bootstrap import App
from tests.integration.report_world import (
    APRIL,
    MONTHS,
    START,
    Clock,
    build_history,
    record,
    run_world,
)

LATE_TOKENS = {"model": "small", "tokens": "99000000"}


def test_a_statements_days_add_up_to_its_invoice(database_url: str) -> None:
    clock = Clock(START)

    async def body(app: App) -> None:
        ids = await build_history(app, clock, 3)
        await app.runner.catch_up()
        for invoice_id, status in (
            (f"in-{ids[0]}-c-2", "FINALIZED"),
            (f"in-{ids[1]}-c-3", "VOIDED"),
            (f"in-{ids[1]}-c-3-r1", "FINALIZED"),
            (f"in-{ids[2]}-c-4", "DRAFT"),
        ):
            statement = await app.statements.statement(invoice_id=invoice_id)
            invoice = statement.invoice
            assert statement.status == status
            usage_lines = sum(
                (line.amount for line in invoice.lines if line.kind is LineKind.USAGE), Decimal(0)
            )
            assert statement.days[-1].cumulative == usage_lines > 0, invoice_id
            assert sum(day.spend for day in statement.days) == usage_lines
            assert statement.days[0].start == invoice.period_start
            assert statement.days[-1].end == invoice.period_end
            assert all(d.end - d.start <= timedelta(days=1) for d in statement.days)

    run_world(database_url, clock, body)


def test_a_statement_shows_the_customers_balances_and_daily_usage(database_url: str) -> None:
    clock = Clock(START)

    async def body(app: App) -> None:
        ids = await build_history(app, clock, 2)
        await app.runner.catch_up()
        statement = await app.statements.statement(customer_id=ids[0], at=MONTHS[0])
        assert statement.customer_name == ids[0].title()
        (grant,) = statement.balances
        assert grant.grant.grant_id == "welcome"
        assert grant.remaining == Decimal("0.00")  # the 5.00 credit, drawn in January
        assert [e.invoice_id for e in grant.entries if e.invoice_id] == [f"in-{ids[0]}-c-1"]
        calls = sum(
            (u.quantity for day in statement.days for u in day.usage if u.metric_id == "calls"),
            Decimal(0),
        )
        (api_line,) = [line for line in statement.invoice.lines if line.product_id == "api"]
        assert calls == api_line.quantity
        assert len(statement.days) == 31
        april = await app.statements.statement(customer_id=ids[0], at=APRIL)
        assert april.status == "DRAFT"

    run_world(database_url, clock, body)


def test_usage_recorded_after_an_invoice_stays_off_its_statement(database_url: str) -> None:
    clock = Clock(START)

    async def body(app: App) -> None:
        ids = await build_history(app, clock, 2)
        late = [
            UsageInput("late-1", ids[0], "completion", MONTHS[0] + timedelta(days=3), LATE_TOKENS)
        ]
        await record(app, late)
        await app.runner.catch_up()  # the rollups now hold the late usage too
        statement = await app.statements.statement(invoice_id=f"in-{ids[0]}-c-1")
        usage_lines = sum(
            (line.amount for line in statement.invoice.lines if line.kind is LineKind.USAGE),
            Decimal(0),
        )
        assert statement.days[-1].cumulative == usage_lines
        day = statement.days[3]
        tokens = sum((u.quantity for u in day.usage if u.metric_id == "tokens"), Decimal(0))
        assert tokens < Decimal(LATE_TOKENS["tokens"])  # the late event is not in the day

    run_world(database_url, clock, body)
