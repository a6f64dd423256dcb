"""Rates as requested (decimal strings), their validation, and their parsing.

A :class:`RateSpec` is what a caller sends; :func:`check_rates` names every
problem with its field path; :func:`parse_rate` turns a valid spec into a
:class:`~ledger.core.catalog.Rate`. Validation needs to know the products
and metrics the rates refer to, which the caller looks up and passes in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from ledger.core.catalog import (
    BillableMetric,
    PackageRounding,
    Product,
    Rate,
    RateModel,
    Tier,
)
from ledger.core.errors import Violations
from ledger.core.money import is_decimal_text

TIERS_MAX = 100


@dataclass(frozen=True)
class TierSpec:
    up_to: str
    unit_price: str
    flat_fee: str = ""


@dataclass(frozen=True)
class RateSpec:
    product_id: str
    model: str
    unit_price: str = ""
    group_values: Mapping[str, str] = field(default_factory=dict)
    minimum: str = ""
    maximum: str = ""
    tiers: Sequence[TierSpec] = ()
    package_size: str = ""
    package_rounding: str = ""
    flat_amount: str = ""
    percent: str = ""
    percent_of: Sequence[str] = ()


@dataclass(frozen=True)
class RateContext:
    """What rates are checked against: the products and metrics they refer to."""

    products: Mapping[str, Product]
    metrics: Mapping[str, BillableMetric]


def check_amount(violations: Violations, where: str, text: str, *, required: bool) -> None:
    """A non-negative plain decimal string (or empty when optional)."""
    if not text:
        if required:
            violations.add(where, "is required")
    elif not is_decimal_text(text):
        violations.add(where, f"{text[:40]!r} is not a plain decimal number")
    elif text.startswith("-"):
        violations.add(where, "must not be negative")


def check_rates(violations: Violations, rates: Sequence[RateSpec], context: RateContext) -> None:
    """Every rule a rate card's rates must meet, reported together."""
    if not rates:
        violations.add("rates", "a rate card needs at least one rate")
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    on_card = {r.product_id: r for r in rates}
    for i, rate in enumerate(rates):
        where = f"rates[{i}]"
        check_rate(violations, where, rate, context, on_card)
        identity = (rate.product_id, tuple(sorted(rate.group_values.items())))
        if identity in seen:
            violations.add(where, "repeats the rate of an earlier entry for the same groups")
        seen.add(identity)


def check_rate(
    violations: Violations,
    where: str,
    rate: RateSpec,
    context: RateContext,
    on_card: Mapping[str, RateSpec],
) -> None:
    """One rate: its product and model, then the fields its model needs."""
    product = context.products.get(rate.product_id)
    if product is None:
        violations.add(f"{where}.product_id", f"unknown product {rate.product_id!r}")
    if rate.model not in {m.value for m in RateModel}:
        violations.add(f"{where}.model", f"must be one of {', '.join(m.value for m in RateModel)}")
        return
    model = RateModel(rate.model)
    if product is not None:
        _check_product_fits(violations, where, rate, product, context)
    check_amount(violations, f"{where}.minimum", rate.minimum, required=False)
    check_amount(violations, f"{where}.maximum", rate.maximum, required=False)
    low, high = _decimal(rate.minimum), _decimal(rate.maximum)
    if low is not None and high is not None and low > high:
        violations.add(f"{where}.maximum", "must not be below the minimum")
    _MODEL_CHECKS[model](violations, where, rate, on_card)


def _check_product_fits(
    violations: Violations, where: str, rate: RateSpec, product: Product, context: RateContext
) -> None:
    model = RateModel(rate.model)
    if not model.needs_metric and rate.group_values:
        # Flat fees and percentages are one line per product, not one per group.
        violations.add(f"{where}.group_values", f"a {model.value} rate applies to no group")
    if model.needs_metric and not product.metric_id:
        violations.add(f"{where}.model", f"{model.value} needs a product measured by a metric")
        return
    metric = context.metrics.get(product.metric_id)
    dimensions = set(metric.group_by) if metric is not None else set()
    for key in rate.group_values:
        if key not in dimensions:
            violations.add(f"{where}.group_values", f"{key!r} is not a group_by of the metric")


def _check_unit_price(violations: Violations, where: str, rate: RateSpec, _: object) -> None:
    check_amount(violations, f"{where}.unit_price", rate.unit_price, required=True)


