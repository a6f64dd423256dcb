"""Revenue and usage reports add up to the invoices, to the cent, however they are split."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from ledger.app.catalog import MetricInput
from ledger.app.costs import CostInput
from ledger.app.usage import UsageInput
from ledger.core.errors import DomainError, Rule
from ledger.core.invoice import Invoice, LineKind
from ledger.core.reporting import Dimension
from projections import invoicing, reporting
from projections.forecasting import ForecastQuery
from projections.reporting import RevenueQuery, UsageQuery
from services.bootstrap import App
from tests.integration.report_world import (
    APRIL,
    CTX,
    MONTHS,
    START,
    Clock,
    build_history,
    record,
    run_world,
    standing_invoices,
)
from tests.integration.test_audit import accrual

CUSTOMERS = 40
QUARTER = ("--from", "2025-01", "--to", "2025-04")
FIRST_QUARTER = (START, APRIL)
SPLITS = [
    (Dimension.PRODUCT,),
    (Dimension.CUSTOMER,),
    (Dimension.RATE_CARD,),
    (Dimension.PRICING_DIMENSION,),
    (Dimension.PERIOD,),
    (Dimension.CUSTOMER, Dimension.PRODUCT, Dimension.RATE_CARD),
]


def subtotal_of(invoices: list[Invoice]) -> Decimal:
    return sum((invoice.subtotal for invoice in invoices), Decimal(0))


def test_revenue_by_every_split_sums_to_the_invoices(database_url: str) -> None:
    clock = Clock(START)

    async def body(app: App) -> None:
        ids = await build_history(app, clock, CUSTOMERS)
        await app.runner.catch_up()
        invoices = await standing_invoices(app, ids, (1, 2, 3))
        assert {i.invoice_id for i in invoices} >= {f"in-{ids[1]}-c-3-r1"}
        expected = subtotal_of(invoices)
        assert expected > Decimal("100")  # a real history, not a handful of cents
        for split in SPLITS:
            report = await app.reporting.revenue(RevenueQuery(FIRST_QUARTER, split))
            assert sum(row.amount for row in report.rows) == expected, split
            assert len({row.keys for row in report.rows}) == len(report.rows)
        # The invoices' own sums, beside: subtotal, credits and totals of standing invoices.
        (totals,) = (await app.reporting.revenue(RevenueQuery(FIRST_QUARTER))).totals
        assert totals.invoice_count == 3 * CUSTOMERS
        assert totals.subtotal == expected
        assert totals.total == sum((i.total for i in invoices), Decimal(0))
        assert totals.credits_applied == Decimal("5.00")

    run_world(database_url, clock, body)


def test_revenue_splits_match_each_invoice_line(database_url: str) -> None:
    clock = Clock(START)

    async def body(app: App) -> None:
        ids = await build_history(app, clock, 12)
        await app.runner.catch_up()
        invoices = await standing_invoices(app, ids, (1, 2, 3))
        by_product: Counter[str] = Counter()
        by_version: Counter[str] = Counter()
        by_customer: Counter[str] = Counter()
        for invoice in invoices:
            by_customer[invoice.customer_id] += invoice.subtotal  # type: ignore[assignment]
            for line in invoice.lines:
                by_product[line.product_id] += line.amount  # type: ignore[assignment]
                by_version[f"list@v{line.rate_card_version}"] += line.amount  # type: ignore[assignment]

        async def split(dimension: Dimension) -> dict[str, Decimal]:
            report = await app.reporting.revenue(RevenueQuery(FIRST_QUARTER, (dimension,)))
            return {row.keys[0][1]: row.amount for row in report.rows}

        assert await split(Dimension.PRODUCT) == dict(by_product)
        assert await split(Dimension.RATE_CARD) == dict(by_version)
        assert set(by_version) == {"list@v1", "list@v2"}  # February repriced
        assert await split(Dimension.CUSTOMER) == dict(by_customer)

    run_world(database_url, clock, body)


def test_draft_revenue_is_the_open_periods_drafts(database_url: str) -> None:
    clock = Clock(START)

    async def body(app: App) -> None:
        ids = await build_history(app, clock, 10)
        await app.runner.catch_up()
        drafts = await standing_invoices(app, ids, (4,))
        query = RevenueQuery((START, APRIL + timedelta(days=30)), (Dimension.PRODUCT,), True)
        report = await app.reporting.revenue(query)
        assert sum(row.amount for row in report.rows) == subtotal_of(drafts) > 0
        (totals,) = report.totals
        assert totals.invoice_count == len(ids)  # April only: the rest are finalized
        # Finalized revenue of the same range leaves the open April out.
        finalized = await app.reporting.revenue(RevenueQuery(query.periods))
        assert finalized.totals[0].invoice_count == 3 * len(ids)

    run_world(database_url, clock, body)


def test_margins_use_the_cost_in_force_per_line(database_url: str) -> None:
    clock = Clock(START)

    async def body(app: App) -> None:
        ids = await build_history(app, clock, 6)
        costs = [("0.00001", START), ("0.000015", MONTHS[2])]  # dearer from March
        for unit_cost, effective_from in costs:
            await app.costs.set_cost(CostInput("llm", unit_cost, "USD", effective_from), CTX)
        await app.runner.catch_up()
        invoices = await standing_invoices(app, ids, (1, 2, 3))
        expected_cost = Decimal("0.00")
        for invoice in invoices:
            for line in invoice.lines:
                if line.product_id == "llm":
                    unit = Decimal(costs[1][0] if line.segment_start >= MONTHS[2] else costs[0][0])
                    cost = (line.quantity * unit).quantize(Decimal("0.01"), ROUND_HALF_UP)
                    expected_cost += cost
        report = await app.reporting.revenue(RevenueQuery(FIRST_QUARTER, (Dimension.PRODUCT,)))
        rows = {row.keys[0][1]: row for row in report.rows}
        assert rows["llm"].cost == expected_cost > 0
        assert rows["llm"].uncosted_lines == 0
        assert rows["llm"].margin == rows["llm"].amount - expected_cost
        assert rows["api"].uncosted_lines == rows["api"].line_count > 0  # no cost set
        assert all(line.kind is LineKind.USAGE for i in invoices for line in i.lines)

    run_world(database_url, clock, body)


def test_usage_series_counts_every_event_once(database_url: str) -> None:
    clock = Clock(START)

    async def body(app: App) -> None:
        ids = await build_history(app, clock, 5)
        await app.runner.catch_up()
        daily = await app.reporting.usage(UsageQuery((START, APRIL), metric_ids=["calls"]))
        invoices = await standing_invoices(app, ids, (1, 2, 3))
        calls = sum(
            (line.quantity for i in invoices for line in i.lines if line.product_id == "api"),
            Decimal(0),
        )
        assert sum(point.quantity for point in daily.points) == calls > 0
        assert all(point.bucket.start.hour == 0 for point in daily.points)
        # Hourly buckets of one day add up to that day's daily bucket.
        day = daily.points[0].bucket.start
        hourly = await app.reporting.usage(
            UsageQuery((day, day + timedelta(days=1)), hourly=True, metric_ids=["calls"])
        )
        assert sum(p.quantity for p in hourly.points) == daily.points[0].quantity
        by_customer = await app.reporting.usage(
            UsageQuery((START, APRIL), metric_ids=["calls"], by_customer=True)
        )
        assert {p.bucket.customer_id for p in by_customer.points} == set(ids)
        tokens = await app.reporting.usage(UsageQuery((START, APRIL), metric_ids=["tokens"]))
        assert {tuple(p.group_values.items()) for p in tokens.points} == {
            (("model", "small"),),
            (("model", "large"),),
        }

    run_world(database_url, clock, body)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (RevenueQuery((None, APRIL)), "period_start"),
        (RevenueQuery((APRIL, START)), "period_end"),
        (RevenueQuery((START, APRIL), customer_ids=["bad id"]), "customer_ids[0]"),
        (
            RevenueQuery((START, APRIL), drafts=True, customer_ids=["a", "b", "a"]),
            "customer_ids[2]",
        ),
        (UsageQuery((START, datetime(2026, 1, 1, tzinfo=UTC)), hourly=True), "end"),
    ],
)
def test_bad_report_queries_name_the_field(
    database_url: str, query: RevenueQuery | UsageQuery, field: str
) -> None:
    clock = Clock(START)

    async def body(app: App) -> None:
        ask = app.reporting.revenue if isinstance(query, RevenueQuery) else app.reporting.usage
        with pytest.raises(DomainError) as caught:
            await ask(query)  # type: ignore[arg-type]
        assert caught.value.rule is Rule.REQUEST_INVALID
        assert [v.field for v in caught.value.violations] == [field]

    run_world(database_url, clock, body)


def test_the_report_commands_print_tables_csv_and_a_statement(
    accrual_env: str, tmp_path: Path
) -> None:
    database_url = accrual_env
    clock = Clock(START)
    seen: dict[str, Decimal] = {}

    async def body(app: App) -> None:
        ids = await build_history(app, clock, 4)
        invoices = await standing_invoices(app, ids, (1, 2, 3))
        seen["subtotal"] = subtotal_of(invoices)
        seen["calls"] = sum(
            (line.quantity for i in invoices for line in i.lines if line.product_id == "api"),
            Decimal(0),
        )

    run_world(database_url, clock, body)
    code, out = accrual(
        "report", "revenue", "--by", "product", "--from", "2025-01", "--to", "2025-04", "--csv"
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {row["product"] for row in rows} == {"llm", "api"}
    assert sum(Decimal(row["amount"]) for row in rows) == seen["subtotal"]
    code, out = accrual(
        "report", "revenue", "--by", "customer", "--from", "2025-01", "--to", "2025-04"
    )
    assert code == 0 and f"subtotal {seen['subtotal']}" in out
    code, out = accrual(
        "report", "usage", "--metric", "calls", "--from", "2025-01", "--to", "2025-04", "--csv"
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sum(Decimal(row["quantity"]) for row in rows) == seen["calls"]
    code, out = accrual("report", "forecast", "--customer", "cust000", "--csv")
    forecast = next(csv.DictReader(io.StringIO(out)))
    assert code == 0 and forecast["customer_id"] == "cust000" and forecast["method"]
    with pytest.raises(SystemExit) as usage_error:  # argparse: exit 2 and a message
        accrual("report", "usage", "--from", "March", "--to", "2025-04")
    assert usage_error.value.code == 2
    page = tmp_path / "march.html"
    code, out = accrual(
        "statement", "--customer", "cust000", "--period", "2025-03", "--out", str(page)
    )
    assert code == 0 and "in-cust000-c-3" in out
    assert "in-cust000-c-3" in page.read_text(encoding="utf-8")


def test_a_draft_report_over_too_many_open_periods_is_refused(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(invoicing, "DRAFTS_PER_CALL_MAX", 3)
    clock = Clock(START)

    async def body(app: App) -> None:
        ids = await build_history(app, clock, 4)  # four open Aprils
        query = RevenueQuery((START, APRIL + timedelta(days=30)), drafts=True)
        with pytest.raises(DomainError) as refused:
            await app.reporting.revenue(query)
        assert refused.value.rule is Rule.REPORT_TOO_LARGE
        with pytest.raises(DomainError):
            await app.forecasting.forecasts(ForecastQuery())
        named = RevenueQuery(query.periods, drafts=True, customer_ids=ids[:3])
        assert len((await app.reporting.revenue(named)).totals) == 1

    run_world(database_url, clock, body)


def test_unique_usage_counts_distinct_values_per_bucket_and_big_series_are_refused(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(APRIL)

    async def body(app: App) -> None:
        users = MetricInput("users", "Users", "login", "UNIQUE", "user")
        await app.catalog.create_metric(users, CTX)
        await app.customers.create_customer("cust", "Cust", CTX)
        day = MONTHS[2]
        logins = [
            UsageInput(f"l{n}", "cust", "login", day + timedelta(days=n % 3, hours=n), {"user": u})
            for n, u in enumerate(["ann", "bob", "ann", "cy", "ann", "bob", "dee"])
        ]
        await record(app, logins)
        await app.runner.catch_up()
        report = await app.reporting.usage(UsageQuery((day, day + timedelta(days=3))))
        by_day = {p.bucket.start.day: p.quantity for p in report.points}
        expected: dict[int, set[str]] = {}
        for item in logins:
            expected.setdefault(item.occurred_at.day, set()).add(item.properties["user"])
        assert by_day == {d: Decimal(len(users)) for d, users in expected.items()}
        monkeypatch.setattr(reporting, "SERIES_ROWS_MAX", 2)
        with pytest.raises(DomainError) as refused:
            await app.reporting.usage(UsageQuery((day, day + timedelta(days=3))))
        assert refused.value.rule is Rule.REPORT_TOO_LARGE

    run_world(database_url, clock, body)
