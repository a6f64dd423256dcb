"""The worked examples of PRICING.md, each priced end to end by ``rate_invoice``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from ledger.core.catalog import (
    Aggregation,
    BillableMetric,
    Contract,
    PackageRounding,
    Product,
    Rate,
    RateCardVersion,
    RateModel,
    Tier,
)
from ledger.core.invoice import Invoice, InvoiceLine
from ledger.core.metering import GroupKey, Tally, UsageKey
from ledger.core.periods import Period
from ledger.core.rate_models import TierUse
from ledger.core.rating import Catalog, pricing_segments, rate_invoice


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


ANCHOR = utc(2026, 1, 1)
END = utc(2026, 2, 1)
PERIOD = Period(ANCHOR, END)
LONG_AGO = utc(2025, 6, 1)
DAY_23 = utc(2026, 1, 23)

TOKENS = BillableMetric("tokens", "Tokens", "completion", Aggregation.SUM, property="tokens")
CALLS = BillableMetric("calls", "API calls", "api_call", Aggregation.COUNT)
EMAILS = BillableMetric("emails", "Emails sent", "email_sent", Aggregation.COUNT)
SEATS = BillableMetric("seats", "Seats", "seat_gauge", Aggregation.MAX, property="seats")
A_UNITS = BillableMetric("a_units", "A units", "a_used", Aggregation.COUNT)
B_UNITS = BillableMetric("b_units", "B units", "b_used", Aggregation.COUNT)

LLM = Product("llm", "LLM tokens", "tokens")
API = Product("api", "API calls", "calls")
EMAIL = Product("email", "Emails", "emails")
SEAT = Product("seat", "Seats", "seats")
PRODUCT_A = Product("A", "Product A", "a_units")
PRODUCT_B = Product("B", "Product B", "b_units")
SUPPORT = Product("support", "Support fee")
PLATFORM = Product("platform", "Platform fee")

CATALOG = Catalog(
    metrics={m.metric_id: m for m in (TOKENS, CALLS, EMAILS, SEATS, A_UNITS, B_UNITS)},
    products={
        p.product_id: p for p in (LLM, API, EMAIL, SEAT, PRODUCT_A, PRODUCT_B, SUPPORT, PLATFORM)
    },
)

# Tiers of worked examples 2 and 3: up to 1,000 at 0.10; up to 10,000 at 0.08; above at 0.05.
TIERS = (
    Tier(Decimal(1000), Decimal("0.10")),
    Tier(Decimal(10000), Decimal("0.08")),
    Tier(None, Decimal("0.05")),
)


def per_unit(product_id: str, price: str, *, minimum: str | None = None) -> Rate:
    return Rate(
        product_id=product_id,
        model=RateModel.PER_UNIT,
        unit_price=Decimal(price),
        minimum=None if minimum is None else Decimal(minimum),
    )


def version(number: int, effective_from: datetime, *rates: Rate) -> RateCardVersion:
    return RateCardVersion(
        rate_card_id="rc-list",
        version=number,
        name="List prices",
        currency="USD",
        currency_decimals=2,
        effective_from=effective_from,
        rates=rates,
    )


def contract(starts_at: datetime = ANCHOR) -> Contract:
    return Contract(
        contract_id="ct-1",
        customer_id="cus-1",
        rate_card_id="rc-list",
        pinned_version=None,
        starts_at=starts_at,
        ends_at=None,
        billing_anchor=ANCHOR,
    )


def bill(
    rates: Sequence[Rate],
    usage: Mapping[tuple[str, GroupKey], Tally],
    *,
    starts_at: datetime = ANCHOR,
) -> Invoice:
    """Price one contract period (from ``starts_at`` to the period end) of one card version.

    Usage is keyed by (metric, group) and placed on the single pricing segment.
    """
    the_contract = contract(starts_at)
    period = Period(starts_at, END)
    versions = [version(1, LONG_AGO, *rates)]
    segments = pricing_segments(the_contract, period, {"rc-list": versions})
    assert [s.period for s in segments] == [period]
    start = segments[0].period.start
    keyed: dict[UsageKey, Tally] = {
        (start, metric_id, group): tally for (metric_id, group), tally in usage.items()
    }
    return rate_invoice(
        invoice_id="in-ct-1-1",
        contract=the_contract,
        contract_version=1,
        period=period,
        segments=segments,
        usage=keyed,
        catalog=CATALOG,
        rate_card_currency=("USD", 2),
        computed_through_seq=7,
    )


def summed(quantity: str | int) -> Tally:
    return Tally(count=1, total=Decimal(quantity), maximum=Decimal(quantity))


def counted(count: int) -> Tally:
    return Tally(count=count)


def only_line(invoice: Invoice) -> InvoiceLine:
    (line,) = invoice.lines
    return line


# --- 1. per_unit --------------------------------------------------------------------------


def test_example_1_per_unit_token_price() -> None:
    invoice = bill([per_unit("llm", "0.0000015")], {("tokens", ()): summed(123_456_789)})
    line = only_line(invoice)
    assert line.product_id == "llm"
    assert line.model is RateModel.PER_UNIT
    assert line.quantity == Decimal(123_456_789)
    assert line.unit_price == Decimal("0.0000015")
    assert "185.1851835" in line.explanation
    assert str(line.amount) == "185.19"
    assert str(invoice.subtotal) == "185.19"
    assert str(invoice.total) == "185.19"


# --- 2. graduated -------------------------------------------------------------------------


def test_example_2_graduated_prices_each_tier_and_shows_the_breakdown() -> None:
    rate = Rate("api", RateModel.GRADUATED, tiers=TIERS)
    invoice = bill([rate], {("calls", ()): counted(12_500)})
    line = only_line(invoice)
    assert line.model is RateModel.GRADUATED
    assert line.quantity == Decimal(12_500)
    assert str(line.amount) == "945.00"
    assert str(invoice.total) == "945.00"
    assert line.tiers == (
        TierUse(Decimal(1000), Decimal(1000), Decimal("0.10"), Decimal(0), Decimal("100.00")),
        TierUse(Decimal(10000), Decimal(9000), Decimal("0.08"), Decimal(0), Decimal("720.00")),
        TierUse(None, Decimal(2500), Decimal("0.05"), Decimal(0), Decimal("125.00")),
    )
    assert [use.quantity for use in line.tiers] == [1000, 9000, 2500]
    assert [use.amount for use in line.tiers] == [
        Decimal("100"),
        Decimal("720"),
        Decimal("125"),
    ]
    assert sum(use.amount for use in line.tiers) == line.amount
    assert "1000 × 0.10 + 9000 × 0.08 + 2500 × 0.05 = 945.00" in line.explanation


# --- 3. volume ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [(12_500, "625.00"), (1_000, "100.00"), (0, "0.00")],
)
def test_example_3_volume_prices_all_units_at_the_tier_containing_the_quantity(
    quantity: int, expected: str
) -> None:
    rate = Rate("api", RateModel.VOLUME, tiers=TIERS)
    invoice = bill([rate], {("calls", ()): counted(quantity)})
    line = only_line(invoice)
    assert line.model is RateModel.VOLUME
    assert line.quantity == quantity
    assert str(line.amount) == expected
    assert str(invoice.total) == expected


def test_example_3_volume_tier_use_names_the_single_tier_applied() -> None:
    rate = Rate("api", RateModel.VOLUME, tiers=TIERS)
    (use,) = only_line(bill([rate], {("calls", ()): counted(12_500)})).tiers
    assert (use.up_to, use.quantity, use.unit_price) == (None, 12_500, Decimal("0.05"))
    assert use.amount == Decimal(625)
    (use,) = only_line(bill([rate], {("calls", ()): counted(1_000)})).tiers
    assert (use.up_to, use.quantity, use.unit_price) == (1000, 1000, Decimal("0.10"))
    assert use.amount == Decimal(100)


def test_example_3_volume_without_any_usage_is_a_zero_line() -> None:
    invoice = bill([Rate("api", RateModel.VOLUME, tiers=TIERS)], {})
    line = only_line(invoice)
    assert line.quantity == 0
    assert line.tiers == ()
    assert str(line.amount) == "0.00"
    assert str(invoice.total) == "0.00"


# --- 4. package ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rounding", "packages", "expected"),
    [(PackageRounding.UP, 3, "7.50"), (PackageRounding.DOWN, 2, "5.00")],
)
def test_example_4_package_of_1000_emails(
    rounding: PackageRounding, packages: int, expected: str
) -> None:
    rate = Rate(
        "email",
        RateModel.PACKAGE,
        unit_price=Decimal("2.50"),
        package_size=Decimal(1000),
        package_rounding=rounding,
    )
    invoice = bill([rate], {("emails", ()): counted(2_001)})
    line = only_line(invoice)
    assert line.model is RateModel.PACKAGE
    assert line.quantity == 2_001
    assert f"= {packages} packages × 2.50" in line.explanation
    assert f"rounded {rounding.value}" in line.explanation
    assert str(line.amount) == expected
    assert str(invoice.total) == expected


# --- 5. minimum ---------------------------------------------------------------------------


def test_example_5_minimum_raises_the_line() -> None:
    invoice = bill([per_unit("llm", "0.02", minimum="10.00")], {("tokens", ()): summed(100)})
    line = only_line(invoice)
    assert line.quantity == 100
    assert str(line.amount) == "10.00"
    assert "→ 2.00" in line.explanation
    assert "raised to minimum 10.00" in line.explanation
    assert str(invoice.total) == "10.00"


# --- 6. percentage ------------------------------------------------------------------------


def test_example_6_percentage_of_other_products_on_the_invoice() -> None:
    support = Rate("support", RateModel.PERCENTAGE, percent=Decimal("10"), percent_of=("A", "B"))
    invoice = bill(
        [per_unit("A", "312.40"), per_unit("B", "87.61"), support],
        {("a_units", ()): counted(1), ("b_units", ()): counted(1)},
    )
    assert [(line.product_id, str(line.amount)) for line in invoice.lines] == [
        ("A", "312.40"),
        ("B", "87.61"),
        ("support", "40.00"),
    ]
    fee = invoice.lines[-1]
    assert fee.model is RateModel.PERCENTAGE
    assert fee.metric_id == ""
    assert fee.quantity == Decimal("400.01")
    assert "10% of 400.01 (A + B)" in fee.explanation
    assert "40.001" in fee.explanation
    assert str(invoice.total) == "440.01"


# --- explanations are read by people ------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "usage", "shown"),
    [
        pytest.param(
            per_unit("llm", "0.02", minimum="10.00"),
            {("tokens", ()): summed(100)},
            "100 × 0.02",
            id="example-5-per-unit-100",
        ),
        pytest.param(
            Rate("api", RateModel.VOLUME, tiers=TIERS),
            {("calls", ()): counted(12_500)},
            "12500 × 0.05",
            id="example-3-volume-12500",
        ),
        pytest.param(
            Rate("api", RateModel.VOLUME, tiers=TIERS),
            {("calls", ()): counted(1_000)},
            "1000 × 0.10",
            id="example-3-volume-1000",
        ),
    ],
)
def test_explanations_show_round_quantities_in_plain_notation(
    rate: Rate, usage: Mapping[tuple[str, GroupKey], Tally], shown: str
) -> None:
    line = only_line(bill([rate], usage))
    assert "E+" not in line.explanation
    assert shown in line.explanation


# --- proration of flat and seat charges (PRICING.md "Billing periods") -------------------


FLAT = Rate("platform", RateModel.FLAT, flat_amount=Decimal("24.95"))


def test_flat_charge_for_a_contract_starting_on_day_23_of_a_31_day_period() -> None:
    invoice = bill([FLAT], {}, starts_at=DAY_23)
    line = only_line(invoice)
    assert (line.segment_start, line.segment_end) == (DAY_23, END)
    assert line.model is RateModel.FLAT
    assert line.metric_id == ""
    assert "24.95" in line.explanation
    assert "9/31" in line.explanation
    assert "7.2435" in line.explanation
    assert str(line.amount) == "7.24"
    assert str(invoice.total) == "7.24"


def test_flat_charge_for_a_full_period_is_not_prorated() -> None:
    line = only_line(bill([FLAT], {}))
    assert (line.segment_start, line.segment_end) == (ANCHOR, END)
    assert "/31" not in line.explanation
    assert str(line.amount) == "24.95"


def test_seat_charge_is_prorated_like_flat() -> None:
    seats = Rate("seat", RateModel.SEAT, unit_price=Decimal(10))
    invoice = bill([seats], {("seats", ()): summed(5)}, starts_at=DAY_23)
    line = only_line(invoice)
    assert line.model is RateModel.SEAT
    assert line.quantity == 5
    assert "9/31" in line.explanation
    assert "14.516" in line.explanation
    assert str(line.amount) == "14.52"
    assert str(invoice.total) == "14.52"


def test_seat_charge_for_a_full_period() -> None:
    seats = Rate("seat", RateModel.SEAT, unit_price=Decimal(10))
    line = only_line(bill([seats], {("seats", ()): summed(5)}))
    assert str(line.amount) == "50.00"
