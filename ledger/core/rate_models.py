"""The rate models of PRICING.md: the exact charge of one rate for one quantity.

Every function here is exact (no rounding): the rating engine rounds a line
once, after any contract multiplier, and then applies the rate's minimum and
maximum. Each charge says how it was reached, so invoice lines explain
themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from ledger.core.catalog import PackageRounding, Rate, RateModel, Tier
from ledger.core.money import EXACT, exact_sum


@dataclass(frozen=True)
class Proration:
    """The share of a period's fixed charges owed: whole UTC days covered / in the period."""

    days_covered: int
    days_in_period: int

    def __post_init__(self) -> None:
        assert 0 <= self.days_covered <= self.days_in_period
        assert self.days_in_period > 0

    @property
    def is_full(self) -> bool:
        return self.days_covered == self.days_in_period

    def apply(self, amount: Decimal) -> Decimal:
        if self.is_full:
            return amount
        return EXACT.divide(EXACT.multiply(amount, Decimal(self.days_covered)), self.days_in_period)

    def describe(self) -> str:
        return f" × {self.days_covered}/{self.days_in_period} days"


FULL_PERIOD = Proration(1, 1)
SHOWN_PLACES_MAX = 12


def whole_days(start: datetime, end: datetime) -> int:
    """UTC days starting inside ``[start, end)``: the midnights the interval holds.

    Counting midnights makes days additive: splitting an interval anywhere
    splits its days without counting any twice.
    """
    return (_next_midnight(end) - _next_midnight(start)).days


def _next_midnight(instant: datetime) -> date:
    """The date of the first UTC midnight at or after ``instant``."""
    utc = instant.astimezone(UTC)
    at_midnight = utc.time() == time(0)
    return utc.date() if at_midnight else utc.date() + timedelta(days=1)


@dataclass(frozen=True)
class TierUse:
    """How much of a quantity one tier priced."""

    up_to: Decimal | None
    quantity: Decimal
    unit_price: Decimal
    flat_fee: Decimal
    amount: Decimal


@dataclass(frozen=True)
class Charge:
    """The exact charge of a rate, with the steps that produced it."""

    exact: Decimal
    steps: str
    tiers: tuple[TierUse, ...] = ()


def charge(rate: Rate, quantity: Decimal, proration: Proration = FULL_PERIOD) -> Charge:
    """The exact amount ``rate`` charges for ``quantity`` (not for percentage rates)."""
    model = rate.model
    if model is RateModel.PER_UNIT:
        exact = EXACT.multiply(quantity, rate.unit_price)
        return Charge(exact, f"{shown(quantity)} × {shown(rate.unit_price)} = {shown(exact)}")
    if model is RateModel.GRADUATED:
        return graduated(rate.tiers, quantity)
    if model is RateModel.VOLUME:
        return volume(rate.tiers, quantity)
    if model is RateModel.PACKAGE:
        return package(rate, quantity)
    if model is RateModel.FLAT:
        exact = proration.apply(rate.flat_amount)
        return Charge(exact, f"flat {rate.flat_amount}{_prorated(proration)} = {shown(exact)}")
    if model is RateModel.SEAT:
        seats = EXACT.multiply(quantity, rate.unit_price)
        exact = proration.apply(seats)
        steps = f"{quantity} seats × {rate.unit_price}{_prorated(proration)} = {shown(exact)}"
        return Charge(exact, steps)
    raise AssertionError(f"{model} is priced from other lines, not from a quantity")


def percentage(rate: Rate, base: Decimal, base_products: tuple[str, ...]) -> Charge:
    """``percent`` % of ``base``, the summed amounts of the products it refers to."""
    exact = EXACT.divide(EXACT.multiply(base, rate.percent), Decimal(100))
    steps = f"{rate.percent}% of {base} ({' + '.join(base_products)}) = {shown(exact)}"
    return Charge(exact, steps)


def graduated(tiers: tuple[Tier, ...], quantity: Decimal) -> Charge:
    """Each tier prices the units inside it; its flat fee is due once any unit is."""
    uses: list[TierUse] = []
    lower = Decimal(0)
    for tier in tiers:
        if quantity <= lower:
            break
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        units = EXACT.subtract(upper, lower)
        amount = EXACT.add(EXACT.multiply(units, tier.unit_price), tier.flat_fee)
        uses.append(TierUse(tier.up_to, units, tier.unit_price, tier.flat_fee, amount))
        if tier.up_to is None:
            break
        lower = tier.up_to
    exact = exact_sum(use.amount for use in uses)
    return Charge(exact, _tier_steps(uses, exact), tuple(uses))


def volume(tiers: tuple[Tier, ...], quantity: Decimal) -> Charge:
    """All units at the price of the tier that contains the quantity, plus its flat fee."""
    if quantity <= 0:
        return Charge(Decimal(0), "no units = 0")
    tier = next((t for t in tiers if t.up_to is None or quantity <= t.up_to), tiers[-1])
    amount = EXACT.add(EXACT.multiply(quantity, tier.unit_price), tier.flat_fee)
    use = TierUse(tier.up_to, quantity, tier.unit_price, tier.flat_fee, amount)
    return Charge(amount, _tier_steps([use], amount), (use,))


def package(rate: Rate, quantity: Decimal) -> Charge:
    """Whole packages of ``package_size`` units at ``unit_price`` each."""
    assert rate.package_size is not None and rate.package_size > 0
    rounding = ROUND_CEILING if rate.package_rounding is PackageRounding.UP else ROUND_FLOOR
    packages = EXACT.divide(quantity, rate.package_size).to_integral_value(rounding=rounding)
    exact = EXACT.multiply(packages, rate.unit_price)
    steps = (
        f"{shown(quantity)} / {rate.package_size} rounded {rate.package_rounding.value}"
        f" = {shown(packages)}"
        f" packages × {shown(rate.unit_price)} = {shown(exact)}"
    )
    return Charge(exact, steps)


def shown(value: Decimal) -> str:
    """A value for an explanation: exact, or cut at 12 places with an ellipsis."""
    text = format(value, "f")
    whole, dot, fraction = text.partition(".")
    if len(fraction) <= SHOWN_PLACES_MAX:
        return text
    return f"{whole}{dot}{fraction[:SHOWN_PLACES_MAX]}…"


def _tier_steps(uses: list[TierUse], total: Decimal) -> str:
    if not uses:
        return "no units = 0"
    parts = []
    for use in uses:
        part = f"{shown(use.quantity)} × {shown(use.unit_price)}"
        if use.flat_fee:
            part += f" + {shown(use.flat_fee)}"
        parts.append(part)
    return f"{' + '.join(parts)} = {shown(total)}"


def _prorated(proration: Proration) -> str:
    return "" if proration.is_full else proration.describe()
