"""The rate models of PRICING.md in isolation, the finishing of a line, and overrides."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ledger.core.catalog import (
    Aggregation,
    BillableMetric,
    Contract,
    Override,
    OverrideKind,
    PackageRounding,
    Product,
    Rate,
    RateCardVersion,
    RateModel,
    Tier,
)
from ledger.core.invoice import Invoice
from ledger.core.metering import Tally, UsageKey
from ledger.core.money import EXACT
from ledger.core.periods import Period, period_at
from ledger.core.rate_models import (
    FULL_PERIOD,
    Charge,
    Proration,
    TierUse,
    charge,
    graduated,
    package,
    percentage,
    volume,
    whole_days,
)
from ledger.core.rating import Catalog, Segment, finish_line, pricing_segments, rate_invoice


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


START = utc(2026, 1, 1)
MID = utc(2026, 1, 16)
END = utc(2026, 2, 1)
PERIOD = Period(START, END)
LONG_AGO = utc(2025, 6, 1)

TIERS = (
    Tier(Decimal(1000), Decimal("0.10")),
    Tier(Decimal(10000), Decimal("0.08")),
    Tier(None, Decimal("0.05")),
)
TIERS_WITH_FEES = (
    Tier(Decimal(1000), Decimal("0.10"), Decimal(5)),
    Tier(Decimal(10000), Decimal("0.08"), Decimal(20)),
    Tier(None, Decimal("0.05"), Decimal(50)),
)


def per_unit(
    product_id: str,
    price: str,
    *,
    minimum: str | None = None,
    maximum: str | None = None,
) -> Rate:
    return Rate(
        product_id=product_id,
        model=RateModel.PER_UNIT,
        unit_price=Decimal(price),
        minimum=None if minimum is None else Decimal(minimum),
        maximum=None if maximum is None else Decimal(maximum),
    )


def package_rate(rounding: PackageRounding) -> Rate:
    return Rate(
        "email",
        RateModel.PACKAGE,
        unit_price=Decimal("2.50"),
        package_size=Decimal(1000),
        package_rounding=rounding,
    )


def multiplier(
    override_id: str,
    factor: str,
    *,
    product_id: str = "llm",
    priority: int = 0,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
) -> Override:
    return Override(
        override_id,
        product_id,
        OverrideKind.MULTIPLIER,
        priority=priority,
        starts_at=starts_at,
        ends_at=ends_at,
        multiplier=Decimal(factor),
    )


def overwrite(
    override_id: str, rate: Rate, *, priority: int = 0, starts_at: datetime | None = None
) -> Override:
    return Override(
        override_id,
        rate.product_id,
        OverrideKind.OVERWRITE,
        priority=priority,
        starts_at=starts_at,
        rate=rate,
    )


# --- charge -------------------------------------------------------------------------------


def test_per_unit_is_quantity_times_unit_price_exactly() -> None:
    result = charge(per_unit("llm", "0.0000015"), Decimal(123_456_789))
    assert result.exact == Decimal("185.1851835")
    assert result.steps == "123456789 × 0.0000015 = 185.1851835"
    assert result.tiers == ()


def test_flat_is_the_flat_amount_for_a_full_period() -> None:
    rate = Rate("platform", RateModel.FLAT, flat_amount=Decimal("24.95"))
    result = charge(rate, Decimal(1))
    assert result.exact == Decimal("24.95")
    assert result.steps == "flat 24.95 = 24.95"
    assert charge(rate, Decimal(1), Proration(31, 31)).exact == Decimal("24.95")


def test_flat_is_prorated_by_whole_days_exactly() -> None:
    rate = Rate("platform", RateModel.FLAT, flat_amount=Decimal("24.95"))
    result = charge(rate, Decimal(1), Proration(9, 31))
    assert result.exact == EXACT.divide(Decimal("224.55"), Decimal(31))
    assert Decimal("7.2435") < result.exact < Decimal("7.2436")
    assert "× 9/31 days" in result.steps


def test_seat_is_unit_price_times_seats_prorated() -> None:
    rate = Rate("seat", RateModel.SEAT, unit_price=Decimal(10))
    assert charge(rate, Decimal(5)).exact == Decimal(50)
    result = charge(rate, Decimal(5), Proration(9, 31))
    assert Decimal("14.516") < result.exact < Decimal("14.517")
    assert "5 seats × 10 × 9/31 days" in result.steps


def test_proration_shares() -> None:
    assert Proration(31, 31).is_full
    assert FULL_PERIOD.is_full
    assert not Proration(0, 31).is_full
    assert Proration(0, 31).apply(Decimal("24.95")) == 0
    assert Proration(9, 31).apply(Decimal(31)) == Decimal(9)
    assert Proration(9, 31).describe() == " × 9/31 days"


def test_a_percentage_rate_has_no_charge_of_its_own() -> None:
    rate = Rate("support", RateModel.PERCENTAGE, percent=Decimal(10), percent_of=("A",))
    with pytest.raises(AssertionError, match="priced from other lines"):
        charge(rate, Decimal(1))


def test_percentage_of_a_base() -> None:
    rate = Rate("support", RateModel.PERCENTAGE, percent=Decimal(10), percent_of=("A", "B"))
    result = percentage(rate, Decimal("400.01"), ("A", "B"))
    assert result.exact == Decimal("40.001")
    assert result.steps == "10% of 400.01 (A + B) = 40.001"
    assert percentage(rate, Decimal(0), ()).exact == 0


# --- graduated ----------------------------------------------------------------------------


def test_graduated_worked_example_2() -> None:
    result = graduated(TIERS, Decimal(12_500))
    assert result.exact == Decimal("945.00")
    assert result.tiers == (
        TierUse(Decimal(1000), Decimal(1000), Decimal("0.10"), Decimal(0), Decimal(100)),
        TierUse(Decimal(10000), Decimal(9000), Decimal("0.08"), Decimal(0), Decimal(720)),
        TierUse(None, Decimal(2500), Decimal("0.05"), Decimal(0), Decimal(125)),
    )
    assert result.steps == "1000 × 0.10 + 9000 × 0.08 + 2500 × 0.05 = 945.00"
    assert charge(Rate("api", RateModel.GRADUATED, tiers=TIERS), Decimal(12_500)) == result


@pytest.mark.parametrize(
    ("quantity", "used", "expected"),
    [
        ("0", [], "0"),
        ("1", ["1"], "0.10"),
        ("1000", ["1000"], "100.00"),
        ("1000.5", ["1000", "0.5"], "100.04"),
        ("10000", ["1000", "9000"], "820.00"),
        ("10001", ["1000", "9000", "1"], "820.05"),
    ],
)
def test_graduated_tier_boundaries_are_inclusive(
    quantity: str, used: list[str], expected: str
) -> None:
    result = graduated(TIERS, Decimal(quantity))
    assert [use.quantity for use in result.tiers] == [Decimal(u) for u in used]
    assert result.exact == Decimal(expected)


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("0", "0"),  # no tier entered: no fee
        ("1", "5.10"),  # 0.10 + 5
        ("1000", "105"),  # tier 1 only: its fee, not tier 2's
        ("1001", "125.08"),  # 100 + 5, then 0.08 + 20
        ("12500", "1020"),  # 945 + 5 + 20 + 50
    ],
)
def test_graduated_flat_fee_is_charged_once_a_tier_is_entered(quantity: str, expected: str) -> None:
    result = graduated(TIERS_WITH_FEES, Decimal(quantity))
    assert result.exact == Decimal(expected)
    assert sum(use.flat_fee for use in result.tiers) == sum(
        t.flat_fee for t in TIERS_WITH_FEES[: len(result.tiers)]
    )


def test_graduated_steps_name_the_flat_fees() -> None:
    result = graduated(TIERS_WITH_FEES, Decimal(1001))
    assert result.steps == "1000 × 0.10 + 5 + 1 × 0.08 + 20 = 125.08"
    assert graduated(TIERS_WITH_FEES, Decimal(0)).steps == "no units = 0"


# --- volume -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [("12500", "625.00"), ("1000", "100.00"), ("1000.5", "80.04"), ("0", "0"), ("1", "0.10")],
)
def test_volume_prices_all_units_at_the_containing_tier(quantity: str, expected: str) -> None:
    result = volume(TIERS, Decimal(quantity))
    assert result.exact == Decimal(expected)
    assert len(result.tiers) == (1 if Decimal(quantity) else 0)


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("0", "0"),
        ("1", "5.10"),  # 0.10 + tier 1 fee
        ("1000", "105"),  # 100 + tier 1 fee only
        ("1001", "100.08"),  # 80.08 + tier 2 fee only
        ("12500", "675"),  # 625 + tier 3 fee only
    ],
)
def test_volume_flat_fee_is_that_of_the_containing_tier_only(quantity: str, expected: str) -> None:
    result = volume(TIERS_WITH_FEES, Decimal(quantity))
    assert result.exact == Decimal(expected)
    for use in result.tiers:
        assert use.quantity == Decimal(quantity)
        assert use.amount == result.exact


def test_volume_steps() -> None:
    assert volume(TIERS, Decimal(0)).steps == "no units = 0"
    assert volume(TIERS_WITH_FEES, Decimal(1001)).steps == "1001 × 0.08 + 20 = 100.08"


# --- package ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "rounding", "packages", "expected"),
    [
        (2001, PackageRounding.UP, 3, "7.50"),
        (2001, PackageRounding.DOWN, 2, "5.00"),
        (2000, PackageRounding.UP, 2, "5.00"),
        (2000, PackageRounding.DOWN, 2, "5.00"),
        (1999, PackageRounding.DOWN, 1, "2.50"),
        (1, PackageRounding.UP, 1, "2.50"),
        (999, PackageRounding.DOWN, 0, "0"),
        (0, PackageRounding.UP, 0, "0"),
        (0, PackageRounding.DOWN, 0, "0"),
    ],
)
def test_package_rounds_to_whole_packages(
    quantity: int, rounding: PackageRounding, packages: int, expected: str
) -> None:
    result = package(package_rate(rounding), Decimal(quantity))
    assert result.exact == Decimal(expected)
    assert f"{quantity} / 1000 rounded {rounding.value} = {packages} packages" in result.steps
    assert charge(package_rate(rounding), Decimal(quantity)) == result


def test_package_of_a_fractional_quantity_rounds_up() -> None:
    assert package(package_rate(PackageRounding.UP), Decimal("2000.001")).exact == Decimal("7.50")
    assert package(package_rate(PackageRounding.DOWN), Decimal("2999.999")).exact == Decimal("5.00")


# --- properties of the tiered models ------------------------------------------------------


prices = st.decimals(min_value=0, max_value=10, places=4, allow_nan=False, allow_infinity=False)
fees = st.decimals(min_value=0, max_value=100, places=2, allow_nan=False, allow_infinity=False)
quantities = st.decimals(
    min_value=0, max_value=10**6, places=3, allow_nan=False, allow_infinity=False
)


@st.composite
def tier_lists(draw: st.DrawFn) -> tuple[Tier, ...]:
    """Tiers in order with strictly growing bounds; the last has no bound."""
    gaps = draw(
        st.lists(
            st.decimals(min_value="0.01", max_value=10**5, places=2, allow_nan=False),
            max_size=4,
        )
    )
    tiers = []
    bound = Decimal(0)
    for gap in gaps:
        bound += gap
        tiers.append(Tier(bound, draw(prices), draw(fees)))
    tiers.append(Tier(None, draw(prices), draw(fees)))
    return tuple(tiers)


@st.composite
def tiers_and_quantities(draw: st.DrawFn) -> tuple[tuple[Tier, ...], Decimal, Decimal]:
    """Tiers and two quantities, often exactly on a bound."""
    tiers = draw(tier_lists())
    bounds = [t.up_to for t in tiers if t.up_to is not None]
    either = st.one_of(quantities, st.sampled_from([Decimal(0), *bounds]))
    return tiers, draw(either), draw(either)


@given(tiers_and_quantities())
@example(
    (
        (
            Tier(Decimal(10), Decimal(1), Decimal(0)),
            Tier(None, Decimal(0), Decimal(100)),
        ),
        Decimal(10),
        Decimal("10.001"),
    )
)
def test_graduated_never_decreases_as_quantity_grows(
    case: tuple[tuple[Tier, ...], Decimal, Decimal],
) -> None:
    tiers, a, b = case
    low, high = sorted([a, b])
    assert graduated(tiers, low).exact <= graduated(tiers, high).exact


@given(tiers=tier_lists(), quantity=quantities)
def test_graduated_tiers_split_the_quantity(tiers: tuple[Tier, ...], quantity: Decimal) -> None:
    result = graduated(tiers, quantity)
    assert sum((use.quantity for use in result.tiers), Decimal(0)) == quantity
    assert all(use.quantity > 0 for use in result.tiers)
    assert result.exact == sum((use.amount for use in result.tiers), Decimal(0))
    assert result.exact >= 0
    if quantity == 0:
        assert result.exact == 0 and result.tiers == ()


@given(price=prices, fee=fees, quantity=quantities)
@example(price=Decimal("0.05"), fee=Decimal(50), quantity=Decimal(0))
@example(price=Decimal("0.05"), fee=Decimal(50), quantity=Decimal("0.001"))
def test_volume_and_graduated_agree_on_a_single_tier(
    price: Decimal, fee: Decimal, quantity: Decimal
) -> None:
    tiers = (Tier(None, price, fee),)
    assert volume(tiers, quantity).exact == graduated(tiers, quantity).exact
    assert volume(tiers, quantity).tiers == graduated(tiers, quantity).tiers


# --- whole days ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "days"),
    [
        (utc(2026, 1, 23), utc(2026, 2, 1), 9),
        (utc(2026, 1, 1), utc(2026, 2, 1), 31),
        (utc(2026, 2, 1), utc(2026, 3, 1), 28),
        (utc(2028, 2, 1), utc(2028, 3, 1), 29),
        (utc(2026, 1, 1), utc(2026, 1, 1, 0, 0, 1), 1),
        (utc(2026, 1, 1, 0, 0, 1), utc(2026, 1, 2), 0),
        (utc(2026, 1, 1, 12), utc(2026, 1, 2, 12), 1),
        (utc(2026, 1, 5), utc(2026, 1, 5), 0),
    ],
)
def test_whole_days_counts_utc_midnights(start: datetime, end: datetime, days: int) -> None:
    assert whole_days(start, end) == days


def test_whole_days_reads_instants_in_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    # 2026-01-23 01:00 at +02:00 is 2026-01-22 23:00 UTC: the UTC midnight of the 23rd is inside.
    assert whole_days(datetime(2026, 1, 23, 1, tzinfo=plus_two), utc(2026, 2, 1)) == 9
    assert whole_days(datetime(2026, 1, 23, 2, tzinfo=plus_two), utc(2026, 2, 1)) == 9
    assert whole_days(datetime(2026, 1, 23, 3, tzinfo=plus_two), utc(2026, 2, 1)) == 8


@given(
    anchor=st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2100, 12, 31),
        timezones=st.just(UTC),
    ),
    index=st.integers(min_value=-24, max_value=24),
    share=st.integers(min_value=0, max_value=10**6),
    offset_hours=st.integers(min_value=-12, max_value=14),
)
@example(anchor=START, index=0, share=9 * 10**6 // 31, offset_hours=0)
def test_whole_days_are_additive_at_any_split_of_a_period(
    anchor: datetime, index: int, share: int, offset_hours: int
) -> None:
    period = period_at(anchor, index)
    split = period.start + (period.end - period.start) * share / 10**6
    split = split.astimezone(timezone(timedelta(hours=offset_hours)))
    assert period.start <= split <= period.end
    total = whole_days(period.start, period.end)
    assert 28 <= total <= 31
    first, second = whole_days(period.start, split), whole_days(split, period.end)
    assert first >= 0 and second >= 0
    assert first + second == total


@given(
    instants=st.lists(
        st.datetimes(
            min_value=datetime(2020, 1, 1),
            max_value=datetime(2030, 1, 1),
            timezones=st.just(UTC),
        ),
        min_size=3,
        max_size=3,
    )
)
def test_whole_days_are_additive_for_any_three_instants(instants: list[datetime]) -> None:
    a, s, b = sorted(instants)
    assert whole_days(a, s) + whole_days(s, b) == whole_days(a, b)


# --- finish_line: multiplier, rounding, minimum, maximum ----------------------------------


def test_a_multiplier_applies_to_the_exact_amount_before_rounding() -> None:
    rate = per_unit("llm", "0.105")
    line = finish_line(rate, charge(rate, Decimal(100)), 2, multiplier("ov-1", "0.9"))
    assert line.amount == Decimal("9.45") and str(line.amount) == "9.45"
    assert line.explanation == (
        "100 × 0.105 = 10.500; × 0.9 (contract override ov-1) = 9.4500 → 9.45"
    )
    # Rounding first would give 0.11 × 0.9 = 0.099 → 0.10; exactly 0.0945 → 0.09.
    line = finish_line(rate, charge(rate, Decimal(1)), 2, multiplier("ov-1", "0.9"))
    assert str(line.amount) == "0.09"


def test_a_multiplier_applies_before_the_minimum() -> None:
    rate = per_unit("llm", "0.105", minimum="10")
    assert str(finish_line(rate, charge(rate, Decimal(100)), 2).amount) == "10.50"
    line = finish_line(rate, charge(rate, Decimal(100)), 2, multiplier("ov-1", "0.9"))
    assert str(line.amount) == "10.00"
    steps = [
        "100 × 0.105 = 10.500",
        "× 0.9 (contract override ov-1) = 9.4500",
        "→ 9.45",
        "raised to minimum 10.00",
    ]
    for step in steps:
        assert step in line.explanation
    assert [line.explanation.index(step) for step in steps] == sorted(
        line.explanation.index(step) for step in steps
    )


def test_a_maximum_caps_the_line_after_the_multiplier() -> None:
    rate = per_unit("llm", "0.105", maximum="9.00")
    line = finish_line(rate, charge(rate, Decimal(100)), 2, multiplier("ov-1", "0.9"))
    assert str(line.amount) == "9.00"
    assert line.explanation.endswith("→ 9.45; capped at maximum 9.00")
    uncapped = per_unit("llm", "0.105", maximum="9.45")
    line = finish_line(uncapped, charge(uncapped, Decimal(100)), 2, multiplier("ov-1", "0.9"))
    assert str(line.amount) == "9.45"
    assert "maximum" not in line.explanation


def test_finish_line_without_an_override_only_rounds() -> None:
    rate = per_unit("llm", "0.0000015")
    exact = charge(rate, Decimal(123_456_789))
    line = finish_line(rate, exact, 2)
    assert str(line.amount) == "185.19"
    assert line.explanation == "123456789 × 0.0000015 = 185.1851835 → 185.19"
    assert line.charge == exact


@pytest.mark.parametrize(
    ("exact", "decimals", "expected"),
    [("0.005", 2, "0.01"), ("0.0049", 2, "0.00"), ("2.5", 0, "3"), ("-0.005", 2, "-0.01")],
)
def test_finish_line_rounds_half_away_from_zero(exact: str, decimals: int, expected: str) -> None:
    rate = per_unit("llm", "1")
    line = finish_line(rate, Charge(Decimal(exact), exact), decimals)
    assert str(line.amount) == expected


def test_an_overwrite_override_is_not_a_multiplier() -> None:
    rate = per_unit("llm", "0.105")
    line = finish_line(rate, charge(rate, Decimal(100)), 2, overwrite("ov-2", rate))
    assert str(line.amount) == "10.50"
    assert "override" not in line.explanation


# --- overrides in rate_invoice ------------------------------------------------------------


TOKENS = BillableMetric("tokens", "Tokens", "completion", Aggregation.SUM, property="tokens")
CALLS = BillableMetric("calls", "API calls", "api_call", Aggregation.COUNT, group_by=("region",))
LLM = Product("llm", "LLM tokens", "tokens")
API = Product("api", "API calls", "calls")
SUPPORT = Product("support", "Support fee")
CATALOG = Catalog(
    metrics={m.metric_id: m for m in (TOKENS, CALLS)},
    products={p.product_id: p for p in (LLM, API, SUPPORT)},
)
CARD = RateCardVersion(
    rate_card_id="rc-list",
    version=1,
    name="List prices",
    currency="USD",
    currency_decimals=2,
    effective_from=LONG_AGO,
    rates=(per_unit("llm", "0.002"), per_unit("api", "0.10")),
)


def contract(*overrides: Override) -> Contract:
    return Contract(
        contract_id="ct-1",
        customer_id="cus-1",
        rate_card_id="rc-list",
        pinned_version=None,
        starts_at=START,
        ends_at=None,
        billing_anchor=START,
        overrides=overrides,
    )


def bill(
    the_contract: Contract,
    usage: Mapping[UsageKey, Tally],
    versions: Sequence[RateCardVersion] = (CARD,),
) -> Invoice:
    return rate_invoice(
        invoice_id="in-ct-1-1",
        contract=the_contract,
        contract_version=2,
        period=PERIOD,
        segments=pricing_segments(the_contract, PERIOD, {"rc-list": versions}),
        usage=usage,
        catalog=CATALOG,
        rate_card_currency=("USD", 2),
        computed_through_seq=9,
    )


def tokens(quantity: int, at: datetime = START) -> dict[UsageKey, Tally]:
    value = Decimal(quantity)
    return {(at, "tokens", ()): Tally(count=1, total=value, maximum=value)}


def calls(count: int, region: str = "eu", at: datetime = START) -> dict[UsageKey, Tally]:
    return {(at, "calls", (region,)): Tally(count=count)}


def summary(invoice: Invoice) -> list[tuple[str, str, str]]:
    return [(line.product_id, str(line.amount), line.override_id) for line in invoice.lines]


def test_without_overrides_the_card_prices_everything() -> None:
    invoice = bill(contract(), {**tokens(1000), **calls(10)})
    assert summary(invoice) == [("api", "1.00", ""), ("llm", "2.00", "")]


def test_an_overwrite_override_replaces_the_card_price_of_its_product_only() -> None:
    free_first = (Tier(Decimal(500), Decimal(0)), Tier(None, Decimal("0.001")))
    own = Rate("llm", RateModel.GRADUATED, tiers=free_first)
    invoice = bill(contract(overwrite("ov-own", own)), {**tokens(1000), **calls(10)})
    assert summary(invoice) == [("api", "1.00", ""), ("llm", "0.50", "ov-own")]
    llm = invoice.lines[1]
    assert llm.model is RateModel.GRADUATED
    assert [use.quantity for use in llm.tiers] == [500, 500]
    assert str(invoice.total) == "1.50"


def test_the_higher_priority_override_wins() -> None:
    low = multiplier("ov-low", "0.5", priority=1)
    high = multiplier("ov-high", "0.8", priority=2)
    for the_contract in (contract(low, high), contract(high, low)):
        invoice = bill(the_contract, tokens(1000))
        assert summary(invoice) == [("api", "0.00", ""), ("llm", "1.60", "ov-high")]
        assert "× 0.8 (contract override ov-high)" in invoice.lines[1].explanation


def test_a_higher_priority_overwrite_beats_a_multiplier_and_vice_versa() -> None:
    cheap = per_unit("llm", "0.001")
    invoice = bill(
        contract(multiplier("ov-mult", "0.5", priority=1), overwrite("ov-own", cheap, priority=2)),
        tokens(1000),
    )
    assert summary(invoice)[1] == ("llm", "1.00", "ov-own")
    invoice = bill(
        contract(multiplier("ov-mult", "0.5", priority=2), overwrite("ov-own", cheap, priority=1)),
        tokens(1000),
    )
    assert summary(invoice)[1] == ("llm", "1.00", "ov-mult")
    assert invoice.lines[1].unit_price == Decimal("0.002")


def test_an_override_starting_mid_period_splits_the_period_at_its_start() -> None:
    half = multiplier("ov-half", "0.5", starts_at=MID)
    the_contract = contract(half)
    assert pricing_segments(the_contract, PERIOD, {"rc-list": [CARD]}) == (
        Segment(Period(START, MID), CARD, ()),
        Segment(Period(MID, END), CARD, (half,)),
    )
    invoice = bill(the_contract, {**tokens(1000, START), **tokens(1000, MID)})
    llm = [line for line in invoice.lines if line.product_id == "llm"]
    assert [(line.segment_start, line.segment_end) for line in llm] == [(START, MID), (MID, END)]
    assert [(str(line.amount), line.override_id) for line in llm] == [
        ("2.00", ""),
        ("1.00", "ov-half"),
    ]
    assert "override" not in llm[0].explanation
    assert "× 0.5 (contract override ov-half)" in llm[1].explanation
    api = [line for line in invoice.lines if line.product_id == "api"]
    # api's price does not change, so its line is not split by llm's override.
    assert [(line.segment_start, line.segment_end, line.override_id) for line in api] == [
        (START, END, "")
    ]
    assert str(invoice.total) == "3.00"


def test_an_override_ending_mid_period_applies_to_the_first_segment_only() -> None:
    early = multiplier("ov-early", "0.5", starts_at=LONG_AGO, ends_at=MID)
    invoice = bill(contract(early), {**tokens(1000, START), **tokens(1000, MID)})
    llm = [line for line in invoice.lines if line.product_id == "llm"]
    assert [(line.segment_start, str(line.amount), line.override_id) for line in llm] == [
        (START, "1.00", "ov-early"),
        (MID, "2.00", ""),
    ]


def test_overlapping_overrides_each_win_where_they_have_the_highest_priority() -> None:
    base = multiplier("ov-base", "0.9", priority=1)
    promo = multiplier("ov-promo", "0.5", priority=2, starts_at=MID)
    invoice = bill(contract(base, promo), {**tokens(1000, START), **tokens(1000, MID)})
    llm = [line for line in invoice.lines if line.product_id == "llm"]
    assert [(line.segment_start, str(line.amount), line.override_id) for line in llm] == [
        (START, "1.80", "ov-base"),
        (MID, "1.00", "ov-promo"),
    ]


def test_an_override_of_another_product_leaves_prices_alone() -> None:
    invoice = bill(contract(multiplier("ov-api", "0.5", product_id="api")), tokens(1000))
    assert summary(invoice) == [("api", "0.00", "ov-api"), ("llm", "2.00", "")]


def test_an_override_of_another_product_mid_period_does_not_charge_a_minimum_twice() -> None:
    """Only llm's price changes at MID; api's monthly minimum is still due once.

    (As for an identical republished card: a line whose price does not change is
    rounded and held to its minimum once, as if unsplit.)
    """
    card = RateCardVersion(
        rate_card_id="rc-list",
        version=1,
        name="List prices",
        currency="USD",
        currency_decimals=2,
        effective_from=LONG_AGO,
        rates=(per_unit("llm", "0.002"), per_unit("api", "0.10", minimum="10.00")),
    )
    unsplit = bill(contract(), calls(20), [card])
    assert summary(unsplit) == [("api", "10.00", ""), ("llm", "0.00", "")]
    invoice = bill(contract(multiplier("ov-half", "0.5", starts_at=MID)), calls(20), [card])
    api = [line for line in invoice.lines if line.product_id == "api"]
    assert sum(line.amount for line in api) == Decimal("10.00")
    assert str(invoice.total) == "10.00"


# --- rounding happens only at the line ----------------------------------------------------


def percent_card(percent: str) -> RateCardVersion:
    return RateCardVersion(
        rate_card_id="rc-list",
        version=1,
        name="List prices",
        currency="USD",
        currency_decimals=2,
        effective_from=LONG_AGO,
        rates=(
            per_unit("api", "0.005"),
            Rate("support", RateModel.PERCENTAGE, percent=Decimal(percent), percent_of=("api",)),
        ),
    )


@pytest.mark.parametrize(
    ("percent", "expected"),
    [
        ("50", "0.01"),  # 50% of 0.01 + 0.01
        ("25", "0.01"),  # 25% of 0.02 = 0.005 → 0.01 (of the exact 0.010 it would be 0.00)
    ],
)
def test_a_percentage_is_of_the_rounded_lines(percent: str, expected: str) -> None:
    invoice = bill(contract(), {**calls(1, "eu"), **calls(1, "us")}, [percent_card(percent)])
    assert [(line.product_id, line.group_values, str(line.amount)) for line in invoice.lines] == [
        ("api", {"region": "eu"}, "0.01"),
        ("api", {"region": "us"}, "0.01"),
        ("support", {}, expected),
    ]
    fee = invoice.lines[-1]
    assert fee.quantity == Decimal("0.02")
    assert f"{percent}% of 0.02 (api)" in fee.explanation
    assert invoice.total == sum(line.amount for line in invoice.lines)
