"""ReportingService over real gRPC: reports, forecasts and a statement that equal the
invoice, the statement drawn by headless Chromium, and bad requests refused whole."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import grpc
import pytest

from services.api.accrual.v1 import (
    balances_pb2,
    balances_pb2_grpc,
    invoices_pb2,
    reports_pb2,
    reports_pb2_grpc,
)
from tests.chromium import dump_dom, render_png, require_chromium
from tests.e2e.conftest import RunningServer, bearer, issue
from tests.e2e.helpers import Errors, World, head_seq, setup_world, ts

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Amounts(HTMLParser):
    """Every tagged amount of a page: (field, line or day index) -> the exact decimal."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[tuple[str, str], str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        data = dict(attrs)
        if data.get("data-amount") is not None:
            where = data.get("data-line") or data.get("data-day") or data.get("data-grant") or ""
            self.found[(str(data["data-field"]), where)] = str(data["data-amount"])


def amounts_shown(page: str) -> dict[tuple[str, str], str]:
    parser = Amounts()
    parser.feed(page)
    return parser.found


def reports_stub(server: RunningServer) -> reports_pb2_grpc.ReportingServiceStub:
    return reports_pb2_grpc.ReportingServiceStub(server.channel)


def billed_world(server: RunningServer) -> tuple[World, invoices_pb2.Invoice]:
    """Usage in two periods, a credit, and the first period finalized."""
    world = setup_world(server)
    first = world.first_period_instant
    world.record(
        world.event("a", "120000", first - timedelta(days=5)),
        world.event("b", "80000", first),
        world.event("c", "40000", first + timedelta(days=3, hours=5)),
        world.event("d", "70000", world.now - timedelta(days=1)),
    )
    balances = balances_pb2_grpc.BalanceServiceStub(server.channel)
    balances.GrantCredit(
        balances_pb2.GrantCreditRequest(
            customer_id=world.customer_id,
            grant_id="welcome",
            kind="credit",
            amount="0.10",
            currency="USD",
            starts_at=ts(world.start),
        )
    )
    draft = world.invoice_at(first)
    finalized = world.api.invoices.FinalizeInvoice(
        invoices_pb2.FinalizeInvoiceRequest(invoice_id=draft.invoice_id)
    )
    assert Decimal(finalized.credits_applied.amount) == Decimal("0.10")
    assert finalized.consistency_token > 0
    return world, finalized


def period_of(world: World, invoice: invoices_pb2.Invoice) -> dict[str, object]:
    """The range of periods, and the finalization's token: reports read that write."""
    return {
        "period_start": ts(world.start),
        "period_end": ts(world.now + timedelta(days=1)),
        "consistency_token": invoice.consistency_token,
    }


def test_revenue_usage_and_forecasts_equal_the_invoice(server: RunningServer) -> None:
    world, invoice = billed_world(server)
    api = reports_stub(server)
    for dimension in ("PRODUCT", "CUSTOMER", "RATE_CARD", "PERIOD"):
        report = api.GetRevenueReport(
            reports_pb2.GetRevenueReportRequest(
                group_by=[reports_pb2.ReportDimension.Value(f"REPORT_DIMENSION_{dimension}")],
                **period_of(world, invoice),  # type: ignore[arg-type]
            )
        )
        (row,) = report.rows
        assert row.amount.amount == invoice.subtotal.amount, dimension
        (totals,) = report.totals
        assert (totals.subtotal.amount, totals.total.amount) == (
            invoice.subtotal.amount,
            invoice.total.amount,
        )
        assert totals.credits_applied.amount == "0.10"
    (key,) = row.keys  # the last split: by period
    assert key.startswith(world.start.strftime("%Y-%m-%d"))

    drafts = api.GetRevenueReport(
        reports_pb2.GetRevenueReportRequest(
            source=reports_pb2.REVENUE_SOURCE_DRAFT,
            **period_of(world, invoice),  # type: ignore[arg-type]
        )
    )
    open_draft = world.invoice_at(world.now)
    assert drafts.totals[0].subtotal.amount == open_draft.subtotal.amount

    usage = api.GetUsageReport(
        reports_pb2.GetUsageReportRequest(
            start=ts(world.start),
            end=ts(world.now + timedelta(days=1)),
            metric_ids=[world.metric_id],
        )
    )
    assert sum(Decimal(p.quantity) for p in usage.points) == Decimal("310000")
    assert len(usage.points) == 4  # four events on four different days

    forecasts = api.GetForecasts(
        reports_pb2.GetForecastsRequest(customer_ids=[world.customer_id], past_periods=1)
    ).forecasts
    past, current = forecasts
    assert (past.invoice_id, past.actual_status) == (invoice.invoice_id, "FINALIZED")
    assert past.actual_total.amount == invoice.total.amount
    assert past.method
    assert current.actual_status == "" and not current.HasField("actual_total")


