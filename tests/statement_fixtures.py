"""A synthetic customer statement with every feature the statement page draws.

Shared by the page's unit tests, the browser test and end-to-end tests, so all of
them look at the same awkward cases: graduated tiers, a prorated segment, an
adjustment of an earlier invoice, a true-up, two credits drawn, balances with
entries, unbilled usage, a day whose spend is negative, and customer text full
of HTML (``<script>``, ``&``, quotes) that must come out escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ledger.core.catalog import RateModel
from ledger.core.credits import EntryKind, Grant, GrantKind
from ledger.core.invoice import (
    CreditApplied,
    Invoice,
    InvoiceLine,
    LineKind,
    UnbilledUsage,
    content_sha256,
)
from ledger.core.rate_models import TierUse
from projections.balances import EntryView, GrantView
from projections.statement_model import MetricUsage, Statement, StatementDay

PERIOD_START = datetime(2026, 1, 1, tzinfo=UTC)
PERIOD_END = datetime(2026, 2, 1, tzinfo=UTC)
GENERATED_AT = datetime(2026, 1, 20, 12, 34, 56, 789000, tzinfo=UTC)
INVOICE_ID = "inv-2026-01-acme"
CUSTOMER_ID = "acme-<&>"
HOSTILE_NAME = "Acme <script>alert(\"pwned\")</script> & Sons 'Ltd'"
HOSTILE_GROUP = "<b>\"eu\" & 'west'</b>"
NEGATIVE_DAY = 20  # the day a LATEST quantity fell
TOTAL = Decimal("200.00")


def _line(product_id: str, amount: str, **fields: object) -> InvoiceLine:
    base = InvoiceLine(
        product_id=product_id,
        product_name=product_id.replace("-", " ").title(),
        metric_id=f"{product_id}-metric",
        group_values={},
        rate_card_id="card-standard",
        rate_card_version=3,
        segment_start=PERIOD_START,
        segment_end=PERIOD_END,
        model=RateModel.PER_UNIT,
        quantity=Decimal(1),
        unit_price=Decimal(amount),
        amount=Decimal(amount),
        explanation=f"1 × {amount} = {amount}",
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def lines() -> tuple[InvoiceLine, ...]:
    """One line of each kind; amounts add up to 340.56."""
    tiers = (
        TierUse(Decimal(1000), Decimal(1000), Decimal("0.10"), Decimal(5), Decimal("105.00")),
        TierUse(None, Decimal(500), Decimal("0.05"), Decimal(0), Decimal("25.00")),
    )
    return (
        _line(
            "api-calls",
            "123.46",
            group_values={"model": "gpt-4", "region": HOSTILE_GROUP},
            quantity=Decimal(1234567),
            unit_price=Decimal("0.0001"),
            explanation="1234567 × 0.0001 = 123.4567",
        ),
        _line(
            "storage",
            "130.00",
            model=RateModel.GRADUATED,
            quantity=Decimal(1500),
            unit_price=Decimal("0.0866666666666667"),
            explanation="1000 × 0.10 + 5 + 500 × 0.05 = 130.00",
            tiers=tiers,
            override_id="ovr-<special>",
        ),
        _line(
            "seats",
            "32.90",
            model=RateModel.SEAT,
            metric_id="",
            quantity=Decimal(3),
            unit_price=Decimal("20.00"),
            segment_start=datetime(2026, 1, 15, tzinfo=UTC),
            explanation="3 seats × 20.00 × 17/31 days = 32.903225806451…",
        ),
        _line(
            "api-calls",
            "4.20",
            kind=LineKind.ADJUSTMENT,
            adjusts_invoice_id="inv-2025-12-acme",
            segment_start=datetime(2025, 12, 10, tzinfo=UTC),
            segment_end=datetime(2025, 12, 11, 6, 30, tzinfo=UTC),
            quantity=Decimal(42000),
            unit_price=Decimal("0.0001"),
            explanation="42000 × 0.0001 = 4.2000",
        ),
        _line("commit-true-up", "50.00", kind=LineKind.TRUE_UP, metric_id="", model=RateModel.FLAT),
    )


def invoice(**fields: object) -> Invoice:
    """The January invoice: subtotal 340.56, 140.56 of credits, 200.00 due."""
    base = Invoice(
        invoice_id=INVOICE_ID,
        customer_id=CUSTOMER_ID,
        contract_id="contract-1",
        currency="USD",
        period_start=PERIOD_START,
        period_end=PERIOD_END,
        lines=lines(),
        subtotal=Decimal("340.56"),
        credits_applied=Decimal("140.56"),
        total=TOTAL,
        computed_through_seq=4711,
        rate_card_id="card-standard",
        rate_card_versions=(2, 3),
        contract_version=2,
        unbilled=(UnbilledUsage("tokens", "no rate for region=ap-<south>", 12),),
        credits=(
            CreditApplied("credit-1", Decimal("100.00")),
            CreditApplied("promo-<x>", Decimal("40.56")),
        ),
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def balances() -> tuple[GrantView, ...]:
    """Two grants, both partly drawn by this invoice."""
    credit = Grant(
        "credit-1", CUSTOMER_ID, GrantKind.CREDIT, Decimal("250.00"), "USD", PERIOD_START, None
    )
    promo = Grant(
        "promo-<x>",
        CUSTOMER_ID,
        GrantKind.PREPAID_COMMIT,
        Decimal("40.56"),
        "USD",
        PERIOD_START,
        datetime(2026, 3, 1, tzinfo=UTC),
        products=("api-calls", "storage"),
    )
    drawn = datetime(2026, 2, 1, 0, 5, tzinfo=UTC)
    return (
        GrantView(
            credit,
            Decimal("150.00"),
            3,
            (
                EntryView(3, EntryKind.GRANTED, Decimal("250.00"), PERIOD_START, ""),
                EntryView(40, EntryKind.DRAWN_DOWN, Decimal("-100.00"), drawn, INVOICE_ID),
            ),
        ),
        GrantView(
            promo,
            Decimal("0.00"),
            5,
            (
                EntryView(5, EntryKind.GRANTED, Decimal("40.56"), PERIOD_START, ""),
                EntryView(41, EntryKind.DRAWN_DOWN, Decimal("-40.56"), drawn, INVOICE_ID),
            ),
        ),
    )


def days_from(
    spends: Sequence[Decimal], start: datetime = PERIOD_START
) -> tuple[StatementDay, ...]:
    """Whole UTC days from ``start`` with these spends; cumulative is their running sum."""
    days = []
    cumulative = Decimal(0)
    for index, spend in enumerate(spends):
        cumulative += spend
        usage = [MetricUsage("api-calls-metric", Decimal(index * 1000 + 7))]
        if index % 3 == 0:
            usage.append(MetricUsage("storage-metric", Decimal(index) / 4))
        day_start = start + timedelta(days=index)
        days.append(
            StatementDay(day_start, day_start + timedelta(days=1), spend, cumulative, tuple(usage))
        )
    return tuple(days)


def january_spends() -> list[Decimal]:
    """31 days of spend, one of them negative; they add up to 253.46 (the usage lines)."""
    spends = [Decimal("6.15") + Decimal(i % 5) for i in range(31)]
    spends[NEGATIVE_DAY] = Decimal("-3.10")
    spends[-1] += Decimal("253.46") - sum(spends, Decimal(0))
    return spends


def statement(**fields: object) -> Statement:
    """The whole synthetic statement; ``fields`` replace any of its parts."""
    the_invoice = invoice()
    base = Statement(
        customer_id=CUSTOMER_ID,
        customer_name=HOSTILE_NAME,
        invoice=the_invoice,
        status="DRAFT",
        content_sha256=content_sha256(the_invoice),
        balances=balances(),
        days=days_from(january_spends()),
        generated_at=GENERATED_AT,
    )
    return replace(base, **fields)  # type: ignore[arg-type]
