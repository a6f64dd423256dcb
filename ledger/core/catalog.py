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


class Aggregation(Enum):
    """How a metric reduces matching usage events to a quantity."""

    COUNT = "COUNT"
    SUM = "SUM"
    MAX = "MAX"

    @property
    def needs_property(self) -> bool:
        return self is not Aggregation.COUNT


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
    """Something sold, measured by one billable metric."""

    product_id: str
    name: str
    metric_id: str


class RateModel(Enum):
    PER_UNIT = "per_unit"


@dataclass(frozen=True)
class Rate:
    """The price of one product, optionally only for some group values."""

    product_id: str
    model: RateModel
    unit_price: Decimal
    group_values: Mapping[str, str] = field(default_factory=dict)
    minimum: Decimal | None = None
    maximum: Decimal | None = None

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

    def is_active_at(self, instant: datetime) -> bool:
        return self.starts_at <= instant and (self.ends_at is None or instant < self.ends_at)
