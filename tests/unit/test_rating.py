"""The rating engine: tallies, a contract and rate card versions priced into an invoice."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ledger.core.catalog import (
    Aggregation,
    BillableMetric,
    Contract,
    Product,
    Rate,
    RateCardVersion,
    RateModel,
)
from ledger.core.events import UsageRecorded
from ledger.core.invoice import Invoice, UnbilledUsage, canonical_invoice, content_sha256
from ledger.core.metering import Tally, UsageKey, fold_usage
from ledger.core.periods import Period
from ledger.core.rating import (
    NO_VERSION_IN_EFFECT,
    Catalog,
    Segment,
    price_line,
    pricing_segments,
    rate_invoice,
    version_in_force,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


START = utc(2025, 1, 1)
MID = utc(2025, 1, 15, 12)
END = utc(2025, 2, 1)
PERIOD = Period(START, END)
LONG_AGO = utc(2024, 6, 1)

TOKENS = BillableMetric("tokens", "Tokens", "completion", Aggregation.SUM, property="tokens")
CALLS = BillableMetric("calls", "API calls", "api_call", Aggregation.COUNT, group_by=("region",))
SEATS = BillableMetric("seats", "Seats", "seat_gauge", Aggregation.MAX, property="seats")
LLM = Product("llm", "LLM tokens", "tokens")
API = Product("api", "API calls", "calls")
SEAT = Product("seat", "Seats", "seats")
CATALOG = Catalog(
    metrics={m.metric_id: m for m in (TOKENS, CALLS, SEATS)},
    products={p.product_id: p for p in (LLM, API, SEAT)},
)


def per_unit(
    product_id: str,
    price: str,
    *,
    group: Mapping[str, str] | None = None,
    minimum: str | None = None,
    maximum: str | None = None,
) -> Rate:
    return Rate(
        product_id=product_id,
        model=RateModel.PER_UNIT,
        unit_price=Decimal(price),
        group_values=dict(group or {}),
        minimum=None if minimum is None else Decimal(minimum),
        maximum=None if maximum is None else Decimal(maximum),
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


def contract(pinned_version: int | None = None) -> Contract:
    return Contract(
        contract_id="ct-1",
        customer_id="cus-1",
        rate_card_id="rc-list",
        pinned_version=pinned_version,
        starts_at=START,
        ends_at=None,
        billing_anchor=START,
    )


def bill(
    usage: Mapping[UsageKey, Tally],
    versions: Sequence[RateCardVersion],
    *,
    pinned_version: int | None = None,
    catalog: Catalog = CATALOG,
) -> Invoice:
    the_contract = contract(pinned_version)
    return rate_invoice(
        invoice_id="in-ct-1-1",
        contract=the_contract,
        contract_version=3,
        period=PERIOD,
        segments=pricing_segments(the_contract, PERIOD, {"rc-list": versions}),
        usage=usage,
        catalog=catalog,
        rate_card_currency=("USD", 2),
        computed_through_seq=42,
    )


def summed(quantity: str | int) -> Tally:
    return Tally(count=1, total=Decimal(quantity), maximum=Decimal(quantity))


def amounts(invoice: Invoice) -> list[tuple[str, Mapping[str, str], Decimal]]:
    return [(line.product_id, line.group_values, line.amount) for line in invoice.lines]


# --- worked examples and price_line -------------------------------------------------------


def test_worked_example_1_per_unit_token_price() -> None:
    invoice = bill(
        {(START, "tokens", ()): summed(123_456_789)},
        [version(1, LONG_AGO, per_unit("llm", "0.0000015"))],
    )
    (line,) = invoice.lines
    assert line.quantity == Decimal(123_456_789)
    assert line.amount == Decimal("185.19") and str(line.amount) == "185.19"
    assert "185.1851835" in line.explanation
    assert str(invoice.total) == "185.19"


def test_worked_example_5_minimum_raises_the_line() -> None:
    invoice = bill(
        {(START, "tokens", ()): summed(100)},
        [version(1, LONG_AGO, per_unit("llm", "0.02", minimum="10.00"))],
    )
    (line,) = invoice.lines
    assert str(line.amount) == "10.00"
    assert "minimum" in line.explanation
    assert str(invoice.total) == "10.00"


@pytest.mark.parametrize(
    ("quantity", "expected"), [(1000, "50.00"), (400, "40.00"), (500, "50.00")]
)
def test_maximum_caps_the_line(quantity: int, expected: str) -> None:
    invoice = bill(
        {(START, "tokens", ()): summed(quantity)},
        [version(1, LONG_AGO, per_unit("llm", "0.10", maximum="50.00"))],
    )
    assert [str(line.amount) for line in invoice.lines] == [expected]
    assert ("maximum" in invoice.lines[0].explanation) is (quantity == 1000)


def test_price_line_rounds_minimum_and_maximum_to_the_currency_places() -> None:
    amount, _ = price_line(per_unit("llm", "0.01", minimum="2.345"), Decimal(1), 2)
    assert str(amount) == "2.35"
    amount, _ = price_line(per_unit("llm", "1", maximum="99.5"), Decimal(1000), 0)
    assert str(amount) == "100"


# --- pricing segments ---------------------------------------------------------------------


V1 = version(1, LONG_AGO, per_unit("llm", "0.002"))
V2 = version(2, MID, per_unit("llm", "0.003"))


def test_a_following_contract_is_split_where_a_new_version_takes_effect() -> None:
    assert pricing_segments(contract(), PERIOD, {"rc-list": [V1, V2]}) == (
        Segment(Period(START, MID), V1),
        Segment(Period(MID, END), V2),
    )


def test_each_segment_is_priced_by_its_own_version() -> None:
    invoice = bill(
        {(START, "tokens", ()): summed(1000), (MID, "tokens", ()): summed(1000)}, [V1, V2]
    )
    assert [
        (line.rate_card_version, line.segment_start, line.segment_end) for line in invoice.lines
    ] == [
        (1, START, MID),
        (2, MID, END),
    ]
    assert [str(line.amount) for line in invoice.lines] == ["2.00", "3.00"]
    assert invoice.rate_card_versions == (1, 2)
    assert str(invoice.total) == "5.00"


def test_a_pinned_contract_is_not_split() -> None:
    assert pricing_segments(contract(pinned_version=1), PERIOD, {"rc-list": [V1, V2]}) == (
        Segment(PERIOD, V1),
    )
    invoice = bill({(START, "tokens", ()): summed(2000)}, [V1, V2], pinned_version=1)
    assert [(line.rate_card_version, str(line.amount)) for line in invoice.lines] == [(1, "4.00")]
    assert invoice.rate_card_versions == (1,)


def test_a_version_effective_at_the_period_start_covers_the_whole_period() -> None:
    v2 = dataclasses.replace(V2, effective_from=START)
    assert pricing_segments(contract(), PERIOD, {"rc-list": [V1, v2]}) == (Segment(PERIOD, v2),)


def test_a_version_effective_at_the_period_end_belongs_to_the_next_period() -> None:
    v2 = dataclasses.replace(V2, effective_from=END)
    assert pricing_segments(contract(), PERIOD, {"rc-list": [V1, v2]}) == (Segment(PERIOD, V1),)


def test_the_latest_published_version_in_effect_is_in_force() -> None:
    v3 = version(3, LONG_AGO + timedelta(days=1), per_unit("llm", "0.004"))
    assert version_in_force([V1, V2, v3], START) == v3
    assert version_in_force([V1, V2, v3], LONG_AGO - timedelta(days=1)) is None


def test_usage_before_the_first_version_is_unbilled_with_a_reason() -> None:
    first = version(1, MID, per_unit("api", "0.01"))
    assert pricing_segments(contract(), PERIOD, {"rc-list": [first]}) == (
        Segment(Period(START, MID), None),
        Segment(Period(MID, END), first),
    )
    invoice = bill(
        {
            (START, "calls", ("eu",)): Tally(count=3),
            (START, "calls", ("us",)): Tally(count=2, unbilled={"some reason": 1}),
            (MID, "calls", ("eu",)): Tally(count=100),
        },
        [first],
    )
    assert NO_VERSION_IN_EFFECT == "no rate card version in effect"
    assert invoice.unbilled == (UnbilledUsage("calls", "no rate card version in effect", 6),)
    assert [(line.segment_start, str(line.amount)) for line in invoice.lines] == [(MID, "1.00")]
    assert invoice.rate_card_versions == (1,)


# --- group rates --------------------------------------------------------------------------


GROUP_RATES = (
    per_unit("api", "0.10"),
    per_unit("api", "0.12", group={"region": "eu"}),
    per_unit("api", "0.20", group={"region": "eu", "tier": "gold"}),
)


@pytest.mark.parametrize("rates", [GROUP_RATES, tuple(reversed(GROUP_RATES))])
@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ({"region": "eu", "tier": "gold"}, "0.20"),
        ({"region": "eu", "tier": "silver"}, "0.12"),
        ({"region": "eu"}, "0.12"),
        ({"region": "us", "tier": "gold"}, "0.10"),
        ({}, "0.10"),
    ],
)
def test_the_most_specific_group_rate_wins(
    rates: tuple[Rate, ...], group: dict[str, str], expected: str
) -> None:
    rate = version(1, LONG_AGO, *rates).rate_for("api", group)
    assert rate is not None and rate.unit_price == Decimal(expected)


def test_rate_for_is_none_without_an_applicable_rate() -> None:
    card = version(1, LONG_AGO, per_unit("api", "0.12", group={"region": "eu"}))
    assert card.rate_for("api", {"region": "us"}) is None
    assert card.rate_for("llm", {}) is None


def test_each_group_gets_a_line_at_its_rate() -> None:
    invoice = bill(
        {(START, "calls", ("us",)): Tally(count=10), (START, "calls", ("eu",)): Tally(count=10)},
        [version(1, LONG_AGO, *GROUP_RATES)],
    )
    assert amounts(invoice) == [
        ("api", {"region": "eu"}, Decimal("1.20")),
        ("api", {"region": "us"}, Decimal("1.00")),
    ]


def test_usage_of_a_group_without_a_rate_is_unbilled() -> None:
    card = version(1, LONG_AGO, per_unit("api", "0.12", group={"region": "eu"}))
    invoice = bill({(START, "calls", ("us",)): Tally(count=7)}, [card])
    assert invoice.lines == ()
    assert invoice.unbilled == (UnbilledUsage("calls", "no rate for api with {'region': 'us'}", 7),)


# --- lines and totals ---------------------------------------------------------------------


def test_a_product_without_usage_gets_one_zero_line() -> None:
    invoice = bill({}, [version(1, LONG_AGO, per_unit("llm", "0.0000015"))])
    (line,) = invoice.lines
    assert line.product_id == "llm"
    assert line.group_values == {}
    assert line.quantity == 0
    assert str(line.amount) == "0.00"
    assert str(invoice.total) == "0.00"


def test_rounding_happens_only_at_the_line() -> None:
    invoice = bill(
        {(START, "calls", ("eu",)): Tally(count=1), (START, "calls", ("us",)): Tally(count=1)},
        [version(1, LONG_AGO, per_unit("api", "0.005"))],
    )
    assert [str(line.amount) for line in invoice.lines] == ["0.01", "0.01"]
    assert str(invoice.total) == "0.02"


@given(
    counts=st.dictionaries(
        st.sampled_from(["eu", "us", "ap", ""]), st.integers(min_value=0, max_value=10**9)
    ),
    price=st.decimals(min_value=0, max_value=10, places=7),
)
def test_the_total_is_the_sum_of_the_rounded_lines(counts: dict[str, int], price: Decimal) -> None:
    usage = {(START, "calls", (region,)): Tally(count=n) for region, n in counts.items()}
    invoice = bill(usage, [version(1, LONG_AGO, per_unit("api", str(price)))])
    assert invoice.total == sum(line.amount for line in invoice.lines)
    assert invoice.subtotal == invoice.total
    assert str(invoice.credits_applied) == "0.00"
    for line in invoice.lines:
        assert line.amount.as_tuple().exponent == -2
        assert abs(line.amount - line.quantity * price) <= Decimal("0.005")


def test_invoice_header_names_contract_period_and_versions() -> None:
    invoice = bill({}, [V2, V1])
    assert invoice.invoice_id == "in-ct-1-1"
    assert (invoice.customer_id, invoice.contract_id, invoice.currency) == ("cus-1", "ct-1", "USD")
    assert (invoice.period_start, invoice.period_end) == (START, END)
    assert invoice.rate_card_id == "rc-list"
    assert invoice.rate_card_versions == (1, 2)
    assert (invoice.contract_version, invoice.computed_through_seq) == (3, 42)


def test_unbilled_usage_of_a_tally_is_reported_on_the_invoice() -> None:
    tally = Tally(
        count=2, total=Decimal(30), maximum=Decimal(20), unbilled={"missing property 'tokens'": 3}
    )
    invoice = bill({(START, "tokens", ()): tally}, [V1])
    assert str(invoice.total) == "0.06"
    assert invoice.unbilled == (UnbilledUsage("tokens", "missing property 'tokens'", 3),)


def test_unbilled_usage_is_counted_once_when_two_products_share_a_metric() -> None:
    input_tokens = Product("llm-support", "Support on tokens", "tokens")
    catalog = Catalog(CATALOG.metrics, {**CATALOG.products, "llm-support": input_tokens})
    card = version(1, LONG_AGO, per_unit("llm", "0.002"), per_unit("llm-support", "0.0001"))
    tally = Tally(
        count=1, total=Decimal(10), maximum=Decimal(10), unbilled={"missing property 'tokens'": 3}
    )
    invoice = bill({(START, "tokens", ()): tally}, [card], catalog=catalog)
    assert len(invoice.lines) == 2
    assert invoice.unbilled == (UnbilledUsage("tokens", "missing property 'tokens'", 3),)


# --- splitting a period must not change what is billed ------------------------------------


@given(
    price=st.decimals(min_value=0, max_value=10, places=4),
    before=st.integers(min_value=0, max_value=10**7),
    after=st.integers(min_value=0, max_value=10**7),
    split=st.datetimes(
        min_value=datetime(2025, 1, 1, 0, 0, 1),
        max_value=datetime(2025, 1, 31, 23, 59),
        timezones=st.just(UTC),
    ),
)
@example(price=Decimal("0.005"), before=1, after=1, split=MID)
def test_splitting_at_an_identical_version_does_not_change_the_total(
    price: Decimal, before: int, after: int, split: datetime
) -> None:
    v1 = version(1, LONG_AGO, per_unit("llm", str(price)))
    republished = dataclasses.replace(v1, version=2, effective_from=split)
    events = [completion(START, before), completion(split, after)]
    assert bill_events(events, [v1, republished]).total == bill_events(events, [v1]).total


def test_republishing_an_identical_version_does_not_charge_the_minimum_twice() -> None:
    v1 = version(1, LONG_AGO, per_unit("llm", "0.02", minimum="10.00"))
    republished = dataclasses.replace(v1, version=2, effective_from=MID)
    invoice = bill_events([completion(START, 50), completion(MID, 50)], [v1, republished])
    assert str(invoice.total) == "10.00"


def completion(at: datetime, tokens: int) -> UsageRecorded:
    return UsageRecorded("cus-1", f"t-{at.isoformat()}", "completion", at, {"tokens": str(tokens)})


def bill_events(events: Sequence[UsageRecorded], versions: Sequence[RateCardVersion]) -> Invoice:
    """Bill raw events the way the service does: folded into the period's own segments."""
    starts = [s.period.start for s in pricing_segments(contract(), PERIOD, {"rc-list": versions})]
    return bill(fold_usage(events, CATALOG.metrics.values(), starts, END), versions)