def _check_tiers(violations: Violations, where: str, rate: RateSpec, _: object) -> None:
    if not rate.tiers:
        violations.add(f"{where}.tiers", "a tiered rate needs at least one tier")
        return
    if len(rate.tiers) > TIERS_MAX:
        violations.add(f"{where}.tiers", f"at most {TIERS_MAX} tiers")
    previous: Decimal | None = Decimal(0)
    for i, tier in enumerate(rate.tiers):
        at = f"{where}.tiers[{i}]"
        check_amount(violations, f"{at}.unit_price", tier.unit_price, required=True)
        check_amount(violations, f"{at}.flat_fee", tier.flat_fee, required=False)
        last = i == len(rate.tiers) - 1
        if not tier.up_to:
            if not last:
                violations.add(f"{at}.up_to", "only the last tier may be open-ended")
            continue
        if last:
            violations.add(f"{at}.up_to", "the last tier must be open-ended (no up_to)")
        bound = _decimal(tier.up_to)
        if bound is None or bound <= 0:
            violations.add(f"{at}.up_to", "must be a positive decimal number")
        elif previous is not None and bound <= previous:
            violations.add(
                f"{at}.up_to", f"tiers overlap or are out of order ({bound} ≤ {previous})"
            )
        previous = bound


def _check_package(violations: Violations, where: str, rate: RateSpec, _: object) -> None:
    check_amount(violations, f"{where}.unit_price", rate.unit_price, required=True)
    size = _decimal(rate.package_size)
    if size is None or size <= 0:
        violations.add(f"{where}.package_size", "must be a positive decimal number")
    if rate.package_rounding not in {"", *(r.value for r in PackageRounding)}:
        violations.add(f"{where}.package_rounding", "must be 'up' or 'down'")


def _check_flat(violations: Violations, where: str, rate: RateSpec, _: object) -> None:
    check_amount(violations, f"{where}.flat_amount", rate.flat_amount, required=True)


def _check_percentage(
    violations: Violations, where: str, rate: RateSpec, on_card: Mapping[str, RateSpec]
) -> None:
    check_amount(violations, f"{where}.percent", rate.percent, required=True)
    if not rate.percent_of:
        violations.add(f"{where}.percent_of", "name the products the percentage is taken of")
    for j, product_id in enumerate(rate.percent_of):
        at = f"{where}.percent_of[{j}]"
        base = on_card.get(product_id)
        if product_id == rate.product_id:
            violations.add(at, "a percentage cannot be taken of itself")
        elif base is None:
            violations.add(at, f"{product_id!r} has no rate on this card")
        elif base.model == RateModel.PERCENTAGE.value:
            violations.add(at, f"{product_id!r} is itself a percentage")


_MODEL_CHECKS = {
    RateModel.PER_UNIT: _check_unit_price,
    RateModel.SEAT: _check_unit_price,
    RateModel.GRADUATED: _check_tiers,
    RateModel.VOLUME: _check_tiers,
    RateModel.PACKAGE: _check_package,
    RateModel.FLAT: _check_flat,
    RateModel.PERCENTAGE: _check_percentage,
}


def parse_rate(spec: RateSpec) -> Rate:
    """A validated spec as a rate."""
    return Rate(
        product_id=spec.product_id,
        model=RateModel(spec.model),
        unit_price=_decimal(spec.unit_price) or Decimal(0),
        group_values=dict(spec.group_values),
        minimum=_decimal(spec.minimum),
        maximum=_decimal(spec.maximum),
        tiers=tuple(
            Tier(_decimal(t.up_to), Decimal(t.unit_price), _decimal(t.flat_fee) or Decimal(0))
            for t in spec.tiers
        ),
        package_size=_decimal(spec.package_size),
        package_rounding=(
            PackageRounding(spec.package_rounding or PackageRounding.UP.value)
            if spec.model == RateModel.PACKAGE.value
            else PackageRounding.UP
        ),
        flat_amount=_decimal(spec.flat_amount) or Decimal(0),
        percent=_decimal(spec.percent) or Decimal(0),
        percent_of=tuple(spec.percent_of),
    )


def _decimal(text: str) -> Decimal | None:
    return Decimal(text) if text and is_decimal_text(text) else None
