"""Pricing across amendments: a period split at plan changes, each piece priced by its
own card, flat and seat charges prorated by the days each plan covers."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal

from ledger.core.catalog import (
    Aggregation,
    BillableMetric,
    Contract,
    Override,
    OverrideKind,
    PlanChange,
    Product,
    Rate,
    RateCardVersion,
    RateModel,
)
from ledger.core.contracts import Amendment, amend
from ledger.core.invoice import Invoice
from ledger.core.metering import Tally, UsageKey
from ledger.core.periods import Period
from ledger.core.rating import (
    NO_VERSION_IN_EFFECT,
    Catalog,
    Segment,
    pricing_segments,
    rate_invoice,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# April has 30 days: day 11 starts after 10 of them.
START = utc(2026, 4, 1)
DAY_11 = utc(2026, 4, 11)
DAY_21 = utc(2026, 4, 21)
END = utc(2026, 5, 1)
PERIOD = Period(START, END)
LONG_AGO = utc(2025, 1, 1)

TOKENS = BillableMetric("tokens", "Tokens", "completion", Aggregation.SUM, property="tokens")
SEATS = BillableMetric("seats", "Seats", "seat_gauge", Aggregation.MAX, property="seats")
CATALOG = Catalog(
    metrics={m.metric_id: m for m in (TOKENS, SEATS)},
    products={
        p.product_id: p
        for p in (
            Product("platform", "Platform"),
            Product("llm", "LLM tokens", "tokens"),
            Product("seat", "Seats", "seats"),
        )
    },
)


def flat(amount: str) -> Rate:
    return Rate("platform", RateModel.FLAT, flat_amount=Decimal(amount))


def per_unit(price: str) -> Rate:
    return Rate("llm", RateModel.PER_UNIT, unit_price=Decimal(price))


def seat(price: str) -> Rate:
    return Rate("seat", RateModel.SEAT, unit_price=Decimal(price))


def card(
    rate_card_id: str, number: int, *rates: Rate, effective_from: datetime = LONG_AGO
) -> RateCardVersion:
    return RateCardVersion(
        rate_card_id=rate_card_id,
        version=number,
        name=rate_card_id,
        currency="USD",
        currency_decimals=2,
        effective_from=effective_from,
        rates=rates,
    )


def contract(*amendments: Amendment, pinned_version: int | None = None) -> Contract:
    """A contract on plan-a from START, with ``amendments`` applied in order."""
    signed = Contract(
        contract_id="ct-1",
        customer_id="cus-1",
        rate_card_id="plan-a",
        pinned_version=pinned_version,
        starts_at=START,
        ends_at=None,
        billing_anchor=START,
        currency="USD",
    )
    for amendment in amendments:
        signed = amend(signed, amendment)
    return signed


def switch(at: datetime, rate_card_id: str, pinned_version: int | None = None) -> Amendment:
    return Amendment("ct-1", at, plan=PlanChange(at, rate_card_id, pinned_version))


def bill(
    the_contract: Contract,
    versions: Mapping[str, Sequence[RateCardVersion]],
    usage: Mapping[UsageKey, Tally] | None = None,
) -> Invoice:
    return rate_invoice(
        invoice_id="in-ct-1-1",
        contract=the_contract,
        contract_version=2,
        period=PERIOD,
        segments=pricing_segments(the_contract, PERIOD, versions),
        usage=usage or {},
        catalog=CATALOG,
        rate_card_currency=("USD", 2),
        computed_through_seq=7,
    )


def priced(invoice: Invoice) -> list[tuple[str, str, datetime, datetime, str]]:
    """Each line as (product, card, segment start, segment end, amount)."""
    return [
        (li.product_id, li.rate_card_id, li.segment_start, li.segment_end, str(li.amount))
        for li in invoice.lines
    ]


def summed(quantity: int) -> Tally:
    return Tally(count=1, total=Decimal(quantity), maximum=Decimal(quantity))


A1 = card("plan-a", 1, flat("10.00"))
B1 = card("plan-b", 1, flat("20.00"))


# --- segments ------------------------------------------------------------------------------


def test_a_plan_change_inside_the_period_cuts_it_there() -> None:
    the_contract = contract(switch(DAY_11, "plan-b"))
    assert pricing_segments(the_contract, PERIOD, {"plan-a": [A1], "plan-b": [B1]}) == (
        Segment(Period(START, DAY_11), A1),
        Segment(Period(DAY_11, END), B1),
    )


def test_a_plan_change_before_the_period_prices_all_of_it() -> None:
    earlier = contract(switch(utc(2026, 3, 20), "plan-b"))
    assert pricing_segments(earlier, PERIOD, {"plan-b": [B1]}) == (Segment(PERIOD, B1),)


def test_a_plan_change_at_the_period_end_belongs_to_the_next_period() -> None:
    later = contract(switch(END, "plan-b"))
    assert pricing_segments(later, PERIOD, {"plan-a": [A1]}) == (Segment(PERIOD, A1),)


def test_each_plan_follows_its_own_card_or_stays_pinned() -> None:
    a2 = card("plan-a", 2, flat("12.00"), effective_from=utc(2026, 4, 6))
    b2 = card("plan-b", 2, flat("25.00"), effective_from=DAY_21)
    versions = {"plan-a": [A1, a2], "plan-b": [B1, b2]}
    following = contract(switch(DAY_11, "plan-b"))
    assert [(s.period, s.rate_card) for s in pricing_segments(following, PERIOD, versions)] == [
        (Period(START, utc(2026, 4, 6)), A1),
        (Period(utc(2026, 4, 6), DAY_11), a2),
        (Period(DAY_11, DAY_21), B1),
        (Period(DAY_21, END), b2),
    ]
    pinned = contract(switch(DAY_11, "plan-b", pinned_version=1), pinned_version=1)
    assert [(s.period, s.rate_card) for s in pricing_segments(pinned, PERIOD, versions)] == [
        (Period(START, DAY_11), A1),
        (Period(DAY_11, END), B1),
    ]


def test_a_new_pin_on_the_same_card_at_the_same_prices_splits_nothing() -> None:
    republished = dataclasses.replace(A1, version=2)
    the_contract = contract(switch(DAY_11, "plan-a", pinned_version=2))
    segments = pricing_segments(the_contract, PERIOD, {"plan-a": [A1, republished]})
    assert [s.period for s in segments] == [PERIOD]
    assert [
        str(line.amount) for line in bill(the_contract, {"plan-a": [A1, republished]}).lines
    ] == ["10.00"]


# --- proration -----------------------------------------------------------------------------


def test_a_mid_period_plan_change_gives_a_prorated_flat_line_per_plan() -> None:
    invoice = bill(contract(switch(DAY_11, "plan-b")), {"plan-a": [A1], "plan-b": [B1]})
    assert priced(invoice) == [
        ("platform", "plan-a", START, DAY_11, "3.33"),  # 10.00 × 10/30 = 3.333…
        ("platform", "plan-b", DAY_11, END, "13.33"),  # 20.00 × 20/30 = 13.333…
    ]
    assert "10/30" in invoice.lines[0].explanation
    assert str(invoice.total) == "16.66"
    assert invoice.rate_card_id == "plan-b"
    assert invoice.rate_card_versions == (1,)


def test_the_same_price_on_another_card_is_still_another_line() -> None:
    same_price = card("plan-b", 3, flat("10.00"))
    invoice = bill(contract(switch(DAY_11, "plan-b")), {"plan-a": [A1], "plan-b": [same_price]})
    assert priced(invoice) == [
        ("platform", "plan-a", START, DAY_11, "3.33"),
        ("platform", "plan-b", DAY_11, END, "6.67"),
    ]
    assert invoice.rate_card_versions == (1, 3)


def test_seats_are_prorated_per_plan() -> None:
    a = card("plan-a", 1, seat("3.00"))
    b = card("plan-b", 1, seat("6.00"))
    usage = {(START, "seats", ()): summed(10), (DAY_11, "seats", ()): summed(10)}
    invoice = bill(contract(switch(DAY_11, "plan-b")), {"plan-a": [a], "plan-b": [b]}, usage)
    assert priced(invoice) == [
        ("seat", "plan-a", START, DAY_11, "10.00"),  # 10 seats × 3.00 × 10/30
        ("seat", "plan-b", DAY_11, END, "40.00"),  # 10 seats × 6.00 × 20/30
    ]


def test_usage_on_each_side_of_a_plan_change_is_priced_by_its_plan() -> None:
    a = card("plan-a", 1, per_unit("0.002"))
    b = card("plan-b", 1, per_unit("0.001"))
    usage = {(START, "tokens", ()): summed(1000), (DAY_11, "tokens", ()): summed(3000)}
    invoice = bill(contract(switch(DAY_11, "plan-b")), {"plan-a": [a], "plan-b": [b]}, usage)
    assert priced(invoice) == [
        ("llm", "plan-a", START, DAY_11, "2.00"),
        ("llm", "plan-b", DAY_11, END, "3.00"),
    ]


def test_a_new_plan_without_a_version_in_effect_yet_leaves_its_usage_unbilled() -> None:
    a = card("plan-a", 1, per_unit("0.002"))
    b = card("plan-b", 1, per_unit("0.001"), effective_from=DAY_21)
    usage = {(START, "tokens", ()): summed(1000), (DAY_11, "tokens", ()): summed(3000)}
    the_contract = contract(switch(DAY_11, "plan-b"))
    segments = pricing_segments(the_contract, PERIOD, {"plan-a": [a], "plan-b": [b]})
    assert segments == (
        Segment(Period(START, DAY_11), a),
        Segment(Period(DAY_11, DAY_21), None),
        Segment(Period(DAY_21, END), b),
    )
    invoice = bill(the_contract, {"plan-a": [a], "plan-b": [b]}, usage)
    assert [(u.metric_id, u.reason, u.event_count) for u in invoice.unbilled] == [
        ("tokens", NO_VERSION_IN_EFFECT, 1)
    ]
    assert invoice.rate_card_id == "plan-b"


# --- overrides -----------------------------------------------------------------------------


def test_an_override_added_mid_period_prices_from_its_start() -> None:
    half = Override(
        "ov-half", "llm", OverrideKind.MULTIPLIER, starts_at=DAY_11, multiplier=Decimal("0.5")
    )
    the_contract = contract(Amendment("ct-1", DAY_11, add_overrides=(half,)))
    a = card("plan-a", 1, per_unit("0.002"))
    usage = {(START, "tokens", ()): summed(1000), (DAY_11, "tokens", ()): summed(1000)}
    invoice = bill(the_contract, {"plan-a": [a]}, usage)
    assert priced(invoice) == [
        ("llm", "plan-a", START, DAY_11, "2.00"),
        ("llm", "plan-a", DAY_11, END, "1.00"),
    ]
    assert [line.override_id for line in invoice.lines] == ["", "ov-half"]


def test_an_override_ended_by_an_amendment_stops_there() -> None:
    half = Override("ov-half", "llm", OverrideKind.MULTIPLIER, multiplier=Decimal("0.5"))
    signed = dataclasses.replace(contract(), overrides=(half,))
    ended = amend(signed, Amendment("ct-1", DAY_11, end_overrides=("ov-half",)))
    a = card("plan-a", 1, per_unit("0.002"))
    usage = {(START, "tokens", ()): summed(1000), (DAY_11, "tokens", ()): summed(1000)}
    assert [line.override_id for line in bill(ended, {"plan-a": [a]}, usage).lines] == [
        "ov-half",
        "",
    ]
