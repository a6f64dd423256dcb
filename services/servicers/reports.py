"""ReportingService: revenue, usage, forecasts, statements and product costs."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from ledger.app.costs import CostInput, ProductCosts
from ledger.core.errors import Violations, invalid
from ledger.core.reporting import Dimension, RevenueRow
from projections.forecasting import Forecast, Forecasting, ForecastQuery
from projections.reporting import Reporting, RevenueQuery, UsagePoint, UsageQuery
from projections.revenue import InvoiceTotals
from projections.statements import Statements
from services.api.accrual.v1 import reports_pb2, reports_pb2_grpc
from services.auth.guard import current_principal
from services.convert import decimal_text, money, optional_datetime, timestamp
from services.errors import rpc
from services.request import request_context
from services.statement_page import render_statement

# ReportDimension numbers, as the proto defines them, to the core's dimensions.
_DIMENSIONS: dict[int, Dimension] = {
    reports_pb2.REPORT_DIMENSION_PRODUCT: Dimension.PRODUCT,
    reports_pb2.REPORT_DIMENSION_CUSTOMER: Dimension.CUSTOMER,
    reports_pb2.REPORT_DIMENSION_RATE_CARD: Dimension.RATE_CARD,
    reports_pb2.REPORT_DIMENSION_PRICING_DIMENSION: Dimension.PRICING_DIMENSION,
    reports_pb2.REPORT_DIMENSION_METRIC: Dimension.METRIC,
    reports_pb2.REPORT_DIMENSION_LINE_KIND: Dimension.LINE_KIND,
    reports_pb2.REPORT_DIMENSION_PERIOD: Dimension.PERIOD,
}
_SOURCES: dict[int, bool] = {
    reports_pb2.REVENUE_SOURCE_UNSPECIFIED: False,
    reports_pb2.REVENUE_SOURCE_FINALIZED: False,
    reports_pb2.REVENUE_SOURCE_DRAFT: True,
}


class ReportingServicer(reports_pb2_grpc.ReportingServiceServicer):
    def __init__(
        self,
        reporting: Reporting,
        forecasting: Forecasting,
        statements: Statements,
        costs: ProductCosts,
    ) -> None:
        self._reporting = reporting
        self._forecasting = forecasting
        self._statements = statements
        self._costs = costs

    @rpc
    async def GetRevenueReport(
        self, request: reports_pb2.GetRevenueReportRequest, context: grpc.aio.ServicerContext
    ) -> reports_pb2.RevenueReport:
        query = revenue_query(request)
        report = await self._reporting.revenue(query)
        # What a unit costs is the seller's own figure: never shown to a caller
        # limited to some customers (a customer portal's credential, say).
        principal = current_principal()
        with_costs = principal is None or principal.customers is None
        return reports_pb2.RevenueReport(
            group_by=request.group_by,
            source=request.source or reports_pb2.REVENUE_SOURCE_FINALIZED,
            rows=[revenue_row_message(row, with_costs=with_costs) for row in report.rows],
            totals=[totals_message(totals) for totals in report.totals],
            computed_through_seq=report.computed_through_seq,
        )

    @rpc
    async def GetUsageReport(
        self, request: reports_pb2.GetUsageReportRequest, context: grpc.aio.ServicerContext
    ) -> reports_pb2.UsageReport:
        query = UsageQuery(
            span=(optional_datetime(request, "start"), optional_datetime(request, "end")),
            hourly=request.hourly,
            customer_ids=list(request.customer_ids),
            metric_ids=list(request.metric_ids),
            by_customer=request.by_customer,
            consistency_token=request.consistency_token,
        )
        report = await self._reporting.usage(query)
        return reports_pb2.UsageReport(
            points=[usage_point_message(point) for point in report.points],
            computed_through_seq=report.computed_through_seq,
        )

    @rpc
    async def GetForecasts(
        self, request: reports_pb2.GetForecastsRequest, context: grpc.aio.ServicerContext
    ) -> reports_pb2.GetForecastsResponse:
        query = ForecastQuery(list(request.customer_ids), request.past_periods)
        forecasts, head = await self._forecasting.forecasts(query)
        return reports_pb2.GetForecastsResponse(
            forecasts=[forecast_message(forecast) for forecast in forecasts],
            computed_through_seq=head,
        )

    @rpc
    async def GetStatement(
        self, request: reports_pb2.GetStatementRequest, context: grpc.aio.ServicerContext
    ) -> reports_pb2.Statement:
        statement = await self._statements.statement(
            invoice_id=request.invoice_id,
            customer_id=request.customer_id,
            at=optional_datetime(request, "at"),
        )
        return reports_pb2.Statement(
            invoice_id=statement.invoice.invoice_id,
            customer_id=statement.customer_id,
            html=render_statement(statement),
            content_sha256=statement.content_sha256,
        )

    @rpc
    async def SetProductCost(
        self, request: reports_pb2.SetProductCostRequest, context: grpc.aio.ServicerContext
    ) -> reports_pb2.ProductCost:
        command = CostInput(
            product_id=request.product_id,
            unit_cost=request.unit_cost,
            currency=request.currency,
            effective_from=optional_datetime(request, "effective_from"),
        )
        ctx = request_context(context, request_id=request.request_id)
        cost, seq = await self._costs.set_cost(command, ctx)
        return reports_pb2.ProductCost(
            product_id=cost.product_id,
            unit_cost=decimal_text(cost.unit_cost),
            currency=cost.currency,
            effective_from=timestamp(cost.effective_from),
            consistency_token=seq,
        )


def revenue_query(request: reports_pb2.GetRevenueReportRequest) -> RevenueQuery:
    return RevenueQuery(
        periods=(
            optional_datetime(request, "period_start"),
            optional_datetime(request, "period_end"),
        ),
        by=dimensions(request.group_by),
        drafts=_source(request.source),
        customer_ids=list(request.customer_ids),
        consistency_token=request.consistency_token,
    )


def dimensions(numbers: Sequence[int]) -> list[Dimension]:
    violations = Violations()
    found: list[Dimension] = []
    for index, number in enumerate(numbers):
        dimension = _DIMENSIONS.get(number)
        if dimension is None:
            violations.add(f"group_by[{index}]", f"{number} is not a report dimension")
        elif dimension in found:
            violations.add(f"group_by[{index}]", f"{dimension.value} is named twice")
        else:
            found.append(dimension)
    violations.raise_if_any()
    return found


def _source(number: int) -> bool:
    if number not in _SOURCES:
        raise invalid("source", f"{number} is not a revenue source")
    return _SOURCES[number]


def revenue_row_message(row: RevenueRow, *, with_costs: bool) -> reports_pb2.RevenueRow:
    message = reports_pb2.RevenueRow(
        keys=[key for _, key in row.keys],
        amount=money(row.amount, row.currency),
        quantity=decimal_text(row.quantity),
        line_count=row.line_count,
        invoice_count=row.invoice_count,
    )
    if with_costs:
        message.cost.CopyFrom(money(row.cost, row.currency))
        message.margin.CopyFrom(money(row.margin, row.currency))
        message.uncosted_lines = row.uncosted_lines
    return message


def totals_message(totals: InvoiceTotals) -> reports_pb2.InvoiceTotals:
    return reports_pb2.InvoiceTotals(
        currency=totals.currency,
        invoice_count=totals.invoice_count,
        subtotal=money(totals.subtotal, totals.currency),
        credits_applied=money(totals.credits_applied, totals.currency),
        total=money(totals.total, totals.currency),
    )


def usage_point_message(point: UsagePoint) -> reports_pb2.UsagePoint:
    bucket = point.bucket
    return reports_pb2.UsagePoint(
        bucket_start=timestamp(bucket.start),
        customer_id=bucket.customer_id,
        metric_id=bucket.metric_id,
        group_values=point.group_values,
        quantity=decimal_text(point.quantity),
        event_count=bucket.tally.count,
    )


def forecast_message(forecast: Forecast) -> reports_pb2.Forecast:
    currency = forecast.currency
    message = reports_pb2.Forecast(
        invoice_id=forecast.invoice_id,
        customer_id=forecast.customer_id,
        period_start=timestamp(forecast.period_start),
        period_end=timestamp(forecast.period_end),
        as_of=timestamp(forecast.as_of),
        elapsed=decimal_text(forecast.elapsed),
        method=forecast.method,
        subtotal_so_far=money(forecast.so_far.subtotal, currency),
        forecast_subtotal=money(forecast.forecast.subtotal, currency),
        forecast_credits_applied=money(forecast.forecast.credits_applied, currency),
        forecast_total=money(forecast.forecast.total, currency),
        actual_status=forecast.actual_status,
    )
    if forecast.actual is not None:
        message.actual_total.CopyFrom(money(forecast.actual.total, currency))
    return message
