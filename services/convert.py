"""Protobuf messages to and from domain values. No rules live here, only shapes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp

from ledger.app.alerts import AlertInput, AlertView, FiredCrossing
from ledger.app.audit import SimulationRow
from ledger.app.balances import GrantInput
from ledger.app.catalog import RateCardInput
from ledger.app.customers import AmendmentInput, OverrideSpec
from ledger.app.usage import UsageInput
from ledger.core.canonical import format_decimal
from ledger.core.catalog import (
    BillableMetric,
    Contract,
    Override,
    PlanChange,
    Product,
    Rate,
    RateCardVersion,
    RateModel,
)
from ledger.core.credits import Grant
from ledger.core.errors import invalid
from ledger.core.invoice import Invoice, InvoiceLine
from ledger.core.pricing_drafts import RateCardDraft
from ledger.core.rate_diff import FieldChange, RateCardDiff
from ledger.core.rate_specs import RateSpec, TierSpec
from ledger.store.records import StoredEvent
from ledger.store.verify import VerifyReport
from projections.audit_log import AuditEntry
from projections.balances import EntryView, GrantView
from projections.entitlements import Entitlement
from services.api.accrual.v1 import (
    alerts_pb2,
    audit_pb2,
    balances_pb2,
    catalog_pb2,
    common_pb2,
    contracts_pb2,
    invoices_pb2,
    usage_pb2,
)

# Business instants this service accepts; billing arithmetic stays far from year 9999.
INSTANT_MIN = datetime(1970, 1, 1, tzinfo=UTC)
INSTANT_MAX = datetime(3000, 1, 1, tzinfo=UTC)
# protobuf Timestamps span years 1..9999; Python datetimes do too, but not below.
_TIMESTAMP_SECONDS_MIN = -62_135_596_800
_TIMESTAMP_SECONDS_MAX = 253_402_300_799
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # Timestamp's zero; INSTANT_MIN only by coincidence


def to_datetime(ts: Timestamp) -> datetime | None:
    """An aware UTC datetime, or None for an out-of-range timestamp."""
    if not _TIMESTAMP_SECONDS_MIN <= ts.seconds <= _TIMESTAMP_SECONDS_MAX or not (
        0 <= ts.nanos < 1_000_000_000
    ):
        return None
    # Built directly: protobuf's ToDatetime is Python, and twice the cost (batched
    # ingest converts a thousand per call). Nanoseconds are truncated, as it does.
    # Positional (days, seconds, microseconds): keywords cost timedelta 0.2 us more.
    return _EPOCH + timedelta(0, ts.seconds, ts.nanos // 1_000)


def optional_datetime(message: object, field: str) -> datetime | None:
    """The field as a datetime when it is set, else None; out of range is refused."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    value = _instant(getattr(message, field))
    if value is None:
        raise invalid(field, "is outside the years 1970 to 2999")
    return value


def usage_timestamp(event: usage_pb2.UsageEvent) -> datetime | None:
    """A usage event's time; a bad one is left None, for that event alone to be refused.

    optional_datetime's rules without its error: raising and catching one per
    event would cost every batch, for the rare bad timestamp."""
    return _instant(event.timestamp) if event.HasField("timestamp") else None


def _instant(ts: Timestamp) -> datetime | None:
    """The timestamp as an instant this service accepts, or None."""
    value = to_datetime(ts)
    return value if value is not None and INSTANT_MIN <= value < INSTANT_MAX else None


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


def rate_message(rate: Rate) -> catalog_pb2.Rate:
    return catalog_pb2.Rate(
        product_id=rate.product_id,
        group_values=dict(rate.group_values),
        model=rate.model.value,
        unit_price=format_decimal(rate.unit_price),
        minimum=decimal_text(rate.minimum),
        maximum=decimal_text(rate.maximum),
        tiers=[
            catalog_pb2.Tier(
                up_to=decimal_text(t.up_to),
                unit_price=format_decimal(t.unit_price),
                flat_fee=format_decimal(t.flat_fee),
            )
            for t in rate.tiers
        ],
        package_size=decimal_text(rate.package_size),
        package_rounding=rate.package_rounding.value if rate.model is RateModel.PACKAGE else "",
        flat_amount=format_decimal(rate.flat_amount) if rate.model is RateModel.FLAT else "",
        percent=format_decimal(rate.percent) if rate.model is RateModel.PERCENTAGE else "",
        percent_of=list(rate.percent_of),
    )