# --- determinism and the content hash -----------------------------------------------------


SPLIT_CARDS = [
    version(1, LONG_AGO, per_unit("llm", "0.0000015"), *GROUP_RATES),
    version(2, MID, per_unit("llm", "0.000002"), per_unit("api", "0.09")),
]
usage_keys = st.tuples(
    st.sampled_from([START, MID]),
    st.sampled_from([("tokens", ()), ("calls", ("eu",)), ("calls", ("us",)), ("calls", ("",))]),
).map(lambda key: (key[0], key[1][0], key[1][1]))
usage_maps = st.dictionaries(
    usage_keys,
    st.builds(
        Tally,
        count=st.integers(min_value=0, max_value=10**6),
        total=st.decimals(min_value=0, max_value=10**9, places=3),
        unbilled=st.dictionaries(st.sampled_from(["r1", "r2"]), st.integers(1, 5), max_size=2),
    ),
)


@given(usage=usage_maps, data=st.data())
def test_rate_invoice_is_byte_identical_for_any_usage_order(
    usage: dict[UsageKey, Tally], data: Any
) -> None:
    reordered = dict(data.draw(st.permutations(list(usage.items()))))
    assert canonical_invoice(bill(reordered, SPLIT_CARDS)) == canonical_invoice(
        bill(usage, SPLIT_CARDS)
    )


