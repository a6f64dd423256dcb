"""Canonical JSON: the one byte form that is stored, hashed and compared."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ledger.core.canonical import (
    canonical_json,
    format_decimal,
    format_instant,
    parse_instant,
    sha256_hex,
)

offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
aware_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2),  # leaves room for any UTC offset
    max_value=datetime(9999, 12, 30),
    timezones=st.one_of(st.just(UTC), offsets),
)
json_decimals = st.decimals(allow_nan=False, allow_infinity=False)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(), json_decimals, aware_datetimes
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


class Colour(Enum):
    RED = "red"


def test_keys_are_sorted_at_every_level() -> None:
    value = {"b": 1, "a": {"d": 2, "c": [{"z": 1, "y": 2}]}}
    assert canonical_json(value) == b'{"a":{"c":[{"y":2,"z":1}],"d":2},"b":1}'


def test_there_is_no_insignificant_whitespace() -> None:
    assert canonical_json({"a": [1, 2, {"b": None}], "c": True}) == (
        b'{"a":[1,2,{"b":null}],"c":true}'
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("1E+3"), "1000"),
        (Decimal("0.0000015"), "0.0000015"),
        (Decimal("1.5E-7"), "0.00000015"),
        (Decimal("-2.5E+2"), "-250"),
        (Decimal("10.00"), "10.00"),
        (Decimal("0"), "0"),
    ],
)
def test_decimals_are_plain_strings_never_exponents(value: Decimal, expected: str) -> None:
    assert format_decimal(value) == expected
    assert canonical_json({"amount": value}) == b'{"amount":"' + expected.encode() + b'"}'


@given(value=json_decimals)
def test_decimal_text_parses_back_to_the_same_decimal(value: Decimal) -> None:
    text = format_decimal(value)
    assert "E" not in text and "e" not in text
    assert Decimal(text) == value


def test_datetimes_are_utc_with_microseconds_and_z() -> None:
    instant = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    assert canonical_json(instant) == b'"2025-01-31T12:00:00.000000Z"'


def test_datetimes_in_other_offsets_are_converted_to_utc() -> None:
    instant = datetime(2025, 3, 1, 1, 30, 0, 7, tzinfo=timezone(timedelta(hours=5)))
    assert format_instant(instant) == "2025-02-28T20:30:00.000007Z"


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(AssertionError):
        canonical_json(datetime(2025, 1, 1))  # a naive datetime is not an instant


@pytest.mark.parametrize(
    "value", [1.5, 0.0, float("nan"), {"a": [1, {"b": 2.0}]}, [Decimal(1), 3e8]]
)
def test_floats_are_refused_anywhere(value: Any) -> None:
    with pytest.raises(TypeError):
        canonical_json(value)


@pytest.mark.parametrize("value", [object(), {1, 2}, 1j, {"a": frozenset()}])
def test_values_of_unknown_type_are_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        canonical_json(value)


def test_enums_encode_as_their_value() -> None:
    assert canonical_json({"colour": Colour.RED}) == b'{"colour":"red"}'


def test_text_is_utf8_not_escaped() -> None:
    assert canonical_json({"name": "Zürich → 東京"}) == '{"name":"Zürich → 東京"}'.encode()


def test_same_mapping_in_any_insertion_order_gives_same_bytes() -> None:
    one = {"amount": Decimal("1.50"), "at": datetime(2025, 1, 1, tzinfo=UTC), "n": 1}
    other = {"n": 1, "at": datetime(2025, 1, 1, tzinfo=UTC), "amount": Decimal("1.50")}
    assert canonical_json(one) == canonical_json(other)


@given(value=values)
def test_same_value_gives_same_bytes_and_is_valid_json(value: Any) -> None:
    encoded = canonical_json(value)
    assert encoded == canonical_json(value)
    decoded = json.loads(encoded)
    assert canonical_json(decoded) == encoded


@given(mapping=st.dictionaries(st.text(), st.integers(), max_size=8), data=st.data())
def test_insertion_order_never_changes_the_bytes(mapping: dict[str, int], data: Any) -> None:
    reordered = dict(data.draw(st.permutations(list(mapping.items()))))
    assert canonical_json(reordered) == canonical_json(mapping)


@given(instant=aware_datetimes)
@example(instant=datetime(999, 5, 6, 7, 8, 9, 10, tzinfo=UTC))
def test_format_instant_round_trips_through_parse_instant(instant: datetime) -> None:
    parsed = parse_instant(format_instant(instant))
    assert parsed == instant
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-24T08:59:00,123456Z",
        "2026-11-24 08:59:00.123456Z",
        "2026-11-24T08:59:00.123456+",
        "2026-11-24T08:59:00.12345Z",
        "2026-11-24T08:59:00+00:00:Z",
    ],
)
def test_parse_instant_refuses_other_formats(text: str) -> None:
    with pytest.raises(ValueError, match="canonical instant"):
        parse_instant(text)


def test_format_instant_always_writes_a_four_digit_year() -> None:
    instant = datetime(999, 5, 6, 7, 8, 9, 10, tzinfo=UTC)
    assert format_instant(instant) == "0999-05-06T07:08:09.000010Z"


def test_sha256_hex_is_the_hex_sha256_of_the_bytes() -> None:
    data = canonical_json({"a": 1})
    assert sha256_hex(data) == hashlib.sha256(b'{"a":1}').hexdigest()
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
