"""Decimal parsing, currency places and the one rounding rule of PRICING.md."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core.errors import DomainError, Rule
from ledger.core.money import (
    _DECIMAL_TEXT,
    currency_decimals,
    is_decimal_text,
    parse_decimal,
    round_amount,
    zero,
)

amounts = st.decimals(
    min_value=Decimal("-1e12"), max_value=Decimal("1e12"), places=8, allow_nan=False
)
places = st.integers(min_value=0, max_value=12)


def assert_invalid(error: DomainError, field: str) -> None:
    assert error.rule is Rule.REQUEST_INVALID
    assert [violation.field for violation in error.violations] == [field]
    assert error.message.startswith(f"{field}: ")


# --- round_amount -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "decimals", "expected"),
    [
        ("0.005", 2, "0.01"),
        ("-0.005", 2, "-0.01"),
        ("0.0049999", 2, "0.00"),
        ("1.005", 2, "1.01"),
        ("-1.005", 2, "-1.01"),
        ("185.1851835", 2, "185.19"),
        ("2.5", 0, "3"),
        ("-2.5", 0, "-3"),
        ("7", 2, "7.00"),
        ("0.0005", 3, "0.001"),
    ],
)
def test_round_amount_rounds_half_away_from_zero(amount: str, decimals: int, expected: str) -> None:
    result = round_amount(Decimal(amount), decimals)
    assert result == Decimal(expected)
    assert str(result) == expected


def test_round_amount_for_jpy_uses_zero_places() -> None:
    decimals = currency_decimals("JPY", None)
    assert decimals == 0
    assert str(round_amount(Decimal("1234.5"), decimals)) == "1235"
    assert str(round_amount(Decimal("1234.49"), decimals)) == "1234"


def test_round_amount_for_custom_unit_uses_its_declared_places() -> None:
    decimals = currency_decimals("gpu_credits", 4)
    assert decimals == 4
    assert str(round_amount(Decimal("0.00005"), decimals)) == "0.0001"
    assert str(round_amount(Decimal("1.23454999"), decimals)) == "1.2345"


def test_round_amount_is_exact_for_wide_values() -> None:
    amount = Decimal("123456789012345678901234567890.125")
    assert round_amount(amount, 2) == Decimal("123456789012345678901234567890.13")


@given(amount=amounts, decimals=places)
def test_round_amount_has_the_currency_places_and_is_within_half_a_minor_unit(
    amount: Decimal, decimals: int
) -> None:
    result = round_amount(amount, decimals)
    assert result.as_tuple().exponent == -decimals
    assert abs(result - amount) <= Decimal(1).scaleb(-decimals) / 2


@given(amount=amounts, decimals=places)
def test_round_amount_is_symmetric_around_zero(amount: Decimal, decimals: int) -> None:
    assert round_amount(-amount, decimals) == -round_amount(amount, decimals)


@given(amount=amounts, decimals=places)
def test_round_amount_is_idempotent(amount: Decimal, decimals: int) -> None:
    once = round_amount(amount, decimals)
    assert round_amount(once, decimals) == once


def test_zero_renders_with_the_currency_places() -> None:
    assert str(zero(2)) == "0.00"
    assert str(zero(0)) == "0"
    assert str(zero(4)) == "0.0000"


# --- parse_decimal ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["0.0000015", "12", "0", "0.5", "10.00", "9" * 20, "0." + "1" * 20, "9" * 20 + "." + "9" * 20],
)
def test_parse_decimal_accepts_plain_decimal_text(text: str) -> None:
    value = parse_decimal(text, "unit_price")
    assert isinstance(value, Decimal)
    assert value == Decimal(text)
    assert str(value) == text
    assert is_decimal_text(text)


def test_parse_decimal_accepts_negative_only_when_allowed() -> None:
    assert parse_decimal("-3.5", "adjustment", allow_negative=True) == Decimal("-3.5")
    with pytest.raises(DomainError) as raised:
        parse_decimal("-3.5", "adjustment")
    assert_invalid(raised.value, "adjustment")


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "nan",
        "sNaN",
        "Infinity",
        "-Infinity",
        "inf",
        "1e3",
        "1E+3",
        "1E-3",
        " 1",
        "1 ",
        "1\n",
        "1,000",
        "1_000",
        "",
        "-",
        "+1",
        "01",
        "-01",
        "00.5",
        ".5",
        "5.",
        "1.2.3",
        "0x10",
        "١٢",  # Arabic-Indic digits are digits to Python, not to the API
        "1" * 21,  # at most 20 digits before the point
        "0." + "1" * 21,
        "1" * 1000,
    ],
)
def test_parse_decimal_rejects_anything_but_plain_decimal_text(text: str) -> None:
    with pytest.raises(DomainError) as raised:
        parse_decimal(text, "events[3].properties.tokens", allow_negative=True)
    assert_invalid(raised.value, "events[3].properties.tokens")
    assert not is_decimal_text(text)


def test_parse_decimal_error_quotes_at_most_forty_characters_of_the_input() -> None:
    with pytest.raises(DomainError) as raised:
        parse_decimal("7" * 5000, "quantity")
    assert len(raised.value.message) < 200


# --- currency_decimals --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"), [("USD", 2), ("EUR", 2), ("JPY", 0), ("KRW", 0), ("BHD", 3)]
)
def test_iso_currencies_have_their_iso_places(code: str, expected: int) -> None:
    assert currency_decimals(code, None) == expected
    assert currency_decimals(code, expected) == expected


@pytest.mark.parametrize(("code", "declared"), [("USD", 3), ("USD", 0), ("JPY", 2)])
def test_iso_currency_refuses_a_wrong_declared_value(code: str, declared: int) -> None:
    with pytest.raises(DomainError) as raised:
        currency_decimals(code, declared)
    assert_invalid(raised.value, "currency_decimals")


@pytest.mark.parametrize(("code", "declared"), [("credits", 0), ("GPU_HOURS", 4), ("tok", 12)])
def test_custom_unit_uses_its_declared_places(code: str, declared: int) -> None:
    assert currency_decimals(code, declared) == declared


def test_custom_unit_must_declare_its_places() -> None:
    with pytest.raises(DomainError) as raised:
        currency_decimals("credits", None)
    assert_invalid(raised.value, "currency_decimals")


@pytest.mark.parametrize("declared", [-1, 13])
def test_custom_unit_places_must_be_within_range(declared: int) -> None:
    with pytest.raises(DomainError) as raised:
        currency_decimals("credits", declared)
    assert_invalid(raised.value, "currency_decimals")


@pytest.mark.parametrize("code", ["", "1credits", "gpu hours", "x" * 33, "€"])
def test_currency_must_be_iso_or_a_unit_name(code: str) -> None:
    with pytest.raises(DomainError) as raised:
        currency_decimals(code, 2)
    assert_invalid(raised.value, "currency")


@given(
    st.one_of(
        st.text(alphabet="0123456789", max_size=24),
        st.text(alphabet="0123456789.-١²", max_size=24),
        st.text(max_size=24),
    )
)
def test_the_plain_integer_shortcut_agrees_with_the_decimal_pattern(text: str) -> None:
    assert is_decimal_text(text) == (_DECIMAL_TEXT.fullmatch(text) is not None)