def test_rate_invoice_from_max_usage_is_byte_identical_for_any_event_order() -> None:
    def seat_usage(seats: str, n: int) -> UsageRecorded:
        return UsageRecorded("cus-1", f"t-{n}", "seat_gauge", START, {"seats": seats})

    events = [seat_usage("1.0", 1), seat_usage("1", 2)]
    card = version(1, LONG_AGO, per_unit("seat", "10"))
    forward = bill(fold_usage(events, [SEATS], [START], END), [card])
    backward = bill(fold_usage(events[::-1], [SEATS], [START], END), [card])
    assert canonical_invoice(forward) == canonical_invoice(backward)


def test_content_sha256_is_stable_for_the_same_invoice() -> None:
    usage = {(START, "calls", ("eu",)): Tally(count=5), (MID, "tokens", ()): summed(10**6)}
    first, second = bill(usage, SPLIT_CARDS), bill(dict(reversed(usage.items())), SPLIT_CARDS)
    assert content_sha256(first) == content_sha256(second)
    assert len(content_sha256(first)) == 64
    assert int(content_sha256(first), 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"amount": Decimal("0.61")},
        {"amount": Decimal("0.600")},
        {"quantity": Decimal(6)},
        {"unit_price": Decimal("0.13")},
        {"group_values": {"region": "us"}},
        {"product_name": "API calls (EU)"},
        {"explanation": "changed"},
        {"rate_card_version": 2},
        {"segment_end": MID + timedelta(microseconds=1)},
    ],
)
def test_content_sha256_changes_when_a_line_changes(change: dict[str, Any]) -> None:
    invoice = bill({(START, "calls", ("eu",)): Tally(count=5)}, SPLIT_CARDS)
    line = invoice.lines[0]
    assert str(line.amount) == "0.60"
    changed = dataclasses.replace(
        invoice, lines=(dataclasses.replace(line, **change), *invoice.lines[1:])
    )
    assert content_sha256(changed) != content_sha256(invoice)


