"""Invoices as values, and their canonical form and content hash.

The canonical form is what a finalized invoice's SHA-256 is computed over and
what replay must reproduce byte for byte. Status is not part of it: an invoice's
content does not change when it is finalized or voided.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import Enum

from ledger.core.canonical import canonical_json, sha256_hex
from ledger.core.catalog import RateModel
from ledger.core.codec import added_field, encode
from ledger.core.rate_models import TierUse


class LineKind(Enum):
    USAGE = "usage"  # the period's own charges
    ADJUSTMENT = "adjustment"  # late usage of an earlier, finalized period
    TRUE_UP = "true_up"  # a postpaid commit's shortfall at its term's end


@dataclass(frozen=True)
class InvoiceLine:
    """One priced quantity, with everything needed to see how it was computed."""

    product_id: str
    product_name: str
    metric_id: str
    group_values: Mapping[str, str]
    rate_card_id: str
    rate_card_version: int
    segment_start: datetime
    segment_end: datetime
    model: RateModel
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    explanation: str
    tiers: tuple[TierUse, ...] = ()
    override_id: str = ""
    kind: LineKind = added_field(LineKind.USAGE)
    # An adjustment's earlier invoice; its segment is in that invoice's period.
    adjusts_invoice_id: str = added_field("")


@dataclass(frozen=True)
class CreditApplied:
    """How much of one grant's balance the invoice uses."""

    grant_id: str
    amount: Decimal


@dataclass(frozen=True)
class UnbilledUsage:
    """Usage a metric matched but could not bill, counted with its reason."""

    metric_id: str
    reason: str
    event_count: int


@dataclass(frozen=True)
class Invoice:
    """A customer's bill for one contract period, computed through a ledger position."""

    invoice_id: str
    customer_id: str
    contract_id: str
    currency: str
    period_start: datetime
    period_end: datetime
    lines: tuple[InvoiceLine, ...]
    subtotal: Decimal
    credits_applied: Decimal
    total: Decimal
    computed_through_seq: int
    rate_card_id: str
    rate_card_versions: tuple[int, ...]
    contract_version: int
    unbilled: tuple[UnbilledUsage, ...] = field(default=())
    credits: tuple[CreditApplied, ...] = added_field(())
    replaces_invoice_id: str = added_field("")  # the voided invoice this one replaces


def minor_unit_places(invoice: Invoice) -> int:
    """The currency's decimal places: a subtotal is always kept at its minor unit."""
    exponent = invoice.subtotal.as_tuple().exponent
    assert isinstance(exponent, int)
    return -exponent


def canonical_invoice(invoice: Invoice) -> bytes:
    """The invoice's canonical JSON bytes."""
    return canonical_json(encode(invoice))


def content_sha256(invoice: Invoice) -> str:
    """SHA-256 (hex) of the canonical form; what finalization records."""
    return sha256_hex(canonical_invoice(invoice))
