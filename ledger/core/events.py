"""Domain events: frozen dataclasses named in the past tense.

Each class has an ``EVENT_TYPE`` and a ``SCHEMA_VERSION``. A shipped event
class is never edited: a change adds a version and an upcaster in
:data:`UPCASTERS`, which converts stored payloads of older versions on read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any, ClassVar, Final

import orjson

from ledger.core.alerts import SpendAlert
from ledger.core.canonical import format_instant, parse_instant
from ledger.core.catalog import BillableMetric, Contract, Product, RateCardVersion
from ledger.core.codec import decode, encode
from ledger.core.contracts import Amendment
from ledger.core.credits import Grant
from ledger.core.invoice import Invoice


@dataclass(frozen=True)
class DomainEvent:
    """Base of all events; subclasses set the two class variables."""

    EVENT_TYPE: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int] = 1


@dataclass(frozen=True)
class UsageRecorded(DomainEvent):
    EVENT_TYPE: ClassVar[str] = "UsageRecorded"

    customer_id: str
    transaction_id: str
    event_type: str
    occurred_at: datetime
    properties: Mapping[str, str]

    def __init__(
        self,
        customer_id: str,
        transaction_id: str,
        event_type: str,
        occurred_at: datetime,
        properties: Mapping[str, str],
    ) -> None:
        # Written into __dict__ directly (the instance stays frozen to assignment):
        # the generated __init__ calls object.__setattr__ once per field, 0.65 us
        # an event against 0.27, and replays and rebuilds build one per usage event
        # read. A test holds these to the dataclass's fields, in order.
        fields = self.__dict__
        fields["customer_id"] = customer_id
        fields["transaction_id"] = transaction_id
        fields["event_type"] = event_type
        fields["occurred_at"] = occurred_at
        fields["properties"] = properties


@dataclass(frozen=True)
class BillableMetricCreated(DomainEvent):
    EVENT_TYPE: ClassVar[str] = "BillableMetricCreated"

    metric: BillableMetric


@dataclass(frozen=True)
class ProductCreated(DomainEvent):
    EVENT_TYPE: ClassVar[str] = "ProductCreated"

    product: Product


@dataclass(frozen=True)
class ProductCostSet(DomainEvent):
    """What one unit of a product costs to provide, from ``effective_from`` on
    (cost of goods, for margins); a later setting for the same instant wins."""

    EVENT_TYPE: ClassVar[str] = "ProductCostSet"

    product_id: str
    currency: str
    unit_cost: Decimal
    effective_from: datetime


@dataclass(frozen=True)
class RateCardPublished(DomainEvent):
    EVENT_TYPE: ClassVar[str] = "RateCardPublished"

    rate_card: RateCardVersion


@dataclass(frozen=True)
class RateCardDrafted(DomainEvent):
    """A proposed rate card version (``version`` 0 until published); prices nothing yet."""

    EVENT_TYPE: ClassVar[str] = "RateCardDrafted"

    draft: int
    rate_card: RateCardVersion
    drafted_by: str
    # The published version this draft restores (a rollback); 0 for a new price.
    copy_of_version: int = 0
    # No effective_from was given: the version takes effect when it is published,
    # not when it was drafted (``rate_card.effective_from`` is only a placeholder).
    effective_at_publish: bool = False


@dataclass(frozen=True)
class RateCardDraftApproved(DomainEvent):
    """A second principal agreed to a draft; only then may it be published."""

    EVENT_TYPE: ClassVar[str] = "RateCardDraftApproved"

    rate_card_id: str
    draft: int
    approved_by: str


@dataclass(frozen=True)
class RateCardDraftPublished(DomainEvent):
    """An approved draft became ``version`` (a RateCardPublished in the same append)."""

    EVENT_TYPE: ClassVar[str] = "RateCardDraftPublished"

    rate_card_id: str
    draft: int
    version: int
    published_by: str


@dataclass(frozen=True)
class CustomerCreated(DomainEvent):
    EVENT_TYPE: ClassVar[str] = "CustomerCreated"

    customer_id: str
    name: str


@dataclass(frozen=True)
class ContractCreated(DomainEvent):
    EVENT_TYPE: ClassVar[str] = "ContractCreated"

    contract: Contract


@dataclass(frozen=True)
class ContractRegistered(DomainEvent):
    """Claims a contract id (stream ``contract-<id>``) and says whose contract it is."""

    EVENT_TYPE: ClassVar[str] = "ContractRegistered"

    contract_id: str
    customer_id: str


@dataclass(frozen=True)
class InvoiceFinalized(DomainEvent):
    EVENT_TYPE: ClassVar[str] = "InvoiceFinalized"

    invoice: Invoice
    content_sha256: str


@dataclass(frozen=True)
class ContractAmended(DomainEvent):
    """A contract's terms changed from ``amendment.effective_at`` on."""

    EVENT_TYPE: ClassVar[str] = "ContractAmended"

    amendment: Amendment


@dataclass(frozen=True)
class InvoiceVoided(DomainEvent):
    """A finalized invoice no longer stands; ``replacement_id`` bills its period anew."""

    EVENT_TYPE: ClassVar[str] = "InvoiceVoided"

    invoice_id: str
    replacement_id: str


@dataclass(frozen=True)
class CreditGranted(DomainEvent):
    """A credit or commit was granted (or rolled over when an invoice expired another)."""

    EVENT_TYPE: ClassVar[str] = "CreditGranted"

    grant: Grant
    invoice_id: str = ""  # for a rollover: the invoice whose finalization made it


@dataclass(frozen=True)
class CreditDrawnDown(DomainEvent):
    """A finalized invoice used ``amount`` of a grant's balance."""

    EVENT_TYPE: ClassVar[str] = "CreditDrawnDown"

    grant_id: str
    invoice_id: str
    amount: Decimal
    at: datetime


