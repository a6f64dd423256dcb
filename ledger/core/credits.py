"""Drawing credit and prepaid-commit balances down against an invoice's lines.

Balances cover the rounded amounts of the lines they apply to, in order of
priority (lower number first), then soonest expiry, then grant order. A
balance never goes below zero; whatever no balance covers is due.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from ledger.core.invoice import InvoiceLine
from ledger.core.money import EXACT, exact_sum

_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Balance:
    """What is left of one grant, and which products it may pay for (empty: all)."""

    grant_id: str
    remaining: Decimal
    products: frozenset[str] = frozenset()
    priority: int = 0
    expires_at: datetime | None = None
    grant_order: int = 0

    def covers(self, product_id: str) -> bool:
        return not self.products or product_id in self.products

    def draw_order(self) -> tuple[int, datetime, int]:
        expiry = self.expires_at or _NEVER
        return (self.priority, expiry, self.grant_order)


@dataclass(frozen=True)
class Drawdown:
    grant_id: str
    product_id: str
    amount: Decimal


@dataclass(frozen=True)
class CreditResult:
    drawdowns: tuple[Drawdown, ...]
    credits_applied: Decimal
    remaining: dict[str, Decimal]


def draw_down(lines: Sequence[InvoiceLine], balances: Sequence[Balance]) -> CreditResult:
    """Apply balances to lines in the stated order; never below zero."""
    remaining = {b.grant_id: b.remaining for b in balances}
    ordered = sorted(balances, key=Balance.draw_order)
    drawdowns: list[Drawdown] = []
    for line in lines:
        owed = line.amount
        for balance in ordered:
            if owed <= 0:
                break
            available = remaining[balance.grant_id]
            if available <= 0 or not balance.covers(line.product_id):
                continue
            taken = min(owed, available)
            remaining[balance.grant_id] = EXACT.subtract(available, taken)
            owed = EXACT.subtract(owed, taken)
            drawdowns.append(Drawdown(balance.grant_id, line.product_id, taken))
    applied = exact_sum(d.amount for d in drawdowns)
    return CreditResult(tuple(drawdowns), applied, remaining)