def test_margins_follow_the_product_cost(server: RunningServer) -> None:
    world, invoice = billed_world(server)
    api = reports_stub(server)
    cost = api.SetProductCost(
        reports_pb2.SetProductCostRequest(
            product_id=world.product_id,
            unit_cost="0.000001",
            currency="USD",
            effective_from=ts(world.start),
            request_id="cost-1",
        )
    )
    report = api.GetRevenueReport(
        reports_pb2.GetRevenueReportRequest(
            group_by=[reports_pb2.REPORT_DIMENSION_PRODUCT],
            period_start=ts(world.start),
            period_end=ts(world.now + timedelta(days=1)),
            consistency_token=cost.consistency_token,
        )
    )
    (row,) = report.rows
    (line,) = invoice.lines
    expected = (Decimal(line.quantity) * Decimal("0.000001")).quantize(Decimal("0.01"))
    assert Decimal(row.cost.amount) == expected > 0
    assert Decimal(row.margin.amount) == Decimal(invoice.subtotal.amount) - expected
    assert row.uncosted_lines == 0


def test_the_statement_renders_in_chromium_with_the_invoices_numbers(
    server: RunningServer, tmp_path: Path
) -> None:
    require_chromium()
    _, invoice = billed_world(server)
    statement = reports_stub(server).GetStatement(
        reports_pb2.GetStatementRequest(invoice_id=invoice.invoice_id)
    )
    assert statement.content_sha256 == invoice.content_sha256
    page = tmp_path / "statement.html"
    page.write_text(statement.html, encoding="utf-8")
    png = tmp_path / "statement.png"
    rendered = render_png(page, png)
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert rendered.console_errors == ()
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert png.stat().st_size > 10_000
    # The numbers as the browser parsed the page, not as the server sent them.
    shown = amounts_shown(dump_dom(page))
    assert shown[("subtotal", "")] == invoice.subtotal.amount
    assert shown[("credits_applied", "")] == invoice.credits_applied.amount
    assert shown[("total", "")] == invoice.total.amount
    for index, line in enumerate(invoice.lines):
        assert shown[("line-amount", str(index))] == line.amount.amount
    assert shown[("grant-remaining", "welcome")] == "0.00"  # drawn by this invoice
    spent = [Decimal(a) for (f, _), a in shown.items() if f == "day-spend"]
    assert sum(spent) == Decimal(invoice.subtotal.amount)


def test_bad_report_requests_are_refused_whole(server: RunningServer) -> None:
    world, invoice = billed_world(server)
    api = reports_stub(server)
    errors = Errors()
    before = head_seq(server)
    no_period = errors.expect(
        INVALID, lambda: api.GetRevenueReport(reports_pb2.GetRevenueReportRequest())
    )
    assert no_period.fields == ["period_start", "period_end"]
    bad_split = errors.expect(
        INVALID,
        lambda: api.GetRevenueReport(
            reports_pb2.GetRevenueReportRequest(group_by=[99], **period_of(world, invoice))  # type: ignore[arg-type]
        ),
    )
    assert bad_split.fields == ["group_by[0]"]
    too_fine = errors.expect(
        INVALID,
        lambda: api.GetUsageReport(
            reports_pb2.GetUsageReportRequest(
                start=ts(world.start), end=ts(world.start + timedelta(days=400)), hourly=True
            )
        ),
    )
    assert too_fine.fields == ["end"]
    errors.expect(
        INVALID, lambda: api.GetForecasts(reports_pb2.GetForecastsRequest(past_periods=99))
    )
    errors.expect(
        NOT_FOUND,
        lambda: api.GetStatement(reports_pb2.GetStatementRequest(invoice_id="in-nobody-c1-1")),
    )
    negative = errors.expect(
        INVALID,
        lambda: api.SetProductCost(
            reports_pb2.SetProductCostRequest(
                product_id=world.product_id, unit_cost="-1", currency="USD"
            )
        ),
    )
    assert negative.fields == ["unit_cost", "effective_from"]
    errors.expect(
        NOT_FOUND,
        lambda: api.SetProductCost(
            reports_pb2.SetProductCostRequest(
                product_id="nothing", unit_cost="1", currency="USD", effective_from=ts(world.now)
            )
        ),
    )
    errors.assert_no_internals_leaked()
    assert head_seq(server) == before  # nothing written by any refusal


@pytest.mark.parametrize("customers", [[], ["someone-else"]])
def test_a_customer_scoped_reader_reports_only_on_its_customer(
    server: RunningServer, database_url: str, customers: list[str]
) -> None:
    world, invoice = billed_world(server)
    token = issue(database_url, "acme-portal", "reader", customers=[world.customer_id])
    api = reports_pb2_grpc.ReportingServiceStub(grpc.insecure_channel(server.address))
    own = reports_pb2.GetRevenueReportRequest(
        customer_ids=[world.customer_id],
        **period_of(world, invoice),  # type: ignore[arg-type]
    )
    (row,) = api.GetRevenueReport(own, metadata=bearer(token)).rows
    assert row.amount.amount == invoice.subtotal.amount
    # Unit costs are the seller's: a scoped caller sees revenue, never cost or margin.
    assert not row.HasField("cost") and not row.HasField("margin")
    other = reports_pb2.GetRevenueReportRequest(customer_ids=customers, **period_of(world, invoice))  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as refused:
        api.GetRevenueReport(other, metadata=bearer(token))
    assert refused.value.code() is DENIED
