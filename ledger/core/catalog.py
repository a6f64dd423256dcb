"""What is sold and at what price: billable metrics, products, rate cards, contracts.

These are immutable values carried inside events. A rate card version is never
edited: publishing creates the next version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import Enum

from ledger.core.codec import added_field


class Aggregation(Enum):
    """How a metric reduces matching usage events to a quantity."""

    COUNT = "COUNT"
    SUM = "SUM"
    MAX = "MAX"
    UNIQUE = "UNIQUE"  # exact count of distinct values of the property
    LATEST = "LATEST"  # value of the latest event (greatest timestamp, then ledger order)

    @property
    def needs_property(self) -> bool:
        return self is not Aggregation.COUNT

    @property
    def needs_number(self) -> bool:
        """UNIQUE counts values of any kind; the others add or compare numbers."""
        return self in (Aggregation.SUM, Aggregation.MAX, Aggregation.LATEST)


class FilterOp(Enum):
    IN = "in"
    EXISTS = "exists"


@dataclass(frozen=True)
class PropertyFilter:
    """``property in values`` or ``property exists``."""

    property: str
    op: FilterOp
    values: tuple[str, ...] = ()

    def matches(self, properties: Mapping[str, str]) -> bool:
        if self.op is FilterOp.EXISTS:
            return self.property in properties
        return properties.get(self.property) in self.values


@dataclass(frozen=True)
class BillableMetric:
    """Selects usage events by type and filters and aggregates them per group."""

    metric_id: str
    name: str
    event_type: str
    aggregation: Aggregation
    property: str | None = None
    filters: tuple[PropertyFilter, ...] = ()
    group_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Product:
    """Something sold, measured by one billable metric (none for flat and percentage fees)."""

    product_id: str
    name: str
    metric_id: str = ""


class RateModel(Enum):
    PER_UNIT = "per_unit"
    GRADUATED = "graduated"
    VOLUME = "volume"
    PACKAGE = "package"
    FLAT = "flat"
    SEAT = "seat"
    PERCENTAGE = "percentage"

    @property
    def needs_metric(self) -> bool:
        """Flat fees and percentages are not measured by a metric of their own."""
        return self not in (RateModel.FLAT, RateModel.PERCENTAGE)

    @property
    def is_tiered(self) -> bool:
        return self in (RateModel.GRADUATED, RateModel.VOLUME)

    @property
    def is_prorated(self) -> bool:
        """Charges per period that shrink with the days a contract covers."""
        return self in (RateModel.FLAT, RateModel.SEAT)


@dataclass(frozen=True)
class Tier:
    """Units up to and including ``up_to`` (None: no upper bound) at ``unit_price``."""

    up_to: Decimal | None
    unit_price: Decimal
    flat_fee: Decimal = Decimal(0)


class PackageRounding(Enum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class Rate:
    """The price of one product, optionally only for some group values.

    Which fields matter depends on the model: ``unit_price`` (per_unit, seat,
    and the price of one package), ``tiers`` (graduated, volume),
    ``package_size`` and ``package_rounding`` (package), ``flat_amount``
    (flat, per period), ``percent`` and ``percent_of`` (percentage of the
    amounts of other products on the invoice).
    """

    product_id: str
    model: RateModel
    unit_price: Decimal = Decimal(0)
    group_values: Mapping[str, str] = field(default_factory=dict)
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    tiers: tuple[Tier, ...] = ()
    package_size: Decimal | None = None
    package_rounding: PackageRounding = PackageRounding.UP
    flat_amount: Decimal = Decimal(0)
    percent: Decimal = Decimal(0)
    percent_of: tuple[str, ...] = ()

    def applies_to(self, group: Mapping[str, str]) -> bool:
        return all(group.get(key) == value for key, value in self.group_values.items())


@dataclass(frozen=True)
class RateCardVersion:
    """One immutable published version of a rate card."""

    rate_card_id: str
    version: int
    name: str
    currency: str
    currency_decimals: int
    effective_from: datetime
    rates: tuple[Rate, ...]

    def rate_for(self, product_id: str, group: Mapping[str, str]) -> Rate | None:
        """The most specific rate for the product that applies to ``group``."""
        candidates = [r for r in self.rates if r.product_id == product_id and r.applies_to(group)]
        if not candidates:
            return None
        return max(candidates, key=lambda rate: len(rate.group_values))

    @property
    def product_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(rate.product_id for rate in self.rates))


class OverrideKind(Enum):
    OVERWRITE = "overwrite"  # another rate replaces the card's
    MULTIPLIER = "multiplier"  # the card's amount times a factor (0.9 = 10% off list)


@dataclass(frozen=True)
class Override:
    """A contract's own price for a product over a window; the highest priority wins."""

    override_id: str
    product_id: str
    kind: OverrideKind
    priority: int = 0
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    multiplier: Decimal | None = None
    rate: Rate | None = None

    def active_throughout(self, start: datetime, end: datetime) -> bool:
        started = self.starts_at is None or self.starts_at <= start
        not_ended = self.ends_at is None or end <= self.ends_at
        return started and not_ended


@dataclass(frozen=True)
class PlanChange:
    """From ``effective_at`` on, the contract is priced by this card (pinned or not)."""

    effective_at: datetime
    rate_card_id: str
    pinned_version: int | None


@dataclass(frozen=True)
class Contract:
    """Binds a customer to a rate card for a term with a billing anchor.

    ``pinned_version`` None means the contract follows the card's latest
    version in effect; a number grandfathers it on that version.
    """

    contract_id: str
    customer_id: str
    rate_card_id: str
    pinned_version: int | None
    starts_at: datetime
    ends_at: datetime | None
    billing_anchor: datetime
    overrides: tuple[Override, ...] = ()
    currency: str = ""  # the rate card's, fixed when the contract is created
    # Amendments that moved the contract to another card or version, oldest first.
    plan_changes: tuple[PlanChange, ...] = added_field(())

    def plans_over(self, start: datetime, end: datetime) -> list[tuple[datetime, PlanChange]]:
        """The plans in force over ``[start, end)``, each with the instant it takes over."""
        initial = PlanChange(self.starts_at, self.rate_card_id, self.pinned_version)
        timeline = [initial, *self.plan_changes]
        pieces: list[tuple[datetime, PlanChange]] = []
        for plan, following in zip(timeline, [*timeline[1:], None], strict=True):
            until = end if following is None else following.effective_at
            if until > start and plan.effective_at < end:
                pieces.append((max(plan.effective_at, start), plan))
        return pieces

    def plan_at(self, instant: datetime) -> PlanChange:
        """The plan in force at ``instant`` (the initial one before the term starts)."""
        current = PlanChange(self.starts_at, self.rate_card_id, self.pinned_version)
        for change in self.plan_changes:
            if change.effective_at <= instant:
                current = change
        return current

    def override_for(self, product_id: str, start: datetime, end: datetime) -> Override | None:
        """The highest-priority override of the product in force over ``[start, end)``."""
        matching = [
            o
            for o in self.overrides
            if o.product_id == product_id and o.active_throughout(start, end)
        ]
        return max(matching, key=lambda o: (o.priority, o.override_id)) if matching else None

    def is_active_at(self, instant: datetime) -> bool:
        return self.starts_at <= instant and (self.ends_at is None or instant < self.ends_at)