@dataclass(frozen=True)
class CreditExpired(DomainEvent):
    """What was left of a grant lapsed at ``at``, entered when ``invoice_id`` was finalized."""

    EVENT_TYPE: ClassVar[str] = "CreditExpired"

    grant_id: str
    invoice_id: str
    amount: Decimal
    at: datetime


@dataclass(frozen=True)
class CreditReversed(DomainEvent):
    """A voided invoice's balance entry undone: ``amount`` is added back (signed)."""

    EVENT_TYPE: ClassVar[str] = "CreditReversed"

    grant_id: str
    invoice_id: str
    amount: Decimal
    at: datetime


@dataclass(frozen=True)
class AccessDenied(DomainEvent):
    """An authenticated principal asked for something its roles do not allow."""

    EVENT_TYPE: ClassVar[str] = "AccessDenied"

    principal: str
    method: str
    reason: str


@dataclass(frozen=True)
class SpendAlertSet(DomainEvent):
    """A customer asked to be alerted when its spend or balance crosses a threshold."""

    EVENT_TYPE: ClassVar[str] = "SpendAlertSet"

    alert: SpendAlert


@dataclass(frozen=True)
class SpendAlertTriggered(DomainEvent):
    """An alert's threshold was crossed; stored alone on the crossing's own stream,
    so however many evaluators see the crossing, it is recorded once.

    ``value`` is the spend or balance seen at ``at``, computed through ledger
    position ``through_seq`` (where watching for the next crossing resumes).
    """

    EVENT_TYPE: ClassVar[str] = "SpendAlertTriggered"

    alert_id: str
    customer_id: str
    crossing_key: str
    value: Decimal
    threshold: Decimal
    at: datetime
    through_seq: int


EVENT_CLASSES: Final[dict[str, type[DomainEvent]]] = {
    cls.EVENT_TYPE: cls
    for cls in (
        UsageRecorded,
        BillableMetricCreated,
        ProductCreated,
        ProductCostSet,
        RateCardPublished,
        RateCardDrafted,
        RateCardDraftApproved,
        RateCardDraftPublished,
        CustomerCreated,
        ContractCreated,
        ContractRegistered,
        ContractAmended,
        InvoiceFinalized,
        InvoiceVoided,
        CreditGranted,
        CreditDrawnDown,
        CreditExpired,
        CreditReversed,
        AccessDenied,
        SpendAlertSet,
        SpendAlertTriggered,
    )
}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
# (event_type, from_version) -> function returning the payload at from_version + 1.
UPCASTERS: Final[dict[tuple[str, int], Upcaster]] = {}


def usage_payload_bytes(event: UsageRecorded, occurred_at_text: str | None = None) -> bytes:
    """The canonical bytes of a usage payload, written out directly: usage is nearly
    every event, and a JSON encoder was the largest cost of batched ingest. It must
    equal ``canonical_json(to_payload(event))`` byte for byte (property tests check):
    keys sorted, no spaces, strings escaped by json's own ``encode_basestring``.
    ``occurred_at_text`` is ``format_instant(event.occurred_at)`` if the caller has it."""
    # Not orjson: it encodes one payload faster, but a batch's thousand results,
    # kept alive until the COPY, cost it 2 us apiece (its output buffers are
    # allocated large, then shrunk) against 0.05 us when each is dropped.
    properties = ",".join(
        [
            f"{encode_basestring(name)}:{encode_basestring(value)}"
            for name, value in sorted(event.properties.items())
        ]
    )
    return (
        f'{{"customer_id":{encode_basestring(event.customer_id)},'
        f'"event_type":{encode_basestring(event.event_type)},'
        f'"occurred_at":"{occurred_at_text or format_instant(event.occurred_at)}",'
        f'"properties":{{{properties}}},'
        f'"transaction_id":{encode_basestring(event.transaction_id)}}}'
    ).encode()


def usage_from_bytes(schema_version: int, payload: bytes) -> DomainEvent:
    """A stored usage payload, as bytes, as its event.

    Replays and rollups parse every usage event, and orjson parses these payloads
    about four times faster than json. A usage payload holds only strings written
    as UTF-8, which both read identically (a property test checks); orjson differs
    from json on numbers past 64 bits, non-standard literals, escaped lone
    surrogates and very deep nesting, none of which a usage payload can hold.
    """
    return usage_from_payload(schema_version, orjson.loads(payload))


def usage_from_payload(schema_version: int, payload: dict[str, Any]) -> DomainEvent:
    """A stored usage payload as its event, built directly: projections, drafts and
    replays decode usage more than anything else. It must equal
    :func:`from_payload` (a property test checks); other versions go through it.
    The event keeps the payload's properties dict, uncopied: pass a payload that
    nothing else holds, as one just parsed."""
    if schema_version != UsageRecorded.SCHEMA_VERSION:
        return from_payload(UsageRecorded.EVENT_TYPE, schema_version, payload)
    return UsageRecorded(
        payload["customer_id"],
        payload["transaction_id"],
        payload["event_type"],
        parse_instant(payload["occurred_at"]),
        payload["properties"],
    )


def to_payload(event: DomainEvent) -> dict[str, Any]:
    """The event's payload as JSON-ready values (for canonical encoding)."""
    return encode(event)


def from_payload(event_type: str, schema_version: int, payload: dict[str, Any]) -> DomainEvent:
    """Rebuild an event, upcasting older stored schema versions first."""
    cls = EVENT_CLASSES[event_type]
    version = schema_version
    while version < cls.SCHEMA_VERSION:
        payload = UPCASTERS[(event_type, version)](payload)
        version += 1
    return decode(cls, payload)
