"""Finance's commands: ``accrual report revenue|usage|forecast`` and ``accrual statement``.

Reports print as an aligned table or, with ``--csv``, as CSV for a spreadsheet;
the statement is written as a self-contained HTML file. Each catches the
projections up first, so a report reflects every event recorded before it ran.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from ledger.core.canonical import format_decimal, format_instant
from ledger.core.reporting import Dimension
from projections.forecasting import Forecast, ForecastQuery
from projections.reporting import RevenueQuery, UsageQuery
from services.bootstrap import App
from services.cli.reports import csv_text, table
from services.cli.runtime import with_app
from services.config import Settings
from services.statement_page import render_statement

MONTH = re.compile(r"\d{4}-\d{2}")


def instant(text: str) -> datetime:
    """``YYYY-MM`` (the month's first instant), an ISO date or an ISO instant; UTC
    unless it names an offset. An argparse type: a bad one is a usage error."""
    try:
        value = datetime.fromisoformat(f"{text}-01" if MONTH.fullmatch(text) else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not YYYY-MM, a date or an instant") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _print(headers: Sequence[str], rows: Sequence[Sequence[str]], args: argparse.Namespace) -> None:
    if args.csv:
        print(csv_text(headers, rows), end="")
    else:
        print(table(headers, rows))


def revenue_command(settings: Settings, args: argparse.Namespace) -> int:
    by = [Dimension(name) for name in args.by]
    query = RevenueQuery(
        periods=(args.start, args.end),
        by=by,
        drafts=args.drafts,
        customer_ids=args.customer or [],
    )

    async def body(app: App) -> int:
        await app.runner.catch_up()
        report = await app.reporting.revenue(query)
        headers = (*(d.value for d in by), "currency", "amount", "cost", "margin", "lines")
        rows = [
            (
                *(key for _, key in row.keys),
                row.currency,
                format_decimal(row.amount),
                format_decimal(row.cost) + ("*" if row.uncosted_lines else ""),
                format_decimal(row.margin),
                str(row.line_count),
            )
            for row in report.rows
        ]
        _print(headers, rows, args)
        if not args.csv:
            source = "drafts" if args.drafts else "finalized invoices"
            for totals in report.totals:
                print(
                    f"{source} {totals.currency}: {totals.invoice_count} invoices, subtotal"
                    f" {format_decimal(totals.subtotal)}, credits"
                    f" {format_decimal(totals.credits_applied)}, total"
                    f" {format_decimal(totals.total)} (through seq"
                    f" {report.computed_through_seq}; * = some lines have no cost set)"
                )
        return 0

    return with_app(settings, body)


def usage_command(settings: Settings, args: argparse.Namespace) -> int:
    query = UsageQuery(
        span=(args.start, args.end),
        hourly=args.grain == "hourly",
        customer_ids=args.customer or [],
        metric_ids=args.metric or [],
        by_customer=args.by_customer,
    )

    async def body(app: App) -> int:
        await app.runner.catch_up()
        report = await app.reporting.usage(query)
        headers = ("bucket_start", "customer_id", "metric_id", "group", "quantity", "events")
        rows = [
            (
                format_instant(point.bucket.start),
                point.bucket.customer_id or "(all)",
                point.bucket.metric_id,
                ",".join(f"{k}={v}" for k, v in sorted(point.group_values.items())),
                format_decimal(point.quantity),
                str(point.bucket.tally.count),
            )
            for point in report.points
        ]
        _print(headers, rows, args)
        return 0

    return with_app(settings, body)


FORECAST_COLUMNS = (
    "invoice_id",
    "customer_id",
    "period_start",
    "as_of",
    "elapsed",
    "currency",
    "so_far",
    "forecast_total",
    "actual_total",
    "actual_status",
)


def forecast_command(settings: Settings, args: argparse.Namespace) -> int:
    query = ForecastQuery(args.customer or [], args.past)

    async def body(app: App) -> int:
        await app.runner.catch_up()
        forecasts, _ = await app.forecasting.forecasts(query)
        if args.csv:  # every row with its method, for a spreadsheet
            rows = [(*_forecast_cells(f), f.method) for f in forecasts]
            print(csv_text((*FORECAST_COLUMNS, "method"), rows), end="")
            return 0
        print(table(FORECAST_COLUMNS, [_forecast_cells(f) for f in forecasts]))
        for method in dict.fromkeys(f.method for f in forecasts):
            print(f"method: {method}")
        return 0

    return with_app(settings, body)


def _forecast_cells(forecast: Forecast) -> tuple[str, ...]:
    actual = forecast.actual
    return (
        forecast.invoice_id,
        forecast.customer_id,
        format_instant(forecast.period_start),
        format_instant(forecast.as_of),
        format_decimal(forecast.elapsed),
        forecast.currency,
        format_decimal(forecast.so_far.subtotal),
        format_decimal(forecast.forecast.total),
        format_decimal(actual.total) if actual is not None else "",
        forecast.actual_status,
    )


def statement_command(settings: Settings, args: argparse.Namespace) -> int:
    if not args.invoice and not (args.customer and args.period):
        print("give --invoice, or --customer and --period", file=sys.stderr)
        return 2

    async def body(app: App) -> str:
        await app.runner.catch_up()
        statement = await app.statements.statement(
            invoice_id=args.invoice or "",
            customer_id=args.customer or "",
            at=args.period,
        )
        out = Path(args.out or f"statement-{statement.invoice.invoice_id}.html")
        out.write_text(render_statement(statement), encoding="utf-8")
        return f"wrote {out} ({statement.invoice.invoice_id}, {statement.status})"

    print(with_app(settings, body))
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser("report", help="revenue, usage and forecasts (table or CSV)")
    kinds = report.add_subparsers(dest="report", required=True)
    revenue = kinds.add_parser("revenue", help="revenue of the periods starting in a range")
    revenue.add_argument("--by", action="append", default=[], choices=[d.value for d in Dimension])
    revenue.add_argument("--drafts", action="store_true", help="open periods' live drafts")
    revenue.set_defaults(run=revenue_command)
    usage = kinds.add_parser("usage", help="usage per metric and group over time")
    usage.add_argument("--grain", choices=["hourly", "daily"], default="daily")
    usage.add_argument("--metric", action="append", help="only this metric (repeatable)")
    usage.add_argument("--by-customer", action="store_true", help="a row per customer")
    usage.set_defaults(run=usage_command)
    forecast = kinds.add_parser("forecast", help="run-rate forecasts of open periods")
    forecast.add_argument("--past", type=int, default=0, help="also N ended periods, at midpoint")
    forecast.set_defaults(run=forecast_command)
    for parser in (revenue, usage):
        parser.add_argument(
            "--from", dest="start", type=instant, required=True, help="YYYY-MM or ISO instant"
        )
        parser.add_argument(
            "--to", dest="end", type=instant, required=True, help="YYYY-MM or ISO instant"
        )
    for parser in (revenue, usage, forecast):
        parser.add_argument("--customer", action="append", help="only this customer (repeatable)")
        parser.add_argument("--csv", action="store_true")

    statement = commands.add_parser("statement", help="write a customer statement as HTML")
    statement.add_argument("--customer", help="the customer ...")
    statement.add_argument(
        "--period", type=instant, help="... and an instant in the period (YYYY-MM or ISO)"
    )
    statement.add_argument("--invoice", help="or an invoice id")
    statement.add_argument("--out", help="the HTML file (default statement-<invoice>.html)")
    statement.set_defaults(run=statement_command)
