"""Metering: usage events reduced to tallies per metric, group and pricing segment."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core.catalog import Aggregation, BillableMetric, FilterOp, PropertyFilter
from ledger.core.events import UsageRecorded
from ledger.core.metering import (
    Sequenced,
    Tally,
    UsageKey,
    fold_usage,
    group_of,
    matches,
    measure,
    merge_tallies,
    segment_start_for,
)

PERIOD_START = datetime(2025, 1, 1, tzinfo=UTC)
MID = datetime(2025, 1, 15, tzinfo=UTC)
PERIOD_END = datetime(2025, 2, 1, tzinfo=UTC)

CALLS = BillableMetric("calls", "API calls", "api_call", Aggregation.COUNT)
TOKENS = BillableMetric(
    "tokens", "Tokens", "completion", Aggregation.SUM, property="tokens", group_by=("model",)
)
SEATS = BillableMetric("seats", "Seats", "seat_gauge", Aggregation.MAX, property="seats")
METRICS = (CALLS, TOKENS, SEATS)


def usage(
    event_type: str,
    properties: Mapping[str, str] | None = None,
    *,
    at: datetime = PERIOD_START,
    transaction_id: str = "t-1",
) -> UsageRecorded:
    return UsageRecorded(
        customer_id="cus-1",
        transaction_id=transaction_id,
        event_type=event_type,
        occurred_at=at,
        properties=dict(properties or {}),
    )


# --- measure ------------------------------------------------------------------------------


def test_count_measures_one_per_matching_event() -> None:
    tally = measure(CALLS, usage("api_call", {"anything": "x"}))
    assert tally == Tally(count=1)
    assert tally.quantity(Aggregation.COUNT) == Decimal(1)


def test_an_event_of_another_type_is_not_measured() -> None:
    assert measure(CALLS, usage("completion", {"tokens": "5"})) is None


def test_sum_measures_the_property_value() -> None:
    tally = measure(TOKENS, usage("completion", {"tokens": "2.5", "model": "large"}))
    assert tally == Tally(count=1, total=Decimal("2.5"), maximum=Decimal("2.5"))
    assert tally is not None and tally.quantity(Aggregation.SUM) == Decimal("2.5")


def test_sum_and_max_over_several_events() -> None:
    events = [usage("seat_gauge", {"seats": seats}) for seats in ("3", "12", "7")]
    tallies = fold_usage(events, [SEATS], [PERIOD_START], PERIOD_END)
    tally = tallies[(PERIOD_START, "seats", ())]
    assert tally.quantity(Aggregation.MAX) == Decimal(12)
    assert tally.quantity(Aggregation.SUM) == Decimal(22)
    assert tally.quantity(Aggregation.COUNT) == Decimal(3)


def test_max_of_no_values_is_zero() -> None:
    assert Tally().quantity(Aggregation.MAX) == Decimal(0)
    assert Tally().quantity(Aggregation.SUM) == Decimal(0)


# --- filters ------------------------------------------------------------------------------


EU_CALLS = BillableMetric(
    "eu_calls",
    "EU calls",
    "api_call",
    Aggregation.COUNT,
    filters=(PropertyFilter("region", FilterOp.IN, ("eu-west", "eu-central")),),
)
TAGGED_CALLS = BillableMetric(
    "tagged",
    "Tagged calls",
    "api_call",
    Aggregation.COUNT,
    filters=(PropertyFilter("tag", FilterOp.EXISTS),),
)


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        ({"region": "eu-west"}, True),
        ({"region": "eu-central"}, True),
        ({"region": "us-east"}, False),
        ({}, False),
        ({"region": ""}, False),
    ],
)
def test_in_filter_matches_only_the_listed_values(
    properties: dict[str, str], expected: bool
) -> None:
    assert matches(EU_CALLS, usage("api_call", properties)) is expected
    assert (measure(EU_CALLS, usage("api_call", properties)) is not None) is expected


@pytest.mark.parametrize(
    ("properties", "expected"), [({"tag": "x"}, True), ({"tag": ""}, True), ({"other": "x"}, False)]
)
def test_exists_filter_matches_when_the_property_is_present(
    properties: dict[str, str], expected: bool
) -> None:
    assert matches(TAGGED_CALLS, usage("api_call", properties)) is expected


def test_all_filters_must_match() -> None:
    both = BillableMetric(
        "both",
        "Both",
        "api_call",
        Aggregation.COUNT,
        filters=(*EU_CALLS.filters, *TAGGED_CALLS.filters),
    )
    assert matches(both, usage("api_call", {"region": "eu-west", "tag": "a"}))
    assert not matches(both, usage("api_call", {"region": "eu-west"}))
    assert not matches(both, usage("api_call", {"region": "us-east", "tag": "a"}))


# --- groups -------------------------------------------------------------------------------


def test_group_follows_group_by_order_and_a_missing_property_is_empty() -> None:
    metric = BillableMetric(
        "m", "M", "api_call", Aggregation.COUNT, group_by=("region", "model", "tier")
    )
    assert group_of(metric, {"tier": "gold", "region": "eu"}) == ("eu", "", "gold")
    assert group_of(CALLS, {"region": "eu"}) == ()


def test_fold_usage_keys_tallies_by_segment_metric_and_group() -> None:
    events = [
        usage("completion", {"tokens": "10", "model": "large"}),
        usage("completion", {"tokens": "5", "model": "large"}, at=MID),
        usage("completion", {"tokens": "1"}),
    ]
    tallies = fold_usage(events, METRICS, [PERIOD_START, MID], PERIOD_END)
    assert tallies == {
        (PERIOD_START, "tokens", ("large",)): Tally(1, Decimal(10), Decimal(10)),
        (MID, "tokens", ("large",)): Tally(1, Decimal(5), Decimal(5)),
        (PERIOD_START, "tokens", ("",)): Tally(1, Decimal(1), Decimal(1)),
    }


def test_fold_usage_ignores_events_outside_the_period() -> None:
    events = [
        usage("api_call", at=PERIOD_START - timedelta(microseconds=1)),
        usage("api_call", at=PERIOD_END),
        usage("api_call", at=PERIOD_END - timedelta(microseconds=1)),
    ]
    tallies = fold_usage(events, [CALLS], [PERIOD_START], PERIOD_END)
    assert tallies == {(PERIOD_START, "calls", ()): Tally(count=1)}


def test_segment_start_for_finds_the_segment_containing_the_instant() -> None:
    starts = [PERIOD_START, MID]
    assert segment_start_for(starts, PERIOD_START) == PERIOD_START
    assert segment_start_for(starts, MID - timedelta(microseconds=1)) == PERIOD_START
    assert segment_start_for(starts, MID) == MID
    assert segment_start_for(starts, PERIOD_START - timedelta(days=1)) is None


def test_one_event_is_measured_by_every_metric_it_matches() -> None:
    tallies = fold_usage(
        [usage("api_call", {"region": "eu-west", "tag": "x"})],
        [CALLS, EU_CALLS, TAGGED_CALLS],
        [PERIOD_START],
        PERIOD_END,
    )
    assert set(tallies) == {(PERIOD_START, m, ()) for m in ("calls", "eu_calls", "tagged")}


# --- unbilled -----------------------------------------------------------------------------


def test_sum_with_a_missing_property_is_counted_as_unbilled() -> None:
    tally = measure(TOKENS, usage("completion", {"model": "large"}))
    assert tally == Tally(unbilled={"missing property 'tokens'": 1})
    assert tally is not None and tally.count == 0
    assert tally.quantity(Aggregation.SUM) == Decimal(0)


@pytest.mark.parametrize("value", ["abc", "1e3", "NaN", "", " 1", "1,5", "Infinity"])
def test_sum_with_a_non_number_is_counted_as_unbilled(value: str) -> None:
    tally = measure(TOKENS, usage("completion", {"tokens": value}))
    assert tally == Tally(unbilled={"property 'tokens' is not a number": 1})
    assert tally is not None and tally.count == 0


def test_max_with_a_non_number_is_counted_as_unbilled() -> None:
    tally = measure(SEATS, usage("seat_gauge", {"seats": "many"}))
    assert tally == Tally(unbilled={"property 'seats' is not a number": 1})


def test_unbilled_reasons_accumulate_in_the_fold() -> None:
    events = [
        usage("completion", {"tokens": "abc"}),
        usage("completion", {"tokens": "1e3"}),
        usage("completion", {}),
        usage("completion", {"tokens": "4"}),
    ]
    tally = fold_usage(events, [TOKENS], [PERIOD_START], PERIOD_END)[
        (PERIOD_START, "tokens", ("",))
    ]
    assert tally.count == 1
    assert tally.total == Decimal(4)
    assert tally.unbilled == {
        "property 'tokens' is not a number": 2,
        "missing property 'tokens'": 1,
    }


# --- the monoid ---------------------------------------------------------------------------


quantities = st.decimals(
    min_value=Decimal("-1e6"), max_value=Decimal("1e9"), places=6, allow_nan=False
)
reasons = st.sampled_from(["missing property 'tokens'", "property 'tokens' is not a number"])
tallies = st.builds(
    Tally,
    count=st.integers(min_value=0, max_value=10_000),
    total=quantities,
    maximum=st.none() | quantities,
    unbilled=st.dictionaries(reasons, st.integers(min_value=1, max_value=100), max_size=2),
)


@given(a=tallies, b=tallies)
def test_tally_merge_is_commutative(a: Tally, b: Tally) -> None:
    assert a.merge(b) == b.merge(a)


@given(a=tallies, b=tallies, c=tallies)
def test_tally_merge_is_associative(a: Tally, b: Tally, c: Tally) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(a=tallies)
def test_the_empty_tally_is_the_identity(a: Tally) -> None:
    assert Tally().merge(a) == a
    assert a.merge(Tally()) == a


@given(a=tallies, b=tallies)
def test_merge_adds_counts_and_totals_and_keeps_the_maximum(a: Tally, b: Tally) -> None:
    merged = a.merge(b)
    assert merged.count == a.count + b.count
    assert merged.total == a.total + b.total
    maxima = [m for m in (a.maximum, b.maximum) if m is not None]
    assert merged.maximum == (max(maxima) if maxima else None)
    for reason in set(a.unbilled) | set(b.unbilled):
        assert merged.unbilled[reason] == a.unbilled.get(reason, 0) + b.unbilled.get(reason, 0)


property_values = st.one_of(
    st.decimals(min_value=Decimal(0), max_value=Decimal("1e7"), places=4, allow_nan=False).map(str),
    st.sampled_from(["abc", "1e3", ""]),
)
usage_events = st.lists(
    st.builds(
        usage,
        st.sampled_from(["api_call", "completion", "seat_gauge", "other"]),
        st.fixed_dictionaries(
            {},
            optional={
                "tokens": property_values,
                "seats": property_values,
                "model": st.sampled_from(["small", "large"]),
            },
        ),
        at=st.datetimes(
            min_value=datetime(2024, 12, 25),
            max_value=datetime(2025, 2, 5),
            timezones=st.just(UTC),
        ),
    ),
    max_size=25,
)


@given(events=usage_events, data=st.data())
def test_fold_usage_does_not_depend_on_event_order(events: list[UsageRecorded], data: Any) -> None:
    shuffled = data.draw(st.permutations(events))
    segments = [PERIOD_START, MID]
    assert fold_usage(shuffled, METRICS, segments, PERIOD_END) == fold_usage(
        events, METRICS, segments, PERIOD_END
    )


@given(events=usage_events, cut=st.integers(min_value=0, max_value=25))
def test_merged_partial_folds_equal_one_fold_of_all_events(
    events: list[UsageRecorded], cut: int
) -> None:
    segments = [PERIOD_START, MID]
    rollup = fold_usage(events[:cut], METRICS, segments, PERIOD_END)
    tail = fold_usage(events[cut:], METRICS, segments, PERIOD_END)
    assert merge_tallies(rollup, tail) == fold_usage(events, METRICS, segments, PERIOD_END)


EVERY_AGGREGATION = (
    CALLS,
    TOKENS,
    SEATS,
    BillableMetric("users", "Users", "completion", Aggregation.UNIQUE, property="user"),
    BillableMetric("level", "Level", "completion", Aggregation.LATEST, property="tokens"),
)
raw_values = st.one_of(
    st.decimals(min_value=-(10**6), max_value=10**6, places=3, allow_nan=False).map(str),
    st.sampled_from(["1.50", "1.5", "0", "x", ""]),
)


@st.composite
def usage_events(draw: st.DrawFn) -> list[Sequenced]:
    events = []
    for seq in range(1, draw(st.integers(0, 30)) + 1):
        props = {
            name: draw(values)
            for name, values in (
                ("tokens", raw_values),
                ("model", st.sampled_from(["a", "b"])),
                ("user", st.sampled_from(["u1", "u2", "u3"])),
                ("seats", raw_values),
            )
            if draw(st.booleans())
        }
        kind = draw(st.sampled_from(["completion", "api_call", "seat_gauge"]))
        at = PERIOD_START + timedelta(minutes=draw(st.integers(0, 60 * 24 * 40)))
        events.append(Sequenced(seq, UsageRecorded("acme", f"t{seq}", kind, at, props)))
    return events


@given(usage_events())
def test_folding_equals_merging_one_event_tallies_in_order(events: list[Sequenced]) -> None:
    expected: dict[UsageKey, Tally] = {}
    for item in events:
        start = segment_start_for([PERIOD_START, MID], item.event.occurred_at)
        if item.event.occurred_at >= PERIOD_END or start is None:
            continue
        for metric in EVERY_AGGREGATION:
            tally = measure(metric, item.event, item.seq)
            if tally is not None:
                key = (start, metric.metric_id, group_of(metric, item.event.properties))
                expected[key] = expected[key].merge(tally) if key in expected else tally
    folded = fold_usage(events, EVERY_AGGREGATION, [PERIOD_START, MID], PERIOD_END)
    assert folded == expected
    # The same decimals, digit for digit: quantities end up in hashed invoices.
    assert {k: str(t.total) for k, t in folded.items()} == {
        k: str(t.total) for k, t in expected.items()
    }