def percent_of_api(percent: int) -> Rate:
    return Rate("support", RateModel.PERCENTAGE, percent=Decimal(percent), percent_of=("api",))


def test_a_percentage_whose_price_changes_mid_period_takes_its_base_by_time() -> None:
    """10% then 20% of a 200.00 line that spans both: each rate on its share of the time."""
    catalog = Catalog(CATALOG.metrics, {**CATALOG.products, "support": Product("support", "S")})
    api = Rate("api", RateModel.PER_UNIT, Decimal("200.00"))
    first, second = (
        version(1, LONG_AGO, api, percent_of_api(10)),
        version(2, MID, api, percent_of_api(20)),
    )
    invoice = bill({(START, "calls", ("eu",)): Tally(count=1)}, [first, second], catalog=catalog)
    support = [(li.segment_start, li.amount) for li in invoice.lines if li.product_id == "support"]
    seconds = timedelta(seconds=1)
    share_first = (
        Decimal(200) * Decimal((MID - START) // seconds) / Decimal((END - START) // seconds)
    )
    cent = Decimal("0.01")
    assert support == [
        (START, (share_first / 10).quantize(cent, rounding="ROUND_HALF_UP")),
        (MID, ((Decimal(200) - share_first) / 5).quantize(cent, rounding="ROUND_HALF_UP")),
    ]
