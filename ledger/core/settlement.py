"""From a period's priced lines to the amount due, and what finalizing it enters.

Three steps follow rating, in this order, and the draft, finalization and
replay paths all take them the same way:

1. late usage of earlier, finalized periods is billed as adjustment lines
   (:func:`adjustment_lines`): the earlier period re-rated now, minus what it
   was billed; a finalized invoice never changes;
2. a postpaid commit whose term ends in this period adds a true-up line of
   ``max(0, commit − eligible spend)`` (:func:`true_up_lines`);
3. credit and prepaid-commit balances draw down the lines (:func:`settle`).

Finalizing then enters each drawdown, and the expiry (and any rollover) of
every balance whose expiry falls in the period (:func:`closing_entries`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from ledger.core.catalog import RateModel
from ledger.core.credits import BalanceBook, Drawdown, Grant, GrantKind, draw_down
from ledger.core.invoice import CreditApplied, Invoice, InvoiceLine, LineKind
from ledger.core.money import EXACT, exact_sum, round_amount, zero

LineKey = tuple[str, str, tuple[tuple[str, str], ...], datetime, datetime]


def _key(line: InvoiceLine) -> LineKey:
    groups = tuple(sorted(line.group_values.items()))
    return (line.product_id, line.metric_id, groups, line.segment_start, line.segment_end)


def adjustment_lines(billed: Invoice, now: Invoice, decimals: int) -> list[InvoiceLine]:
    """What an earlier period owes beyond what it was billed: ``now`` (the period
    re-rated with its late usage) minus ``billed``, line by line."""
    before = {_key(line): line for line in billed.lines}
    after = {_key(line): line for line in now.lines}
    adjustments = []
    for key in [*after, *(k for k in before if k not in after)]:
        old, new = before.get(key), after.get(key)
        shown = new or old
        assert shown is not None
        old_quantity, new_quantity = (x.quantity if x else Decimal(0) for x in (old, new))
        old_amount, new_amount = (x.amount if x else zero(decimals) for x in (old, new))
        if (old_quantity, old_amount) == (new_quantity, new_amount):
            continue
        adjustments.append(
            dataclasses.replace(
                shown,
                quantity=EXACT.subtract(new_quantity, old_quantity),
                amount=EXACT.subtract(new_amount, old_amount),
                explanation=(
                    f"late usage for {billed.invoice_id}: quantity {old_quantity} → {new_quantity},"
                    f" amount {old_amount} → {new_amount}"
                ),
                kind=LineKind.ADJUSTMENT,
                adjusts_invoice_id=billed.invoice_id,
            )
        )
    return adjustments


@dataclass(frozen=True)
class TrueUp:
    """A postpaid commit's term and what counted towards it before this invoice."""

    grant: Grant
    earlier_spend: Decimal


def eligible_spend(grant: Grant, lines: Iterable[InvoiceLine]) -> Decimal:
    """What lines inside the commit's term, of its products, spent (true-ups excluded)."""
    assert grant.expires_at is not None
    return exact_sum(
        line.amount
        for line in lines
        if line.kind is not LineKind.TRUE_UP
        and grant.covers(line.product_id)
        and line.segment_start < grant.expires_at
        and line.segment_end > grant.starts_at
    )


def true_up_lines(invoice: Invoice, commits: Sequence[TrueUp], decimals: int) -> list[InvoiceLine]:
    """A line per postpaid commit whose term ends in this invoice's period."""
    lines = []
    for commit in commits:
        grant = commit.grant
        assert grant.expires_at is not None
        spent = EXACT.add(commit.earlier_spend, eligible_spend(grant, invoice.lines))
        shortfall = round_amount(max(Decimal(0), EXACT.subtract(grant.amount, spent)), decimals)
        lines.append(
            InvoiceLine(
                product_id=f"commit:{grant.grant_id}",
                product_name="Commit true-up",
                metric_id="",
                group_values={},
                rate_card_id="",
                rate_card_version=0,
                segment_start=grant.starts_at,
                segment_end=grant.expires_at,
                model=RateModel.FLAT,
                quantity=Decimal(1),
                unit_price=shortfall,
                amount=shortfall,
                explanation=f"commit {grant.amount} − eligible spend {spent} → {shortfall}",
                kind=LineKind.TRUE_UP,
            )
        )
    return lines


