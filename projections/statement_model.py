"""What a customer statement shows: one invoice, how it was computed, balances, and days.

These are plain values gathered from the ledger's projections (see
:mod:`projections.statements`); the page that presents them is drawn by
``services.statement_page``. Nothing here is rounded or formatted: amounts are
the invoice's own decimals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from ledger.core.invoice import Invoice
from projections.balances import GrantView


@dataclass(frozen=True)
class MetricUsage:
    """How much of one metric's quantity a day added (its aggregation applied to the day)."""

    metric_id: str
    quantity: Decimal


@dataclass(frozen=True)
class StatementDay:
    """One UTC day of the period (the first and last may be partial).

    ``cumulative`` is the period's usage charges priced on everything up to the
    day's end, so tiers and minimums come out as on the invoice; ``spend`` is
    what the day added to it (negative only when a LATEST or volume quantity
    falls). The last day's ``cumulative`` equals the invoice's usage lines.
    """

    start: datetime
    end: datetime
    spend: Decimal
    cumulative: Decimal
    usage: tuple[MetricUsage, ...]


@dataclass(frozen=True)
class Statement:
    """A customer's statement for one invoice: the page's every figure."""

    customer_id: str
    customer_name: str
    invoice: Invoice
    status: str  # DRAFT, FINALIZED or VOIDED
    content_sha256: str
    balances: tuple[GrantView, ...]
    days: tuple[StatementDay, ...]
    generated_at: datetime