def rate_spec(message: catalog_pb2.Rate) -> RateSpec:
    return RateSpec(
        product_id=message.product_id,
        model=message.model,
        unit_price=message.unit_price,
        group_values=dict(message.group_values),
        minimum=message.minimum,
        maximum=message.maximum,
        tiers=[TierSpec(t.up_to, t.unit_price, t.flat_fee) for t in message.tiers],
        package_size=message.package_size,
        package_rounding=message.package_rounding,
        flat_amount=message.flat_amount,
        percent=message.percent,
        percent_of=list(message.percent_of),
    )


def rate_card_input(request: catalog_pb2.DraftRateCardRequest) -> RateCardInput:
    return RateCardInput(
        rate_card_id=request.rate_card_id,
        name=request.name,
        currency=request.currency,
        currency_decimals=(
            request.currency_decimals if request.HasField("currency_decimals") else None
        ),
        effective_from=optional_datetime(request, "effective_from"),
        rates=[rate_spec(r) for r in request.rates],
    )


def rate_card_message(card: RateCardVersion, seq: int = 0) -> catalog_pb2.RateCardVersion:
    return catalog_pb2.RateCardVersion(
        rate_card_id=card.rate_card_id,
        version=card.version,
        name=card.name,
        currency=card.currency,
        currency_decimals=card.currency_decimals,
        effective_from=timestamp(card.effective_from),
        rates=[rate_message(rate) for rate in card.rates],
        consistency_token=seq,
    )


def draft_message(draft: RateCardDraft, seq: int = 0) -> catalog_pb2.RateCardDraft:
    return catalog_pb2.RateCardDraft(
        rate_card_id=draft.rate_card.rate_card_id,
        draft=draft.draft,
        status=draft.status.value,
        rate_card=rate_card_message(draft.rate_card),
        drafted_by=draft.drafted_by,
        approved_by=draft.approved_by,
        published_version=draft.published_version,
        copy_of_version=draft.copy_of_version,
        consistency_token=seq,
    )


def diff_message(diff: RateCardDiff) -> catalog_pb2.RateCardDiff:
    def fields(changes: tuple[FieldChange, ...]) -> list[catalog_pb2.FieldChange]:
        return [
            catalog_pb2.FieldChange(field=c.field, before=c.before, after=c.after) for c in changes
        ]

    return catalog_pb2.RateCardDiff(
        rate_card_id=diff.rate_card_id,
        from_version=diff.from_version,
        to_version=diff.to_version,
        card_fields=fields(diff.card_fields),
        rates=[
            catalog_pb2.RateChange(
                product_id=r.product_id,
                group_values=dict(r.group_values),
                change=r.change,
                fields=fields(r.fields),
            )
            for r in diff.rates
        ],
    )


def override_spec(message: contracts_pb2.Override) -> OverrideSpec:
    return OverrideSpec(
        override_id=message.override_id,
        product_id=message.product_id,
        kind=message.kind,
        priority=message.priority,
        starts_at=optional_datetime(message, "starts_at"),
        ends_at=optional_datetime(message, "ends_at"),
        multiplier=message.multiplier,
        rate=rate_spec(message.rate) if message.HasField("rate") else None,
    )


def _override_message(override: Override) -> contracts_pb2.Override:
    message = contracts_pb2.Override(
        override_id=override.override_id,
        product_id=override.product_id,
        kind=override.kind.value,
        priority=override.priority,
        multiplier=decimal_text(override.multiplier),
    )
    if override.starts_at is not None:
        message.starts_at.CopyFrom(timestamp(override.starts_at))
    if override.ends_at is not None:
        message.ends_at.CopyFrom(timestamp(override.ends_at))
    if override.rate is not None:
        message.rate.CopyFrom(rate_message(override.rate))
    return message


