"""Revenue reports: invoice lines summed along the dimensions finance asks about.

Every figure is a sum of invoice lines, which are already rounded to the
currency's minor unit, so a report's rows add up to the invoices' subtotals to
the cent, whichever dimensions it is split by. Costs of goods are the one
thing added here: a product's unit cost times a line's quantity, rounded per
line like an amount (PRICING.md's rule), so margins are exact too.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Final

from ledger.core.canonical import format_instant
from ledger.core.invoice import Invoice, LineKind, minor_unit_places
from ledger.core.money import EXACT, exact_sum, round_amount, zero


class Dimension(Enum):
    """What a revenue report may be split by (every report is split by currency)."""

    PRODUCT = "product"
    CUSTOMER = "customer"
    RATE_CARD = "rate_card"  # rate card and version
    PRICING_DIMENSION = "pricing_dimension"  # the line's group values, e.g. model=gpt-4
    METRIC = "metric"
    LINE_KIND = "line_kind"
    PERIOD = "period"  # the invoice period's start


@dataclass(frozen=True)
class RevenueLine:
    """One invoice line, with the invoice facts reports split by."""

    invoice_id: str
    customer_id: str
    currency: str
    period_start: datetime
    product_id: str
    product_name: str
    metric_id: str
    group_values: Mapping[str, str]
    rate_card_id: str
    rate_card_version: int
    kind: LineKind
    segment_start: datetime
    quantity: Decimal
    amount: Decimal
    places: int  # the currency's minor unit

    def key(self, dimension: Dimension) -> str:
        return _KEYS[dimension](self)


_KEYS: Final[dict[Dimension, Callable[[RevenueLine], str]]] = {
    Dimension.PRODUCT: lambda line: line.product_id,
    Dimension.CUSTOMER: lambda line: line.customer_id,
    Dimension.RATE_CARD: lambda line: f"{line.rate_card_id}@v{line.rate_card_version}",
    Dimension.PRICING_DIMENSION: lambda line: ",".join(
        f"{name}={value}" for name, value in sorted(line.group_values.items())
    ),
    Dimension.METRIC: lambda line: line.metric_id,
    Dimension.LINE_KIND: lambda line: line.kind.value,
    Dimension.PERIOD: lambda line: format_instant(line.period_start),
}


def revenue_lines(invoice: Invoice) -> list[RevenueLine]:
    """An invoice's lines as reports see them."""
    places = minor_unit_places(invoice)
    return [
        RevenueLine(
            invoice_id=invoice.invoice_id,
            customer_id=invoice.customer_id,
            currency=invoice.currency,
            period_start=invoice.period_start,
            product_id=line.product_id,
            product_name=line.product_name,
            metric_id=line.metric_id,
            group_values=line.group_values,
            rate_card_id=line.rate_card_id,
            rate_card_version=line.rate_card_version,
            kind=line.kind,
            segment_start=line.segment_start,
            quantity=line.quantity,
            amount=line.amount,
            places=places,
        )
        for line in invoice.lines
    ]


@dataclass(frozen=True)
class ProductCost:
    """What one unit of a product costs to provide, from an instant on."""

    product_id: str
    currency: str
    unit_cost: Decimal
    effective_from: datetime


class CostBook:
    """Unit costs by product, currency and time: the latest one in effect wins."""

    def __init__(self, costs: Iterable[ProductCost] = ()) -> None:
        self._by_key: dict[tuple[str, str], list[ProductCost]] = {}
        for cost in costs:
            self._by_key.setdefault((cost.product_id, cost.currency), []).append(cost)
        for found in self._by_key.values():
            found.sort(key=lambda cost: cost.effective_from)

    def unit_cost(self, product_id: str, currency: str, at: datetime) -> Decimal | None:
        found = self._by_key.get((product_id, currency), [])
        index = bisect.bisect_right([cost.effective_from for cost in found], at)
        return found[index - 1].unit_cost if index else None

    def line_cost(self, line: RevenueLine) -> Decimal | None:
        """The line's cost of goods at its segment's start, rounded like an amount.

        A commit's true-up sells nothing, so it costs nothing.
        """
        if line.kind is LineKind.TRUE_UP:
            return zero(line.places)
        unit = self.unit_cost(line.product_id, line.currency, line.segment_start)
        if unit is None:
            return None
        # Exact product, then one rounding: the 28-digit default context would round twice.
        return round_amount(EXACT.multiply(line.quantity, unit), line.places)


@dataclass(frozen=True)
class RevenueRow:
    """The lines sharing one value of each chosen dimension, summed.

    ``cost`` sums the costed lines only; ``uncosted_lines`` counts the rest, so
    a margin is complete exactly when it is zero.
    """

    keys: tuple[tuple[Dimension, str], ...]
    currency: str
    amount: Decimal
    quantity: Decimal
    line_count: int
    invoice_count: int
    cost: Decimal
    uncosted_lines: int

    @property
    def margin(self) -> Decimal:
        return EXACT.subtract(self.amount, self.cost)


def summarize(
    lines: Iterable[RevenueLine], by: Sequence[Dimension], costs: CostBook
) -> list[RevenueRow]:
    """Sum lines per currency and chosen dimensions; rows sorted by their keys."""
    groups: dict[tuple[str, tuple[str, ...]], list[RevenueLine]] = {}
    for line in lines:
        groups.setdefault((line.currency, tuple(line.key(d) for d in by)), []).append(line)
    return [
        _row(tuple(zip(by, keys, strict=True)), currency, members, costs)
        for (currency, keys), members in sorted(groups.items())
    ]


def _row(
    keys: tuple[tuple[Dimension, str], ...],
    currency: str,
    lines: Sequence[RevenueLine],
    costs: CostBook,
) -> RevenueRow:
    line_costs = [costs.line_cost(line) for line in lines]
    known = [cost for cost in line_costs if cost is not None]
    nothing = zero(lines[0].places)
    return RevenueRow(
        keys=keys,
        currency=currency,
        amount=exact_sum((line.amount for line in lines), nothing),
        quantity=exact_sum(line.quantity for line in lines),
        line_count=len(lines),
        invoice_count=len({line.invoice_id for line in lines}),
        cost=exact_sum(known, nothing),
        uncosted_lines=len(line_costs) - len(known),
    )