def commit_ends_in(grant: Grant, start: datetime, end: datetime) -> bool:
    """Whether a postpaid commit's term ends inside ``(start, end]``."""
    return (
        grant.kind is GrantKind.POSTPAID_COMMIT
        and grant.expires_at is not None
        and start < grant.expires_at <= end
    )


def settle(
    invoice: Invoice, extra: Sequence[InvoiceLine], book: BalanceBook, decimals: int
) -> Invoice:
    """The invoice with ``extra`` lines added and the customer's balances drawn down.

    Balances never pay more than the lines they may pay for come to in all: a
    negative adjustment (late usage that lowered an earlier period's bill, as
    volume tiers or LATEST can) reduces what they cover instead of leaving a
    negative total while credit is spent.
    """
    lines = (*invoice.lines, *extra)
    balances = [
        b
        for b in book.balances_for(invoice.currency, invoice.period_start, invoice.period_end)
        if not book.is_expired(b.grant_id)
    ]
    # A true-up is what the customer committed to pay; no balance covers it.
    coverable = [line for line in lines if line.kind is not LineKind.TRUE_UP]
    result = draw_down(coverable, balances)
    ceiling = max(Decimal(0), exact_sum(line.amount for line in coverable))
    by_grant = _capped(result.drawdowns, ceiling)
    subtotal = exact_sum((line.amount for line in lines), zero(decimals))
    applied = exact_sum(by_grant.values(), zero(decimals))
    return dataclasses.replace(
        invoice,
        lines=lines,
        subtotal=subtotal,
        credits_applied=applied,
        total=EXACT.subtract(subtotal, applied),
        credits=tuple(CreditApplied(g, a) for g, a in by_grant.items() if a),
    )


def _capped(drawdowns: Sequence[Drawdown], ceiling: Decimal) -> dict[str, Decimal]:
    """Each grant's drawdowns summed, the last ones given back beyond ``ceiling``."""
    by_grant: dict[str, Decimal] = {}
    left = ceiling
    for drawdown in drawdowns:
        taken = min(drawdown.amount, left)
        left = EXACT.subtract(left, taken)
        so_far = by_grant.get(drawdown.grant_id, Decimal(0))
        by_grant[drawdown.grant_id] = EXACT.add(so_far, taken)
    return by_grant


@dataclass(frozen=True)
class Expiry:
    """A balance lapsing when an invoice is finalized, and its rollover (if any)."""

    grant_id: str
    amount: Decimal
    at: datetime
    rollover: Grant | None


def closing_entries(invoice: Invoice, book: BalanceBook, decimals: int) -> list[Expiry]:
    """The balances of the invoice's currency whose expiry falls by the period's end:
    what is left of each after this invoice's drawdowns lapses, and a share of it
    rolls over into a new grant of the same length if the grant says so."""
    drawn = {credit.grant_id: credit.amount for credit in invoice.credits}
    expiries = []
    for grant in book.grants.values():
        due = grant.expires_at is not None and grant.expires_at <= invoice.period_end
        if not grant.is_balance or grant.currency != invoice.currency or not due:
            continue
        if book.is_expired(grant.grant_id):
            continue
        assert grant.expires_at is not None
        left = EXACT.subtract(book.remaining(grant.grant_id), drawn.get(grant.grant_id, Decimal(0)))
        if left <= 0:
            continue  # nothing lapses: no entry (and any later void re-checks it)
        rollover = _rollover(grant, left, decimals)
        expiries.append(Expiry(grant.grant_id, left, grant.expires_at, rollover))
    return expiries


def rollover_id(grant_id: str) -> str:
    """A rollover's grant id; ``~`` is never in an id a caller chooses, so it cannot
    collide with one."""
    return f"{grant_id}~rollover"


def _rollover(grant: Grant, left: Decimal, decimals: int) -> Grant | None:
    if not grant.rollover_fraction or left <= 0:
        return None
    amount = round_amount(EXACT.multiply(left, grant.rollover_fraction), decimals)
    if amount <= 0:
        return None
    assert grant.expires_at is not None
    return dataclasses.replace(
        grant,
        grant_id=rollover_id(grant.grant_id),
        amount=amount,
        starts_at=grant.expires_at,
        expires_at=grant.expires_at + (grant.expires_at - grant.starts_at),
        rolled_over_from=grant.grant_id,
    )
