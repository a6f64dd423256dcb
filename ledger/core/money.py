"""Decimal quantities and money, and the one rounding rule of PRICING.md.

Arithmetic is exact (a wide context, traps on invalid operations) until a line
amount is rounded once, to the minor unit of its currency, half away from zero.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation, localcontext
from typing import Final

from ledger.core.errors import DomainError, invalid

# Wide enough that no realistic quantity × price is ever silently rounded.
EXACT: Final = Context(prec=80, traps=[InvalidOperation])

# Plain decimal notation only: no exponents, NaN, infinities, signs other than -,
# thousands separators or whitespace. At most 20 digits each side of the point, so
# sums of many events times a price stay far inside the exact context's 80 digits.
_DECIMAL_TEXT: Final = re.compile(r"-?(?:0|[1-9][0-9]{0,19})(?:\.[0-9]{1,20})?")

ISO_CURRENCY_DECIMALS: Final[dict[str, int]] = {
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "CHF": 2,
    "CAD": 2,
    "AUD": 2,
    "NZD": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "PLN": 2,
    "CZK": 2,
    "INR": 2,
    "CNY": 2,
    "HKD": 2,
    "SGD": 2,
    "BRL": 2,
    "MXN": 2,
    "ZAR": 2,
    "ILS": 2,
    "AED": 2,
    "JPY": 0,
    "KRW": 0,
    "ISK": 0,
    "CLP": 0,
    "VND": 0,
    "HUF": 2,
    "BHD": 3,
    "KWD": 3,
    "OMR": 3,
    "TND": 3,
    "JOD": 3,
}
CUSTOM_UNIT_DECIMALS_MAX: Final = 12
_CUSTOM_UNIT: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")


def parse_decimal(text: str, field: str, *, allow_negative: bool = False) -> Decimal:
    """Parse a decimal string from the API, or raise an INVALID domain error."""
    if not _DECIMAL_TEXT.fullmatch(text):
        raise invalid(field, f"{text[:40]!r} is not a plain decimal number (e.g. '12.5')")
    value = Decimal(text)
    if value < 0 and not allow_negative:
        raise invalid(field, "must not be negative")
    return value


def is_decimal_text(text: str) -> bool:
    """True when ``text`` is an acceptable decimal string."""
    if text.isascii() and text.isdigit():
        # A plain integer, the usual quantity, checked without the regex (every
        # usage event's quantity is): at most 20 digits, no leading zero.
        return len(text) <= 20 and (text[0] != "0" or len(text) == 1)
    return _DECIMAL_TEXT.fullmatch(text) is not None


def exact_sum(values: Iterable[Decimal], start: Decimal = Decimal(0)) -> Decimal:
    """Sum without the default context's 28-digit rounding."""
    total = start
    for value in values:
        total = EXACT.add(total, value)
    return total


def round_amount(amount: Decimal, decimals: int) -> Decimal:
    """Round once to ``decimals`` places, half away from zero (ROUND_HALF_UP)."""
    with localcontext(EXACT):
        return amount.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)


def zero(decimals: int) -> Decimal:
    """Zero with the currency's places, so '0.00' renders as such."""
    return round_amount(Decimal(0), decimals)


def is_currency_code(code: str) -> bool:
    """An ISO currency or the shape of a custom pricing unit's name."""
    return code in ISO_CURRENCY_DECIMALS or _CUSTOM_UNIT.fullmatch(code) is not None


def currency_decimals(code: str, declared_decimals: int | None) -> int:
    """Places of an ISO currency, or of a custom pricing unit that declares them."""
    if code in ISO_CURRENCY_DECIMALS:
        iso = ISO_CURRENCY_DECIMALS[code]
        if declared_decimals is not None and declared_decimals != iso:
            raise invalid("currency_decimals", f"{code} has {iso} decimal places")
        return iso
    if not _CUSTOM_UNIT.fullmatch(code):
        raise invalid("currency", f"{code[:40]!r} is neither an ISO currency nor a unit name")
    if declared_decimals is None:
        raise invalid("currency_decimals", f"custom pricing unit {code} must declare its places")
    if not 0 <= declared_decimals <= CUSTOM_UNIT_DECIMALS_MAX:
        raise invalid("currency_decimals", f"must be within 0..{CUSTOM_UNIT_DECIMALS_MAX}")
    return declared_decimals


__all__ = [
    "EXACT",
    "DomainError",
    "currency_decimals",
    "is_currency_code",
    "is_decimal_text",
    "parse_decimal",
    "round_amount",
    "zero",
]
