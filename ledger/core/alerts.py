"""Spend alerts: thresholds on a customer's period spend or remaining balance.

An alert fires once per crossing, and a crossing is named by a key that every
evaluator derives alike from the ledger, so concurrent evaluators propose the
same key and the event store lets exactly one of them record it:

- ``period_spend`` crosses when the current period's invoice subtotal reaches
  the threshold; its key is that invoice's id (one crossing per period).
- ``remaining_balance`` crosses when the balance left on the grants valid at
  an instant, in the alert's currency, falls to the threshold or below; its
  key is the crossing's number. After crossing ``n`` the alert re-arms only
  once the balance is seen above the threshold again (a new grant, say), and
  the next fall is crossing ``n + 1``.

The balance is observed at every customer event after the last crossing (at
that event's business time) and now, so a rise and fall between two
evaluations is still counted, and a restarted evaluator finds it again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Final

from ledger.core.credits import BalanceBook, Grant
from ledger.core.errors import Violations
from ledger.core.money import ISO_CURRENCY_DECIMALS, exact_sum, is_decimal_text
from ledger.core.validation import check_id

# A custom pricing unit's name, as rate cards accept it (see ledger.core.money).
_UNIT_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")


class AlertKind(Enum):
    PERIOD_SPEND = "period_spend"
    REMAINING_BALANCE = "remaining_balance"


@dataclass(frozen=True)
class SpendAlert:
    """A threshold on one customer's spend or balance, in one currency."""

    alert_id: str
    customer_id: str
    kind: AlertKind
    threshold: Decimal
    currency: str


@dataclass(frozen=True)
class PeriodSpend:
    """What the customer's current period has cost so far, through a ledger position."""

    invoice_id: str
    subtotal: Decimal
    currency: str
    through_seq: int


@dataclass(frozen=True)
class Crossing:
    """A threshold crossing to record: its key, the value seen, when and through which seq."""

    crossing_key: str
    value: Decimal
    at: datetime
    through_seq: int


@dataclass(frozen=True)
class Observed:
    """A customer's balances right after its event at ``seq`` (business time ``at``)."""

    seq: int
    at: datetime
    book: BalanceBook


@dataclass(frozen=True)
class BalancePoint:
    """The remaining balance as observed at ``at``, through ledger position ``seq``."""

    seq: int
    at: datetime
    value: Decimal


@dataclass(frozen=True)
class Watch:
    """Where watching a balance alert resumes: its setting, or its last crossing."""

    seq: int
    at: datetime


def parse_alert(
    *, alert_id: str, customer_id: str, kind: str, threshold: str, currency: str
) -> SpendAlert:
    """A valid alert from request text, or INVALID with every bad field named."""
    violations = Violations()
    check_id(violations, "customer_id", customer_id)
    check_id(violations, "alert_id", alert_id)
    kinds = {k.value: k for k in AlertKind}
    if kind not in kinds:
        violations.add("kind", f"must be one of {', '.join(kinds)}")
    if not is_decimal_text(threshold) or threshold.startswith("-"):
        violations.add("threshold", "must be a non-negative plain decimal, e.g. '100.00'")
    elif kinds.get(kind) is AlertKind.PERIOD_SPEND and Decimal(threshold) == 0:
        violations.add("threshold", "a period spend threshold must be above zero")
    if currency not in ISO_CURRENCY_DECIMALS and not _UNIT_NAME.fullmatch(currency):
        violations.add("currency", "must be an ISO currency code or a pricing unit's name")
    violations.raise_if_any()
    return SpendAlert(alert_id, customer_id, kinds[kind], Decimal(threshold), currency)


def period_crossing(
    alert: SpendAlert, spend: PeriodSpend | None, fired: bool, at: datetime
) -> Crossing | None:
    """The period's crossing, if its spend reached the threshold and it has not fired."""
    if spend is None or fired or spend.currency != alert.currency:
        return None
    if spend.subtotal < alert.threshold:
        return None
    return Crossing(spend.invoice_id, spend.subtotal, at, spend.through_seq)


def remaining_balance(book: BalanceBook, currency: str, at: datetime) -> Decimal:
    """What is left, in ``currency``, on the balances (not postpaid commits) valid at ``at``."""
    return exact_sum(
        book.remaining(grant.grant_id)
        for grant in book.grants.values()
        if grant.is_balance and grant.currency == currency and _valid_at(grant, at)
    )


def _valid_at(grant: Grant, at: datetime) -> bool:
    return grant.starts_at <= at and (grant.expires_at is None or at < grant.expires_at)


def balance_points(
    observed: Iterable[Observed], currency: str, watch: Watch, now: datetime, head_seq: int
) -> list[BalancePoint]:
    """The balance as it stood at ``watch``, after each later event, and now.

    Each event's balance is taken at its own business time, so every evaluator
    reading the same ledger sees the same points; only the last (now) differs.
    """
    before = BalanceBook()
    points: list[BalancePoint] = []
    for item in observed:
        if item.seq <= watch.seq:
            before = item.book
            continue
        if not points:
            points.append(_point(before, currency, watch.seq, watch.at))
        points.append(_point(item.book, currency, item.seq, item.at))
        before = item.book
    if not points:
        points.append(_point(before, currency, watch.seq, watch.at))
    points.append(_point(before, currency, head_seq, now))
    return points


def _point(book: BalanceBook, currency: str, seq: int, at: datetime) -> BalancePoint:
    return BalancePoint(seq, at, remaining_balance(book, currency, at))


def next_balance_crossing(
    threshold: Decimal, fired_count: int, points: Sequence[BalancePoint]
) -> Crossing | None:
    """Crossing ``fired_count + 1`` if the points (from the watch on) hold one.

    A fresh alert is armed from the start, so an alert set at or below the
    balance's threshold fires at once. After a crossing it is armed again only
    by a point above the threshold.
    """
    armed = fired_count == 0
    for point in points:
        if point.value > threshold:
            armed = True
        elif armed:
            return Crossing(str(fired_count + 1), point.value, point.at, point.seq)
    return None
