"""Every event survives its stored form: to_payload → canonical JSON → from_payload."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core import events as events_module
from ledger.core.alerts import AlertKind, SpendAlert
from ledger.core.canonical import canonical_json
from ledger.core.catalog import (
    Aggregation,
    BillableMetric,
    Contract,
    FilterOp,
    Override,
    OverrideKind,
    PlanChange,
    Product,
    PropertyFilter,
    Rate,
    RateCardVersion,
    RateModel,
)
from ledger.core.codec import decode, encode
from ledger.core.contracts import Amendment
from ledger.core.credits import Grant, GrantKind
from ledger.core.events import (
    EVENT_CLASSES,
    AccessDenied,
    BillableMetricCreated,
    ContractAmended,
    ContractCreated,
    ContractRegistered,
    CreditDrawnDown,
    CreditExpired,
    CreditGranted,
    CreditReversed,
    CustomerCreated,
    DomainEvent,
    InvoiceFinalized,
    InvoiceVoided,
    ProductCostSet,
    ProductCreated,
    RateCardDraftApproved,
    RateCardDrafted,
    RateCardDraftPublished,
    RateCardPublished,
    SpendAlertSet,
    SpendAlertTriggered,
    UsageRecorded,
    from_payload,
    to_payload,
    usage_payload_bytes,
)
from ledger.core.invoice import (
    CreditApplied,
    Invoice,
    InvoiceLine,
    LineKind,
    UnbilledUsage,
    content_sha256,
)

START = datetime(2025, 1, 31, 9, 30, tzinfo=UTC)
END = datetime(2025, 2, 28, 9, 30, tzinfo=UTC)

METRIC = BillableMetric(
    metric_id="tokens",
    name="Tokens",
    event_type="completion",
    aggregation=Aggregation.SUM,
    property="tokens",
    filters=(
        PropertyFilter("region", FilterOp.IN, ("eu-west", "eu-central")),
        PropertyFilter("model", FilterOp.EXISTS),
    ),
    group_by=("model", "region"),
)
RATE_CARD = RateCardVersion(
    rate_card_id="rc-list",
    version=4,
    name="List prices",
    currency="USD",
    currency_decimals=2,
    effective_from=datetime(2025, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    rates=(
        Rate("llm", RateModel.PER_UNIT, Decimal("0.0000015")),
        Rate(
            "llm",
            RateModel.PER_UNIT,
            Decimal("2.5E-6"),
            group_values={"model": "large", "region": "eu-west"},
            minimum=Decimal("10.00"),
            maximum=Decimal("1E+4"),
        ),
    ),
)
LINE = InvoiceLine(
    product_id="llm",
    product_name="LLM tokens",
    metric_id="tokens",
    group_values={"model": "large", "region": "eu-west"},
    rate_card_id="rc-list",
    rate_card_version=4,
    segment_start=START,
    segment_end=END,
    model=RateModel.PER_UNIT,
    quantity=Decimal("123456789"),
    unit_price=Decimal("0.0000015"),
    amount=Decimal("185.19"),
    explanation="123456789 × 0.0000015 = 185.1851835 → 185.19",
)
INVOICE = Invoice(
    invoice_id="in-ct-1-1",
    customer_id="cus-1",
    contract_id="ct-1",
    currency="USD",
    period_start=START,
    period_end=END,
    lines=(LINE, dataclasses.replace(LINE, group_values={}, amount=Decimal("0.00"))),
    subtotal=Decimal("185.19"),
    credits_applied=Decimal("0.00"),
    total=Decimal("185.19"),
    computed_through_seq=1234,
    rate_card_id="rc-list",
    rate_card_versions=(3, 4),
    contract_version=2,
    unbilled=(UnbilledUsage("tokens", "missing property 'tokens'", 3),),
)

SAMPLES: dict[str, DomainEvent] = {
    event.EVENT_TYPE: event
    for event in [
        UsageRecorded(
            customer_id="cus-1",
            transaction_id="tx-0001",
            event_type="completion",
            occurred_at=datetime(2025, 2, 3, 4, 5, 6, 789, tzinfo=UTC),
            properties={"tokens": "1500", "model": "large", "note": "Zürich → 東京"},
        ),
        BillableMetricCreated(metric=METRIC),
        ProductCreated(product=Product("llm", "LLM tokens", "tokens")),
        ProductCostSet("llm", "USD", Decimal("0.0000042"), datetime(2025, 1, 1, tzinfo=UTC)),
        RateCardPublished(rate_card=RATE_CARD),
        RateCardDrafted(draft=3, rate_card=RATE_CARD, drafted_by="alice", copy_of_version=1),
        RateCardDraftApproved(rate_card_id="rc-list", draft=3, approved_by="bob"),
        RateCardDraftPublished(rate_card_id="rc-list", draft=3, version=2, published_by="alice"),
        AccessDenied(principal="ingest-eu", method="/accrual.v1.X/Y", reason="role"),
        CustomerCreated(customer_id="cus-1", name="Acme, Inc."),
        ContractCreated(
            contract=Contract(
                contract_id="ct-1",
                customer_id="cus-1",
                rate_card_id="rc-list",
                pinned_version=None,
                starts_at=START,
                ends_at=None,
                billing_anchor=START,
            )
        ),
        ContractRegistered(contract_id="ct-1", customer_id="cus-1"),
        InvoiceFinalized(invoice=INVOICE, content_sha256=content_sha256(INVOICE)),
        ContractAmended(
            amendment=Amendment(
                contract_id="ct-1",
                effective_at=END,
                plan=PlanChange(END, "rc-pro", 2),
                add_overrides=(
                    Override("o-1", "llm", OverrideKind.MULTIPLIER, multiplier=Decimal("0.9")),
                ),
                end_overrides=("o-0",),
                change_term=True,
                ends_at=None,
            )
        ),
        InvoiceVoided(invoice_id="in-ct-1-1", replacement_id="in-ct-1-1-r1"),
        CreditGranted(
            grant=Grant(
                grant_id="g-1",
                customer_id="cus-1",
                kind=GrantKind.PREPAID_COMMIT,
                amount=Decimal("500.00"),
                currency="USD",
                starts_at=START,
                expires_at=END,
                products=("llm",),
                priority=1,
                rollover_fraction=Decimal("0.5"),
                hard_limit=True,
            ),
            invoice_id="in-ct-1-1",
        ),
        CreditDrawnDown(grant_id="g-1", invoice_id="in-ct-1-1", amount=Decimal("1.50"), at=END),
        CreditExpired(grant_id="g-1", invoice_id="in-ct-1-1", amount=Decimal("2.00"), at=END),
        CreditReversed(grant_id="g-1", invoice_id="in-ct-1-1", amount=Decimal("-3.5"), at=END),
        SpendAlertSet(
            alert=SpendAlert("budget", "cus-1", AlertKind.PERIOD_SPEND, Decimal("250.00"), "USD")
        ),
        SpendAlertTriggered(
            alert_id="budget",
            customer_id="cus-1",
            crossing_key="in-ct-1-1",
            value=Decimal("250.01"),
            threshold=Decimal("250.00"),
            at=END,
            through_seq=1234,
        ),
    ]
}


def test_added_fields_leave_the_stored_form_of_older_values_unchanged() -> None:
    """Invoices finalized before credits, adjustments and voids keep their bytes and hash."""
    payload = encode(INVOICE)
    assert "credits" not in payload and "replaces_invoice_id" not in payload
    assert all("kind" not in line for line in payload["lines"])  # type: ignore[union-attr]
    richer = dataclasses.replace(
        INVOICE,
        lines=(dataclasses.replace(LINE, kind=LineKind.ADJUSTMENT, adjusts_invoice_id="in-x-1"),),
        credits=(CreditApplied("g-1", Decimal("1.00")),),
        replaces_invoice_id="in-ct-1-1",
    )
    assert decode(Invoice, json.loads(canonical_json(encode(richer)))) == richer
    assert content_sha256(richer) != content_sha256(INVOICE)


def round_trip(event: DomainEvent) -> tuple[DomainEvent, bytes]:
    stored = canonical_json(to_payload(event))
    return from_payload(event.EVENT_TYPE, event.SCHEMA_VERSION, json.loads(stored)), stored


def no_floats(value: Any) -> bool:
    if isinstance(value, dict):
        return all(no_floats(item) for item in value.values())
    if isinstance(value, list):
        return all(no_floats(item) for item in value)
    return not isinstance(value, float)


@pytest.mark.parametrize("event_type", sorted(EVENT_CLASSES))
def test_every_event_class_has_a_sample(event_type: str) -> None:
    assert event_type in SAMPLES, f"add a sample {event_type} to this test"
    assert type(SAMPLES[event_type]) is EVENT_CLASSES[event_type]


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_event_round_trips_to_an_equal_object(event_type: str) -> None:
    event = SAMPLES[event_type]
    restored, _ = round_trip(event)
    assert type(restored) is type(event)
    assert restored == event


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_event_stored_form_is_byte_stable_across_a_round_trip(event_type: str) -> None:
    restored, stored = round_trip(SAMPLES[event_type])
    assert canonical_json(to_payload(restored)) == stored
    assert no_floats(json.loads(stored))


def test_decimals_keep_their_exact_text_through_a_round_trip() -> None:
    restored, stored = round_trip(SAMPLES["RateCardPublished"])
    assert b'"unit_price":"0.0000025"' in stored
    assert b'"maximum":"10000"' in stored
    rate = restored.rate_card.rates[1]  # type: ignore[attr-defined]
    assert isinstance(rate.unit_price, Decimal)
    assert rate.unit_price == Decimal("0.0000025")
    assert str(rate.minimum) == "10.00"


def test_datetimes_come_back_as_aware_utc_instants() -> None:
    restored, stored = round_trip(SAMPLES["UsageRecorded"])
    assert b'"occurred_at":"2025-02-03T04:05:06.000789Z"' in stored
    assert restored.occurred_at.tzinfo is UTC  # type: ignore[attr-defined]


def test_an_instant_in_another_offset_round_trips_to_the_same_instant() -> None:
    event = UsageRecorded(
        customer_id="cus-1",
        transaction_id="tx-2",
        event_type="api_call",
        occurred_at=datetime(2025, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=5))),
        properties={},
    )
    restored, stored = round_trip(event)
    assert restored == event
    assert b"2025-02-28T20:30:00.000000Z" in stored


def test_optional_values_round_trip_both_when_present_and_absent() -> None:
    pinned = Contract(
        contract_id="ct-2",
        customer_id="cus-1",
        rate_card_id="rc-list",
        pinned_version=3,
        starts_at=START,
        ends_at=END,
        billing_anchor=START,
    )
    event = ContractCreated(contract=pinned)
    restored, _ = round_trip(event)
    assert restored == event
    absent, _ = round_trip(SAMPLES["ContractCreated"])
    assert absent.contract.pinned_version is None  # type: ignore[attr-defined]
    assert absent.contract.ends_at is None  # type: ignore[attr-defined]


def test_invoice_inside_invoice_finalized_keeps_its_lines_and_hash() -> None:
    restored, _ = round_trip(SAMPLES["InvoiceFinalized"])
    invoice = restored.invoice  # type: ignore[attr-defined]
    assert invoice == INVOICE
    assert invoice.lines[0].model is RateModel.PER_UNIT
    assert invoice.rate_card_versions == (3, 4)
    assert content_sha256(invoice) == restored.content_sha256  # type: ignore[attr-defined]


def test_enums_in_nested_values_are_decoded_to_members() -> None:
    restored, stored = round_trip(SAMPLES["BillableMetricCreated"])
    metric = restored.metric  # type: ignore[attr-defined]
    assert b'"aggregation":"SUM"' in stored and b'"op":"exists"' in stored
    assert metric.aggregation is Aggregation.SUM
    assert [f.op for f in metric.filters] == [FilterOp.IN, FilterOp.EXISTS]
    assert metric.filters[0].values == ("eu-west", "eu-central")


def test_codec_decodes_any_encoded_dataclass() -> None:
    assert decode(RateCardVersion, json.loads(canonical_json(encode(RATE_CARD)))) == RATE_CARD
    assert decode(Invoice, json.loads(canonical_json(encode(INVOICE)))) == INVOICE


def test_an_older_stored_schema_version_is_upcast_on_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stored events are never rewritten; old shapes are converted when read."""

    def rename_v0(payload: dict[str, Any]) -> dict[str, Any]:
        return {"customer_id": payload["customer_id"], "name": payload["customer_name"]}

    monkeypatch.setitem(events_module.UPCASTERS, ("CustomerCreated", 0), rename_v0)
    stored_v0 = {"customer_id": "acme", "customer_name": "Acme Corp"}
    assert events_module.from_payload("CustomerCreated", 0, stored_v0) == CustomerCreated(
        "acme", "Acme Corp"
    )
    current = {"customer_id": "acme", "name": "Acme Corp"}
    assert events_module.from_payload("CustomerCreated", 1, current) == CustomerCreated(
        "acme", "Acme Corp"
    )


_ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@given(
    customer_id=_ids,
    transaction_id=_ids,
    event_type=_ids,
    occurred_at=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7, minutes=-30))]),
    ),
    properties=st.dictionaries(_ids, st.text(max_size=12), max_size=4),
)
def test_the_usage_fast_path_encodes_exactly_as_the_codec(
    customer_id: str,
    transaction_id: str,
    event_type: str,
    occurred_at: datetime,
    properties: dict[str, str],
) -> None:
    """Ingest encodes usage with a dedicated encoder; stored bytes (and so the hash
    chain and idempotency hashes) must be what the generic codec writes."""
    event = UsageRecorded(customer_id, transaction_id, event_type, occurred_at, properties)
    assert usage_payload_bytes(event) == canonical_json(to_payload(event))