def contract_message(contract: Contract, seq: int = 0) -> contracts_pb2.Contract:
    message = contracts_pb2.Contract(
        contract_id=contract.contract_id,
        customer_id=contract.customer_id,
        rate_card_id=contract.rate_card_id,
        pinned_version=contract.pinned_version or 0,
        starts_at=timestamp(contract.starts_at),
        billing_anchor=timestamp(contract.billing_anchor),
        consistency_token=seq,
        overrides=[_override_message(o) for o in contract.overrides],
        currency=contract.currency,
        plan_changes=[_plan_change_message(change) for change in contract.plan_changes],
    )
    if contract.ends_at is not None:
        message.ends_at.CopyFrom(timestamp(contract.ends_at))
    return message


def _plan_change_message(change: PlanChange) -> contracts_pb2.PlanChange:
    return contracts_pb2.PlanChange(
        effective_at=timestamp(change.effective_at),
        rate_card_id=change.rate_card_id,
        pinned_version=change.pinned_version or 0,
    )


def amendment_input(request: contracts_pb2.AmendContractRequest) -> AmendmentInput:
    return AmendmentInput(
        contract_id=request.contract_id,
        customer_id=request.customer_id,
        effective_at=optional_datetime(request, "effective_at"),
        rate_card_id=request.rate_card_id,
        pinned_version=request.pinned_version if request.HasField("pinned_version") else None,
        add_overrides=[override_spec(o) for o in request.add_overrides],
        end_override_ids=list(request.end_override_ids),
        ends_at=optional_datetime(request, "ends_at"),
        clear_ends_at=request.clear_ends_at,
    )


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
        tiers=[
            invoices_pb2.TierCharge(
                up_to=decimal_text(t.up_to),
                quantity=format_decimal(t.quantity),
                unit_price=format_decimal(t.unit_price),
                flat_fee=format_decimal(t.flat_fee),
                amount=format_decimal(t.amount),
            )
            for t in line.tiers
        ],
        override_id=line.override_id,
        kind=line.kind.value,
        adjusts_invoice_id=line.adjusts_invoice_id,
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
        credits=[
            invoices_pb2.CreditApplied(grant_id=c.grant_id, amount=money(c.amount, currency))
            for c in invoice.credits
        ],
        replaces_invoice_id=invoice.replaces_invoice_id,
    )


def _plain_dict(properties: Mapping[str, str]) -> dict[str, str]:
    # Not dict(properties): for protobuf's map, that goes through the Mapping
    # ABC's keys view in Python, twice the cost of iterating the map here.
    return {name: properties[name] for name in properties}


def usage_inputs(events: Iterable[usage_pb2.UsageEvent]) -> list[UsageInput]:
    return [
        # Positional: keywords cost a named tuple a third more, a thousand times a call.
        UsageInput(
            event.transaction_id,
            event.customer_id,
            event.event_type,
            usage_timestamp(event),
            _plain_dict(event.properties),
        )
        for event in events
    ]


def page_token(token: str) -> int:
    """A page token this service issued (a ledger seq), or an INVALID domain error."""
    if not token:
        return 0
    if not token.isascii() or not token.isdigit() or len(token) > 19:
        raise invalid("page_token", "is not a token this service issued")
    return int(token)


def ledger_event_message(event: StoredEvent) -> audit_pb2.LedgerEvent:
    return audit_pb2.LedgerEvent(
        seq=event.seq,
        stream_id=event.stream_id,
        stream_version=event.stream_version,
        event_type=event.event_type,
        schema_version=event.schema_version,
        payload_json=bytes(event.payload).decode(),
        metadata_json=bytes(event.metadata).decode(),
        occurred_at=timestamp(event.occurred_at),
        recorded_at=timestamp(event.recorded_at),
        prev_hash=bytes(event.prev_hash).hex(),
        hash=bytes(event.hash).hex(),
    )


def verify_progress_message(report: VerifyReport) -> audit_pb2.VerifyLedgerProgress:
    breach = report.breach
    return audit_pb2.VerifyLedgerProgress(
        events_checked=report.events_checked,
        last_seq=report.last_seq,
        last_hash=report.last_hash.hex(),
        done=report.done,
        ok=breach is None,
        breach_seq=breach.seq if breach else 0,
        breach_reason=breach.reason if breach else "",
    )


