"""Product costs: what a unit of a product costs to provide, for margins.

Costs are effective-dated events like every other pricing fact, so a margin
report over last year uses last year's costs, and a cost change is auditable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Final

from ledger.app.commands import Command, Write, run_command
from ledger.app.context import RequestContext
from ledger.app.streams import product_cost_stream, product_stream
from ledger.core.errors import DomainError, Rule, Violations
from ledger.core.events import ProductCostSet
from ledger.core.money import is_currency_code, is_decimal_text
from ledger.core.validation import check_id
from ledger.store.event_store import PostgresEventStore

# Unit costs can be tiny (a fraction of a cent per token), but not endless.
UNIT_COST_PLACES_MAX: Final = 12


@dataclass(frozen=True)
class CostInput:
    """A SetProductCost request as it arrived (the cost still text)."""

    product_id: str
    unit_cost: str
    currency: str
    effective_from: datetime | None


class ProductCosts:
    def __init__(self, store: PostgresEventStore, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock

    async def set_cost(self, cmd: CostInput, ctx: RequestContext) -> tuple[ProductCostSet, int]:
        """Record a product's unit cost from an instant on."""

        async def decide() -> list[Write]:
            event = _checked(cmd)
            if not await self._store.stream_versions([product_stream(cmd.product_id)]):
                raise DomainError(Rule.PRODUCT_NOT_FOUND, f"no product {cmd.product_id!r}")
            return [Write(product_cost_stream(cmd.product_id), event, None)]

        content = {
            "product_id": cmd.product_id,
            "unit_cost": cmd.unit_cost,
            "currency": cmd.currency,
            "effective_from": cmd.effective_from.isoformat() if cmd.effective_from else None,
        }
        command = Command("SetProductCost", content, Rule.REQUEST_INVALID)
        event, seq = await run_command(self._store, ctx, command, decide, self._clock())
        assert isinstance(event, ProductCostSet)
        return event, seq


def _checked(cmd: CostInput) -> ProductCostSet:
    violations = Violations()
    check_id(violations, "product_id", cmd.product_id)
    if not is_currency_code(cmd.currency):
        violations.add("currency", f"{cmd.currency[:40]!r} is not a currency or pricing unit")
    cost = _unit_cost(violations, cmd.unit_cost)
    if cmd.effective_from is None:
        violations.add("effective_from", "is required")
    violations.raise_if_any()
    assert cost is not None and cmd.effective_from is not None
    return ProductCostSet(cmd.product_id, cmd.currency, cost, cmd.effective_from)


def _unit_cost(violations: Violations, text: str) -> Decimal | None:
    if not is_decimal_text(text) or Decimal(text) < 0:
        violations.add("unit_cost", f"{text[:40]!r} is not a decimal >= 0 (e.g. '0.0004')")
        return None
    value = Decimal(text)
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > UNIT_COST_PLACES_MAX:
        violations.add("unit_cost", f"has more than {UNIT_COST_PLACES_MAX} decimal places")
        return None
    return value
