"""Credits and commits: grants, their balances, and drawing them down.

A credit is a granted (free) balance, a prepaid commit a purchased one; both
cover the rounded amounts of the lines they apply to, in order of priority
(lower number first), then soonest expiry, then grant order. A balance never
goes below zero; whatever no balance covers is due. A postpaid commit is no
balance but a minimum spend over its term, trued up at the term's end.

A grant's balance is its amount minus its drawdowns and expiry, plus any
reversals (a voided invoice gives back what it drew); :class:`BalanceBook`
folds those entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum

from ledger.core.invoice import InvoiceLine
from ledger.core.money import EXACT, exact_sum

_NEVER = datetime.max.replace(tzinfo=UTC)


class GrantKind(Enum):
    CREDIT = "credit"
    PREPAID_COMMIT = "prepaid_commit"
    POSTPAID_COMMIT = "postpaid_commit"


@dataclass(frozen=True)
class Grant:
    """A credit or commit: an amount for some products (none named: all) over
    ``[starts_at, expires_at)``.

    At expiry, ``rollover_fraction`` of what is left becomes a new grant of the
    same length. ``hard_limit`` makes entitlement checks refuse usage once the
    balance is spent. A postpaid commit's window is the term it must be spent in.
    """

    grant_id: str
    customer_id: str
    kind: GrantKind
    amount: Decimal
    currency: str
    starts_at: datetime
    expires_at: datetime | None
    products: tuple[str, ...] = ()
    priority: int = 0
    rollover_fraction: Decimal = Decimal(0)
    hard_limit: bool = False
    rolled_over_from: str = ""  # the grant whose expiry created this one

    @property
    def is_balance(self) -> bool:
        return self.kind is not GrantKind.POSTPAID_COMMIT

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """Whether the grant is valid for some of ``[start, end)``."""
        return self.starts_at < end and (self.expires_at is None or start < self.expires_at)

    def covers(self, product_id: str) -> bool:
        return not self.products or product_id in self.products


class EntryKind(Enum):
    GRANTED = "granted"
    DRAWN_DOWN = "drawn_down"
    EXPIRED = "expired"
    REVERSED = "reversed"  # a voided invoice's entry undone


@dataclass(frozen=True)
class BalanceEntry:
    """One change to a grant's balance: ``amount`` is signed (drawdowns negative)."""

    grant_id: str
    kind: EntryKind
    amount: Decimal
    at: datetime
    invoice_id: str = ""  # the invoice that caused it ("" for a grant made directly)


@dataclass(frozen=True)
class BalanceBook:
    """A customer's grants and every entry against them, in ledger order."""

    grants: dict[str, Grant] = field(default_factory=dict)
    order: dict[str, int] = field(default_factory=dict)
    entries: tuple[BalanceEntry, ...] = ()
    voided: frozenset[str] = frozenset()

    def grant(self, grant: Grant, at: datetime, invoice_id: str = "") -> BalanceBook:
        entry = BalanceEntry(grant.grant_id, EntryKind.GRANTED, grant.amount, at, invoice_id)
        order = (
            self.order
            if grant.grant_id in self.order
            else {**self.order, grant.grant_id: len(self.order)}
        )
        return replace(
            self,
            grants={**self.grants, grant.grant_id: grant},
            order=order,
            entries=(*self.entries, entry),
        )

    def void(self, invoice_id: str) -> BalanceBook:
        return replace(self, voided=self.voided | {invoice_id})

    def record(self, entry: BalanceEntry) -> BalanceBook:
        return replace(self, entries=(*self.entries, entry))

    def remaining(self, grant_id: str) -> Decimal:
        return exact_sum(e.amount for e in self.entries if e.grant_id == grant_id)

    def entries_of(self, grant_id: str) -> list[BalanceEntry]:
        return [e for e in self.entries if e.grant_id == grant_id]

    def is_expired(self, grant_id: str) -> bool:
        """Whether the grant's expiry is entered by an invoice that still stands."""
        return any(
            e.kind is EntryKind.EXPIRED and e.invoice_id not in self.voided
            for e in self.entries_of(grant_id)
        )

    def caused_by(self, invoice_id: str) -> list[BalanceEntry]:
        """The entries an invoice's finalization made (what voiding it reverses)."""
        return [
            entry
            for entry in self.entries
            if entry.invoice_id == invoice_id and entry.kind is not EntryKind.REVERSED
        ]

    def balances_for(self, currency: str, start: datetime, end: datetime) -> list[Balance]:
        """The balances an invoice of ``currency`` over ``[start, end)`` may draw from."""
        return [
            Balance(
                grant_id=g.grant_id,
                remaining=self.remaining(g.grant_id),
                products=frozenset(g.products),
                priority=g.priority,
                expires_at=g.expires_at,
                grant_order=self.order[g.grant_id],
                starts_at=g.starts_at,
            )
            for g in self.grants.values()
            if g.is_balance and g.currency == currency and g.overlaps(start, end)
        ]


@dataclass(frozen=True)
class Balance:
    """What is left of one grant, which products it may pay for (empty: all), and
    when: a line is covered only if its time overlaps ``[starts_at, expires_at)``."""

    grant_id: str
    remaining: Decimal
    products: frozenset[str] = frozenset()
    priority: int = 0
    expires_at: datetime | None = None
    grant_order: int = 0
    starts_at: datetime | None = None

    def covers(self, product_id: str) -> bool:
        return not self.products or product_id in self.products

    def applies_to(self, line: InvoiceLine) -> bool:
        """The line's product, for time inside the grant's window."""
        started = self.starts_at is None or line.segment_end > self.starts_at
        unexpired = self.expires_at is None or line.segment_start < self.expires_at
        return self.covers(line.product_id) and started and unexpired

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
            if available <= 0 or not balance.applies_to(line):
                continue
            taken = min(owed, available)
            remaining[balance.grant_id] = EXACT.subtract(available, taken)
            owed = EXACT.subtract(owed, taken)
            drawdowns.append(Drawdown(balance.grant_id, line.product_id, taken))
    applied = exact_sum(d.amount for d in drawdowns)
    return CreditResult(tuple(drawdowns), applied, remaining)
