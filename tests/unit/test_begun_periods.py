"""Which invoices a customer has: every contract period begun by now, newest first."""

from __future__ import annotations

from datetime import UTC, datetime

from ledger.core.billing import CustomerState, begun_periods
from ledger.core.catalog import Contract


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def contract(contract_id: str, starts: datetime, ends: datetime | None) -> Contract:
    return Contract(
        contract_id=contract_id,
        customer_id="cus",
        rate_card_id="list",
        pinned_version=None,
        starts_at=starts,
        ends_at=ends,
        billing_anchor=starts,
    )


def state(*contracts: Contract) -> CustomerState:
    return CustomerState("cus", exists=True, contracts={c.contract_id: c for c in contracts})


def test_periods_begun_by_now_newest_first_across_contracts() -> None:
    old = contract("old", utc(2025, 1, 15), utc(2025, 3, 1))  # ended: 15 Jan-15 Feb, 15 Feb-1 Mar
    new = contract("new", utc(2025, 3, 1), None)
    later = contract("later", utc(2026, 1, 1), None)  # not begun yet
    refs = begun_periods(state(old, new, later), now=utc(2025, 5, 10))
    assert refs == [("new", 3), ("new", 2), ("new", 1), ("old", 2), ("old", 1)]


def test_a_period_beginning_exactly_now_is_listed() -> None:
    refs = begun_periods(state(contract("c", utc(2025, 1, 1), None)), now=utc(2025, 2, 1))
    assert refs == [("c", 2), ("c", 1)]
    assert begun_periods(state(), now=utc(2025, 2, 1)) == []