def audit_entry_message(entry: AuditEntry) -> audit_pb2.AuditEntry:
    return audit_pb2.AuditEntry(
        seq=entry.seq,
        recorded_at=timestamp(entry.recorded_at),
        kind=entry.kind,
        actor=entry.actor,
        customer_id=entry.customer_id,
        subject=entry.subject,
        reason=entry.reason,
        request_id=entry.request_id,
        summary=entry.summary,
    )


def simulation_row_message(row: SimulationRow) -> audit_pb2.SimulationRow:
    return audit_pb2.SimulationRow(
        customer_id=row.customer_id,
        invoice_id=row.invoice_id,
        period_start=timestamp(row.period_start),
        period_end=timestamp(row.period_end),
        status=row.status,
        current_total=money(row.current_total, row.currency),
        simulated_total=money(row.simulated_total, row.currency),
        delta=money(row.delta, row.currency),
    )


def grant_input(request: balances_pb2.GrantCreditRequest) -> GrantInput:
    return GrantInput(
        grant_id=request.grant_id,
        customer_id=request.customer_id,
        kind=request.kind,
        amount=request.amount,
        currency=request.currency,
        starts_at=optional_datetime(request, "starts_at"),
        expires_at=optional_datetime(request, "expires_at"),
        product_ids=list(request.product_ids),
        priority=request.priority,
        rollover_fraction=request.rollover_fraction,
        hard_limit=request.hard_limit,
    )


def grant_message(grant: Grant, seq: int = 0) -> balances_pb2.Grant:
    message = balances_pb2.Grant(
        customer_id=grant.customer_id,
        grant_id=grant.grant_id,
        kind=grant.kind.value,
        amount=format_decimal(grant.amount),
        currency=grant.currency,
        starts_at=timestamp(grant.starts_at),
        product_ids=list(grant.products),
        priority=grant.priority,
        rollover_fraction=format_decimal(grant.rollover_fraction),
        hard_limit=grant.hard_limit,
        rolled_over_from=grant.rolled_over_from,
        consistency_token=seq,
    )
    if grant.expires_at is not None:
        message.expires_at.CopyFrom(timestamp(grant.expires_at))
    return message


def _balance_entry_message(entry: EntryView) -> balances_pb2.BalanceEntry:
    return balances_pb2.BalanceEntry(
        seq=entry.seq,
        kind=entry.kind.value,
        amount=format_decimal(entry.amount),
        at=timestamp(entry.at),
        invoice_id=entry.invoice_id,
    )


def grant_balance_message(view: GrantView) -> balances_pb2.GrantBalance:
    return balances_pb2.GrantBalance(
        grant=grant_message(view.grant),
        remaining=format_decimal(view.remaining),
        entries=[_balance_entry_message(entry) for entry in view.entries],
    )


def entitlement_message(entitlement: Entitlement) -> balances_pb2.CheckEntitlementResponse:
    remaining = entitlement.hard_limit_remaining
    return balances_pb2.CheckEntitlementResponse(
        allowed=entitlement.allowed,
        reason=entitlement.refusal.value if entitlement.refusal is not None else "",
        explanation=entitlement.explanation,
        hard_limited=remaining is not None,
        hard_limit_remaining=decimal_text(remaining),
        currency=entitlement.currency,
    )


def alert_input(request: alerts_pb2.SetSpendAlertRequest) -> AlertInput:
    return AlertInput(
        alert_id=request.alert_id,
        customer_id=request.customer_id,
        kind=request.kind,
        threshold=request.threshold,
        currency=request.currency,
    )


def spend_alert_message(view: AlertView, seq: int = 0) -> alerts_pb2.SpendAlert:
    alert = view.alert
    return alerts_pb2.SpendAlert(
        alert_id=alert.alert_id,
        customer_id=alert.customer_id,
        kind=alert.kind.value,
        threshold=format_decimal(alert.threshold),
        currency=alert.currency,
        set_at=timestamp(view.set_at),
        crossings=[_crossing_message(crossing) for crossing in view.crossings],
        consistency_token=seq,
    )


def _crossing_message(crossing: FiredCrossing) -> alerts_pb2.AlertCrossing:
    event = crossing.event
    return alerts_pb2.AlertCrossing(
        crossing_key=event.crossing_key,
        value=format_decimal(event.value),
        threshold=format_decimal(event.threshold),
        at=timestamp(event.at),
        through_seq=event.through_seq,
        seq=crossing.seq,
    )
