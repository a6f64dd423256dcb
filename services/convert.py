"""Protobuf messages to and from domain values. No rules live here, only shapes."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp

from ledger.core.canonical import format_decimal
from ledger.core.catalog import BillableMetric, Contract, Product, RateCardVersion
from ledger.core.invoice import Invoice, InvoiceLine
from services.api.accrual.v1 import (
    catalog_pb2,
    common_pb2,
    contracts_pb2,
    invoices_pb2,
)

# protobuf Timestamps span years 1..9999; Python datetimes do too, but not below.
_TIMESTAMP_SECONDS_MIN = -62_135_596_800
_TIMESTAMP_SECONDS_MAX = 253_402_300_799


def to_datetime(ts: Timestamp) -> datetime | None:
    """An aware UTC datetime, or None for an out-of-range timestamp."""
    if not _TIMESTAMP_SECONDS_MIN <= ts.seconds <= _TIMESTAMP_SECONDS_MAX or not (
        0 <= ts.nanos < 1_000_000_000
    ):
        return None
    return ts.ToDatetime(tzinfo=UTC)


def optional_datetime(message: object, field: str) -> datetime | None:
    """The field as a datetime when it is set, else None."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    return to_datetime(getattr(message, field))


def timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def decimal_text(value: Decimal | None) -> str:
    return "" if value is None else format_decimal(value)


def money(amount: Decimal, currency: str) -> common_pb2.Money:
    return common_pb2.Money(amount=format_decimal(amount), currency=currency)


def metric_message(metric: BillableMetric, seq: int) -> catalog_pb2.BillableMetric:
    return catalog_pb2.BillableMetric(
        metric_id=metric.metric_id,
        name=metric.name,
        event_type=metric.event_type,
        aggregation=metric.aggregation.value,
        property=metric.property or "",
        filters=[
            catalog_pb2.PropertyFilter(property=f.property, op=f.op.value, values=list(f.values))
            for f in metric.filters
        ],
        group_by=list(metric.group_by),
        consistency_token=seq,
    )


def product_message(product: Product, seq: int) -> catalog_pb2.Product:
    return catalog_pb2.Product(
        product_id=product.product_id,
        name=product.name,
        metric_id=product.metric_id,
        consistency_token=seq,
    )


def rate_card_message(card: RateCardVersion, seq: int = 0) -> catalog_pb2.RateCardVersion:
    return catalog_pb2.RateCardVersion(
        rate_card_id=card.rate_card_id,
        version=card.version,
        name=card.name,
        currency=card.currency,
        currency_decimals=card.currency_decimals,
        effective_from=timestamp(card.effective_from),
        rates=[
            catalog_pb2.Rate(
                product_id=rate.product_id,
                group_values=dict(rate.group_values),
                model=rate.model.value,
                unit_price=format_decimal(rate.unit_price),
                minimum=decimal_text(rate.minimum),
                maximum=decimal_text(rate.maximum),
            )
            for rate in card.rates
        ],
        consistency_token=seq,
    )


def contract_message(contract: Contract, seq: int = 0) -> contracts_pb2.Contract:
    message = contracts_pb2.Contract(
        contract_id=contract.contract_id,
        customer_id=contract.customer_id,
        rate_card_id=contract.rate_card_id,
        pinned_version=contract.pinned_version or 0,
        starts_at=timestamp(contract.starts_at),
        billing_anchor=timestamp(contract.billing_anchor),
        consistency_token=seq,
    )
    if contract.ends_at is not None:
        message.ends_at.CopyFrom(timestamp(contract.ends_at))
    return message


def _line_message(line: InvoiceLine, currency: str) -> invoices_pb2.InvoiceLine:
    return invoices_pb2.InvoiceLine(
        product_id=line.product_id,
        product_name=line.product_name,
        metric_id=line.metric_id,
        group_values=dict(line.group_values),
        rate_card_id=line.rate_card_id,
        rate_card_version=line.rate_card_version,
        segment_start=timestamp(line.segment_start),
        segment_end=timestamp(line.segment_end),
        model=line.model.value,
        quantity=format_decimal(line.quantity),
        unit_price=format_decimal(line.unit_price),
        amount=money(line.amount, currency),
        explanation=line.explanation,
    )


def invoice_message(invoice: Invoice, status: str, sha256: str) -> invoices_pb2.Invoice:
    currency = invoice.currency
    return invoices_pb2.Invoice(
        invoice_id=invoice.invoice_id,
        customer_id=invoice.customer_id,
        period_start=timestamp(invoice.period_start),
        period_end=timestamp(invoice.period_end),
        status=status,
        lines=[_line_message(line, currency) for line in invoice.lines],
        subtotal=money(invoice.subtotal, currency),
        credits_applied=money(invoice.credits_applied, currency),
        total=money(invoice.total, currency),
        computed_through_seq=invoice.computed_through_seq,
        content_sha256=sha256,
        contract_id=invoice.contract_id,
        rate_card_id=invoice.rate_card_id,
        rate_card_versions=list(invoice.rate_card_versions),
        contract_version=invoice.contract_version,
        unbilled=[
            invoices_pb2.UnbilledUsage(
                metric_id=u.metric_id, reason=u.reason, event_count=u.event_count
            )
            for u in invoice.unbilled
        ],
    )
